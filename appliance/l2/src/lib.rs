//! Portico's L2 announcer: it answers ARP requests and IPv6 Neighbor Solicitations for the VIPs of a
//! [`model::Snapshot`] on the interfaces its L2 advertisements name, from userspace (`AF_PACKET` sockets with
//! a classic BPF filter), and sends gratuitous ARPs / unsolicited Neighbor Advertisements when a VIP appears,
//! at start and when a link comes back up. Making VIPs local to the kernel is another crate's job.
//!
//! The public surface: [`Responder`] (a [`model::subsystem::Subsystem`]), its [`ResponderHandle`] for status,
//! the pure [`policy`] and [`wire`] modules, and [`link`] and [`filter`] (used by the tests).

pub mod filter;
mod iface;
pub mod link;
mod metrics;
pub mod policy;
mod responder;
pub mod wire;

pub use responder::{Responder, ResponderHandle};

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod testutil;
