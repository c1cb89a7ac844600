//! End-to-end tests: the real `portico` binary, started on loopback ports with its own data dir, driven over
//! HTTP and through its command line. Run with `cargo test -p portico --test e2e`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod auth;
mod bgp;
mod bgp_peers;
mod clusters;
mod crud;
mod durability;
mod harness;
mod history;
mod ipam;
mod l2;
mod misc;
mod netns;
mod openapi;
mod portability;
mod proxy;
