//! The compiled, immutable view that every subsystem consumes, and the pure `compile` that makes it.

use crate::addr::IpRange;
use crate::config::{Announce, Config, MAX_WEIGHT, Protocol, Settings};
use crate::ipam::Allocation;
use crate::observed::{ObservedCluster, ObservedService, cluster_owner, ingress_owner};
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

/// Everything the data plane needs, at one generation.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// Increases by one with every compiled snapshot of a running process.
    pub generation: u64,
    /// The configuration revision this snapshot was compiled from.
    pub revision: u64,
    pub settings: Settings,
    pub pools: Vec<PoolEntry>,
    /// Static services (by name), then global services, then cluster Services (by cluster, namespace, name).
    pub services: Vec<ServiceEntry>,
    /// The VIP each cluster's Ingresses are served on.
    pub ingress_vips: BTreeMap<String, Vec<IpAddr>>,
    /// The enabled clusters, with their credentials (cluster sync connects to them).
    pub clusters: Vec<crate::config::Cluster>,
    /// HTTP routes from the clusters' Ingresses that are ours.
    pub routes: Vec<RouteEntry>,
    /// BGP neighbours, enabled or not (the speaker itself is `settings.bgp`).
    pub bgp_peers: Vec<crate::bgp::BgpPeer>,
}

/// One HTTP route: requests for `host` + `path` on the cluster's Ingress VIP go to a Service's endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteEntry {
    pub cluster: String,
    pub namespace: String,
    pub ingress: String,
    pub host: Option<String>,
    pub path: Option<String>,
    pub path_type: String,
    /// The backend: `<cluster>/<namespace>/<service>` as named in `services` (whether or not that Service is a
    /// LoadBalancer of ours, its endpoints are what the route needs).
    pub service: String,
    pub port: crate::observed::ServicePortRef,
    /// The TLS Secret for this host, if the Ingress has one.
    pub tls_secret: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PoolEntry {
    pub name: String,
    pub ranges: Vec<IpRange>,
}

/// Where a service comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    Static,
    /// A global service: one VIP in front of Services of several clusters.
    Global,
    /// A Kubernetes Service (cluster, namespace, name), from cluster sync.
    Cluster {
        cluster: String,
        namespace: String,
        name: String,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServiceEntry {
    /// `web` (static), `global/<name>`, or `<cluster>/<namespace>/<name>`.
    pub name: String,
    pub origin: Origin,
    pub vips: Vec<IpAddr>,
    pub ports: Vec<PortEntry>,
    pub backends: Vec<BackendEntry>,
    pub announce: Announce,
    /// Why the service has no VIP (or only part of what it asked for).
    pub allocation_error: Option<String>,
    /// For a member of a global service: that global service's name (its VIP is the member's).
    pub global: Option<String>,
    /// Problems with what the Service asks for (unreadable annotations, unsupported ports).
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortEntry {
    pub name: Option<String>,
    pub port: u16,
    pub protocol: Protocol,
    pub target_port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendEntry {
    pub ip: IpAddr,
    /// A port of the backend's own for every service port; `None` means each port's `target_port`.
    pub port: Option<u16>,
    /// Ports by service port name (Kubernetes endpoints), taking precedence over `port`.
    pub named_ports: Vec<(Option<String>, u16)>,
    pub weight: u32,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    pub zone: Option<String>,
    pub node: Option<String>,
}

impl BackendEntry {
    fn plain(ip: IpAddr, port: Option<u16>, weight: u32) -> BackendEntry {
        BackendEntry {
            ip,
            port,
            named_ports: Vec::new(),
            weight,
            ready: true,
            serving: true,
            terminating: false,
            zone: None,
            node: None,
        }
    }
}

/// What the world says: the clusters' Services and Ingresses (from cluster sync), and the allocation
/// requests of those that could not be met (from the control plane). Never part of the configuration history.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Observed {
    /// Shared with the control plane: every snapshot of unchanged clusters reuses them without a copy.
    pub clusters: std::sync::Arc<Vec<ObservedCluster>>,
    /// Owner → why its allocation failed.
    pub allocation_failures: HashMap<String, String>,
}

/// The owner name of a static service's allocations.
pub fn static_owner(service: &str) -> String {
    format!("service/{service}")
}

/// The owner name of a global service's allocations.
pub fn global_owner(name: &str) -> String {
    format!("global/{name}")
}

/// Builds the snapshot. Pure and total: configuration is validated before it is stored, and anything that
/// still does not parse is left out rather than failing the whole snapshot.
pub fn compile(
    generation: u64,
    revision: u64,
    config: &Config,
    observed: &Observed,
    allocations: &[Allocation],
) -> Snapshot {
    let mut vips_by_owner: HashMap<&str, Vec<IpAddr>> = HashMap::with_capacity(allocations.len());
    for a in allocations {
        vips_by_owner.entry(a.owner.as_str()).or_default().push(a.address);
    }
    let cluster_services: usize = observed.clusters.iter().map(|c| c.services.len()).sum();
    let mut services = Vec::with_capacity(config.services.len() + config.global_services.len() + cluster_services);
    for s in &config.services {
        let owner = static_owner(&s.name);
        let mut vips = vips_by_owner.remove(owner.as_str()).unwrap_or_default();
        vips.sort();
        let ports = s
            .ports
            .iter()
            .map(|p| PortEntry {
                name: p.name.clone(),
                port: p.port,
                protocol: p.protocol,
                target_port: p.target_port.unwrap_or(p.port),
            })
            .collect();
        // Sized up front: growing it from filter_map's unknown length reallocates and copies these large
        // entries several times per service, which took about a third of compile at 10,000 services.
        let mut backends = Vec::with_capacity(s.backends.len());
        backends.extend(s.backends.iter().filter_map(|b| {
            let addr = b.parse_address()?;
            Some(BackendEntry::plain(addr.ip, addr.port, b.weight.unwrap_or(1).min(MAX_WEIGHT)))
        }));
        services.push(ServiceEntry {
            name: s.name.clone(),
            origin: Origin::Static,
            vips,
            ports,
            backends,
            announce: s.announce,
            allocation_error: None,
            global: None,
            warnings: Vec::new(),
        });
    }

    // Cluster Services by (cluster, namespace, name), for global services to find their members.
    let by_key: HashMap<(&str, &str, &str), &ObservedService> = observed
        .clusters
        .iter()
        .flat_map(|c| c.services.iter().map(|s| &**s))
        .map(|s| ((s.cluster.as_str(), s.namespace.as_str(), s.name.as_str()), s))
        .collect();
    let mut member_of: HashMap<(&str, &str, &str), (&str, Vec<IpAddr>)> = HashMap::new();
    for g in &config.global_services {
        let mut vips = vips_by_owner.get(global_owner(&g.name).as_str()).cloned().unwrap_or_default();
        vips.sort();
        for m in &g.members {
            member_of.insert((&m.cluster, &m.namespace, &m.service), (g.name.as_str(), vips.clone()));
        }
        // Fail over by priority: the best priority that has a ready endpoint serves, its members weighted.
        let present: Vec<(&crate::config::GlobalMember, &ObservedService)> = g
            .members
            .iter()
            .filter_map(|m| {
                by_key.get(&(m.cluster.as_str(), m.namespace.as_str(), m.service.as_str())).map(|s| (m, *s))
            })
            .collect();
        let serving_priority =
            present.iter().filter(|(_, s)| s.endpoints.iter().any(|e| e.ready)).map(|(m, _)| m.priority).min();
        let mut backends = Vec::new();
        for (m, s) in present.iter().filter(|(m, _)| Some(m.priority) == serving_priority) {
            backends.extend(endpoint_backends(s, m.weight));
        }
        let ports = present.first().map(|(_, s)| service_ports(s)).unwrap_or_default();
        services.push(ServiceEntry {
            name: global_owner(&g.name),
            origin: Origin::Global,
            vips,
            ports,
            backends,
            announce: Announce::default(),
            allocation_error: observed.allocation_failures.get(global_owner(&g.name).as_str()).cloned(),
            global: None,
            warnings: Vec::new(),
        });
    }
    services.sort_by(|a, b| (a.origin == Origin::Global, &a.name).cmp(&(b.origin == Origin::Global, &b.name)));

    let mut from_clusters = Vec::with_capacity(cluster_services);
    for s in observed.clusters.iter().flat_map(|c| c.services.iter().map(|s| &**s)) {
        let owner = cluster_owner(&s.cluster, &s.namespace, &s.name);
        let (global, vips) = match member_of.get(&(s.cluster.as_str(), s.namespace.as_str(), s.name.as_str())) {
            Some((g, vips)) => (Some(g.to_string()), vips.clone()),
            None => {
                let mut vips = vips_by_owner.remove(owner.as_str()).unwrap_or_default();
                vips.sort();
                (None, vips)
            }
        };
        from_clusters.push(ServiceEntry {
            name: format!("{}/{}/{}", s.cluster, s.namespace, s.name),
            origin: Origin::Cluster {
                cluster: s.cluster.clone(),
                namespace: s.namespace.clone(),
                name: s.name.clone(),
            },
            vips,
            ports: service_ports(s),
            backends: endpoint_backends(s, 1),
            announce: Announce::default(),
            allocation_error: observed.allocation_failures.get(owner.as_str()).cloned(),
            global,
            warnings: s.problems.clone(),
        });
    }
    from_clusters.sort_by(|a, b| a.name.cmp(&b.name));
    services.extend(from_clusters);

    let ingress_vips = observed
        .clusters
        .iter()
        .filter_map(|c| {
            let vips = vips_by_owner.get(ingress_owner(&c.name).as_str())?;
            Some((c.name.clone(), vips.clone()))
        })
        .collect();
    let pools = config.pools.iter().map(|p| PoolEntry { name: p.name.clone(), ranges: p.ranges() }).collect();
    let clusters = config.clusters.iter().filter(|c| c.enabled).cloned().collect();
    let mut routes = Vec::new();
    for ing in observed.clusters.iter().flat_map(|c| c.ingresses.iter()) {
        for r in &ing.rules {
            let tls_secret = ing
                .tls
                .iter()
                .find(|(hosts, _)| r.host.as_ref().is_some_and(|h| hosts.contains(h)))
                .map(|(_, secret)| secret.clone());
            routes.push(RouteEntry {
                cluster: ing.cluster.clone(),
                namespace: ing.namespace.clone(),
                ingress: ing.name.clone(),
                host: r.host.clone(),
                path: r.path.clone(),
                path_type: r.path_type.clone(),
                service: format!("{}/{}/{}", ing.cluster, ing.namespace, r.service),
                port: r.port.clone(),
                tls_secret,
            });
        }
    }
    Snapshot {
        generation,
        revision,
        settings: config.settings.clone(),
        pools,
        services,
        ingress_vips,
        clusters,
        routes,
        bgp_peers: config.bgp_peers.clone(),
    }
}

fn service_ports(s: &ObservedService) -> Vec<PortEntry> {
    s.ports
        .iter()
        .map(|p| {
            // The endpoints say which port the pods listen on for this (named) port.
            let target = s
                .endpoints
                .iter()
                .flat_map(|e| e.ports.iter())
                .find(|(name, _, proto)| *name == p.name && *proto == p.protocol)
                .map(|(_, port, _)| *port)
                .unwrap_or(p.port);
            PortEntry { name: p.name.clone(), port: p.port, protocol: p.protocol, target_port: target }
        })
        .collect()
}

/// Backends from endpoints: ready ones, or, when none is ready, those still serving while terminating (so
/// connections drain instead of failing during a rollout).
fn endpoint_backends(s: &ObservedService, weight: u32) -> Vec<BackendEntry> {
    let any_ready = s.endpoints.iter().any(|e| e.ready);
    s.endpoints
        .iter()
        .filter(|e| if any_ready { e.ready } else { e.serving })
        .map(|e| BackendEntry {
            ip: e.ip,
            port: None,
            named_ports: e.ports.iter().map(|(n, p, _)| (n.clone(), *p)).collect(),
            weight,
            ready: e.ready,
            serving: e.serving,
            terminating: e.terminating,
            zone: e.zone.clone(),
            node: e.node.clone(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Backend, Pool, Service, ServicePort};

    #[test]
    fn compiles_services_with_their_vips() {
        let config = Config {
            pools: vec![Pool::new("p", &["10.0.0.0/24"])],
            services: vec![Service {
                name: "web".into(),
                pool: None,
                addresses: vec![],
                ports: vec![ServicePort { name: None, port: 443, protocol: Protocol::Tcp, target_port: Some(8443) }],
                backends: vec![
                    Backend { address: "10.1.0.1".into(), weight: None },
                    Backend { address: "[2001:db8::1]:9000".into(), weight: Some(3) },
                ],
                announce: Announce::default(),
            }],
            settings: Settings::default(),
            ..Config::default()
        };
        let allocs =
            [Allocation { address: "10.0.0.1".parse().unwrap(), pool: "p".into(), owner: "service/web".into() }];
        let snap = compile(7, 3, &config, &Observed::default(), &allocs);
        assert_eq!(snap.services[0].allocation_error, None);
        assert_eq!((snap.generation, snap.revision), (7, 3));
        let web = &snap.services[0];
        assert_eq!(web.vips, vec!["10.0.0.1".parse::<IpAddr>().unwrap()]);
        assert_eq!(web.ports[0].target_port, 8443);
        assert_eq!(web.backends[1].port, Some(9000));
        assert_eq!(web.backends[1].weight, 3);
        assert_eq!(snap.pools[0].ranges.len(), 1);
    }
}

#[cfg(test)]
mod cluster_tests {
    use super::*;
    use crate::cluster::{GlobalMember, GlobalService};
    use crate::observed::{ObservedEndpoint, ObservedPort};

    fn svc(cluster: &str, name: &str, ready: &[(&str, bool)]) -> ObservedService {
        ObservedService {
            cluster: cluster.into(),
            namespace: "ns".into(),
            name: name.into(),
            ports: vec![ObservedPort { name: Some("http".into()), port: 80, protocol: Protocol::Tcp }],
            endpoints: ready
                .iter()
                .map(|(ip, r)| ObservedEndpoint {
                    ip: ip.parse().unwrap(),
                    ports: vec![(Some("http".into()), 8080, Protocol::Tcp)],
                    ready: *r,
                    serving: true,
                    terminating: !*r,
                    zone: None,
                    node: None,
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn cluster_services_and_global_failover() {
        let config = Config {
            global_services: vec![GlobalService {
                name: "web".into(),
                pool: None,
                addresses: vec![],
                members: vec![
                    GlobalMember {
                        cluster: "a".into(),
                        namespace: "ns".into(),
                        service: "web".into(),
                        weight: 2,
                        priority: 0,
                    },
                    GlobalMember {
                        cluster: "b".into(),
                        namespace: "ns".into(),
                        service: "web".into(),
                        weight: 1,
                        priority: 1,
                    },
                ],
            }],
            ..Config::default()
        };
        let observed = |a_ready: bool| Observed {
            clusters: std::sync::Arc::new(vec![
                ObservedCluster {
                    name: "a".into(),
                    synced: true,
                    services: vec![
                        std::sync::Arc::new(svc("a", "web", &[("10.1.0.1", a_ready)])),
                        std::sync::Arc::new(svc("a", "solo", &[("10.1.0.9", true)])),
                    ],
                    ..Default::default()
                },
                ObservedCluster {
                    name: "b".into(),
                    synced: true,
                    services: vec![std::sync::Arc::new(svc("b", "web", &[("10.2.0.1", true)]))],
                    ..Default::default()
                },
            ]),
            allocation_failures: HashMap::from([("cluster/a/ns/solo".to_string(), "pool exhausted".to_string())]),
        };
        let allocs =
            [Allocation { address: "192.0.2.1".parse().unwrap(), pool: "p".into(), owner: "global/web".into() }];
        let snap = compile(1, 1, &config, &observed(true), &allocs);
        let names: Vec<_> = snap.services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["global/web", "a/ns/solo", "a/ns/web", "b/ns/web"]);
        let global = &snap.services[0];
        assert_eq!(global.backends.len(), 1, "priority 0 serves while it has ready endpoints");
        assert_eq!((global.backends[0].ip.to_string(), global.backends[0].weight), ("10.1.0.1".into(), 2));
        assert_eq!(global.ports[0].target_port, 8080);
        assert_eq!(snap.services[2].vips, global.vips, "members show the global VIP");
        assert_eq!(snap.services[2].global.as_deref(), Some("web"));
        assert_eq!(snap.services[1].allocation_error.as_deref(), Some("pool exhausted"));
        let failed_over = compile(2, 1, &config, &observed(false), &allocs);
        assert_eq!(failed_over.services[0].backends[0].ip.to_string(), "10.2.0.1", "fails over to priority 1");
        // A member with only terminating endpoints still drains them on its own entry.
        assert_eq!(failed_over.services[2].backends.len(), 1);
        assert!(failed_over.services[2].backends[0].terminating);
    }
}
