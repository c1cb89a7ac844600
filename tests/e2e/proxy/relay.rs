//! What a relayed connection carries: data after the client's half-close, and IPv6 end to end.

use super::bed::{POOL6, WAIT, members, start_proxy_appliance, tcp_service};
use reqwest::StatusCode;
use serde_json::json;
use std::collections::BTreeSet;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_flows_back_after_the_clients_half_close() {
    let bed = start_proxy_appliance(None).await;
    let a = bed.backend("a", 8080).await;
    let vip = bed.create_service(tcp_service("half", members(&[&a]), json!({}))).await;
    let mut agent = bed.agent();
    assert_eq!(agent.open("k", &vip, 80, None).await.backend.as_deref(), Some("a"));
    assert_eq!(agent.echo("k", "0123456789\n").await.as_deref(), Ok("0123456789\n"));
    // The client stops sending; the backend sees the end of its input and only then answers.
    agent.shutdown("k").await;
    let (end, _, tail) = agent.wait_end("k", WAIT).await;
    assert_eq!((end.as_str(), tail.as_str()), ("eof", "BYE 11\n"), "what came back after the half-close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_vip_to_ipv6_backends() {
    let bed = start_proxy_appliance(None).await;
    bed.api.post("/api/v1/pools", json!({"name": "vips6", "addresses": [POOL6]})).await.expect(StatusCode::CREATED);
    bed.client_ns.exec(&["ip", "-6", "route", "add", POOL6, "via", &bed.lan.a.v6.to_string()]);
    let (a, b) = (bed.backend6("a", 8080).await, bed.backend6("b", 8080).await);
    let service = json!({"name": "six", "pool": "vips6", "ports": [{"port": 80}], "backends": members(&[&a, &b]),
        "proxy": {"algorithm": "round_robin"}});
    let vip = bed.create_service(service).await;
    assert!(vip.contains(':'), "an IPv6 VIP: {vip}");
    let mut agent = bed.agent();
    let picks = agent.backends(&vip, 80, None, 6).await;
    let got: BTreeSet<&str> = picks.iter().map(String::as_str).collect();
    assert_eq!(got, BTreeSet::from(["a", "b"]), "{picks:?}");
    assert!(picks.windows(2).all(|w| w[0] != w[1]), "round robin alternates: {picks:?}");
}
