//! Cluster sync against the test Kubernetes API server: claiming, VIP allocation, status write-back, events.

use crate::harness::Appliance;
use portico_test_apiserver::{TestApiServer, permissions};
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
