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
    let mut refresh = tokio::time::interval(REPORT_EVERY);
    refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let snapshot = snapshots.borrow_and_update().clone();
        let generation = snapshot.generation;
        let mut applied = true;
        match subsystem.apply(snapshot).await {
            Ok(report) => {
                tracing::debug!(subsystem = name, generation, health = ?report.health, "snapshot applied");
                registry.report(name, generation, report.health, report.detail);
            }
            Err(e) => {
                tracing::warn!(subsystem = name, generation, error = %e, "snapshot not applied; keeping the last good one");
                registry.failed(name, format!("generation {generation}: {e}"));
                applied = false;
            }
        }
        refresh.reset();
        let reapply = subsystem.reapply_at().map(tokio::time::Instant::from_std);
        loop {
            tokio::select! {
                () = async { if let Some(at) = reapply { tokio::time::sleep_until(at).await } else { std::future::pending().await } } => {
                    break;
                }
                changed = snapshots.changed() => {
                    if changed.is_err() {
                        return subsystem;
                    }
                    break;
                }
                () = shutdown.cancelled() => {
                    tracing::debug!(subsystem = name, "subsystem stopped");
                    return subsystem;
                }
                _ = refresh.tick() => {
                    // A failed apply's report stands until a snapshot applies.
                    if applied && let Some(report) = subsystem.report() {
                        registry.report(name, generation, report.health, report.detail);
                    }
                }
            }
        }
    }
}

/// How often a subsystem's own report is refreshed between snapshots.
const REPORT_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

#[cfg(test)]
mod tests {
    use super::*;
    use model::subsystem::{ApplyError, Report};
    use std::sync::atomic::{AtomicBool, Ordering};

    /// Says "ok" when applied, then whatever `down` says when asked between snapshots.
    struct Sessions {
        down: Arc<AtomicBool>,
    }

    impl Subsystem for Sessions {
        fn name(&self) -> &'static str {
            "sessions"
        }

        async fn apply(&mut self, _snapshot: Arc<Snapshot>) -> Result<Report, ApplyError> {
            Ok(Report::ok("applied"))
        }

        fn report(&self) -> Option<Report> {
            Some(if self.down.load(Ordering::SeqCst) { Report::degraded("peer down") } else { Report::ok("up") })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn reports_are_refreshed_between_snapshots() {
        let (_sender, receiver) = watch::channel(Arc::new(Snapshot::default()));
        let registry = StatusRegistry::default();
        let shutdown = CancellationToken::new();
        let down = Arc::new(AtomicBool::new(false));
        let runner =
            tokio::spawn(run_subsystem(Sessions { down: down.clone() }, receiver, registry.clone(), shutdown.clone()));
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        assert_eq!(registry.all()["sessions"].detail, "applied");
        down.store(true, Ordering::SeqCst);
        tokio::time::sleep(REPORT_EVERY * 2).await;
        let status = &registry.all()["sessions"];
        assert_eq!((status.health, status.detail.as_str()), (Health::Degraded, "peer down"));
        shutdown.cancel();
        assert!(runner.await.is_ok(), "the runner gives the subsystem back");
    }
}
