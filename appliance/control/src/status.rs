//! What each subsystem last applied and how it is doing, and the loop that feeds it snapshots.

use model::Snapshot;
use model::subsystem::{Health, Subsystem};
use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use time::OffsetDateTime;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubsystemStatus {
    /// The newest generation applied successfully.
    pub applied_generation: Option<u64>,
    pub health: Health,
    pub detail: String,
    pub updated_at: OffsetDateTime,
}

/// Shared, cheap-to-read status of every subsystem.
#[derive(Debug, Clone, Default)]
pub struct StatusRegistry {
    inner: Arc<RwLock<BTreeMap<String, SubsystemStatus>>>,
}

impl StatusRegistry {
    pub fn report(&self, name: &str, generation: u64, health: Health, detail: String) {
        let status = SubsystemStatus {
            applied_generation: Some(generation),
            health,
            detail,
            updated_at: OffsetDateTime::now_utc(),
        };
        if let Ok(mut map) = self.inner.write() {
            map.insert(name.to_string(), status);
        }
    }

    /// A snapshot could not be applied: keep the generation last applied, mark the failure.
    pub fn failed(&self, name: &str, detail: String) {
        if let Ok(mut map) = self.inner.write() {
            let applied = map.get(name).and_then(|s| s.applied_generation);
            map.insert(
                name.to_string(),
                SubsystemStatus {
                    applied_generation: applied,
                    health: Health::Failed,
                    detail,
                    updated_at: OffsetDateTime::now_utc(),
                },
            );
        }
    }

    pub fn all(&self) -> BTreeMap<String, SubsystemStatus> {
        self.inner.read().map(|m| m.clone()).unwrap_or_default()
    }
}

/// Feeds snapshots to a subsystem until `shutdown`: always the newest one (intermediate generations that
/// arrive while it is busy are skipped, which idempotent reconciling allows). Gives the subsystem back, for a
/// clean stop of its own.
pub async fn run_subsystem<S: Subsystem>(
    mut subsystem: S,
    mut snapshots: watch::Receiver<Arc<Snapshot>>,
    registry: StatusRegistry,
    shutdown: CancellationToken,
) -> S {
    let name = subsystem.name();
    loop {
        let snapshot = snapshots.borrow_and_update().clone();
        let generation = snapshot.generation;
        match subsystem.apply(snapshot).await {
            Ok(report) => {
                tracing::debug!(subsystem = name, generation, health = ?report.health, "snapshot applied");
                registry.report(name, generation, report.health, report.detail);
            }
            Err(e) => {
                tracing::warn!(subsystem = name, generation, error = %e, "snapshot not applied; keeping the last good one");
                registry.failed(name, format!("generation {generation}: {e}"));
            }
        }
        tokio::select! {
            changed = snapshots.changed() => if changed.is_err() { break },
            () = shutdown.cancelled() => break,
        }
    }
    tracing::debug!(subsystem = name, "subsystem stopped");
    subsystem
}
