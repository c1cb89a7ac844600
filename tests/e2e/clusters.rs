//! Cluster sync against the test Kubernetes API server: claiming, VIP allocation, status write-back, events.

mod credentials;
mod endpoints;
mod global;
mod ingress;
mod lifecycle;
mod outage;
mod proxy_policy;
mod rules;
mod test_endpoint;
mod two_clusters;

use crate::harness::{Api, Appliance};
use portico_test_apiserver::{TestApiServer, permissions};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::time::Duration;

/// Polls `check` until it returns Some, or panics after `secs` seconds.
pub async fn eventually<T>(secs: u64, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = check() {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn kube_server() -> TestApiServer {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    TestApiServer::builder().bookmark_interval(Duration::from_millis(500)).start().await
}

pub fn lb_service(name: &str, extra_annotations: Value) -> Value {
    json!({
        "metadata": {"name": name, "annotations": extra_annotations},
        "spec": {"type": "LoadBalancer", "loadBalancerClass": "portico.io/lb",
                 "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}
    })
}

pub fn status_ips(svc: &Value) -> Vec<String> {
    svc["status"]["loadBalancer"]["ingress"]
        .as_array()
        .map(|a| a.iter().filter_map(|i| i["ip"].as_str().map(String::from)).collect())
        .unwrap_or_default()
}

/// Connects a cluster to the appliance with a kubeconfig for `token` (and any other fields in `extra`).
pub async fn add_cluster(api: &Api, name: &str, kube: &TestApiServer, token: &str, extra: Value) {
    let mut body = json!({"name": name, "kubeconfig": kube.kubeconfig(token)});
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    api.post("/api/v1/clusters", body).await.expect(StatusCode::CREATED);
}

/// A test API server and a token with exactly the appliance's permissions, connected as cluster `name`.
pub async fn connected_cluster(api: &Api, name: &str) -> (TestApiServer, String) {
    let kube = kube_server().await;
    let token = kube.add_token("portico", permissions::appliance());
    add_cluster(api, name, &kube, &token, json!({})).await;
    (kube, token)
}

/// An appliance with an admin token client and pools (name, addresses).
pub async fn appliance_with_pools(pools: &[(&str, &[&str])]) -> (Appliance, Api) {
    let app = Appliance::start().await;
    let api = app.admin_token().await;
    for (name, addresses) in pools {
        api.post("/api/v1/pools", json!({"name": name, "addresses": addresses})).await.expect(StatusCode::CREATED);
    }
    (app, api)
}

/// GETs `path` until `check` accepts the body (up to 20 s); panics with the last body otherwise.
pub async fn poll<T>(api: &Api, path: &str, what: &str, mut check: impl FnMut(&Value) -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let body = api.json(path).await;
        if let Some(v) = check(&body) {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}; last {path}: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the cluster's status says connected; returns that status.
pub async fn wait_connected(api: &Api, name: &str) -> Value {
    poll(api, &format!("/api/v1/clusters/{name}/status"), &format!("{name} connected"), |s| {
        (s["connected"] == true).then(|| s.clone())
    })
    .await
}

/// Waits until the Service has exactly `n` addresses in its status; returns them (in status order).
pub async fn wait_vips(kube: &TestApiServer, ns: &str, name: &str, n: usize) -> Vec<String> {
    eventually(20, &format!("{n} VIP(s) in the status of {ns}/{name}"), || {
        let ips = status_ips(&kube.get("Service", Some(ns), name)?);
        (ips.len() == n).then_some(ips)
    })
    .await
}

/// Waits until the Service's status has no address.
pub async fn wait_no_vips(kube: &TestApiServer, ns: &str, name: &str) {
    eventually(20, &format!("an empty status of {ns}/{name}"), || {
        status_ips(&kube.get("Service", Some(ns), name)?).is_empty().then_some(())
    })
    .await;
}

/// Waits for an Event of this reason about this object; returns it.
pub async fn wait_event(kube: &TestApiServer, name: &str, reason: &str) -> Value {
    eventually(20, &format!("a {reason} event about {name}"), || {
        kube.events().into_iter().find(|e| e["reason"] == reason && e["regarding"]["name"] == name)
    })
    .await
}

/// The services the appliance serves now whose names start with `prefix`.
pub async fn snapshot(api: &Api, prefix: &str) -> Vec<Value> {
    let body = api.json(&format!("/api/v1/snapshot/services?prefix={prefix}&limit=1000")).await;
    body["items"].as_array().cloned().unwrap_or_default()
}

/// Waits until no service whose name starts with `prefix` is served (snapshots compile a moment after the
/// allocations change).
pub async fn wait_not_served(api: &Api, prefix: &str) {
    poll(api, &format!("/api/v1/snapshot/services?prefix={prefix}"), &format!("{prefix} no longer served"), |s| {
        s["items"].as_array()?.is_empty().then_some(())
    })
    .await;
}

/// Waits until the snapshot's entry `name` satisfies `check`.
pub async fn wait_snapshot(api: &Api, name: &str, what: &str, mut check: impl FnMut(&Value) -> bool) -> Value {
    poll(api, &format!("/api/v1/snapshot/services?prefix={name}"), what, |body| {
        body["items"].as_array()?.iter().find(|s| s["name"] == name).filter(|s| check(s)).cloned()
    })
    .await
}

/// The addresses of a snapshot entry's backends, sorted.
pub fn backend_addresses(entry: &Value) -> Vec<String> {
    let mut out: Vec<String> = entry["backends"]
        .as_array()
        .map(|a| a.iter().filter_map(|b| b["address"].as_str().map(String::from)).collect())
        .unwrap_or_default();
    out.sort();
    out
}

/// Allocations as (owner, address) pairs, sorted.
pub async fn allocations(api: &Api) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = api
        .all("/api/v1/allocations")
        .await
        .iter()
        .map(|a| (a["owner"].as_str().unwrap_or("").to_string(), a["address"].as_str().unwrap_or("").to_string()))
        .collect();
    out.sort();
    out
}

/// The addresses allocated to an owner.
pub async fn allocated_to(api: &Api, owner: &str) -> Vec<String> {
    allocations(api).await.into_iter().filter(|(o, _)| o == owner).map(|(_, a)| a).collect()
}

/// An EndpointSlice of Service `service` with one port `http` and endpoints (address, ready).
pub fn slice(name: &str, service: &str, port: u16, endpoints: &[(&str, bool)]) -> Value {
    json!({
        "metadata": {"name": name, "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
        "endpoints": endpoint_list(endpoints),
    })
}

pub fn endpoint_list(endpoints: &[(&str, bool)]) -> Value {
    endpoints
        .iter()
        .map(|(ip, ready)| {
            json!({"addresses": [ip], "conditions": {"ready": ready, "serving": ready, "terminating": false}})
        })
        .collect()
}

#[tokio::test]
async fn services_get_vips_written_back_with_events() {
    let kube = kube_server().await;
    let token = kube.add_token("portico", permissions::appliance());
    let app = Appliance::start().await;
    let api = app.admin_token().await;
    api.post("/api/v1/pools", json!({"name": "edge", "addresses": ["192.0.2.0/30"]}))
        .await
        .expect(reqwest::StatusCode::CREATED);
    let r = api.post("/api/v1/clusters", json!({"name": "k1", "kubeconfig": kube.kubeconfig(&token)})).await;
    r.expect(reqwest::StatusCode::CREATED);
    assert!(r.body.get("kubeconfig").is_none(), "credentials are never shown");

    kube.create("Service", Some("default"), lb_service("web", json!({}))).unwrap();
    kube.create(
        "Service",
        Some("default"),
        json!({"metadata": {"name": "other"},
        "spec": {"type": "LoadBalancer", "loadBalancerClass": "someone-else", "ports": [{"port": 80}]}}),
    )
    .unwrap();
    let ip =
        eventually(20, "web's status", || status_ips(&kube.get("Service", Some("default"), "web")?).first().cloned())
            .await;
    assert_eq!(ip, "192.0.2.0");
    let allocations = api.json("/api/v1/allocations").await;
    assert_eq!(allocations["items"][0]["owner"], "cluster/k1/default/web");
    assert!(status_ips(&kube.get("Service", Some("default"), "other").unwrap()).is_empty(), "not ours");
    eventually(10, "an IPAllocated event", || {
        kube.events().into_iter().find(|e| e["reason"] == "IPAllocated" && e["regarding"]["name"] == "web")
    })
    .await;

    let status = api.json("/api/v1/clusters/k1/status").await;
    assert_eq!(status["connected"], true, "{status}");
    assert_eq!(status["claimed_services"], 1);
    let test = api.post("/api/v1/clusters/k1/test", json!({})).await;
    assert_eq!(test.body["reachable"], true, "{:?}", test.body);
    assert_eq!(test.body["missing"], json!([]), "{:?}", test.body);

    // The status is patched once, not again while nothing changes.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(kube.count_requests("PATCH", "/api/v1/namespaces/default/services/web/status"), 1);

    // Pool exhaustion: a Warning event with the reason.
    for n in ["b", "c", "d", "e"] {
        kube.create("Service", Some("default"), lb_service(n, json!({}))).unwrap();
    }
    eventually(20, "an AllocationFailed event", || {
        kube.events().into_iter().find(|e| e["reason"] == "AllocationFailed" && e["type"] == "Warning")
    })
    .await;

    // Deleting a Service releases its VIP.
    kube.delete("Service", Some("default"), "web").unwrap();
    eventually(20, "web's VIP to be released and reused", || {
        let e = kube.get("Service", Some("default"), "e")?;
        (!status_ips(&e).is_empty()).then_some(())
    })
    .await;
}
