//! Portico's L4 proxy (issue 6): backend selection and TCP/UDP relaying.
//!
//! - [`balance`]: which backend a new flow goes to (round robin, smooth weighted round robin, least
//!   connections, power of two choices, Maglev) with `ClientIP` affinity and the Kubernetes endpoint rules.
//! - [`relay`]: the epoll engine's TCP relay on tokio (connect with timeout, both directions, half-close, idle
//!   timeout, byte counters), zero-copy through `splice(2)` where the kernel allows.
//!
//! See `docs/proxy.md` for what is done and what is next (io_uring engine, health checks, PROXY protocol,
//! snapshot-driven listeners).

pub mod balance;
pub mod health;
pub mod listener;
pub mod relay;
pub mod subsystem;
pub mod udp;

pub use subsystem::Proxy;
