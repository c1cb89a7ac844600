//! Kubernetes sync: connects to every configured cluster (added and removed at runtime, each with its own
//! tasks and cancel handle), watches Services, EndpointSlices, Ingresses, IngressClasses, Nodes and TLS
//! Secrets, turns what is ours into observed state for the control plane, and writes VIPs back into status.
//!
//! A cluster that becomes unreachable keeps its last known state; nothing is deleted until a complete fresh
//! list after reconnecting says so.

pub mod claim;
pub mod connect;
pub mod watch;
pub mod writeback;

use claim::Rules;
use k8s_openapi::api::authorization::v1::{ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec};
use k8s_openapi::api::core::v1::{Node, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use kube::Api;
use kube::api::PostParams;
use model::cluster::{ClusterStatus, ClusterTest, REQUIRED_PERMISSIONS, permission_name};
use model::config::Cluster;
use model::observed::ObservedCluster;
use model::snapshot::Snapshot;
use model::subsystem::{ApplyError, Report, Subsystem};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, watch as tokio_watch};
use tokio_util::sync::CancellationToken;
use watch::{ClusterState, KINDS, Key, watch_kind};

fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

/// One connected cluster: its configuration, state, and the tasks that serve it.
struct Connection {
    config: Cluster,
    state: Arc<Mutex<ClusterState>>,
    /// Stops the tasks: the cluster is removed, or restarts with a new configuration.
    cancel: CancellationToken,
    /// Cancelled (before `cancel`) when the cluster is removed: take our VIPs off the statuses we wrote. Not on
    /// a restart, where the next connection goes on from the same statuses.
    release: CancellationToken,
    snapshots: tokio_watch::Sender<Option<Arc<Snapshot>>>,
    /// Errors of the last status write-back.
    writeback_errors: Arc<Mutex<Vec<String>>>,
    /// What the status writer remembers, handed to the next connection on a restart.
    memory: writeback::SharedMemory,
}

/// What a restarted connection takes over from the previous one.
#[derive(Default)]
struct Carried {
    /// The last known objects (kept until the new connection's fresh lists replace them).
    state: ClusterState,
    memory: writeback::SharedMemory,
}

#[derive(Default)]
struct Shared {
    connections: Mutex<HashMap<String, Connection>>,
    /// Poked whenever observed state may have changed.
    changed: Arc<Notify>,
}

/// The set of connected clusters. Cheap to clone.
#[derive(Clone, Default)]
pub struct ClusterManager {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for ClusterManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterManager")
    }
}

fn rules(c: &Cluster) -> Rules {
    Rules {
        lb_class: c.lb_class.clone(),
        default_class: c.default_class,
        ingress_controller: c.ingress_class_controller.clone(),
    }
}

/// The Ingresses of a cluster that are ours.
pub(crate) fn claimed_ingresses(state: &Arc<Mutex<ClusterState>>) -> HashSet<Key> {
    // The rules live with the connection; ingress claiming needs them, so it is computed by `observe` and
    // cached in the state's `claimed` set.
    state.lock().map(|s| s.claimed_ingresses.clone()).unwrap_or_default()
}

/// Turns one cluster's state into what the control plane needs.
fn observe(name: &str, rules: &Rules, state: &mut ClusterState) -> ObservedCluster {
    // Only Services whose own object or EndpointSlices changed are observed again; the rest are shared as
    // they were (large clusters change a few Services at a time).
    let rules_key = (rules.lb_class.clone(), rules.default_class);
    if state.observed_rules.as_ref() != Some(&rules_key) {
        state.all_dirty = true;
        state.observed_rules = Some(rules_key);
    }
    let ClusterState { services: objects, slices, observed_services, dirty, all_dirty, slices_by_service, .. } = state;
    let keys: Vec<Key> = if *all_dirty {
        observed_services.clear();
        objects.keys().cloned().collect()
    } else {
        dirty.iter().cloned().collect()
    };
    *all_dirty = false;
    dirty.clear();
    for key in keys {
        match objects.get(&key) {
            Some(svc) if claim::claims_service(svc, rules) => {
                let own: Vec<&EndpointSlice> = slices_by_service
                    .get(&key)
                    .map(|names| names.iter().filter_map(|n| slices.get(n)).collect())
                    .unwrap_or_default();
                observed_services.insert(key, Arc::new(claim::observe_service(name, svc, &own)));
            }
            _ => {
                observed_services.remove(&key);
            }
        }
    }
    let services = state.observed_services.values().cloned().collect();
    let classes: Vec<&IngressClass> = state.classes.values().collect();
    let claimed: Vec<(&Key, &Ingress)> =
        state.ingresses.iter().filter(|(_, ing)| claim::claims_ingress(ing, &classes, rules)).collect();
    let ingresses = claimed.iter().map(|(_, ing)| claim::observe_ingress(name, ing)).collect();
    let claimed_keys = claimed.iter().map(|(k, _)| (*k).clone()).collect();
    state.claimed_ingresses = claimed_keys;
    ObservedCluster {
        name: name.to_string(),
        synced: state.synced.contains("services") && state.synced.contains("endpointslices"),
        services,
        ingresses,
    }
}

impl ClusterManager {
    pub fn new() -> ClusterManager {
        ClusterManager::default()
    }

    /// Poked whenever observed state may have changed; read it with [`ClusterManager::observed`].
    pub fn changed(&self) -> Arc<Notify> {
        self.shared.changed.clone()
    }

    /// What every connected cluster says.
    pub fn observed(&self) -> Vec<ObservedCluster> {
        let Ok(connections) = self.shared.connections.lock() else { return Vec::new() };
        let mut out: Vec<ObservedCluster> = connections
            .iter()
            .filter_map(|(name, c)| {
                let mut state = c.state.lock().ok()?;
                Some(observe(name, &rules(&c.config), &mut state))
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    pub fn status(&self, name: &str) -> Option<ClusterStatus> {
        let connections = self.shared.connections.lock().ok()?;
        let c = connections.get(name)?;
        let mut state = c.state.lock().ok()?;
        let observed = observe(name, &rules(&c.config), &mut state);
        let mut errors: BTreeMap<String, String> = state.errors.clone();
        if let Ok(w) = c.writeback_errors.lock()
            && let Some(first) = w.first()
        {
            errors.insert("status".into(), first.clone());
        }
        Some(ClusterStatus {
            name: name.to_string(),
            enabled: c.config.enabled,
            connected: state.connected,
            since: state.since.map(rfc3339),
            last_sync: state.last_sync.map(rfc3339),
            objects: KINDS.iter().map(|k| (k.to_string(), state.count(k))).collect(),
            claimed_services: observed.services.len(),
            claimed_ingresses: observed.ingresses.len(),
            errors,
        })
    }

    /// Starts, restarts (configuration changed) and stops clusters to match `wanted`.
    pub async fn reconcile(&self, wanted: &[Cluster]) {
        let mut stopped: Vec<(String, Connection)> = Vec::new();
        let mut to_start: Vec<(Cluster, Carried)> = Vec::new();
        if let Ok(mut connections) = self.shared.connections.lock() {
            let names: HashSet<&str> = wanted.iter().map(|c| c.name.as_str()).collect();
            let gone: Vec<String> = connections.keys().filter(|n| !names.contains(n.as_str())).cloned().collect();
            for name in gone {
                if let Some(c) = connections.remove(&name) {
                    stopped.push((name, c));
                }
            }
            for cluster in wanted {
                match connections.get(&cluster.name) {
                    Some(c) if c.config == *cluster => {}
                    Some(_) => {
                        if let Some(c) = connections.remove(&cluster.name) {
                            c.cancel.cancel();
                            let state = c.state.lock().map(|mut s| s.take_objects()).unwrap_or_default();
                            to_start.push((cluster.clone(), Carried { state, memory: c.memory }));
                        }
                    }
                    None => to_start.push((cluster.clone(), Carried::default())),
                }
            }
        }
        // Only a change of connections changes what is observed. (Poking on every call would loop: observed
        // state makes a snapshot, and every snapshot comes back here.)
        let changed = !stopped.is_empty() || !to_start.is_empty();
        for (name, c) in stopped {
            tracing::info!(cluster = %name, "cluster removed; stopping its watchers");
            c.release.cancel();
            c.cancel.cancel();
        }
        for (cluster, carried) in to_start {
            self.start(cluster, carried).await;
        }
        if changed {
            self.shared.changed.notify_one();
        }
    }

    async fn start(&self, cluster: Cluster, carried: Carried) {
        let name = cluster.name.clone();
        let state = Arc::new(Mutex::new(carried.state));
        let memory = carried.memory;
        let cancel = CancellationToken::new();
        let release = CancellationToken::new();
        let (snapshots, snapshot_rx) = tokio_watch::channel(None);
        let writeback_errors = Arc::new(Mutex::new(Vec::new()));
        let changed = self.shared.changed.clone();
        match connect::client(&cluster).await {
            Ok(client) => {
                tracing::info!(cluster = %name, "connecting");
                let spawn = |f: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>| {
                    tokio::spawn(f);
                };
                spawn(Box::pin(watch_kind::<Service>(
                    name.clone(),
                    client.clone(),
                    state.clone(),
                    changed.clone(),
                    cancel.clone(),
                )));
                spawn(Box::pin(watch_kind::<EndpointSlice>(
                    name.clone(),
                    client.clone(),
                    state.clone(),
                    changed.clone(),
                    cancel.clone(),
                )));
                spawn(Box::pin(watch_kind::<Ingress>(
                    name.clone(),
                    client.clone(),
                    state.clone(),
                    changed.clone(),
                    cancel.clone(),
                )));
                spawn(Box::pin(watch_kind::<IngressClass>(
                    name.clone(),
                    client.clone(),
                    state.clone(),
                    changed.clone(),
                    cancel.clone(),
                )));
                spawn(Box::pin(watch_kind::<Node>(
                    name.clone(),
                    client.clone(),
                    state.clone(),
                    changed.clone(),
                    cancel.clone(),
                )));
                spawn(Box::pin(watch_kind::<Secret>(
                    name.clone(),
                    client.clone(),
                    state.clone(),
                    changed.clone(),
                    cancel.clone(),
                )));
                let writer = writeback::Writer::new(name.clone(), client, memory.clone());
                tokio::spawn(write_back(
                    name.clone(),
                    writer,
                    state.clone(),
                    snapshot_rx,
                    writeback_errors.clone(),
                    cancel.clone(),
                    release.clone(),
                ));
            }
            Err(e) => {
                tracing::warn!(cluster = %name, error = %e, "cannot connect");
                if let Ok(mut s) = state.lock() {
                    s.errors.insert("connect".into(), e.to_string());
                }
            }
        }
        if let Ok(mut connections) = self.shared.connections.lock() {
            connections.insert(
                name,
                Connection { config: cluster, state, cancel, release, snapshots, writeback_errors, memory },
            );
        }
    }

    /// Checks that a cluster's API server answers and that its credentials have every permission needed.
    pub async fn test(cluster: &Cluster) -> ClusterTest {
        let mut report = ClusterTest::default();
        let client = match connect::client(cluster).await {
            Ok(c) => c,
            Err(e) => {
                report.error = Some(e.to_string());
                return report;
            }
        };
        match tokio::time::timeout(Duration::from_secs(10), client.apiserver_version()).await {
            Ok(Ok(v)) => {
                report.reachable = true;
                report.version = Some(v.git_version);
            }
            Ok(Err(e)) => {
                report.error = Some(format!("the API server did not answer: {e}"));
                return report;
            }
            Err(_) => {
                report.error = Some("the API server did not answer within 10 s".into());
                return report;
            }
        }
        let api: Api<SelfSubjectAccessReview> = Api::all(client);
        for p in REQUIRED_PERMISSIONS {
            let (verb, group, resource, sub) = *p;
            let review = SelfSubjectAccessReview {
                spec: SelfSubjectAccessReviewSpec {
                    resource_attributes: Some(ResourceAttributes {
                        verb: Some(verb.into()),
                        group: Some(group.into()),
                        resource: Some(resource.into()),
                        subresource: (!sub.is_empty()).then(|| sub.to_string()),
                        ..ResourceAttributes::default()
                    }),
                    ..SelfSubjectAccessReviewSpec::default()
                },
                ..SelfSubjectAccessReview::default()
            };
            let name = permission_name(p);
            report.checked.push(name.clone());
            match api.create(&PostParams::default(), &review).await {
                Ok(answer) if answer.status.as_ref().is_some_and(|s| s.allowed) => {}
                Ok(_) => report.missing.push(name),
                Err(e) => {
                    report.missing.push(name);
                    report.error.get_or_insert_with(|| format!("SelfSubjectAccessReview failed: {e}"));
                }
            }
        }
        report
    }
}

/// The wait before writing again after a failed write: doubling from the first to the last.
const FIRST_REWRITE: Duration = Duration::from_secs(1);
const LAST_REWRITE: Duration = Duration::from_secs(30);

async fn write_back(
    name: String,
    mut writer: writeback::Writer,
    state: Arc<Mutex<ClusterState>>,
    mut snapshots: tokio_watch::Receiver<Option<Arc<Snapshot>>>,
    errors: Arc<Mutex<Vec<String>>>,
    cancel: CancellationToken,
    release: CancellationToken,
) {
    // A failed write is tried again even when nothing else changes.
    let mut retry: Option<(tokio::time::Instant, Duration)> = None;
    loop {
        let retry_at = retry.map(|(at, _)| at);
        tokio::select! {
            biased;
            () = cancel.cancelled() => break,
            changed = snapshots.changed() => if changed.is_err() { break },
            () = async { if let Some(at) = retry_at { tokio::time::sleep_until(at).await } }, if retry_at.is_some() => {}
        }
        let Some(snapshot) = snapshots.borrow_and_update().clone() else { continue };
        let synced = state.lock().map(|s| s.synced.contains("services")).unwrap_or(false);
        if !synced {
            continue;
        }
        let found = tokio::select! {
            biased;
            () = cancel.cancelled() => break,
            found = writer.apply(&snapshot, &state) => found,
        };
        for e in &found {
            tracing::warn!(cluster = %name, error = %e, "status write-back");
        }
        retry = if found.is_empty() {
            None
        } else {
            let wait = retry.map(|(_, w)| (w * 2).min(LAST_REWRITE)).unwrap_or(FIRST_REWRITE);
            Some((tokio::time::Instant::now() + wait, wait))
        };
        if let Ok(mut slot) = errors.lock() {
            *slot = found;
        }
    }
    if release.is_cancelled() {
        // Removed from the appliance: take our VIPs off the statuses we wrote, briefly and best-effort.
        let _ = tokio::time::timeout(Duration::from_secs(5), writer.clear_all()).await;
    }
}

/// The subsystem: follows the snapshot's clusters and writes its VIPs back into each cluster.
#[derive(Debug, Clone)]
pub struct ClusterSync {
    manager: ClusterManager,
}

impl ClusterSync {
    pub fn new(manager: ClusterManager) -> ClusterSync {
        ClusterSync { manager }
    }
}

impl Subsystem for ClusterSync {
    fn name(&self) -> &'static str {
        "clusters"
    }

    async fn apply(&mut self, snapshot: Arc<Snapshot>) -> Result<Report, ApplyError> {
        self.manager.reconcile(&snapshot.clusters).await;
        let mut down = Vec::new();
        if let Ok(connections) = self.manager.shared.connections.lock() {
            for (name, c) in connections.iter() {
                c.snapshots.send_replace(Some(snapshot.clone()));
                if !c.state.lock().map(|s| s.connected).unwrap_or(false) {
                    down.push(name.clone());
                }
            }
        }
        down.sort();
        let total = snapshot.clusters.len();
        if down.is_empty() {
            Ok(Report::ok(format!("{total} cluster(s) connected")))
        } else {
            Ok(Report::degraded(format!("not connected: {}", down.join(", "))))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(name: &str, default_class: bool) -> Cluster {
        // No credentials: the connection fails at once, without any network.
        Cluster {
            name: name.into(),
            kubeconfig: None,
            context: None,
            server: None,
            ca: None,
            token: None,
            enabled: true,
            lb_class: model::cluster::DEFAULT_LB_CLASS.into(),
            default_class,
            ingress_class_controller: model::cluster::DEFAULT_INGRESS_CONTROLLER.into(),
        }
    }

    async fn poked(changed: &Notify) -> bool {
        tokio::time::timeout(Duration::from_millis(50), changed.notified()).await.is_ok()
    }

    #[tokio::test]
    async fn reconcile_pokes_only_when_connections_change() {
        let manager = ClusterManager::new();
        let changed = manager.changed();
        manager.reconcile(&[cluster("a", false)]).await;
        assert!(poked(&changed).await, "a cluster started");
        manager.reconcile(&[cluster("a", false)]).await;
        assert!(!poked(&changed).await, "the same configuration again changes nothing");
        manager.reconcile(&[cluster("a", true)]).await;
        assert!(poked(&changed).await, "restarted with a new configuration");
        assert_eq!(manager.status("a").map(|s| s.errors.contains_key("connect")), Some(true));
        manager.reconcile(&[]).await;
        assert!(poked(&changed).await, "removed");
        assert!(manager.status("a").is_none());
        manager.reconcile(&[]).await;
        assert!(!poked(&changed).await);
    }
}
