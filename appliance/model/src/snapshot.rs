//! The compiled, immutable view that every subsystem consumes, and the pure `compile` that makes it.

use crate::addr::IpRange;
use crate::config::{Announce, Config, MAX_WEIGHT, Protocol, Settings};
use crate::ipam::Allocation;
use crate::observed::{ObservedCluster, ObservedService, cluster_owner, ingress_owner};
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

/// Everything the data plane needs, at one generation.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// Increases by one with every compiled snapshot of a running process.
    pub generation: u64,
    /// The configuration revision this snapshot was compiled from.
    pub revision: u64,
    pub settings: Settings,
    pub pools: Vec<PoolEntry>,
    /// Every service, sorted by name: static (`web`), global (`global/<name>`) and cluster Services
    /// (`<cluster>/<namespace>/<name>`). Entries are shared with earlier snapshots while they do not change.
    pub services: Vec<Arc<ServiceEntry>>,
    /// The VIP each cluster's Ingresses are served on.
    pub ingress_vips: BTreeMap<String, Vec<IpAddr>>,
    /// The enabled clusters, with their credentials (cluster sync connects to them).
    pub clusters: Vec<crate::config::Cluster>,
    /// HTTP routes from the clusters' Ingresses that are ours.
    pub routes: Vec<RouteEntry>,
    /// BGP neighbours, enabled or not (the speaker itself is `settings.bgp`).
    pub bgp_peers: Vec<crate::bgp::BgpPeer>,
    /// Which VIPs to answer ARP and Neighbor Solicitations for, on which interfaces.
    pub l2_advertisements: Vec<crate::l2::L2Advertisement>,
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
    /// How the L4 proxy serves it (shared: most cluster Services have the defaults).
    pub proxy: Arc<crate::proxy::ProxyPolicy>,
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
    /// Ports by service port name (Kubernetes endpoints: name, number, protocol), taking precedence over `port`.
    pub named_ports: crate::observed::EndpointPorts,
    pub weight: u32,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    pub zone: Option<String>,
    pub node: Option<String>,
    /// What the proxy's active health checks say (`Unchecked` without checks).
    pub health: crate::health::BackendHealth,
}

impl BackendEntry {
    /// Its identity among the service's backends (health results are keyed by it).
    pub fn key(&self) -> crate::health::BackendKey {
        (self.ip, self.port)
    }

    /// Whether it takes new connections: ready and not failing its health checks.
    pub fn usable(&self) -> bool {
        self.ready && self.health.passes()
    }

    /// A ready backend at `ip` (on its own `port`, or each service port's target), as a static service has.
    pub fn new(ip: IpAddr, port: Option<u16>, weight: u32) -> BackendEntry {
        BackendEntry {
            ip,
            port,
            named_ports: Arc::from([]),
            weight,
            ready: true,
            serving: true,
            terminating: false,
            zone: None,
            node: None,
            health: crate::health::BackendHealth::Unchecked,
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
    let vips = vips_by_owner(allocations);
    build(generation, revision, config, observed, &vips, None).0
}

/// Each owner's VIPs, sorted.
fn vips_by_owner(allocations: &[Allocation]) -> HashMap<String, Vec<IpAddr>> {
    let mut by_owner: HashMap<String, Vec<IpAddr>> = HashMap::with_capacity(allocations.len());
    for a in allocations {
        match by_owner.get_mut(a.owner.as_str()) {
            Some(vips) => vips.push(a.address),
            None => {
                by_owner.insert(a.owner.clone(), vec![a.address]);
            }
        }
    }
    for vips in by_owner.values_mut() {
        if vips.len() > 1 {
            vips.sort();
        }
    }
    by_owner
}

/// Compiles snapshot after snapshot, reusing the entries of cluster Services whose observation did not change.
///
/// Most changes are one EndpointSlice of one Service among thousands: rebuilding every entry for each (names,
/// ports and backends copied, then the old ones freed) was most of the time from a change to its snapshot.
/// While the configuration is the same `Arc` as at the previous compile, the entry of an unchanged observation
/// is reused: as it is when the allocations and their failures are the same too, and otherwise when its VIPs,
/// allocation error and global service come out the same (a first sync allocates in rounds; each round keeps
/// the entries of the Services allocated before). A new configuration rebuilds everything.
#[derive(Debug, Default)]
pub struct Compiler {
    memo: Option<Memo>,
    /// Service name → (entry without health, the results applied, entry with them), to reuse while neither
    /// changes.
    healthy: HashMap<String, (Arc<ServiceEntry>, crate::health::ServiceHealth, Arc<ServiceEntry>)>,
}

#[derive(Debug)]
struct Memo {
    config: Arc<Config>,
    allocations: Arc<Vec<Allocation>>,
    vips: Arc<HashMap<String, Vec<IpAddr>>>,
    failures: HashMap<String, String>,
    /// Entries of cluster Services by the observation each was built from.
    entries: HashMap<Observation, Arc<ServiceEntry>>,
    /// Static services' entries (they depend on configuration and allocations only).
    statics: Vec<Arc<ServiceEntry>>,
}

impl Compiler {
    pub fn new() -> Compiler {
        Compiler::default()
    }

    /// Sets the health of the backends of every checked service in `snapshot` (compiled by this compiler)
    /// from the active checks' results; backends without a result stay `Unchecked`.
    pub fn apply_health(&mut self, snapshot: &mut Snapshot, health: &crate::health::HealthMap) {
        let mut applied = HashMap::with_capacity(health.len());
        for (name, results) in health {
            let Ok(i) = snapshot.services.binary_search_by(|e| e.name.as_str().cmp(name)) else { continue };
            let base = snapshot.services[i].clone();
            let entry = match self.healthy.remove(name) {
                Some((b, r, e)) if Arc::ptr_eq(&b, &base) && Arc::ptr_eq(&r, results) => e,
                _ => {
                    let mut entry = (*base).clone();
                    for b in &mut entry.backends {
                        b.health = results.get(&b.key()).copied().unwrap_or_default();
                    }
                    Arc::new(entry)
                }
            };
            snapshot.services[i] = entry.clone();
            applied.insert(name.clone(), (base, results.clone(), entry));
        }
        self.healthy = applied;
    }

    pub fn compile(
        &mut self,
        generation: u64,
        revision: u64,
        config: &Arc<Config>,
        observed: &Observed,
        allocations: &Arc<Vec<Allocation>>,
    ) -> Snapshot {
        let reusable = self.memo.take().filter(|m| Arc::ptr_eq(&m.config, config));
        let same_allocations = reusable.as_ref().is_some_and(|m| Arc::ptr_eq(&m.allocations, allocations));
        let vips = match &reusable {
            Some(m) if same_allocations => m.vips.clone(),
            _ => Arc::new(vips_by_owner(allocations)),
        };
        let reuse = reusable.as_ref().map(|m| Reuse {
            memo: m,
            same_allocations,
            exact: same_allocations && m.failures == observed.allocation_failures,
        });
        let (snapshot, entries, statics) = build(generation, revision, config, observed, &vips, reuse);
        drop(reusable);
        self.memo = Some(Memo {
            config: config.clone(),
            allocations: allocations.clone(),
            vips,
            failures: observed.allocation_failures.clone(),
            entries,
            statics,
        });
        snapshot
    }
}

/// An observation compared by identity: an unchanged Service keeps its `Arc` from one observation to the next,
/// and holding the `Arc` here keeps its address from being reused by another.
#[derive(Debug, Clone)]
struct Observation(Arc<ObservedService>);

impl PartialEq for Observation {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for Observation {}

impl std::hash::Hash for Observation {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        std::ptr::hash(Arc::as_ptr(&self.0), state);
    }
}

type Built = (Snapshot, HashMap<Observation, Arc<ServiceEntry>>, Vec<Arc<ServiceEntry>>);

/// What the previous compile left that this one may reuse.
#[derive(Clone, Copy)]
struct Reuse<'a> {
    memo: &'a Memo,
    /// The same allocations: static entries stand as they are.
    same_allocations: bool,
    /// The same allocations and failures: an unchanged observation's entry stands as it is.
    exact: bool,
}

fn build(
    generation: u64,
    revision: u64,
    config: &Config,
    observed: &Observed,
    vips_by_owner: &HashMap<String, Vec<IpAddr>>,
    reuse: Option<Reuse<'_>>,
) -> Built {
    let cluster_services: usize = observed.clusters.iter().map(|c| c.services.len()).sum();
    let mut services: Vec<Arc<ServiceEntry>> =
        Vec::with_capacity(config.services.len() + config.global_services.len() + cluster_services);
    let vips_of = |owner: &str| -> Vec<IpAddr> { vips_by_owner.get(owner).cloned().unwrap_or_default() };

    let statics: Vec<Arc<ServiceEntry>> = match reuse {
        Some(r) if r.same_allocations => r.memo.statics.clone(),
        _ => config.services.iter().map(|s| Arc::new(static_entry(s, vips_of(&static_owner(&s.name))))).collect(),
    };
    services.extend(statics.iter().cloned());

    // Global services and their members. Cluster Services are only indexed by key when there are members to
    // find (most appliances have no global service).
    let mut member_of: HashMap<(&str, &str, &str), (&str, Vec<IpAddr>)> = HashMap::new();
    if !config.global_services.is_empty() {
        let by_key: HashMap<(&str, &str, &str), &ObservedService> = observed
            .clusters
            .iter()
            .flat_map(|c| c.services.iter().map(|s| &**s))
            .map(|s| ((s.cluster.as_str(), s.namespace.as_str(), s.name.as_str()), s))
            .collect();
        for g in &config.global_services {
            let owner = global_owner(&g.name);
            let vips = vips_of(&owner);
            for m in &g.members {
                member_of.insert((&m.cluster, &m.namespace, &m.service), (g.name.as_str(), vips.clone()));
            }
            services.push(Arc::new(global_entry(g, owner, vips, &by_key, observed)));
        }
    }

    let mut entries: HashMap<Observation, Arc<ServiceEntry>> = HashMap::with_capacity(cluster_services);
    for s in observed.clusters.iter().flat_map(|c| c.services.iter()) {
        let key = Observation(s.clone());
        let previous = reuse.and_then(|r| r.memo.entries.get(&key).map(|e| (e, r.exact)));
        let entry = match previous {
            Some((e, true)) => e.clone(),
            _ => {
                let owner = cluster_owner(&s.cluster, &s.namespace, &s.name);
                let (global, vips) = match member_of.get(&(s.cluster.as_str(), s.namespace.as_str(), s.name.as_str())) {
                    Some((g, vips)) => (Some(g.to_string()), vips.clone()),
                    None => (None, vips_of(&owner)),
                };
                let allocation_error = observed.allocation_failures.get(owner.as_str()).cloned();
                match previous {
                    Some((e, _)) if e.vips == vips && e.allocation_error == allocation_error && e.global == global => {
                        e.clone()
                    }
                    _ => Arc::new(ServiceEntry {
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
                        proxy: s.proxy.clone().unwrap_or_else(crate::proxy::ProxyPolicy::shared_default),
                        allocation_error,
                        global,
                        warnings: s.problems.clone(),
                    }),
                }
            }
        };
        entries.insert(key, entry.clone());
        services.push(entry);
    }
    // Nearly sorted already (clusters by name, then their Services by namespace and name): a cheap pass.
    services.sort_by(|a, b| a.name.cmp(&b.name));

    let ingress_vips = observed
        .clusters
        .iter()
        .filter_map(|c| {
            let vips = vips_of(&ingress_owner(&c.name));
            (!vips.is_empty()).then(|| (c.name.clone(), vips))
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
    let snapshot = Snapshot {
        generation,
        revision,
        settings: config.settings.clone(),
        pools,
        services,
        ingress_vips,
        clusters,
        routes,
        bgp_peers: config.bgp_peers.clone(),
        l2_advertisements: config.l2_advertisements.clone(),
    };
    (snapshot, entries, statics)
}

fn static_entry(s: &crate::config::Service, vips: Vec<IpAddr>) -> ServiceEntry {
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
    // Sized up front: growing it from filter_map's unknown length reallocates and copies these large entries
    // several times per service, which took about a third of compile at 10,000 services.
    let mut backends = Vec::with_capacity(s.backends.len());
    backends.extend(s.backends.iter().filter_map(|b| {
        let addr = b.parse_address()?;
        Some(BackendEntry::new(addr.ip, addr.port, b.weight.unwrap_or(1).min(MAX_WEIGHT)))
    }));
    ServiceEntry {
        name: s.name.clone(),
        origin: Origin::Static,
        vips,
        ports,
        backends,
        announce: s.announce,
        proxy: Arc::new(s.proxy.clone()),
        allocation_error: None,
        global: None,
        warnings: Vec::new(),
    }
}

/// A global service: fails over by priority — the best priority that has a ready endpoint serves, its members
/// weighted.
fn global_entry(
    g: &crate::config::GlobalService,
    owner: String,
    vips: Vec<IpAddr>,
    by_key: &HashMap<(&str, &str, &str), &ObservedService>,
    observed: &Observed,
) -> ServiceEntry {
    let present: Vec<(&crate::config::GlobalMember, &ObservedService)> = g
        .members
        .iter()
        .filter_map(|m| by_key.get(&(m.cluster.as_str(), m.namespace.as_str(), m.service.as_str())).map(|s| (m, *s)))
        .collect();
    let serving_priority =
        present.iter().filter(|(_, s)| s.endpoints.iter().any(|e| e.ready)).map(|(m, _)| m.priority).min();
    let mut backends = Vec::new();
    for (m, s) in present.iter().filter(|(m, _)| Some(m.priority) == serving_priority) {
        backends.extend(endpoint_backends(s, m.weight));
    }
    let ports = present.first().map(|(_, s)| service_ports(s)).unwrap_or_default();
    ServiceEntry {
        allocation_error: observed.allocation_failures.get(owner.as_str()).cloned(),
        name: owner,
        origin: Origin::Global,
        vips,
        ports,
        backends,
        announce: Announce::default(),
        proxy: crate::proxy::ProxyPolicy::shared_default(),
        global: None,
        warnings: Vec::new(),
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
            named_ports: e.ports.clone(),
            weight,
            ready: e.ready,
            serving: e.serving,
            terminating: e.terminating,
            zone: e.zone.clone(),
            node: e.node.clone(),
            health: crate::health::BackendHealth::Unchecked,
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
                proxy: Default::default(),
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
    use crate::config::{Backend, Service, ServicePort};
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
                    ports: vec![(Some("http".into()), 8080, Protocol::Tcp)].into(),
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
        assert_eq!(names, ["a/ns/solo", "a/ns/web", "b/ns/web", "global/web"], "sorted by name");
        let global = &snap.services[3];
        assert_eq!(global.backends.len(), 1, "priority 0 serves while it has ready endpoints");
        assert_eq!((global.backends[0].ip.to_string(), global.backends[0].weight), ("10.1.0.1".into(), 2));
        assert_eq!(global.ports[0].target_port, 8080);
        assert_eq!(snap.services[1].vips, global.vips, "members show the global VIP");
        assert_eq!(snap.services[1].global.as_deref(), Some("web"));
        assert_eq!(snap.services[0].allocation_error.as_deref(), Some("pool exhausted"));
        let failed_over = compile(2, 1, &config, &observed(false), &allocs);
        assert_eq!(failed_over.services[3].backends[0].ip.to_string(), "10.2.0.1", "fails over to priority 1");
        // A member with only terminating endpoints still drains them on its own entry.
        assert_eq!(failed_over.services[1].backends.len(), 1);
        assert!(failed_over.services[1].backends[0].terminating);

        // The incremental compiler gives the same snapshots, and shares what did not change.
        let config = Arc::new(config);
        let allocs = Arc::new(allocs.to_vec());
        let mut compiler = Compiler::new();
        let first = observed(true);
        let a = compiler.compile(1, 1, &config, &first, &allocs);
        assert_eq!(a, compile(1, 1, &config, &first, &allocs));
        // Only a/ns/web changes (endpoints no longer ready); b/ns/web and a/ns/solo keep their observations.
        let mut clusters = (*first.clusters).clone();
        clusters[0].services[0] = Arc::new(svc("a", "web", &[("10.1.0.1", false)]));
        let second = Observed { clusters: Arc::new(clusters), ..first.clone() };
        let b = compiler.compile(2, 1, &config, &second, &allocs);
        assert_eq!(b, compile(2, 1, &config, &second, &allocs));
        assert!(Arc::ptr_eq(&a.services[0], &b.services[0]), "a/ns/solo is shared");
        assert!(Arc::ptr_eq(&a.services[2], &b.services[2]), "b/ns/web is shared");
        assert!(!Arc::ptr_eq(&a.services[1], &b.services[1]), "a/ns/web is new");
        assert_eq!(b.services[3].backends[0].ip.to_string(), "10.2.0.1", "the global service fails over");
        // New allocations rebuild everything.
        let more = Arc::new(vec![
            allocs[0].clone(),
            Allocation { address: "192.0.2.9".parse().unwrap(), pool: "p".into(), owner: "cluster/b/ns/web".into() },
        ]);
        let c = compiler.compile(3, 1, &config, &second, &more);
        assert_eq!(c, compile(3, 1, &config, &second, &more));
        assert!(Arc::ptr_eq(&b.services[0], &c.services[0]), "a/ns/solo kept its (lack of) VIP");
        // A new configuration rebuilds everything.
        let d = compiler.compile(4, 2, &Arc::new((*config).clone()), &second, &more);
        assert_eq!(d, compile(4, 2, &config, &second, &more));
        assert!(!Arc::ptr_eq(&c.services[0], &d.services[0]));
    }

    #[test]
    fn health_results_reach_the_backends_and_are_reused() {
        use crate::health::BackendHealth;
        let service = |name: &str| Service {
            name: name.into(),
            pool: None,
            addresses: vec![],
            ports: vec![ServicePort { name: None, port: 80, protocol: Protocol::Tcp, target_port: None }],
            backends: vec![
                Backend { address: "10.1.0.1".into(), weight: None },
                Backend { address: "10.1.0.2".into(), weight: None },
            ],
            announce: Announce::default(),
            proxy: Default::default(),
        };
        let config = Arc::new(Config { services: vec![service("a"), service("b")], ..Config::default() });
        let allocations = Arc::new(Vec::new());
        let mut compiler = Compiler::new();
        let results: crate::health::ServiceHealth = Arc::new(
            [(("10.1.0.1".parse().unwrap_or(IpAddr::from([0, 0, 0, 0])), None), BackendHealth::Unhealthy)].into(),
        );
        let health: crate::health::HealthMap = [("b".to_string(), results.clone())].into();
        let mut first = compiler.compile(1, 1, &config, &Observed::default(), &allocations);
        compiler.apply_health(&mut first, &health);
        let b = &first.services[1];
        assert_eq!(b.backends[0].health, BackendHealth::Unhealthy);
        assert!(!b.backends[0].usable());
        assert_eq!(b.backends[1].health, BackendHealth::Unchecked, "no result yet");
        assert!(b.backends[1].usable());
        assert!(first.services[0].backends.iter().all(|b| b.health == BackendHealth::Unchecked));

        // Unchanged inputs and results: the same entry.
        let mut second = compiler.compile(2, 1, &config, &Observed::default(), &allocations);
        compiler.apply_health(&mut second, &health);
        assert!(Arc::ptr_eq(&first.services[1], &second.services[1]));
        // Results gone: back to unchecked.
        let mut third = compiler.compile(3, 1, &config, &Observed::default(), &allocations);
        compiler.apply_health(&mut third, &crate::health::HealthMap::new());
        assert_eq!(third.services[1].backends[0].health, BackendHealth::Unchecked);
    }
}
