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
use model::snapshot::{Origin, Snapshot};
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
        Writer { instance, cluster, client, memory }
    }

    /// Brings the cluster's statuses in line with the snapshot. Returns the errors met (it goes on after one).
    pub async fn apply(&mut self, snapshot: &Snapshot, state: &Arc<Mutex<ClusterState>>) -> Vec<String> {
        let memory = self.memory.clone();
        let mut guard = memory.lock().await;
        let m = &mut *guard;
        let mut errors = Vec::new();
        // What is ours in this snapshot: key → (VIPs, allocation error).
        let mut desired: HashMap<Key, (Vec<IpAddr>, Option<String>)> = HashMap::new();
        let mut warnings: HashMap<Key, String> = HashMap::new();
        for s in &snapshot.services {
            if let Origin::Cluster { cluster, namespace, name } = &s.origin
                && *cluster == self.cluster
            {
                desired.insert((namespace.clone(), name.clone()), (s.vips.clone(), s.allocation_error.clone()));
                if !s.warnings.is_empty() {
                    warnings.insert((namespace.clone(), name.clone()), s.warnings.join("; "));
                }
            }
        }
        // Under the lock only to copy what is needed; requests are made without it.
        let (current, ingresses): Observed = {
            let Ok(s) = state.lock() else { return vec!["cluster state lock poisoned".into()] };
            let current = s.services.iter().map(|(k, svc)| (k.clone(), service_status_ips(svc))).collect();
            let ingresses = s.ingresses.iter().map(|(k, ing)| (k.clone(), ingress_status_ips(ing))).collect();
            (current, ingresses)
        };

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
                Err(e) => errors.push(format!("status of {}/{}: {e}", key.0, key.1)),
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
                (Err(e), _) => errors.push(format!("event for {}/{}: {e}", key.0, key.1)),
            }
        }
        m.warned.retain(|k, _| warnings.contains_key(k));

        // Services that were ours and no longer are (class or type changed): take our VIPs off their status.
        let released: Vec<Key> = m.written.keys().filter(|k| !desired.contains_key(*k)).cloned().collect();
        for key in released {
            m.announced.remove(&key);
            let still_there = current.get(&key);
            let ours_before = m.written.get(&key).cloned().unwrap_or_default();
            if let Some(now) = still_there
                && !now.is_empty()
                && now.iter().all(|ip| ours_before.contains(ip))
                && let Err(e) = self.patch_service(&key, &[]).await
            {
                errors.push(format!("clearing status of {}/{}: {e}", key.0, key.1));
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

/// What an IPAllocated event for these VIPs announces (to publish each state once).
fn allocated_state(vips: &[IpAddr]) -> String {
    let list: Vec<String> = vips.iter().map(ToString::to_string).collect();
    format!("allocated:{}", list.join(","))
}

fn truncate(s: &str) -> String {
    // Event notes are limited to 1 KiB by the API server.
    s.chars().take(1000).collect()
}
