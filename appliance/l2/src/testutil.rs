//! Snapshot builders shared by the unit tests and (through `#[path]`) the integration tests.

#![allow(dead_code)]

use model::addr::IpRange;
use model::bgp::AnnounceWhen;
use model::config::Announce;
use model::l2::L2Advertisement;
use model::snapshot::{BackendEntry, Origin, PoolEntry, ServiceEntry, Snapshot};
use std::net::IpAddr;
use std::sync::Arc;

pub fn backend(ip: &str, ready: bool) -> BackendEntry {
    BackendEntry {
        ip: ip.parse().unwrap_or(IpAddr::from([10, 0, 0, 1])),
        port: Some(80),
        named_ports: Arc::from(Vec::new()),
        weight: 1,
        ready,
        serving: ready,
        terminating: false,
        zone: None,
        node: None,
        health: Default::default(),
    }
}

pub fn service(name: &str, vips: &[&str], ready: bool) -> Arc<ServiceEntry> {
    Arc::new(ServiceEntry {
        name: name.into(),
        origin: Origin::Static,
        vips: vips.iter().filter_map(|v| v.parse().ok()).collect(),
        ports: Vec::new(),
        backends: vec![backend("10.0.0.1", ready)],
        announce: Announce::default(),
        proxy: Default::default(),
        allocation_error: None,
        global: None,
        warnings: Vec::new(),
    })
}

pub fn pool(name: &str, ranges: &[&str]) -> PoolEntry {
    PoolEntry { name: name.into(), ranges: ranges.iter().filter_map(|r| IpRange::parse(r).ok()).collect() }
}

pub fn advertisement(name: &str, interfaces: &[&str]) -> L2Advertisement {
    L2Advertisement {
        name: name.into(),
        interfaces: interfaces.iter().map(|s| s.to_string()).collect(),
        pools: Vec::new(),
        services: Vec::new(),
        garp_count: 3,
        garp_interval: 1000,
        announce_when: AnnounceWhen::Healthy,
    }
}

pub fn snapshot(
    generation: u64,
    pools: Vec<PoolEntry>,
    services: Vec<Arc<ServiceEntry>>,
    advs: Vec<L2Advertisement>,
) -> Snapshot {
    Snapshot { generation, pools, services, l2_advertisements: advs, ..Snapshot::default() }
}
