//! Portico's BGP speaker: it announces the VIPs of a [`model::Snapshot`] to upstream routers and shows what
//! they announce back, never installing anything.
//!
//! The public surface is small: [`Speaker`] (a [`model::subsystem::Subsystem`]), its [`SpeakerHandle`] for
//! status, and [`decode`] for fuzzing. Inside, `wire` is the message format, `fsm` the per-connection state
//! machine without I/O, `policy` the pure snapshot → Adj-RIB-Out function, `rib` the RIBs, `transport` the
//! sockets, `peer` one task per neighbour, and `speaker` the reconciliation of snapshots.

mod fsm;
mod metrics;
mod peer;
mod policy;
mod rib;
mod speaker;
mod transport;
pub mod wire;

pub use speaker::{Speaker, SpeakerHandle, SpeakerOptions};
pub use wire::{DecodeContext, DecodeError, Message, decode};
