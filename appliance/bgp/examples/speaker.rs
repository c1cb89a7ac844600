//! Runs one speaker from a JSON file for manual interoperability checks against BIRD, GoBGP or FRR:
//! `cargo run -p portico-bgp --example speaker -- speaker.json`, where the file holds
//! `{"bgp": <settings.bgp>, "peers": [<bgp_peers>...], "vips": {"<service>": ["<vip>", ...]}}`.
//! Every few seconds it prints peer states, received routes and announcements as JSON; Ctrl-C stops it the
//! way the appliance does (graceful restart or Cease).

#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use model::bgp::{BgpPeer, BgpSettings};
use model::snapshot::{BackendEntry, Origin, ServiceEntry, Snapshot};
use model::subsystem::Subsystem;
use portico_bgp::{Speaker, SpeakerOptions};
use std::collections::BTreeMap;
use std::sync::Arc;

#[derive(serde::Deserialize)]
struct File {
    bgp: BgpSettings,
    peers: Vec<BgpPeer>,
    #[serde(default)]
    vips: BTreeMap<String, Vec<std::net::IpAddr>>,
    #[serde(default)]
    restarting: bool,
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).init();
    let path = std::env::args().nth(1).expect("usage: speaker FILE.json");
    let file: File = serde_json::from_slice(&std::fs::read(path).expect("read the file")).expect("parse the file");
    let services = file.vips.iter().map(|(name, vips)| {
        let backend = BackendEntry {
            ip: "10.255.0.1".parse().unwrap(),
            port: Some(80),
            named_ports: std::sync::Arc::from([]),
            weight: 1,
            ready: true,
            serving: true,
            terminating: false,
            zone: None,
            node: None,
            health: Default::default(),
        };
        ServiceEntry {
            name: name.clone(),
            origin: Origin::Static,
            vips: vips.clone(),
            ports: vec![],
            backends: vec![backend],
            announce: Default::default(),
            proxy: Default::default(),
            allocation_error: None,
            global: None,
            warnings: vec![],
        }
    });
    let mut snapshot = Snapshot { generation: 1, bgp_peers: file.peers, ..Default::default() };
    #[allow(clippy::useless_conversion)]
    {
        snapshot.services = services.map(Into::into).collect();
    }
    snapshot.settings.bgp = Some(file.bgp);
    let mut speaker = Speaker::new(SpeakerOptions { restarting: file.restarting });
    let handle = speaker.handle();
    let report = speaker.apply(Arc::new(snapshot)).await.expect("apply");
    println!("apply: {:?} {}", report.health, report.detail);
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(3));
    loop {
        tokio::select! {
            _ = tick.tick() => {
                for p in handle.peers() {
                    println!("{}", serde_json::to_string(&p).unwrap());
                    println!("  received: {}", serde_json::to_string(&handle.received_routes(&p.name)).unwrap());
                }
                println!("announcements: {}", serde_json::to_string(&handle.announcements()).unwrap());
            }
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    speaker.shutdown().await;
}
