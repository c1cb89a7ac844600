//! BGP end to end (issue #4): the real `portico` binary in the root namespace against real BIRD 2 and GoBGP in
//! network namespaces (`netns.rs`, `bgp_peers.rs`). Each test makes its own namespaces, veths and appliance, and
//! the appliance listens on the root end of its first link only (port 179 of that address), so tests run in
//! parallel. Timers are short (hold 3 s, connect retry 1 s) and every wait polls against a generous deadline.
//! Run with `cargo test -p portico --test e2e bgp::` (needs root, BIRD and GoBGP).

mod cluster;
mod graceful;
mod ibgp;
mod md5;
mod misconfig;
mod policy;
mod received;
mod recovery;
mod session;
mod withdrawal;

use crate::bgp_peers::{Bird, BirdConfig, BirdNeighbor, Session, appliance_bgp_settings, appliance_peer};
use crate::harness::{Api, Appliance};
use crate::netns::{Link, Netns};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

/// The appliance's AS in every test.
pub const OUR_AS: u32 = 65000;
/// BIRD's AS (eBGP) unless a test says otherwise.
pub const BIRD_AS: u32 = 65001;
/// Generous bound for anything that should take a second or two (tests share 2 cores with ~60 others).
pub const WAIT: Duration = Duration::from_secs(30);

/// A peer namespace with its link to the root namespace.
pub struct PeerNet {
    pub link: Link,
    pub ns: Netns,
}

impl PeerNet {
    pub fn new() -> PeerNet {
        let ns = Netns::new();
        let link = Link::to_root(&ns);
        PeerNet { link, ns }
    }

    /// Our (root-side) IPv4 address on this link.
    pub fn ours(&self) -> IpAddr {
        self.link.a.v4.into()
    }

    /// The peer's IPv4 address.
    pub fn theirs(&self) -> IpAddr {
        self.link.b.v4.into()
    }
}

/// An appliance with `settings.bgp` (AS [`OUR_AS`], listening on `listen`, port 179; graceful restart with
/// `restart_time` if given) and an admin token client; logs at debug level so a failure shows the session.
pub async fn appliance(listen: Option<IpAddr>, restart_time: Option<u16>) -> (Appliance, Api) {
    let app = Appliance::start().await;
    let api = app.admin_token().await;
    let bgp = appliance_bgp_settings(OUR_AS, Ipv4Addr::new(192, 0, 2, 1), listen, restart_time);
    api.put("/api/v1/settings", json!({ "log_level": "debug", "bgp": bgp })).await.expect(StatusCode::OK);
    (app, api)
}

pub async fn add_pool(api: &Api, name: &str, addresses: &[&str]) {
    api.post("/api/v1/pools", json!({ "name": name, "addresses": addresses })).await.expect(StatusCode::CREATED);
}

/// A static service on port 80 with VIP(s) from `pool` and these backends (`ip:port`).
pub fn service_json(name: &str, pool: &str, backends: &[&str]) -> Value {
    let backends: Vec<Value> = backends.iter().map(|b| json!({ "address": b })).collect();
    json!({ "name": name, "pool": pool, "ports": [{ "port": 80 }], "backends": backends })
}

/// Creates a static service and returns its VIP once allocated.
pub async fn add_service(api: &Api, name: &str, pool: &str, backends: &[&str]) -> String {
    api.post("/api/v1/services", service_json(name, pool, backends)).await.expect(StatusCode::CREATED);
    vip_of(api, name).await
}

/// The address allocated to the static service `name` (owner `service/NAME`).
pub async fn vip_of(api: &Api, name: &str) -> String {
    let owner = format!("service/{name}");
    wait_api(WAIT, &format!("a VIP for {name}"), || async {
        let items = api.all("/api/v1/allocations").await;
        items.iter().find(|a| a["owner"] == owner.as_str()).and_then(|a| a["address"].as_str().map(String::from))
    })
    .await
}

/// Adds a peer (JSON as `appliance_peer` makes it, with `extra` fields merged in).
pub async fn add_peer(api: &Api, name: &str, address: IpAddr, asn: u32, extra: Value) -> Value {
    let body = peer_json(name, address, asn, extra);
    let r = api.post("/api/v1/bgp/peers", body).await;
    r.expect(StatusCode::CREATED);
    r.body
}

pub fn peer_json(name: &str, address: IpAddr, asn: u32, extra: Value) -> Value {
    let mut body = appliance_peer(name, address, asn);
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    body
}

/// Replaces a peer (PUT) with `appliance_peer` plus `extra`.
pub async fn put_peer(api: &Api, name: &str, address: IpAddr, asn: u32, extra: Value) {
    let r = api.put(&format!("/api/v1/bgp/peers/{name}"), peer_json(name, address, asn, extra)).await;
    r.expect(StatusCode::OK);
}

/// Polls an async check until it returns `Some`, up to `bound`.
pub use crate::harness::eventually as wait_api;

/// `GET /api/v1/bgp/peers/{name}/status`.
pub async fn status(api: &Api, name: &str) -> Value {
    api.json(&format!("/api/v1/bgp/peers/{name}/status")).await
}

/// Polls a peer's status until `check` accepts it; the panic shows the last status.
pub async fn wait_status(api: &Api, name: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let s = status(api, name).await;
        if check(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "peer {name}: {what} did not happen within {WAIT:?}; last status: {s:#}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn wait_established(api: &Api, name: &str) -> Value {
    wait_status(api, name, "established", |s| s["state"] == "established").await
}

/// `GET /api/v1/bgp/announcements`: the item for `prefix`, if announced.
pub async fn announcement(api: &Api, prefix: &str) -> Option<Value> {
    let body = api.json("/api/v1/bgp/announcements").await;
    body["items"].as_array()?.iter().find(|a| a["prefix"] == prefix).cloned()
}

/// A BIRD (AS [`BIRD_AS`] unless `neighbor` changes it, protocol `portico`) peering with the appliance at
/// `net.ours()`, with whatever `neighbor` adds.
pub fn bird(net: &PeerNet, neighbor: impl FnOnce(BirdNeighbor) -> BirdNeighbor) -> Bird {
    Bird::start(&net.ns, &bird_config(net, neighbor))
}

pub fn bird_config(net: &PeerNet, neighbor: impl FnOnce(BirdNeighbor) -> BirdNeighbor) -> BirdConfig {
    BirdConfig::new(net.link.b.v4)
        .neighbor(neighbor(BirdNeighbor::new("portico", BIRD_AS, net.ours(), OUR_AS).local_address(net.theirs())))
}

/// The route to `prefix` BIRD has from the appliance, once it has one.
pub async fn bird_route(bird: &Bird, prefix: &str) -> crate::bgp_peers::PeerRoute {
    bird.wait_for(WAIT, &format!("route {prefix} from portico"), |b| b.route("portico", prefix)).await
}

pub async fn bird_no_route(bird: &Bird, prefix: &str) {
    bird.wait_for(WAIT, &format!("no route {prefix} from portico"), |b| {
        b.route("portico", prefix).is_none().then_some(())
    })
    .await
}

/// The prefixes BIRD has from the appliance, sorted.
pub fn bird_prefixes(bird: &Bird) -> Vec<String> {
    let mut v: Vec<String> =
        bird.routes().into_iter().filter(|r| r.source.as_deref() == Some("portico")).map(|r| r.prefix).collect();
    v.sort();
    v.dedup();
    v
}

/// Waits until BIRD's routes from the appliance are exactly `want` (sorted).
pub async fn bird_exactly(bird: &Bird, want: &[&str]) {
    let mut want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
    want.sort();
    bird.wait_for(WAIT, &format!("exactly {want:?} from portico"), |b| (bird_prefixes(b) == want).then_some(())).await
}

/// Asserts for `d` that `check` keeps holding (used only where a thing must *not* happen).
pub async fn holds_for(d: Duration, what: &str, mut check: impl AsyncFnMut() -> Result<(), String>) {
    let until = Instant::now() + d;
    while Instant::now() < until {
        if let Err(e) = check().await {
            panic!("{what} stopped holding: {e}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
