//! The contract between the snapshot pipeline and a subsystem (BGP, L2, proxy, DNS, tunnel, cluster
//! write-back). A subsystem reconciles itself to each snapshot it is given and says how that went; the runner
//! (in the control crate) handles subscription, ordering and status reporting.

use crate::snapshot::Snapshot;
use serde::Serialize;
use std::future::Future;
use std::sync::Arc;

/// How a subsystem is doing after applying a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// Applied, everything as configured.
    Ok,
    /// Applied, but part of it is not working (e.g. a BGP peer is down).
    Degraded,
    /// Could not apply; the previous snapshot stays in force.
    Failed,
}

/// What a subsystem says after applying a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub health: Health,
    pub detail: String,
}

impl Report {
    pub fn ok(detail: impl Into<String>) -> Report {
        Report { health: Health::Ok, detail: detail.into() }
    }

    pub fn degraded(detail: impl Into<String>) -> Report {
        Report { health: Health::Degraded, detail: detail.into() }
    }
}

/// Why a snapshot could not be applied; the subsystem keeps its last good state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ApplyError(pub String);

/// A consumer of snapshots. `apply` must be idempotent: it may be given the same generation twice and must
/// reconcile to the newest snapshot rather than replay every intermediate one.
pub trait Subsystem: Send + 'static {
    fn name(&self) -> &'static str;

    fn apply(&mut self, snapshot: Arc<Snapshot>) -> impl Future<Output = Result<Report, ApplyError>> + Send;

    /// How the subsystem is doing now, between snapshots (a BGP session that came up or went down since the
    /// last apply). The runner asks every few seconds; `None` keeps the report of the last apply.
    fn report(&self) -> Option<Report> {
        None
    }

    /// When the subsystem wants the newest snapshot applied again although nothing changed (a timer of its own
    /// runs out then, such as a removed VIP's drain grace). `None`: only on changes.
    fn reapply_at(&self) -> Option<std::time::Instant> {
        None
    }
}
