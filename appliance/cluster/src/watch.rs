//! The watchers of one cluster: one kube-runtime watcher per kind, relisting on `410 Gone` and after errors
//! (with a backoff), and keeping the last known objects until a complete fresh list replaces them.

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use kube::runtime::watcher;
use kube::{Api, Resource};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use time::OffsetDateTime;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub type Key = (String, String);

/// Everything seen of one cluster.
#[derive(Debug, Default)]
pub struct ClusterState {
    pub services: BTreeMap<Key, Service>,
    pub slices: BTreeMap<Key, EndpointSlice>,
    pub ingresses: BTreeMap<Key, Ingress>,
    pub classes: BTreeMap<Key, IngressClass>,
    pub nodes: BTreeMap<Key, Node>,
    pub secrets: BTreeMap<Key, Secret>,
    /// Kinds whose initial list has completed.
    pub synced: BTreeSet<&'static str>,
    /// Kinds whose watch is failing right now.
    pub failing: BTreeSet<&'static str>,
    pub errors: BTreeMap<String, String>,
    pub connected: bool,
    pub since: Option<OffsetDateTime>,
    pub last_sync: Option<OffsetDateTime>,
    /// Ingresses found to be ours at the last observation (their status gets the Ingress VIP).
    pub claimed_ingresses: std::collections::HashSet<Key>,
    /// The observation of each claimed Service, kept until its Service or EndpointSlices change.
    pub observed_services: BTreeMap<Key, Arc<model::observed::ObservedService>>,
    /// Services to observe again, and whether everything must be (after a relist, or new rules).
    pub dirty: std::collections::HashSet<Key>,
    pub all_dirty: bool,
    /// The claiming rules the observations were made with.
    pub observed_rules: Option<(String, bool)>,
    /// The EndpointSlices of each Service (by its `kubernetes.io/service-name` label), so that observing one
    /// Service again does not walk every slice of the cluster.
    pub slices_by_service: std::collections::HashMap<Key, BTreeSet<Key>>,
}

pub const KINDS: [&str; 6] = ["services", "endpointslices", "ingresses", "ingressclasses", "nodes", "secrets"];

impl ClusterState {
    /// The objects, for a connection that takes over from this one: kept until its own fresh lists replace
    /// them kind by kind (nothing served disappears while it reconnects).
    pub fn take_objects(&mut self) -> ClusterState {
        ClusterState {
            services: std::mem::take(&mut self.services),
            slices: std::mem::take(&mut self.slices),
            ingresses: std::mem::take(&mut self.ingresses),
            classes: std::mem::take(&mut self.classes),
            nodes: std::mem::take(&mut self.nodes),
            secrets: std::mem::take(&mut self.secrets),
            ..ClusterState::default()
        }
    }

    fn update_connected(&mut self) {
        let connected = self.failing.is_empty() && self.synced.len() == KINDS.len();
        if connected != self.connected {
            self.connected = connected;
            self.since = Some(OffsetDateTime::now_utc());
        }
    }

    pub fn count(&self, kind: &str) -> usize {
        match kind {
            "services" => self.services.len(),
            "endpointslices" => self.slices.len(),
            "ingresses" => self.ingresses.len(),
            "ingressclasses" => self.classes.len(),
            "nodes" => self.nodes.len(),
            "secrets" => self.secrets.len(),
            _ => 0,
        }
    }
}

/// A kind the appliance watches, and where its objects are kept.
pub trait Watched:
    Resource<DynamicType = ()> + Clone + Debug + serde::de::DeserializeOwned + Send + Sync + 'static
{
    const KIND: &'static str;
    fn map(state: &mut ClusterState) -> &mut BTreeMap<Key, Self>;
    /// The Service whose observation an object of this kind feeds, if any.
    fn feeds(_object: &Self) -> Option<Key> {
        None
    }
    /// Drops the parts of the object the appliance never reads.
    fn slim(_object: &mut Self) {}
    /// A field selector, to watch only what is needed.
    fn fields() -> Option<&'static str> {
        None
    }
    /// Keeps indexes over this kind current after one object changed.
    fn reindex(_state: &mut ClusterState, _key: &Key, _old: Option<&Self>, _new: Option<&Self>) {}
    /// Rebuilds indexes over this kind after a fresh list replaced every object.
    fn reindex_all(_state: &mut ClusterState) {}
}

macro_rules! watched {
    ($ty:ty, $kind:literal, $field:ident) => {
        impl Watched for $ty {
            const KIND: &'static str = $kind;
            fn map(state: &mut ClusterState) -> &mut BTreeMap<Key, Self> {
                &mut state.$field
            }
        }
    };
}

impl Watched for Service {
    const KIND: &'static str = "services";
    fn map(state: &mut ClusterState) -> &mut BTreeMap<Key, Self> {
        &mut state.services
    }
    fn slim(object: &mut Self) {
        // Only our own annotations are read (labels are: pools select Services by them).
        if let Some(annotations) = object.metadata.annotations.as_mut() {
            annotations.retain(|k, _| k.starts_with("portico.io/"));
        }
    }
    fn feeds(object: &Self) -> Option<Key> {
        Some(key_of(object))
    }
}

impl Watched for EndpointSlice {
    const KIND: &'static str = "endpointslices";
    fn map(state: &mut ClusterState) -> &mut BTreeMap<Key, Self> {
        &mut state.slices
    }
    fn slim(object: &mut Self) {
        // Of the metadata only the Service it belongs to is read; controllers' annotations and owner references
        // are kept for nothing otherwise.
        let meta = &mut object.metadata;
        meta.annotations = None;
        meta.owner_references = None;
        if let Some(labels) = meta.labels.as_mut() {
            labels.retain(|k, _| k == "kubernetes.io/service-name");
        }
        // A targetRef (the Pod) per endpoint is several strings each; hints and hostnames are unused.
        for e in &mut object.endpoints {
            e.target_ref = None;
            e.hints = None;
            e.hostname = None;
            e.deprecated_topology = None;
        }
    }
    fn feeds(object: &Self) -> Option<Key> {
        let service = object.metadata.labels.as_ref()?.get("kubernetes.io/service-name")?;
        Some((object.metadata.namespace.clone().unwrap_or_default(), service.clone()))
    }
    fn reindex(state: &mut ClusterState, key: &Key, old: Option<&Self>, new: Option<&Self>) {
        if let Some(service) = old.and_then(Self::feeds)
            && let Some(set) = state.slices_by_service.get_mut(&service)
        {
            set.remove(key);
            if set.is_empty() {
                state.slices_by_service.remove(&service);
            }
        }
        if let Some(service) = new.and_then(Self::feeds) {
            state.slices_by_service.entry(service).or_default().insert(key.clone());
        }
    }
    fn reindex_all(state: &mut ClusterState) {
        let mut index: std::collections::HashMap<Key, BTreeSet<Key>> = std::collections::HashMap::new();
        for (key, slice) in &state.slices {
            if let Some(service) = Self::feeds(slice) {
                index.entry(service).or_default().insert(key.clone());
            }
        }
        state.slices_by_service = index;
    }
}

watched!(Ingress, "ingresses", ingresses);
watched!(IngressClass, "ingressclasses", classes);
impl Watched for Node {
    const KIND: &'static str = "nodes";
    fn map(state: &mut ClusterState) -> &mut BTreeMap<Key, Self> {
        &mut state.nodes
    }
    fn slim(object: &mut Self) {
        // The image list of a node runs to dozens of entries and is of no use here.
        if let Some(status) = object.status.as_mut() {
            status.images = None;
        }
    }
}

impl Watched for Secret {
    const KIND: &'static str = "secrets";
    fn map(state: &mut ClusterState) -> &mut BTreeMap<Key, Self> {
        &mut state.secrets
    }
    fn fields() -> Option<&'static str> {
        // Only TLS certificates (for Ingress TLS); never the cluster's other secrets.
        Some("type=kubernetes.io/tls")
    }
}

fn key_of<K: Resource>(o: &K) -> Key {
    (o.meta().namespace.clone().unwrap_or_default(), o.meta().name.clone().unwrap_or_default())
}

/// The wait before starting over after a failure: doubling from the first to the last, back to the first after
/// a complete list.
const FIRST_RETRY: Duration = Duration::from_millis(500);
const LAST_RETRY: Duration = Duration::from_secs(30);

/// Watches one kind until cancelled, keeping `state` current and poking `changed` on every change.
///
/// After a failure the watcher starts over with a fresh list (after a backoff): a watch resumed from its last
/// version says nothing until something changes, so only a complete list tells that a quiet kind is back — and
/// it is the fresh list that may delete what was kept while the cluster was unreachable.
pub async fn watch_kind<K: Watched>(
    cluster: String,
    client: kube::Client,
    state: Arc<Mutex<ClusterState>>,
    changed: Arc<Notify>,
    cancel: CancellationToken,
) {
    let api: Api<K> = Api::all(client);
    let mut config = watcher::Config::default();
    if let Some(fields) = K::fields() {
        config = config.fields(fields);
    }
    let mut retry = FIRST_RETRY;
    loop {
        let stream = watcher(api.clone(), config.clone());
        futures::pin_mut!(stream);
        let mut buffer: Option<BTreeMap<Key, K>> = None;
        let expired = loop {
            let item = tokio::select! {
                () = cancel.cancelled() => return,
                item = stream.next() => item,
            };
            let Some(mut item) = item else { return };
            // Keep only what the appliance reads: managedFields, kubectl's last-applied copy and the like are often
            // the largest part of an object.
            if let Ok(event) = item.as_mut() {
                match event {
                    watcher::Event::InitApply(o) | watcher::Event::Apply(o) | watcher::Event::Delete(o) => {
                        let meta = o.meta_mut();
                        meta.managed_fields = None;
                        if let Some(annotations) = meta.annotations.as_mut() {
                            annotations.remove("kubectl.kubernetes.io/last-applied-configuration");
                        }
                        K::slim(o);
                    }
                    watcher::Event::Init | watcher::Event::InitDone => {}
                }
            }
            let Ok(mut s) = state.lock() else { return };
            let failed = match item {
                Ok(event) => {
                    // `Init` comes before any request: only what follows a successful request is a recovery.
                    if !matches!(event, watcher::Event::Init) && s.failing.remove(K::KIND) {
                        s.errors.remove(K::KIND);
                        tracing::info!(cluster, kind = K::KIND, "watch recovered");
                    }
                    match event {
                        watcher::Event::Init => buffer = Some(BTreeMap::new()),
                        watcher::Event::InitApply(o) => {
                            if let Some(b) = buffer.as_mut() {
                                b.insert(key_of(&o), o);
                            }
                        }
                        watcher::Event::InitDone => {
                            // Only a complete fresh list replaces what is known (deletions included).
                            if let Some(b) = buffer.take() {
                                *K::map(&mut s) = b;
                                K::reindex_all(&mut s);
                                s.all_dirty = true;
                            }
                            s.synced.insert(K::KIND);
                            if s.synced.len() == KINDS.len() {
                                s.last_sync = Some(OffsetDateTime::now_utc());
                            }
                            retry = FIRST_RETRY;
                        }
                        watcher::Event::Apply(o) => {
                            let key = key_of(&o);
                            let old = K::map(&mut s).remove(&key);
                            K::reindex(&mut s, &key, old.as_ref(), Some(&o));
                            for fed in old.iter().chain(std::iter::once(&o)).filter_map(K::feeds) {
                                s.dirty.insert(fed);
                            }
                            K::map(&mut s).insert(key, o);
                        }
                        watcher::Event::Delete(o) => {
                            let key = key_of(&o);
                            let old = K::map(&mut s).remove(&key);
                            K::reindex(&mut s, &key, old.as_ref(), None);
                            for fed in old.iter().chain(std::iter::once(&o)).filter_map(K::feeds) {
                                s.dirty.insert(fed);
                            }
                        }
                    }
                    None
                }
                // The version watched from is gone (compaction, a restored etcd): list again at once.
                Err(watcher::Error::WatchError(status)) if status.code == 410 => Some(true),
                Err(e) => {
                    if s.failing.insert(K::KIND) {
                        tracing::warn!(cluster, kind = K::KIND, error = %e, "watch failing; keeping the last known state");
                    }
                    s.errors.insert(K::KIND.to_string(), e.to_string());
                    Some(false)
                }
            };
            s.update_connected();
            drop(s);
            changed.notify_one();
            if let Some(expired) = failed {
                break expired;
            }
        };
        if !expired {
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(retry) => {}
            }
            retry = (retry * 2).min(LAST_RETRY);
        }
    }
}
