//! Helpers shared by the integration tests: configuration and snapshots built the way the control plane
//! builds them, free loopback ports, and polling.
#![allow(dead_code)]

use model::addr::IpRange;
use model::bgp::{BgpPeer, BgpSettings, PeerStatus, SessionState};
use model::snapshot::{BackendEntry, Origin, PoolEntry, ServiceEntry, Snapshot};
use portico_bgp::SpeakerHandle;
use std::future::Future;
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

pub fn settings(asn: u32, router_id: &str, listen: SocketAddr, gr: bool) -> BgpSettings {
    serde_json::from_value(serde_json::json!({
        "asn": asn,
        "router_id": router_id,
        "listen": {"address": listen.ip().to_string(), "port": listen.port()},
        "graceful_restart": {"enabled": gr, "restart_time": 30},
    }))
    .unwrap()
}

pub fn peer(json: serde_json::Value) -> BgpPeer {
    serde_json::from_value(json).unwrap()
}

pub fn service(name: &str, vips: &[&str]) -> ServiceEntry {
    ServiceEntry {
        name: name.into(),
        origin: Origin::Static,
        vips: vips.iter().map(|v| v.parse().unwrap()).collect(),
        ports: vec![],
        backends: vec![BackendEntry {
            ip: "10.1.0.1".parse().unwrap(),
            port: Some(80),
            named_ports: std::sync::Arc::from([]),
            weight: 1,
            ready: true,
            serving: true,
            terminating: false,
            zone: None,
            node: None,
            health: Default::default(),
        }],
        announce: Default::default(),
        proxy: Default::default(),
        allocation_error: None,
        global: None,
        warnings: vec![],
    }
}

pub fn snapshot(
    generation: u64,
    bgp: Option<BgpSettings>,
    peers: Vec<BgpPeer>,
    services: Vec<ServiceEntry>,
) -> Arc<Snapshot> {
    // `Into` so this builds whether the snapshot holds services by value or behind an `Arc`.
    #[allow(clippy::useless_conversion)]
    let services = services.into_iter().map(Into::into).collect();
    let mut s = Snapshot { generation, bgp_peers: peers, services, ..Default::default() };
    s.settings.bgp = bgp;
    s.pools = vec![
        PoolEntry { name: "public".into(), ranges: vec![IpRange::parse("203.0.113.0/24").unwrap()] },
        PoolEntry { name: "public6".into(), ranges: vec![IpRange::parse("2001:db8::/64").unwrap()] },
    ];
    Arc::new(s)
}

/// A port that was free a moment ago on `ip`.
pub fn free_port(ip: &str) -> u16 {
    let l = TcpListener::bind((ip.parse::<IpAddr>().unwrap(), 0)).unwrap();
    l.local_addr().unwrap().port()
}

pub async fn eventually<F, Fut>(what: &str, secs: u64, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if check().await {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn state(h: &SpeakerHandle, name: &str) -> SessionState {
    h.peer(name).map(|p| p.state).unwrap_or(SessionState::Idle)
}

pub async fn established(h: &SpeakerHandle, name: &str) {
    let h2 = h.clone();
    let name2 = name.to_owned();
    eventually(&format!("{name} established"), 20, move || {
        let ok = state(&h2, &name2) == SessionState::Established;
        async move { ok }
    })
    .await;
}

pub fn status(h: &SpeakerHandle, name: &str) -> PeerStatus {
    h.peer(name).unwrap()
}

pub fn received(h: &SpeakerHandle, name: &str) -> Vec<String> {
    h.received_routes(name).unwrap_or_default().into_iter().map(|r| r.prefix).collect()
}
