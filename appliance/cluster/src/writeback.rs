//! Status write-back: the VIPs of our Services and Ingresses go into `status.loadBalancer.ingress` through the
//! status subresource (never when unchanged), and Events tell the Service's owner what happened.

use crate::claim::{ingress_status_ips, service_status_ips};
use crate::watch::{ClusterState, Key};
use futures::StreamExt;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::events::{Event, EventType};
use kube::{Api, Resource};
use model::snapshot::{Origin, ServiceEntry, Snapshot};
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

pub const CONTROLLER: &str = "portico.io/lb-controller";
/// The field manager of our status writes (what `managedFields` shows as their writer).
pub const FIELD_MANAGER: &str = "portico";

fn patch_params() -> PatchParams {
    PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..PatchParams::default() }
}

/// What a cluster's writer remembers between snapshots. It outlives one connection: a cluster reconnecting with
/// a new configuration (rotated credentials, other claiming rules) goes on from here instead of starting over.
#[derive(Debug, Default)]
pub struct Memory {
    /// Patches sent that the watch has not shown back yet (to not repeat one while it catches up).
    pending: HashMap<Key, Vec<IpAddr>>,
    /// The VIPs we put on each Service we manage, to take them off when it stops being ours.
    written: HashMap<Key, Vec<IpAddr>>,
    /// The same for Ingresses.
    ingress_pending: HashMap<Key, Vec<IpAddr>>,
    ingress_written: HashMap<Key, Vec<IpAddr>>,
    /// The last event published per Service, to publish each state once.
    announced: HashMap<Key, String>,
    /// The last warnings published per Service (unreadable annotations, unsupported ports).
    warned: HashMap<Key, String>,
}

/// Memory shared by the successive writers of one cluster (held for the whole of an `apply`).
pub type SharedMemory = Arc<tokio::sync::Mutex<Memory>>;

/// Writes one cluster's statuses and events through one connection.
pub struct Writer {
    cluster: String,
    client: kube::Client,
    /// `reportingInstance` of our Events.
    instance: String,
    memory: SharedMemory,
    /// This cluster's entries of the last snapshot applied (none yet: the first apply looks at everything).
    previous: Option<Vec<Arc<ServiceEntry>>>,
    /// Services whose status or event could not be written, to look at again whatever the next snapshot says.
    retry: HashSet<Key>,
}

/// Copied out of the cluster state: current status VIPs, our Services, and Ingresses with their status VIPs.
type Observed = (HashMap<Key, Vec<IpAddr>>, Vec<(Key, Vec<IpAddr>)>);

/// Status patches and events sent at once.
const IN_FLIGHT: usize = 32;

fn status_patch(ips: &[IpAddr]) -> serde_json::Value {
    let ingress: Vec<serde_json::Value> =
        ips.iter().map(|ip| serde_json::json!({"ip": ip.to_string(), "ipMode": "VIP"})).collect();
    serde_json::json!({"status": {"loadBalancer": {"ingress": ingress}}})
}

/// An Ingress's load balancer status has no `ipMode` (the API server would drop it with a warning).
fn ingress_status_patch(ips: &[IpAddr]) -> serde_json::Value {
    let ingress: Vec<serde_json::Value> = ips.iter().map(|ip| serde_json::json!({"ip": ip.to_string()})).collect();
    serde_json::json!({"status": {"loadBalancer": {"ingress": ingress}}})
}

impl Writer {
    pub fn new(cluster: String, client: kube::Client, memory: SharedMemory) -> Writer {
        let instance = std::env::var("HOSTNAME").unwrap_or_else(|_| "portico".into());
        Writer { instance, cluster, client, memory, previous: None, retry: HashSet::new() }
    }

    /// Brings the cluster's statuses in line with the snapshot. Returns the errors met (it goes on after one).
    pub async fn apply(&mut self, snapshot: &Snapshot, state: &Arc<Mutex<ClusterState>>) -> Vec<String> {
        let memory = self.memory.clone();
        let mut guard = memory.lock().await;
        let m = &mut *guard;
        let mut errors = Vec::new();
        let ours: Vec<Arc<ServiceEntry>> = snapshot
            .services
            .iter()
            .filter(|s| matches!(&s.origin, Origin::Cluster { cluster, .. } if *cluster == self.cluster))
            .cloned()
            .collect();
        // Only Services whose entries changed since the last snapshot (and those to try again) are looked at:
        // an unchanged entry is the same `Arc`, and its status was settled when it was last looked at.
        let (examined, mut released): (Vec<Arc<ServiceEntry>>, Vec<Key>) = match &self.previous {
            None => (ours.clone(), Vec::new()),
            Some(previous) => {
                let (mut changed, removed) = changes(previous, &ours);
                let retry = std::mem::take(&mut self.retry);
                changed.extend(retry.iter().filter_map(|key| find(&ours, &self.cluster, key)));
                let released = removed
                    .into_iter()
                    .chain(retry.into_iter().filter(|k| find(&ours, &self.cluster, k).is_none()))
                    .collect();
                (changed, released)
            }
        };
        // What is ours among them: key → (VIPs, allocation error), and their warnings.
        let mut desired: HashMap<Key, (Vec<IpAddr>, Option<String>)> = HashMap::with_capacity(examined.len());
        let mut warnings: HashMap<Key, String> = HashMap::new();
        for s in &examined {
            if let Origin::Cluster { namespace, name, .. } = &s.origin {
                desired.insert((namespace.clone(), name.clone()), (s.vips.clone(), s.allocation_error.clone()));
                if !s.warnings.is_empty() {
                    warnings.insert((namespace.clone(), name.clone()), s.warnings.join("; "));
                }
            }
        }
        if self.previous.is_none() {
            released = m.written.keys().filter(|k| !desired.contains_key(*k)).cloned().collect();
        }
        // Under the lock only to copy what is needed; requests are made without it.
        let (current, ingresses): Observed = {
            let Ok(s) = state.lock() else { return vec!["cluster state lock poisoned".into()] };
            let current = desired
                .keys()
                .chain(released.iter())
                .filter_map(|k| Some((k.clone(), service_status_ips(s.services.get(k)?))))
                .collect();
            let ingresses = s.ingresses.iter().map(|(k, ing)| (k.clone(), ingress_status_ips(ing))).collect();
            (current, ingresses)
        };
        self.previous = Some(ours);

        // First decide everything, then make the requests many at a time: a first sync of thousands of
        // Services must not wait for each status patch and event in turn.
        let mut patches: Vec<(Key, Vec<IpAddr>)> = Vec::new();
        let mut events: Vec<(Key, String, Event)> = Vec::new();
        for (key, (vips, failure)) in &desired {
            let Some(now) = current.get(key).cloned() else { continue };
            let mut want = vips.clone();
            want.sort();
            let mut have = now.clone();
            have.sort();
            // Found already in place (after a restart of the appliance): it was announced when it was written.
            if failure.is_none() && !want.is_empty() && want == have && !m.written.contains_key(key) {
                m.announced.entry(key.clone()).or_insert_with(|| allocated_state(&want));
            }
            if want == have {
                m.pending.remove(key);
            } else if m.pending.get(key) != Some(&want) {
                patches.push((key.clone(), want.clone()));
            }
            if !want.is_empty() {
                m.written.insert(key.clone(), want.clone());
            }
            let (state, event) = match failure {
                Some(reason) => (
                    format!("failed:{reason}"),
                    Event {
                        type_: EventType::Warning,
                        reason: "AllocationFailed".into(),
                        note: Some(truncate(reason)),
                        action: "Allocate".into(),
                        secondary: None,
                    },
                ),
                None if !want.is_empty() => {
                    let list: Vec<String> = want.iter().map(ToString::to_string).collect();
                    (
                        allocated_state(&want),
                        Event {
                            type_: EventType::Normal,
                            reason: "IPAllocated".into(),
                            note: Some(format!("Assigned IP {}", list.join(", "))),
                            action: "Allocate".into(),
                            secondary: None,
                        },
                    )
                }
                None => continue,
            };
            if m.announced.get(key) != Some(&state) {
                events.push((key.clone(), state, event));
            }
        }
        for (key, text) in &warnings {
            if !current.contains_key(key) {
                continue;
            }
            if m.warned.get(key) == Some(text) {
                continue;
            }
            let event = Event {
                type_: EventType::Warning,
                reason: "InvalidConfiguration".into(),
                note: Some(truncate(text)),
                action: "Allocate".into(),
                secondary: None,
            };
            events.push((key.clone(), format!("warned:{text}"), event));
        }

        let this: &Writer = self;
        let patched: Vec<(Key, Vec<IpAddr>, Result<(), kube::Error>)> = futures::stream::iter(patches)
            .map(|(key, want)| async move {
                let result = this.patch_service(&key, &want).await;
                (key, want, result)
            })
            .buffer_unordered(IN_FLIGHT)
            .collect()
            .await;
        for (key, want, result) in patched {
            match result {
                Ok(()) => {
                    m.pending.insert(key, want);
                }
                Err(e) => {
                    errors.push(format!("status of {}/{}: {e}", key.0, key.1));
                    self.retry.insert(key);
                }
            }
        }
        // References only for the Services that get an event (most snapshots have none to publish).
        let events: Vec<(Key, String, Event, ObjectReference)> = match state.lock() {
            Ok(s) => events
                .into_iter()
                .filter_map(|(k, st, ev)| {
                    let reference = s.services.get(&k)?.object_ref(&());
                    Some((k, st, ev, reference))
                })
                .collect(),
            Err(_) => Vec::new(),
        };
        let this: &Writer = self;
        let published: Vec<(Key, String, Result<(), kube::Error>)> = futures::stream::iter(events)
            .map(|(key, state, event, reference)| async move {
                let result = this.publish(&event, &reference).await;
                (key, state, result)
            })
            .buffer_unordered(IN_FLIGHT)
            .collect()
            .await;
        for (key, state, result) in published {
            match (result, state.strip_prefix("warned:")) {
                (Ok(()), Some(text)) => {
                    m.warned.insert(key, text.to_string());
                }
                (Ok(()), None) => {
                    m.announced.insert(key, state);
                }
                (Err(e), _) => {
                    errors.push(format!("event for {}/{}: {e}", key.0, key.1));
                    self.retry.insert(key);
                }
            }
        }
        for key in desired.keys().chain(released.iter()) {
            if !warnings.contains_key(key) {
                m.warned.remove(key);
            }
        }

        // Services that were ours and no longer are (class or type changed): take our VIPs off their status.
        for key in released {
            if !m.written.contains_key(&key) {
                continue;
            }
            m.announced.remove(&key);
            let still_there = current.get(&key);
            let ours_before = m.written.get(&key).cloned().unwrap_or_default();
            if let Some(now) = still_there
                && !now.is_empty()
                && now.iter().all(|ip| ours_before.contains(ip))
                && let Err(e) = self.patch_service(&key, &[]).await
            {
                errors.push(format!("clearing status of {}/{}: {e}", key.0, key.1));
                self.retry.insert(key);
                continue;
            }
            m.written.remove(&key);
            m.pending.remove(&key);
        }

        // Ingresses that are ours get the cluster's Ingress VIP (again, if someone else changed it); those that
        // no longer are (another class) lose it, when it is still what we wrote.
        let mut vip = snapshot.ingress_vips.get(&self.cluster).cloned().unwrap_or_default();
        vip.sort();
        let claimed = crate::claimed_ingresses(state);
        let present: HashSet<Key> = ingresses.iter().map(|(k, _)| k.clone()).collect();
        for (key, mut have) in ingresses {
            have.sort();
            let want = if claimed.contains(&key) {
                if !vip.is_empty() {
                    m.ingress_written.insert(key.clone(), vip.clone());
                }
                vip.clone()
            } else {
                match m.ingress_written.get(&key) {
                    Some(ours) if !have.is_empty() && have.iter().all(|ip| ours.contains(ip)) => Vec::new(),
                    Some(_) => {
                        m.ingress_written.remove(&key);
                        m.ingress_pending.remove(&key);
                        continue;
                    }
                    None => continue,
                }
            };
            if have == want {
                m.ingress_pending.remove(&key);
                if !claimed.contains(&key) {
                    m.ingress_written.remove(&key);
                }
                continue;
            }
            if m.ingress_pending.get(&key) == Some(&want) {
                continue;
            }
            let api: Api<Ingress> = Api::namespaced(self.client.clone(), &key.0);
            let patch = ingress_status_patch(&want);
            match api.patch_status(&key.1, &patch_params(), &Patch::Merge(&patch)).await {
                Ok(_) => {
                    m.ingress_pending.insert(key.clone(), want);
                }
                Err(e) => errors.push(format!("status of Ingress {}/{}: {e}", key.0, key.1)),
            }
        }
        m.ingress_written.retain(|k, _| present.contains(k));
        m.ingress_pending.retain(|k, _| present.contains(k));
        errors
    }

    /// Publishes an Event (events.k8s.io/v1) about an object. Each state is published once (the writer's
    /// memory says which), so kube's Recorder, which keeps every event it sent for six minutes to count
    /// repeats, is not needed: with thousands of Services its cache dominated a first sync's time and memory.
    async fn publish(&self, event: &Event, regarding: &ObjectReference) -> Result<(), kube::Error> {
        use k8s_openapi::api::events::v1::Event as KubeEvent;
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
        let namespace = regarding.namespace.clone().unwrap_or_else(|| "default".into());
        let name = regarding.name.clone().unwrap_or_default();
        let api: Api<KubeEvent> = Api::namespaced(self.client.clone(), &namespace);
        let object = KubeEvent {
            metadata: ObjectMeta {
                generate_name: Some(format!("{name}.")),
                namespace: Some(namespace),
                ..ObjectMeta::default()
            },
            event_time: Some(MicroTime(k8s_openapi::jiff::Timestamp::now())),
            action: Some(event.action.clone()),
            reason: Some(event.reason.clone()),
            note: event.note.clone(),
            type_: Some(match event.type_ {
                EventType::Normal => "Normal".into(),
                EventType::Warning => "Warning".into(),
            }),
            regarding: Some(regarding.clone()),
            reporting_controller: Some(CONTROLLER.into()),
            reporting_instance: Some(self.instance.clone()),
            ..KubeEvent::default()
        };
        api.create(&PostParams::default(), &object).await?;
        Ok(())
    }

    async fn patch_service(&self, key: &Key, ips: &[IpAddr]) -> Result<(), kube::Error> {
        let api: Api<Service> = Api::namespaced(self.client.clone(), &key.0);
        let patch = status_patch(ips);
        api.patch_status(&key.1, &patch_params(), &Patch::Merge(&patch)).await?;
        tracing::info!(cluster = %self.cluster, namespace = %key.0, service = %key.1, vips = ?ips, "status written");
        Ok(())
    }

    /// Takes our VIPs off every Service and Ingress status we wrote (when the cluster is removed from the
    /// appliance).
    pub async fn clear_all(&mut self) {
        let memory = self.memory.clone();
        let mut m = memory.lock().await;
        let keys: Vec<Key> = m.written.keys().cloned().collect();
        for key in keys {
            if let Err(e) = self.patch_service(&key, &[]).await {
                tracing::warn!(cluster = %self.cluster, namespace = %key.0, service = %key.1, error = %e, "could not clear status");
            }
            m.written.remove(&key);
        }
        let keys: Vec<Key> = m.ingress_written.keys().cloned().collect();
        for key in keys {
            let api: Api<Ingress> = Api::namespaced(self.client.clone(), &key.0);
            let patch = ingress_status_patch(&[]);
            if let Err(e) = api.patch_status(&key.1, &patch_params(), &Patch::Merge(&patch)).await {
                tracing::warn!(cluster = %self.cluster, namespace = %key.0, ingress = %key.1, error = %e, "could not clear status");
            }
            m.ingress_written.remove(&key);
        }
    }
}

/// Entries changed or added from `previous` to `next`, and the keys of those removed; both lists are sorted by
/// name, and an unchanged entry is the same `Arc` in both.
fn changes(previous: &[Arc<ServiceEntry>], next: &[Arc<ServiceEntry>]) -> (Vec<Arc<ServiceEntry>>, Vec<Key>) {
    let (mut changed, mut removed) = (Vec::new(), Vec::new());
    let (mut i, mut j) = (0, 0);
    while i < previous.len() || j < next.len() {
        match (previous.get(i), next.get(j)) {
            (Some(a), Some(b)) if Arc::ptr_eq(a, b) => {
                i += 1;
                j += 1;
            }
            (Some(a), Some(b)) => match a.name.cmp(&b.name) {
                std::cmp::Ordering::Equal => {
                    changed.push(b.clone());
                    i += 1;
                    j += 1;
                }
                std::cmp::Ordering::Less => {
                    removed.extend(key_of_entry(a));
                    i += 1;
                }
                std::cmp::Ordering::Greater => {
                    changed.push(b.clone());
                    j += 1;
                }
            },
            (Some(a), None) => {
                removed.extend(key_of_entry(a));
                i += 1;
            }
            (None, Some(b)) => {
                changed.push(b.clone());
                j += 1;
            }
            (None, None) => break,
        }
    }
    (changed, removed)
}

fn key_of_entry(s: &ServiceEntry) -> Option<Key> {
    match &s.origin {
        Origin::Cluster { namespace, name, .. } => Some((namespace.clone(), name.clone())),
        _ => None,
    }
}

/// The entry of a Service among a cluster's entries (sorted by name).
fn find(entries: &[Arc<ServiceEntry>], cluster: &str, key: &Key) -> Option<Arc<ServiceEntry>> {
    let name = format!("{cluster}/{}/{}", key.0, key.1);
    entries.binary_search_by(|e| e.name.as_str().cmp(&name)).ok().map(|i| entries[i].clone())
}

/// What an IPAllocated event for these VIPs announces (to publish each state once).
fn allocated_state(vips: &[IpAddr]) -> String {
    let list: Vec<String> = vips.iter().map(ToString::to_string).collect();
    format!("allocated:{}", list.join(","))
}

fn truncate(s: &str) -> String {
    // Event notes are limited to 1 KiB by the API server.
    s.chars().take(1000).collect()
}
