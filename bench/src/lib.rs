//! Shared pieces of Portico's benchmarks: a generator of large configurations ([`workload`]), latency
//! summaries and tables ([`stats`]), and a real `portico` process on a temporary data dir with an API client
//! for it ([`server`]).
//!
//! The benchmarks themselves are the binaries in `src/bin/`; see `bench/README.md`.

pub mod server;
pub mod stats;
pub mod workload;
