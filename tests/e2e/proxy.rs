//! The L4 proxy end to end (issue 6): the real binary in its own network namespace, clients in another (a small
//! Python agent with a /24 of source addresses), backends in the test process on veths of their own, `iperf3`
//! for a long transfer. Services are static services made through the REST API; the client connects to VIP:port
//! and the backend that greets it names the proxy's choice. These tests check behaviour (who gets which
//! connection, what survives a change, what is refused), never speed. Needs root, `python3`, `iperf3`.
//!
//! - `balancing`: the distribution of every algorithm, Maglev's stability when backends come and go, affinity;
//! - `changes`: a removed backend's running transfer drains; 100 changes during an `iperf3` run; a VIP port that
//!   cannot be bound is reported in `/status` and retried;
//! - `udp`: UDP echo through a VIP, sessions and their expiry, TCP and UDP on one VIP;
//! - `limits`: connection limits, the connect timeout, the idle timeout, 400 connections at once, the descriptor
//!   limit;
//! - `relay`: data after a half-close, IPv6.
//!
//! Every test starts with `bed::start_proxy_appliance(None)`; the argument (or `PORTICO_E2E_L4_ENGINE` for the
//! whole suite) picks the L4 engine (`settings.proxy.l4_engine`), so the same tests run on each engine.

mod agent;
mod backend;
mod balancing;
mod bed;
mod changes;
mod health;
mod limits;
mod proxy_protocol;
mod relay;
mod udp;
