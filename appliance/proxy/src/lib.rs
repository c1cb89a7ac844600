//! Portico's L4 proxy (issue 6): backend selection and TCP/UDP relaying.
//!
//! - [`balance`]: which backend a new flow goes to (round robin, smooth weighted round robin, least
//!   connections, power of two choices, Maglev) with `ClientIP` affinity and the Kubernetes endpoint rules.
//! - [`relay`]: the epoll engine's TCP relay on tokio (connect with timeout, both directions, half-close, idle
//!   timeout, byte counters), zero-copy through `splice(2)` where the kernel allows.
//!
//! - [`engine`]: the epoll and io_uring engines behind one [`Engine`] trait, and choosing one at start.
//! - [`listener`]: TCP listeners on either engine, with limits, PROXY protocol ([`proxy_protocol`]) and drain.
//!
//! See `docs/proxy.md` for what is done and what is next.

pub mod balance;
pub mod engine;
mod epoll;
pub mod health;
pub mod listener;
pub mod proxy_protocol;
pub mod relay;
pub mod status;
pub mod subsystem;
pub mod udp;
mod uring;

pub use engine::{Engine, EngineChoice, EngineKind, EpollEngine, UringEngine};
pub use status::ProxyHandle;
pub use subsystem::Proxy;
