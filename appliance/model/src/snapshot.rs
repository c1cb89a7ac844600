//! The compiled, immutable view that every subsystem consumes, and the pure `compile` that makes it.

use crate::addr::IpRange;
use crate::config::{Announce, Config, MAX_WEIGHT, Protocol, Settings};
use crate::ipam::Allocation;
use std::collections::HashMap;
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
    /// Sorted by name; static services first, then observed ones.
    pub services: Vec<ServiceEntry>,
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
    /// A Kubernetes Service (cluster, namespace, name), filled in by cluster sync.
    Cluster {
        cluster: String,
        namespace: String,
        name: String,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServiceEntry {
    pub name: String,
    pub origin: Origin,
    pub vips: Vec<IpAddr>,
    pub ports: Vec<PortEntry>,
    pub backends: Vec<BackendEntry>,
    pub announce: Announce,
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
    /// A port of the backend's own; `None` means each port's `target_port`.
    pub port: Option<u16>,
    pub weight: u32,
    pub ready: bool,
}

/// What the world says: services and endpoints seen in clusters, health results. Filled by later subsystems.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Observed {
    pub services: Vec<ServiceEntry>,
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
    let mut services = Vec::with_capacity(config.services.len() + observed.services.len());
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
        let backends = s
            .backends
            .iter()
            .filter_map(|b| {
                let addr = b.parse_address()?;
                Some(BackendEntry {
                    ip: addr.ip,
                    port: addr.port,
                    weight: b.weight.unwrap_or(1).min(MAX_WEIGHT),
                    ready: true,
                })
            })
            .collect();
        services.push(ServiceEntry {
            name: s.name.clone(),
            origin: Origin::Static,
            vips,
            ports,
            backends,
            announce: s.announce,
        });
    }
    services.sort_by(|a, b| a.name.cmp(&b.name));
    services.extend(observed.services.iter().cloned());
    let pools = config.pools.iter().map(|p| PoolEntry { name: p.name.clone(), ranges: p.ranges() }).collect();
    Snapshot { generation, revision, settings: config.settings.clone(), pools, services }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Backend, Pool, PoolSelectors, Service, ServicePort};

    #[test]
    fn compiles_services_with_their_vips() {
        let config = Config {
            pools: vec![Pool {
                name: "p".into(),
                addresses: vec!["10.0.0.0/24".into()],
                auto_assign: true,
                avoid_buggy_ips: false,
                selectors: PoolSelectors::default(),
            }],
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
        assert_eq!((snap.generation, snap.revision), (7, 3));
        let web = &snap.services[0];
        assert_eq!(web.vips, vec!["10.0.0.1".parse::<IpAddr>().unwrap()]);
        assert_eq!(web.ports[0].target_port, 8443);
        assert_eq!(web.backends[1].port, Some(9000));
        assert_eq!(web.backends[1].weight, 3);
        assert_eq!(snap.pools[0].ranges.len(), 1);
    }
}
