//! What connected clusters say: the Services and Ingresses that are ours, with their endpoints, already
//! filtered and interpreted by cluster sync. Never part of the configuration history.

use crate::addr::Family;
use crate::config::Protocol;
use crate::ipam::{Families, Request, Scope, Sharing};
use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

/// Everything one cluster says.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ObservedCluster {
    pub name: String,
    /// The Services have been listed completely at least once since the appliance started. Until then the
    /// cluster's existing allocations are kept as they are (a restart re-asserts, never reallocates).
    pub synced: bool,
    /// Shared: an unchanged Service is the same allocation from one observation to the next.
    pub services: Vec<Arc<ObservedService>>,
    pub ingresses: Vec<ObservedIngress>,
}

/// A LoadBalancer Service that is ours.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ObservedService {
    pub cluster: String,
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// RFC 3339 creation time: the older Service wins a contested address.
    pub created: String,
    pub labels: BTreeMap<String, String>,
    /// `portico.io/pool`
    pub pool: Option<String>,
    /// `portico.io/load-balancer-ips`, or the deprecated `spec.loadBalancerIP`.
    pub addresses: Vec<IpAddr>,
    /// `portico.io/sharing-key`
    pub sharing_key: Option<String>,
    pub families: Families,
    pub ports: Vec<ObservedPort>,
    pub endpoints: Vec<ObservedEndpoint>,
    /// The addresses in `status.loadBalancer.ingress` now, to never patch an unchanged status.
    pub status: Vec<IpAddr>,
    /// How the proxy serves it: `sessionAffinity` and the `portico.io/proxy` annotation; `None` for the defaults.
    pub proxy: Option<Arc<crate::proxy::ProxyPolicy>>,
    /// Annotations that could not be read; reported as Warning events.
    pub problems: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ObservedPort {
    pub name: Option<String>,
    pub port: u16,
    pub protocol: Protocol,
}

/// The ports of an EndpointSlice: (port name, port number, protocol). Shared by every endpoint of the slice
/// and by the backends made from them, instead of a copy for each of tens of thousands of endpoints.
pub type EndpointPorts = std::sync::Arc<[(Option<String>, u16, Protocol)]>;

/// One endpoint of an EndpointSlice of the Service.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ObservedEndpoint {
    pub ip: IpAddr,
    /// (port name, port number, protocol), matched to the Service's ports by name.
    pub ports: EndpointPorts,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    pub zone: Option<String>,
    pub node: Option<String>,
}

/// An Ingress that is ours.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ObservedIngress {
    pub cluster: String,
    pub namespace: String,
    pub name: String,
    pub status: Vec<IpAddr>,
    pub rules: Vec<IngressRule>,
    /// (hosts, TLS Secret name in the Ingress's namespace)
    pub tls: Vec<(Vec<String>, String)>,
}

/// One path of an Ingress rule (the default backend is a rule without host and path).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct IngressRule {
    pub host: Option<String>,
    pub path: Option<String>,
    /// `Exact`, `Prefix` or `ImplementationSpecific`.
    pub path_type: String,
    pub service: String,
    pub port: ServicePortRef,
}

/// A backend Service port, by number or by name.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ServicePortRef {
    Number(u16),
    Name(String),
}

impl ObservedService {
    pub fn owner(&self) -> String {
        cluster_owner(&self.cluster, &self.namespace, &self.name)
    }

    /// Whether `other` asks for the same allocation as this (endpoints, status and problems aside).
    pub fn same_request(&self, other: &ObservedService) -> bool {
        self.cluster == other.cluster
            && self.namespace == other.namespace
            && self.name == other.name
            && self.created == other.created
            && self.labels == other.labels
            && self.pool == other.pool
            && self.addresses == other.addresses
            && self.sharing_key == other.sharing_key
            && self.families == other.families
            && self.ports == other.ports
    }

    pub fn request(&self) -> Request {
        Request {
            owner: self.owner(),
            field: format!("{}/{}/{}", self.cluster, self.namespace, self.name),
            pool: self.pool.clone(),
            addresses: self.addresses.clone(),
            families: self.families,
            scope: Some(Scope {
                cluster: self.cluster.clone(),
                namespace: self.namespace.clone(),
                labels: self.labels.clone(),
            }),
            sharing: self.sharing_key.as_ref().map(|key| Sharing {
                key: key.clone(),
                ports: self.ports.iter().map(|p| (p.protocol, p.port)).collect(),
            }),
        }
    }
}

/// The owner name of a cluster Service's allocations.
pub fn cluster_owner(cluster: &str, namespace: &str, name: &str) -> String {
    format!("cluster/{cluster}/{namespace}/{name}")
}

/// The owner name of the VIP that a cluster's Ingresses are served on.
pub fn ingress_owner(cluster: &str) -> String {
    format!("ingress/{cluster}")
}

/// Whether an allocation owner belongs to cluster `name` (its Services or its Ingress VIP).
pub fn owned_by_cluster(owner: &str, name: &str) -> bool {
    owner.strip_prefix("cluster/").and_then(|r| r.strip_prefix(name)).is_some_and(|r| r.starts_with('/'))
        || owner.strip_prefix("ingress/") == Some(name)
}

/// The allocation requests of observed state: each claimed Service (except members of a global service,
/// which use its VIP), oldest first so the first to ask wins; the Ingress VIP of each cluster with Ingresses;
/// and, for clusters not yet synced, their current allocations as they are.
pub fn observed_requests(
    clusters: &[ObservedCluster],
    global_members: &HashSet<(String, String, String)>,
    current: &[crate::ipam::Allocation],
) -> Vec<Request> {
    let mut services: Vec<&ObservedService> = clusters
        .iter()
        .filter(|c| c.synced)
        .flat_map(|c| c.services.iter().map(|s| &**s))
        .filter(|s| !global_members.contains(&(s.cluster.clone(), s.namespace.clone(), s.name.clone())))
        .collect();
    services.sort_by(|a, b| {
        (&a.created, &a.cluster, &a.namespace, &a.name).cmp(&(&b.created, &b.cluster, &b.namespace, &b.name))
    });
    let mut requests: Vec<Request> = services.iter().map(|s| s.request()).collect();
    for c in clusters.iter().filter(|c| c.synced && !c.ingresses.is_empty()) {
        requests.push(Request {
            owner: ingress_owner(&c.name),
            field: format!("{}/ingress", c.name),
            pool: None,
            addresses: vec![],
            families: Families::Single(Family::Ipv4),
            scope: Some(Scope { cluster: c.name.clone(), namespace: String::new(), labels: BTreeMap::new() }),
            sharing: None,
        });
    }
    let mut pinned: BTreeMap<&str, Vec<IpAddr>> = BTreeMap::new();
    for c in clusters.iter().filter(|c| !c.synced) {
        for a in current.iter().filter(|a| owned_by_cluster(&a.owner, &c.name)) {
            pinned.entry(a.owner.as_str()).or_default().push(a.address);
        }
    }
    for (owner, addresses) in pinned {
        requests.push(Request::simple(owner, owner, None, addresses));
    }
    requests
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipam::Allocation;

    #[test]
    fn owners_and_unsynced_clusters_keep_their_addresses() {
        assert!(owned_by_cluster("cluster/a/ns/x", "a"));
        assert!(!owned_by_cluster("cluster/ab/ns/x", "a"));
        assert!(owned_by_cluster("ingress/a", "a"));
        let current = vec![
            Allocation { address: "10.0.0.1".parse().unwrap(), pool: "p".into(), owner: "cluster/a/ns/x".into() },
            Allocation { address: "10.0.0.2".parse().unwrap(), pool: "p".into(), owner: "cluster/b/ns/y".into() },
        ];
        let clusters = vec![
            ObservedCluster { name: "a".into(), synced: false, ..Default::default() },
            ObservedCluster {
                name: "b".into(),
                synced: true,
                services: vec![Arc::new(ObservedService {
                    cluster: "b".into(),
                    namespace: "ns".into(),
                    name: "z".into(),
                    ..Default::default()
                })],
                ..Default::default()
            },
        ];
        let requests = observed_requests(&clusters, &HashSet::new(), &current);
        let owners: Vec<_> = requests.iter().map(|r| r.owner.as_str()).collect();
        assert_eq!(owners, ["cluster/b/ns/z", "cluster/a/ns/x"], "b/ns/y is gone from a synced cluster");
        assert_eq!(requests[1].addresses, vec!["10.0.0.1".parse::<IpAddr>().unwrap()]);
    }
}
