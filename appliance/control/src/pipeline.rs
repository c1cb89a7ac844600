//! Turns inputs (configuration, allocations, observed state) into numbered snapshots and publishes them on a
//! `watch` channel. Bursts of input changes are debounced into one compile.

use model::health::{HealthMap, HealthSink, ServiceHealth};
use model::snapshot::Compiler;
use model::{Allocation, Config, Observed, Snapshot};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

/// Quiet time after a change before compiling, so a burst of changes compiles once.
const DEBOUNCE: Duration = Duration::from_millis(5);
/// Upper bound on how long a steady stream of changes can hold a compile back.
const MAX_DELAY: Duration = Duration::from_millis(100);

#[derive(Debug, Clone, Default)]
struct Inputs {
    revision: u64,
    config: Arc<Config>,
    allocations: Arc<Vec<Allocation>>,
    observed: Arc<Observed>,
    /// The proxy's health-check results.
    health: Arc<HealthMap>,
}

#[derive(Debug)]
struct Shared {
    inputs: Mutex<Inputs>,
    /// Held for a whole compile, so snapshots are compiled one at a time and in order.
    compiler: Mutex<Compiler>,
    changed: Notify,
    generation: AtomicU64,
    sender: watch::Sender<Arc<Snapshot>>,
}

/// The snapshot pipeline. Cloning gives another handle to the same pipeline.
#[derive(Debug, Clone)]
pub struct Pipeline {
    shared: Arc<Shared>,
}

impl Default for Pipeline {
    fn default() -> Self {
        Self::new()
    }
}

impl Pipeline {
    pub fn new() -> Pipeline {
        let (sender, _) = watch::channel(Arc::new(Snapshot::default()));
        Pipeline {
            shared: Arc::new(Shared {
                inputs: Mutex::new(Inputs::default()),
                compiler: Mutex::new(Compiler::new()),
                changed: Notify::new(),
                generation: AtomicU64::new(0),
                sender,
            }),
        }
    }

    /// A receiver of snapshots; it sees the newest one at once.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.shared.sender.subscribe()
    }

    /// The newest published snapshot.
    pub fn latest(&self) -> Arc<Snapshot> {
        self.shared.sender.borrow().clone()
    }

    pub fn generation(&self) -> u64 {
        self.shared.generation.load(Ordering::Acquire)
    }

    /// New configuration and allocations (from the control plane).
    pub fn set_config(&self, revision: u64, config: Arc<Config>, allocations: Arc<Vec<Allocation>>) {
        if let Ok(mut inputs) = self.shared.inputs.lock() {
            inputs.revision = revision;
            inputs.config = config;
            inputs.allocations = allocations;
        }
        self.shared.changed.notify_one();
    }

    /// Configuration, allocations and observed state at once (one compile for a change that moves all three).
    pub fn set_inputs(
        &self,
        revision: u64,
        config: Arc<Config>,
        allocations: Arc<Vec<Allocation>>,
        observed: Arc<Observed>,
    ) {
        if let Ok(mut inputs) = self.shared.inputs.lock() {
            inputs.revision = revision;
            inputs.config = config;
            inputs.allocations = allocations;
            inputs.observed = observed;
        }
        self.shared.changed.notify_one();
    }

    /// New observed state (from cluster sync, health checks…).
    pub fn set_observed(&self, observed: Arc<Observed>) {
        if let Ok(mut inputs) = self.shared.inputs.lock() {
            inputs.observed = observed;
        }
        self.shared.changed.notify_one();
    }

    /// The health-check results compiled into snapshots now.
    pub fn health(&self) -> Arc<HealthMap> {
        self.shared.inputs.lock().map(|i| i.health.clone()).unwrap_or_default()
    }

    /// Compiles and publishes a snapshot of the current inputs right away; returns its generation.
    pub fn compile_now(&self) -> u64 {
        let mut compiler = match self.shared.compiler.lock() {
            Ok(c) => c,
            Err(poisoned) => {
                // A compile that panicked may have left a half-made memo: start from nothing.
                let mut c = poisoned.into_inner();
                *c = Compiler::new();
                c
            }
        };
        let inputs = match self.shared.inputs.lock() {
            Ok(i) => i.clone(),
            Err(_) => return self.generation(),
        };
        let generation = self.shared.generation.load(Ordering::Acquire) + 1;
        let started = Instant::now();
        let mut snapshot =
            compiler.compile(generation, inputs.revision, &inputs.config, &inputs.observed, &inputs.allocations);
        compiler.apply_health(&mut snapshot, &inputs.health);
        let took = started.elapsed();
        self.shared.generation.store(generation, Ordering::Release);
        metrics::histogram!("portico_snapshot_compile_seconds").record(took.as_secs_f64());
        metrics::gauge!("portico_snapshot_generation").set(generation as f64);
        metrics::gauge!("portico_snapshot_services").set(snapshot.services.len() as f64);
        tracing::debug!(
            generation,
            revision = inputs.revision,
            services = snapshot.services.len(),
            ?took,
            "snapshot compiled"
        );
        self.shared.sender.send_replace(Arc::new(snapshot));
        generation
    }

    /// Compiles whenever inputs change (debounced), until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                () = self.shared.changed.notified() => {}
                () = shutdown.cancelled() => return,
            }
            let first = Instant::now();
            loop {
                let quiet = tokio::time::sleep(DEBOUNCE);
                tokio::select! {
                    () = self.shared.changed.notified() => {
                        if first.elapsed() >= MAX_DELAY { break }
                    }
                    () = quiet => break,
                    () = shutdown.cancelled() => return,
                }
            }
            self.compile_now();
        }
    }
}

impl HealthSink for Pipeline {
    fn set_health(&self, service: &str, health: Option<ServiceHealth>) {
        if let Ok(mut inputs) = self.shared.inputs.lock() {
            let map = Arc::make_mut(&mut inputs.health);
            match health {
                Some(h) => {
                    map.insert(service.to_string(), h);
                }
                None => {
                    map.remove(service);
                }
            }
        }
        self.shared.changed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{StatusRegistry, run_subsystem};
    use model::subsystem::{ApplyError, Health, Report, Subsystem};

    /// The smallest subsystem: counts VIPs, and refuses snapshots whose hostname is "refuse".
    struct VipCounter {
        seen: tokio::sync::mpsc::UnboundedSender<u64>,
    }

    impl Subsystem for VipCounter {
        fn name(&self) -> &'static str {
            "vip-counter"
        }

        async fn apply(&mut self, snapshot: Arc<Snapshot>) -> Result<Report, ApplyError> {
            if snapshot.settings.hostname == "refuse" {
                return Err(ApplyError("hostname says no".into()));
            }
            let _ = self.seen.send(snapshot.generation);
            let vips: usize = snapshot.services.iter().map(|s| s.vips.len()).sum();
            Ok(Report::ok(format!("{vips} VIPs")))
        }
    }

    #[tokio::test]
    async fn bursts_are_debounced_and_subsystems_report() {
        let pipeline = Pipeline::new();
        let registry = StatusRegistry::default();
        let shutdown = CancellationToken::new();
        tokio::spawn(pipeline.clone().run(shutdown.clone()));
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(run_subsystem(VipCounter { seen: tx }, pipeline.subscribe(), registry.clone(), shutdown.clone()));
        assert_eq!(rx.recv().await, Some(0), "a subsystem starts from the current snapshot");

        for rev in 1..=50 {
            pipeline.set_config(rev, Arc::new(Config::default()), Arc::new(vec![]));
        }
        let generation = rx.recv().await.unwrap_or(0);
        assert!(generation >= 1);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(pipeline.generation() < 10, "50 changes compiled {} times", pipeline.generation());
        assert_eq!(pipeline.latest().revision, 50);

        let mut refuse = Config::default();
        refuse.settings.hostname = "refuse".into();
        pipeline.set_config(51, Arc::new(refuse), Arc::new(vec![]));
        let before = pipeline.generation();
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(10)).await;
            if registry.all().get("vip-counter").is_some_and(|s| s.health == Health::Failed) {
                break;
            }
        }
        let status = &registry.all()["vip-counter"];
        assert_eq!(status.health, Health::Failed);
        assert!(status.applied_generation.is_some_and(|g| g <= before), "keeps the last good generation");
        shutdown.cancel();
    }
}
