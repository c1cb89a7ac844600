//! The control plane: applies configuration changes (validation, IPAM, history, commit-confirm) through the
//! store, compiles snapshots from configuration and observed state, and runs subsystems against them.

pub mod changes;
pub mod pipeline;
pub mod portability;
pub mod sealing;
pub mod status;

pub use changes::{ChangeError, ChangeMeta, ChangeOutcome, Control, Current, Precondition};
pub use pipeline::Pipeline;
pub use status::{StatusRegistry, SubsystemStatus, run_subsystem};
