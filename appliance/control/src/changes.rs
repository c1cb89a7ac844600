//! Every configuration change goes through [`Control::change`]: one writer at a time, validated as a whole,
//! VIPs planned, written as one revision with its allocations, then published to the snapshot pipeline.

use crate::pipeline::Pipeline;
use crate::sealing::{SealError, Sealer};
use model::config::{Config, Kind, ObjectError, SETTINGS_NAME};
use model::diff::{ObjectChange, diff_configs};
use model::ipam::{self, Allocation};
use model::observed::{ObservedCluster, observed_requests};
use model::snapshot::Observed;
use model::validation::{FieldError, ValidationErrors};
use std::collections::HashMap;
use std::collections::HashSet;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use store::{AllocationDelta, NewRevision, PendingConfirm, RevisionInfo, Source, Store, StoreError, Write};
use time::OffsetDateTime;
use tokio::task::AbortHandle;

/// A cluster's last complete observation.
#[derive(Debug)]
struct LastKnown {
    cluster: ObservedCluster,
    /// Changed since it was last saved.
    dirty: bool,
}

/// How often a cluster's last known state is saved when it changed (in the background, off the path of
/// changes; and at shutdown).
const SAVE_OBSERVED_EVERY: Duration = Duration::from_secs(2);

/// The configuration in force, with the revision that last wrote each object (their ETags).
#[derive(Debug, Clone, Default)]
pub struct Current {
    pub revision: u64,
    pub config: Arc<Config>,
    pub versions: HashMap<(Kind, String), u64>,
    pub allocations: Arc<Vec<Allocation>>,
    /// Observed owners (cluster Services) whose allocation failed, with the reason.
    pub failures: Arc<HashMap<String, String>>,
}

impl Current {
    pub fn version_of(&self, kind: Kind, name: &str) -> Option<u64> {
        self.versions.get(&(kind, name.to_string())).copied()
    }
}

/// Who makes a change and why.
#[derive(Debug, Clone)]
pub struct ChangeMeta {
    pub author: String,
    pub source: Source,
    pub message: String,
}

/// The version of one object the caller based its change on (`If-Match`).
#[derive(Debug, Clone)]
pub struct Precondition {
    pub kind: Kind,
    pub name: String,
    pub version: u64,
}

#[derive(Debug, Clone, Default)]
pub struct ChangeOptions {
    pub dry_run: bool,
    pub precondition: Option<Precondition>,
    /// Apply only if the configuration is still at this revision (`If-Match` on the whole document).
    pub expected_revision: Option<u64>,
    /// Revert automatically unless confirmed within this time.
    pub confirm_within: Option<Duration>,
    pub rollback_of: Option<u64>,
    /// Allocations to honour where they still fit (an imported appliance keeps its VIPs).
    pub allocation_hints: Option<Vec<Allocation>>,
}

#[derive(Debug, Clone)]
pub struct ChangeOutcome {
    /// The revision written; `None` for a dry run or when nothing changed.
    pub revision: Option<RevisionInfo>,
    pub changes: Vec<ObjectChange>,
    pub current: Arc<Current>,
}

#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    #[error("invalid configuration: {0}")]
    Invalid(ValidationErrors),
    #[error("change conflicts with allocated addresses: {0}")]
    InUse(ValidationErrors),
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0} already exists")]
    Exists(String),
    #[error("{kind} '{name}' is at version {actual:?}, not {expected}")]
    Stale { kind: Kind, name: String, expected: u64, actual: Option<u64> },
    #[error("the configuration is at revision {actual}, not {expected}")]
    StaleConfig { expected: u64, actual: u64 },
    #[error("revision {revision} awaits confirmation until {deadline}; confirm it or let it revert first")]
    ConfirmPending { revision: u64, deadline: OffsetDateTime },
    #[error("no change is waiting for confirmation")]
    NothingToConfirm,
    #[error(transparent)]
    Stored(#[from] ObjectError),
    #[error(transparent)]
    Sealing(#[from] SealError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot serialize configuration: {0}")]
    Serialize(#[from] serde_json::Error),
}

enum PendingMode {
    /// Refuse the change while a commit-confirm is pending.
    Block,
    /// The automatic revert of this pending revision.
    Revert(u64),
}

#[derive(Debug)]
struct Inner {
    store: Store,
    pipeline: Pipeline,
    sealer: Sealer,
    observed: RwLock<Arc<Vec<ObservedCluster>>>,
    /// Each cluster's last complete observation, and when (and as what) it was last saved to the store.
    last_known: Mutex<HashMap<String, LastKnown>>,
    write: tokio::sync::Mutex<()>,
    current: RwLock<Arc<Current>>,
    confirm_timer: Mutex<Option<AbortHandle>>,
}

/// The control plane's handle on configuration. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Control {
    inner: Arc<Inner>,
}

impl Control {
    /// Loads the configuration in force (writing the initial revision on a new database), publishes it, and
    /// resumes or completes a commit-confirm left pending by a previous run.
    pub async fn start(store: Store, pipeline: Pipeline, sealer: Sealer) -> Result<Control, ChangeError> {
        if store.head().await?.is_none() {
            let body = serde_json::to_value(model::Settings::default())?;
            store
                .commit(
                    0,
                    &NewRevision {
                        author: "system".into(),
                        source: Source::System,
                        message: "initial configuration".into(),
                        rollback_of: None,
                    },
                    &[Write { kind: Kind::Settings, name: SETTINGS_NAME.into(), body: Some(body) }],
                    &AllocationDelta::default(),
                )
                .await?;
        }
        let head = store.head().await?.map(|r| r.number).unwrap_or(0);
        let objects = store.current_objects().await?;
        let mut versions = HashMap::new();
        let mut map = model::config::ObjectMap::new();
        for mut o in objects {
            sealer.open(o.kind, &o.name, &mut o.body)?;
            versions.insert((o.kind, o.name.clone()), o.since);
            map.insert((o.kind, o.name), o.body);
        }
        let config = Config::from_objects(&map)?;
        let allocations = store.allocations().await?;
        let current = Arc::new(Current {
            revision: head,
            config: Arc::new(config),
            versions,
            allocations: Arc::new(allocations),
            failures: Arc::new(HashMap::new()),
        });
        pipeline.set_config(head, current.config.clone(), current.allocations.clone());
        pipeline.compile_now();
        let control = Control {
            inner: Arc::new(Inner {
                store,
                pipeline,
                sealer,
                observed: RwLock::new(Arc::new(Vec::new())),
                last_known: Mutex::new(HashMap::new()),
                write: tokio::sync::Mutex::new(()),
                current: RwLock::new(current),
                confirm_timer: Mutex::new(None),
            }),
        };
        control.load_last_known().await;
        let saver = control.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SAVE_OBSERVED_EVERY);
            loop {
                tick.tick().await;
                saver.save_last_known().await;
            }
        });
        if let Some(pending) = control.inner.store.pending_confirm().await? {
            tracing::warn!(revision = pending.revision, deadline = %pending.deadline, "a commit-confirm is pending from before the restart");
            control.schedule_revert(&pending);
        }
        Ok(control)
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    pub fn pipeline(&self) -> &Pipeline {
        &self.inner.pipeline
    }

    /// The configuration in force.
    pub fn current(&self) -> Arc<Current> {
        match self.inner.current.read() {
            Ok(c) => c.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Restores each configured cluster's last known state, so that a start while a cluster is unreachable
    /// still serves its Services (its VIPs are kept until it has been listed again).
    async fn load_last_known(&self) {
        let saved = match self.inner.store.observed_cache().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the clusters' last known state");
                return;
            }
        };
        let configured: HashSet<String> = self.current().config.clusters.iter().map(|c| c.name.clone()).collect();
        let mut restored = Vec::new();
        if let Ok(mut last) = self.inner.last_known.lock() {
            for (name, body) in saved.into_iter().filter(|(n, _)| configured.contains(n)) {
                match serde_json::from_str::<ObservedCluster>(&body) {
                    Ok(mut cluster) => {
                        cluster.synced = false;
                        restored.push(cluster.clone());
                        last.insert(name, LastKnown { cluster, dirty: false });
                    }
                    Err(e) => tracing::warn!(cluster = %name, error = %e, "ignoring an unreadable last known state"),
                }
            }
        }
        if !restored.is_empty() {
            tracing::info!(clusters = restored.len(), "serving the clusters' last known state until they answer");
            let restored = Arc::new(restored);
            match self.inner.observed.write() {
                Ok(mut o) => *o = restored.clone(),
                Err(poisoned) => *poisoned.into_inner() = restored.clone(),
            }
            self.publish(self.current(), &restored);
            self.inner.pipeline.compile_now();
        }
    }

    /// Fills in a cluster that has not been listed yet with its last known state, and remembers (and, now and
    /// then, saves) the state of clusters that have.
    async fn with_last_known(&self, clusters: Vec<ObservedCluster>) -> Vec<ObservedCluster> {
        let configured: Vec<String> = self.current().config.clusters.iter().map(|c| c.name.clone()).collect();
        match self.inner.last_known.lock() {
            Ok(mut last) => {
                last.retain(|name, _| configured.contains(name));
                clusters
                    .into_iter()
                    .map(|c| {
                        if c.synced {
                            // Cheap: Services are shared, not copied.
                            last.insert(c.name.clone(), LastKnown { cluster: c.clone(), dirty: true });
                            c
                        } else if c.services.is_empty()
                            && let Some(known) = last.get(&c.name)
                        {
                            ObservedCluster { synced: false, ..known.cluster.clone() }
                        } else {
                            c
                        }
                    })
                    .collect()
            }
            Err(_) => clusters,
        }
    }

    /// Saves every cluster's last known state that changed since it was last saved, and forgets those of
    /// clusters no longer configured. Runs every couple of seconds in the background, and at shutdown.
    pub async fn save_last_known(&self) {
        let to_save: Vec<ObservedCluster> = match self.inner.last_known.lock() {
            Ok(mut last) => last
                .values_mut()
                .filter(|e| e.dirty)
                .map(|e| {
                    e.dirty = false;
                    e.cluster.clone()
                })
                .collect(),
            Err(_) => Vec::new(),
        };
        for cluster in to_save {
            // Serializing thousands of Services takes a while: not on a runtime thread that serves requests.
            let encoded = tokio::task::spawn_blocking(move || (serde_json::to_string(&cluster), cluster.name)).await;
            let Ok((Ok(body), name)) = encoded else { continue };
            if let Err(e) = self.inner.store.save_observed(&name, &body).await {
                tracing::warn!(cluster = %name, error = %e, "cannot save the cluster's last known state");
            }
        }
        let configured: Vec<String> = self.current().config.clusters.iter().map(|c| c.name.clone()).collect();
        if let Err(e) = self.inner.store.prune_observed(&configured).await {
            tracing::warn!(error = %e, "cannot prune last known cluster states");
        }
    }

    /// The clusters as last observed.
    pub fn observed(&self) -> Arc<Vec<ObservedCluster>> {
        match self.inner.observed.read() {
            Ok(o) => o.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// New observed state from cluster sync: plans VIPs for the Services that are ours (failures are
    /// reported, not refused), stores the allocation changes (no revision: observed state is not history) and
    /// publishes.
    pub async fn set_observed(&self, clusters: Vec<ObservedCluster>) -> Result<(), ChangeError> {
        let _guard = self.inner.write.lock().await;
        let clusters = Arc::new(self.with_last_known(clusters).await);
        let previous = self.observed();
        match self.inner.observed.write() {
            Ok(mut o) => *o = clusters.clone(),
            Err(poisoned) => *poisoned.into_inner() = clusters.clone(),
        }
        let current = self.current();
        // Most changes are endpoints coming and going: when no Service asks for anything new, the VIPs stay as
        // they are and only the snapshot is new.
        if same_requests(&previous, &clusters) {
            self.publish(current, &clusters);
            return Ok(());
        }
        let (allocations, failures) = match self.plan(&current.config, &clusters, &current.allocations, None).await {
            Ok(planned) => planned,
            // Configuration owners cannot fail here (they hold their addresses first); if they somehow do,
            // keep everything as it is rather than move a configured VIP.
            Err(errors) => {
                tracing::error!(%errors, "planning observed state failed for configured services; allocations kept");
                (current.allocations.to_vec(), (*current.failures).clone())
            }
        };
        let delta = AllocationDelta::between(&current.allocations, &allocations);
        self.inner.store.update_allocations(&delta).await?;
        if !delta.is_empty() {
            tracing::info!(
                added = delta.added.len(),
                released = delta.released.len(),
                "allocations follow the clusters"
            );
        }
        let next = Arc::new(Current {
            allocations: Arc::new(allocations),
            failures: Arc::new(failures),
            ..(*current).clone()
        });
        self.publish(next, &clusters);
        Ok(())
    }

    fn publish(&self, next: Arc<Current>, observed: &Arc<Vec<ObservedCluster>>) {
        match self.inner.current.write() {
            Ok(mut c) => *c = next.clone(),
            Err(poisoned) => *poisoned.into_inner() = next.clone(),
        }
        self.inner.pipeline.set_inputs(
            next.revision,
            next.config.clone(),
            next.allocations.clone(),
            Arc::new(Observed { clusters: observed.clone(), allocation_failures: (*next.failures).clone() }),
        );
    }

    /// Plans every allocation: configuration owners must all succeed (else the errors), observed owners may
    /// fail (returned by owner). Current allocations win, then hints, then each owner's last address.
    async fn plan(
        &self,
        config: &Config,
        observed: &[ObservedCluster],
        current: &[Allocation],
        hints: Option<&[Allocation]>,
    ) -> Result<(Vec<Allocation>, HashMap<String, String>), ValidationErrors> {
        let mut requests = ipam::config_requests(config);
        let members: HashSet<(String, String, String)> = config
            .global_services
            .iter()
            .flat_map(|g| g.members.iter().map(|m| (m.cluster.clone(), m.namespace.clone(), m.service.clone())))
            .collect();
        let known: HashSet<&str> = config.clusters.iter().filter(|c| c.enabled).map(|c| c.name.as_str()).collect();
        let mut observed: Vec<ObservedCluster> =
            observed.iter().filter(|c| known.contains(c.name.as_str())).cloned().collect();
        // A configured cluster not heard from yet (just started, or just added) keeps what it holds.
        for name in &known {
            if !observed.iter().any(|c| c.name == *name) {
                observed.push(ObservedCluster { name: name.to_string(), synced: false, ..Default::default() });
            }
        }
        requests.extend(observed_requests(&observed, &members, current));
        // Only a preference (a returning owner's old address): without it VIPs are still planned correctly.
        let released = match self.inner.store.released_allocations().await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read released allocations; returning owners may get new VIPs");
                Vec::new()
            }
        };
        let existing: Vec<Allocation> =
            current.iter().chain(hints.into_iter().flatten()).chain(released.iter()).cloned().collect();
        let planned = ipam::plan_all(&config.pools, &requests, &existing);
        let mut errors = Vec::new();
        let mut failures = HashMap::new();
        for f in planned.failures {
            if f.owner.starts_with("service/") || f.owner.starts_with("global/") {
                errors.push(FieldError { field: f.field, message: f.error.to_string() });
            } else {
                failures.insert(f.owner, f.error.to_string());
            }
        }
        if errors.is_empty() { Ok((planned.allocations, failures)) } else { Err(ValidationErrors(errors)) }
    }

    /// Applies `edit` to a copy of the configuration; validates, plans VIPs and writes one revision, or
    /// changes nothing at all.
    pub async fn change<F>(
        &self,
        meta: ChangeMeta,
        options: ChangeOptions,
        edit: F,
    ) -> Result<ChangeOutcome, ChangeError>
    where
        F: FnOnce(&mut Config) -> Result<(), ChangeError>,
    {
        self.change_with(meta, options, PendingMode::Block, edit).await
    }

    /// Restores the configuration of revision `number` as a new revision.
    pub async fn rollback(
        &self,
        meta: ChangeMeta,
        number: u64,
        mut options: ChangeOptions,
    ) -> Result<ChangeOutcome, ChangeError> {
        let target = self.load_revision(number).await?;
        options.rollback_of = Some(number);
        self.change(meta, options, move |c| {
            *c = target;
            Ok(())
        })
        .await
    }

    /// The configuration as it was right after revision `number`.
    pub async fn load_revision(&self, number: u64) -> Result<Config, ChangeError> {
        if self.inner.store.revision(number).await?.is_none() {
            return Err(ChangeError::NotFound(format!("revision {number}")));
        }
        let mut objects = self.inner.store.objects_at(number).await?;
        for ((kind, name), body) in objects.iter_mut() {
            self.inner.sealer.open(*kind, name, body)?;
        }
        Ok(Config::from_objects(&objects)?)
    }

    pub async fn pending_confirm(&self) -> Result<Option<PendingConfirm>, ChangeError> {
        Ok(self.inner.store.pending_confirm().await?)
    }

    /// Confirms the pending commit-confirm; returns its revision.
    pub async fn confirm(&self) -> Result<u64, ChangeError> {
        let _guard = self.inner.write.lock().await;
        let pending = self.inner.store.pending_confirm().await?.ok_or(ChangeError::NothingToConfirm)?;
        self.inner.store.set_pending_confirm(None).await?;
        if let Ok(mut t) = self.inner.confirm_timer.lock()
            && let Some(handle) = t.take()
        {
            handle.abort();
        }
        tracing::info!(revision = pending.revision, "commit confirmed");
        Ok(pending.revision)
    }

    fn schedule_revert(&self, pending: &PendingConfirm) {
        let control = self.clone();
        let revision = pending.revision;
        let wait = pending.deadline - OffsetDateTime::now_utc();
        let wait = Duration::try_from(wait).unwrap_or(Duration::ZERO);
        let task = tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            if let Err(e) = control.revert_unconfirmed(revision).await {
                tracing::error!(revision, error = %e, "automatic revert of an unconfirmed change failed");
            }
        });
        if let Ok(mut t) = self.inner.confirm_timer.lock()
            && let Some(old) = t.replace(task.abort_handle())
        {
            old.abort();
        }
    }

    async fn revert_unconfirmed(&self, revision: u64) -> Result<(), ChangeError> {
        let Some(pending) = self.inner.store.pending_confirm().await? else { return Ok(()) };
        if pending.revision != revision {
            return Ok(());
        }
        let target = self.load_revision(pending.revert_to).await?;
        let meta = ChangeMeta {
            author: "system".into(),
            source: Source::System,
            message: format!("automatic revert: revision {revision} was not confirmed in time"),
        };
        let options = ChangeOptions { rollback_of: Some(pending.revert_to), ..ChangeOptions::default() };
        let outcome = self
            .change_with(meta, options, PendingMode::Revert(revision), move |c| {
                *c = target;
                Ok(())
            })
            .await?;
        tracing::warn!(revision, reverted_to = pending.revert_to, new_revision = ?outcome.revision.map(|r| r.number), "unconfirmed change reverted");
        Ok(())
    }

    async fn change_with<F>(
        &self,
        meta: ChangeMeta,
        options: ChangeOptions,
        mode: PendingMode,
        edit: F,
    ) -> Result<ChangeOutcome, ChangeError>
    where
        F: FnOnce(&mut Config) -> Result<(), ChangeError>,
    {
        let _guard = self.inner.write.lock().await;
        let current = self.current();
        let pending = self.inner.store.pending_confirm().await?;
        match (&mode, &pending) {
            (PendingMode::Block, Some(p)) if !options.dry_run => {
                return Err(ChangeError::ConfirmPending { revision: p.revision, deadline: p.deadline });
            }
            (PendingMode::Revert(r), p) if p.as_ref().map(|p| p.revision) != Some(*r) => {
                return Ok(ChangeOutcome { revision: None, changes: vec![], current });
            }
            _ => {}
        }
        if let Some(expected) = options.expected_revision
            && expected != current.revision
        {
            return Err(ChangeError::StaleConfig { expected, actual: current.revision });
        }
        if let Some(pre) = &options.precondition {
            let actual = current.version_of(pre.kind, &pre.name);
            if actual != Some(pre.version) {
                return Err(ChangeError::Stale {
                    kind: pre.kind,
                    name: pre.name.clone(),
                    expected: pre.version,
                    actual,
                });
            }
        }

        let mut config = (*current.config).clone();
        edit(&mut config)?;
        let order = DocumentOrder::of(&config);
        config.normalize();
        config.validate().map_err(|e| ChangeError::Invalid(order.restore(e)))?;
        let changes = diff_configs(&current.config, &config)?;

        let observed = self.observed();
        let config_requests = ipam::config_requests(&config);
        let orphans = ipam::orphaned(&config.pools, &config_requests, &current.allocations);
        if !orphans.is_empty() {
            return Err(ChangeError::InUse(order.restore(orphan_errors(&config, &orphans))));
        }
        let (allocations, failures) = self
            .plan(&config, &observed, &current.allocations, options.allocation_hints.as_deref())
            .await
            .map_err(|e| ChangeError::Invalid(order.restore(e)))?;

        if options.dry_run || (changes.is_empty() && allocations == *current.allocations) {
            return Ok(ChangeOutcome { revision: None, changes, current });
        }

        let mut writes: Vec<Write> =
            changes.iter().map(|c| Write { kind: c.kind, name: c.name.clone(), body: c.after.clone() }).collect();
        for w in &mut writes {
            if let Some(body) = w.body.as_mut() {
                self.inner.sealer.seal(w.kind, &w.name, body)?;
            }
        }
        let delta = AllocationDelta::between(&current.allocations, &allocations);
        let revision = NewRevision {
            author: meta.author,
            source: meta.source,
            message: meta.message,
            rollback_of: options.rollback_of,
        };
        let started = std::time::Instant::now();
        let info = self.inner.store.commit(current.revision, &revision, &writes, &delta).await?;
        metrics::histogram!("portico_store_commit_seconds").record(started.elapsed().as_secs_f64());

        let mut versions = current.versions.clone();
        for c in &changes {
            let key = (c.kind, c.name.clone());
            if c.after.is_some() {
                versions.insert(key, info.number);
            } else {
                versions.remove(&key);
            }
        }
        let next = Arc::new(Current {
            revision: info.number,
            config: Arc::new(config),
            versions,
            allocations: Arc::new(allocations),
            failures: Arc::new(failures),
        });
        self.publish(next.clone(), &observed);
        metrics::counter!("portico_config_revisions_total", "source" => info.source.as_str()).increment(1);
        metrics::gauge!("portico_config_revision").set(info.number as f64);
        tracing::info!(revision = info.number, author = %info.author, source = info.source.as_str(), changes = changes.len(), "configuration changed");

        match mode {
            PendingMode::Revert(_) => self.inner.store.set_pending_confirm(None).await?,
            PendingMode::Block => {
                if let Some(within) = options.confirm_within {
                    let pending = PendingConfirm {
                        revision: info.number,
                        revert_to: current.revision,
                        deadline: OffsetDateTime::now_utc() + within,
                        author: info.author.clone(),
                    };
                    self.inner.store.set_pending_confirm(Some(&pending)).await?;
                    self.schedule_revert(&pending);
                }
            }
        }
        Ok(ChangeOutcome { revision: Some(info), changes, current: next })
    }
}

/// Where each object of the normalized (sorted) configuration stood in the document as the caller wrote it,
/// so that errors say `pools[2]` for the third pool of a PUT /config body, not for the third pool by name.
struct DocumentOrder {
    lists: Vec<(&'static str, Vec<usize>)>,
}

impl DocumentOrder {
    fn of(config: &Config) -> DocumentOrder {
        fn order(names: Vec<&str>) -> Vec<usize> {
            let mut positions: Vec<usize> = (0..names.len()).collect();
            // Stable, like `Config::normalize`, so that objects with the same name keep their relative order.
            positions.sort_by(|&a, &b| names[a].cmp(names[b]));
            positions
        }
        DocumentOrder {
            lists: vec![
                ("pools", order(config.pools.iter().map(|p| p.name.as_str()).collect())),
                ("services", order(config.services.iter().map(|s| s.name.as_str()).collect())),
                ("clusters", order(config.clusters.iter().map(|s| s.name.as_str()).collect())),
                ("global_services", order(config.global_services.iter().map(|s| s.name.as_str()).collect())),
            ],
        }
    }

    /// Rewrites `pools[i]`, `services[i]`… in fields and messages from sorted to written positions.
    fn restore(&self, errors: ValidationErrors) -> ValidationErrors {
        let fix =
            |text: &str| self.lists.iter().fold(text.to_string(), |t, (list, order)| remap_indices(&t, list, order));
        ValidationErrors(
            errors.0.into_iter().map(|e| FieldError { field: fix(&e.field), message: fix(&e.message) }).collect(),
        )
    }
}

/// Replaces every `list[i]` in `text` (as a whole word) with `list[order[i]]`.
fn remap_indices(text: &str, list: &str, order: &[usize]) -> String {
    let pattern = format!("{list}[");
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(&pattern) {
        let before = if at > 0 { rest[..at].chars().next_back() } else { out.chars().next_back() };
        let whole_word = !before.is_some_and(|c| c.is_alphanumeric() || c == '_');
        let after = &rest[at + pattern.len()..];
        let digits = after.bytes().take_while(u8::is_ascii_digit).count();
        let mapped = (whole_word && after[digits..].starts_with(']'))
            .then(|| after[..digits].parse::<usize>().ok().and_then(|i| order.get(i)))
            .flatten();
        out.push_str(&rest[..at + pattern.len()]);
        match mapped {
            Some(original) => {
                out.push_str(&original.to_string());
                rest = &after[digits..];
            }
            None => rest = after,
        }
    }
    out.push_str(rest);
    out
}

/// Whether two observations ask for the same allocations: the same clusters in the same sync state, and the
/// same Services asking for the same things (endpoints and status aside). Unchanged Services are the same
/// allocation (`Arc`), so this is cheap.
fn same_requests(a: &[ObservedCluster], b: &[ObservedCluster]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| {
            x.name == y.name
                && x.synced == y.synced
                && x.ingresses.is_empty() == y.ingresses.is_empty()
                && x.services.len() == y.services.len()
                && x.services.iter().zip(&y.services).all(|(s, t)| Arc::ptr_eq(s, t) || s.same_request(t))
        })
}

fn orphan_errors(config: &Config, orphans: &[&Allocation]) -> ValidationErrors {
    let errors = orphans
        .iter()
        .map(|a| match config.pools.iter().position(|p| p.name == a.pool) {
            Some(i) => FieldError {
                field: format!("pools[{i}].addresses"),
                message: format!(
                    "would no longer contain {}, allocated to {}; move or delete that first",
                    a.address, a.owner
                ),
            },
            None => FieldError {
                field: "pools".into(),
                message: format!(
                    "pool '{}' still holds {}, allocated to {}; move or delete that first",
                    a.pool, a.address, a.owner
                ),
            },
        })
        .collect();
    ValidationErrors(errors)
}

#[cfg(test)]
mod tests {
    use super::*;
    use model::config::{Announce, Pool, Protocol, Service, ServicePort};

    fn meta() -> ChangeMeta {
        ChangeMeta { author: "t".into(), source: Source::Api, message: String::new() }
    }

    fn pool(name: &str, cidr: &str) -> Pool {
        Pool::new(name, &[cidr])
    }

    fn service(name: &str) -> Service {
        Service {
            name: name.into(),
            pool: None,
            addresses: vec![],
            ports: vec![ServicePort { name: None, port: 80, protocol: Protocol::Tcp, target_port: None }],
            backends: vec![],
            announce: Announce::default(),
            proxy: Default::default(),
        }
    }

    async fn control() -> (tempfile::TempDir, Control) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("c.db")).await.unwrap();
        (dir, Control::start(store, Pipeline::new(), Sealer::ephemeral()).await.unwrap())
    }

    #[tokio::test]
    async fn changes_allocate_and_refuse_orphaning() {
        let (_dir, control) = control().await;
        assert_eq!(control.current().revision, 1);
        control
            .change(meta(), ChangeOptions::default(), |c| {
                c.pools.push(pool("p", "10.0.0.0/30"));
                c.services.push(service("web"));
                Ok(())
            })
            .await
            .unwrap();
        let cur = control.current();
        assert_eq!(cur.revision, 2);
        assert_eq!(cur.allocations[0].address.to_string(), "10.0.0.0");
        let err = control
            .change(meta(), ChangeOptions::default(), |c| {
                c.pools[0].addresses = vec!["10.0.1.0/30".into()];
                Ok(())
            })
            .await
            .unwrap_err();
        assert!(matches!(err, ChangeError::InUse(_)), "{err}");
        let err = control
            .change(meta(), ChangeOptions::default(), |c| {
                c.pools.clear();
                Ok(())
            })
            .await
            .unwrap_err();
        assert!(matches!(err, ChangeError::InUse(_) | ChangeError::Invalid(_)), "{err}");
        // Unchanged config writes nothing.
        let outcome = control.change(meta(), ChangeOptions::default(), |_| Ok(())).await.unwrap();
        assert!(outcome.revision.is_none());
        let rolled = control.rollback(meta(), 1, ChangeOptions::default()).await.unwrap();
        assert_eq!(rolled.revision.unwrap().rollback_of, Some(1));
        assert!(control.current().allocations.is_empty());
        // Meanwhile another service holds web's old address; when web comes back by rollback and that service
        // goes, web gets its old VIP again.
        control
            .change(meta(), ChangeOptions::default(), |c| {
                c.pools.push(pool("p", "10.0.0.0/30"));
                c.services.push(service("zzz"));
                c.services.push(Service { addresses: vec!["10.0.0.1".into()], ..service("other") });
                Ok(())
            })
            .await
            .unwrap();
        control.rollback(meta(), 2, ChangeOptions::default()).await.unwrap();
        let cur = control.current();
        assert_eq!(cur.allocations.len(), 1);
        assert_eq!(cur.allocations[0].address.to_string(), "10.0.0.0", "web got its VIP back");
    }

    #[test]
    fn indices_are_remapped_as_whole_words() {
        let order = [2, 0, 1];
        assert_eq!(remap_indices("pools[0].addresses[1]", "pools", &order), "pools[2].addresses[1]");
        assert_eq!(
            remap_indices("'a' is already used by pools[1]", "pools", &order),
            "'a' is already used by pools[0]"
        );
        assert_eq!(remap_indices("xpools[1] pools[7] pools[x]", "pools", &order), "xpools[1] pools[7] pools[x]");
    }

    #[tokio::test]
    async fn errors_name_objects_where_the_document_has_them() {
        let (_dir, control) = control().await;
        let err = control
            .change(meta(), ChangeOptions::default(), |c| {
                c.pools = vec![pool("z", "10.0.0.0/30"), pool("a", "10.0.1.0/33")];
                c.services = vec![service("y"), service("b")];
                c.services[0].ports[0].port = 0;
                Ok(())
            })
            .await
            .unwrap_err();
        let ChangeError::Invalid(errors) = err else { panic!("{err}") };
        let fields: Vec<&str> = errors.0.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["pools[1].addresses[0]", "services[0].ports[0].port"], "{errors}");
    }

    fn observed_service(cluster: &str, name: &str) -> model::observed::ObservedService {
        model::observed::ObservedService {
            cluster: cluster.into(),
            namespace: "ns".into(),
            name: name.into(),
            ports: vec![model::observed::ObservedPort { name: None, port: 80, protocol: Protocol::Tcp }],
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn observed_services_get_vips_without_revisions_and_keep_them_while_unsynced() {
        let (_dir, control) = control().await;
        let kubeconfig = "current-context: c\nclusters: [{name: c, cluster: {server: 'https://k:6443'}}]\n\
                          users: [{name: u, user: {token: t}}]\ncontexts: [{name: c, context: {cluster: c, user: u}}]\n";
        control
            .change(meta(), ChangeOptions::default(), |c| {
                c.pools.push(pool("p", "10.0.0.0/30"));
                c.clusters.push(model::config::Cluster {
                    name: "k".into(),
                    kubeconfig: Some(model::config::Secret(kubeconfig.into())),
                    context: None,
                    server: None,
                    ca: None,
                    token: None,
                    enabled: true,
                    lb_class: "portico.io/lb".into(),
                    default_class: false,
                    ingress_class_controller: "portico.io/ingress".into(),
                });
                Ok(())
            })
            .await
            .unwrap();
        let revision = control.current().revision;
        let synced = |services| ObservedCluster { name: "k".into(), synced: true, services, ingresses: vec![] };
        control
            .set_observed(vec![synced((0..5).map(|i| Arc::new(observed_service("k", &format!("s{i}")))).collect())])
            .await
            .unwrap();
        let cur = control.current();
        assert_eq!(cur.revision, revision, "observed state makes no revision");
        assert_eq!(cur.allocations.len(), 4);
        assert_eq!(cur.failures.len(), 1, "the fifth Service finds the pool exhausted");
        assert_eq!(control.store().allocations().await.unwrap().len(), 4, "persisted");
        // Not synced (e.g. after a restart): nothing is released even though no Service is listed.
        control
            .set_observed(vec![ObservedCluster { name: "k".into(), synced: false, ..Default::default() }])
            .await
            .unwrap();
        assert_eq!(control.current().allocations.len(), 4);
        // A config change while the cluster is silent keeps its allocations too.
        control.set_observed(vec![]).await.unwrap();
        control
            .change(meta(), ChangeOptions::default(), |c| {
                c.settings.hostname = "edge".into();
                Ok(())
            })
            .await
            .unwrap();
        assert_eq!(control.current().allocations.len(), 4);
        // A restart while the cluster is unreachable serves its last known Services with their VIPs (saved in
        // the background, and at shutdown).
        control.save_last_known().await;
        let store = control.store().clone();
        let pipeline = Pipeline::new();
        let again = Control::start(store, pipeline.clone(), control.inner.sealer.clone()).await.unwrap();
        assert_eq!(again.current().allocations.len(), 4);
        let snapshot = pipeline.latest();
        let served: Vec<_> = snapshot.services.iter().filter(|s| !s.vips.is_empty()).map(|s| s.name.as_str()).collect();
        assert_eq!(served, ["k/ns/s0", "k/ns/s1", "k/ns/s2", "k/ns/s3"], "{snapshot:?}");
        again.set_observed(vec![ObservedCluster { name: "k".into(), ..Default::default() }]).await.unwrap();
        assert_eq!(again.current().allocations.len(), 4, "not yet listed: kept");
        // Removing the cluster releases its allocations.
        control
            .change(meta(), ChangeOptions::default(), |c| {
                c.clusters.clear();
                Ok(())
            })
            .await
            .unwrap();
        assert!(control.current().allocations.is_empty());
    }

    #[tokio::test]
    async fn unconfirmed_change_reverts() {
        let (_dir, control) = control().await;
        let options = ChangeOptions { confirm_within: Some(Duration::from_millis(200)), ..ChangeOptions::default() };
        control
            .change(meta(), options, |c| {
                c.pools.push(pool("p", "10.0.0.0/30"));
                Ok(())
            })
            .await
            .unwrap();
        let blocked = control.change(meta(), ChangeOptions::default(), |_| Ok(())).await.unwrap_err();
        assert!(matches!(blocked, ChangeError::ConfirmPending { .. }));
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(20)).await;
            if control.current().revision == 3 {
                break;
            }
        }
        let cur = control.current();
        assert_eq!(cur.revision, 3);
        assert!(cur.config.pools.is_empty());
        assert!(control.pending_confirm().await.unwrap().is_none());
        assert!(matches!(control.confirm().await, Err(ChangeError::NothingToConfirm)));
    }
}
