//! Portico's configuration and snapshot model: typed config objects and their validation, IP address
//! management, configuration diffs and the pure `compile` step that turns config, observed state and
//! allocations into one immutable [`Snapshot`]. Nothing here does I/O.

pub mod addr;
pub mod bgp;
pub mod cluster;
pub mod config;
pub mod diff;
pub mod health;
pub mod ipam;
pub mod l2;
pub mod names;
pub mod observed;
pub mod proxy;
pub mod snapshot;
pub mod subsystem;
pub mod validation;

pub use config::{Config, Kind, Pool, Service, Settings};
pub use ipam::Allocation;
pub use snapshot::{Observed, Snapshot, compile};
pub use validation::{FieldError, ValidationErrors};
