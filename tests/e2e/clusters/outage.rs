//! The API server goes away, restarts with new resource versions, or answers 500: the appliance keeps what it
//! knows, recovers, and reallocates nothing.

use super::*;

#[tokio::test]
async fn outage_keeps_state_and_recovers_without_reallocating() {
    let (_app, api) = appliance_with_pools(&[("edge", &["192.0.2.0/29"])]).await;
    let (kube, _) = connected_cluster(&api, "k1").await;
    for name in ["keep", "gone"] {
        kube.create("Service", Some("default"), lb_service(name, json!({}))).unwrap();
        kube.create("EndpointSlice", Some("default"), slice(&format!("{name}-1"), name, 8080, &[("10.1.0.1", true)]))
            .unwrap();
    }
    let keep = wait_vips(&kube, "default", "keep", 1).await;
    let gone = wait_vips(&kube, "default", "gone", 1).await;
    wait_snapshot(&api, "k1/default/gone", "gone's backends", |s| backend_addresses(s) == ["10.1.0.1"]).await;
    wait_connected(&api, "k1").await;
    let before = allocations(&api).await;
    let serving_before = snapshot(&api, "k1/").await;

    kube.stop_listening().await;
    let status =
        poll(&api, "/api/v1/clusters/k1/status", "k1 disconnected", |s| (s["connected"] == false).then(|| s.clone()))
            .await;
    assert!(status["errors"].as_object().is_some_and(|e| !e.is_empty()), "an error is reported: {status}");
    assert!(status["since"].is_string(), "{status}");
    // Deleted while unreachable: nothing can tell the appliance yet.
    kube.delete("Service", Some("default"), "gone").unwrap();
    kube.clear_requests();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(allocations(&api).await, before, "VIPs stay allocated while the cluster is unreachable");
    assert_eq!(snapshot(&api, "k1/").await, serving_before, "and the services stay served, backends included");
    let health = api.json("/api/v1/status").await;
    assert_ne!(health["subsystems"]["clusters"]["health"], "ok", "{health}");

    kube.resume_listening().await.unwrap();
    wait_connected(&api, "k1").await;
    // Then the fresh view says `gone` is gone: released. `keep` keeps its VIP, its status is not touched.
    poll(&api, "/api/v1/allocations", "gone released", |a| {
        (!a["items"].as_array()?.iter().any(|r| r["owner"] == "cluster/k1/default/gone")).then_some(())
    })
    .await;
    wait_not_served(&api, "k1/default/gone").await;
    assert_eq!(allocated_to(&api, "cluster/k1/default/keep").await, keep);
    assert_eq!(status_ips(&kube.get("Service", Some("default"), "keep").unwrap()), keep);
    assert_eq!(kube.count_requests("PATCH", "/api/v1/namespaces/default/services/keep/status"), 0);
    let status = api.json("/api/v1/clusters/k1/status").await;
    assert_eq!(status["errors"], json!({}), "errors clear on recovery: {status}");
    // Still working: a new Service gets the released address.
    kube.create("Service", Some("default"), lb_service("new", json!({}))).unwrap();
    assert_eq!(wait_vips(&kube, "default", "new", 1).await, gone);
}

#[tokio::test]
async fn api_server_restart_relists_and_keeps_vips() {
    let (_app, api) = appliance_with_pools(&[("edge", &["192.0.2.0/29"])]).await;
    let (kube, _) = connected_cluster(&api, "k1").await;
    kube.create("Service", Some("default"), lb_service("a", json!({}))).unwrap();
    kube.create("Service", Some("default"), lb_service("b", json!({}))).unwrap();
    let a = wait_vips(&kube, "default", "a", 1).await;
    wait_vips(&kube, "default", "b", 1).await;
    wait_connected(&api, "k1").await;
    let rv_before = kube.resource_version();

    // A restart with reset resource versions (an etcd restore); b is gone in the restored state.
    kube.clear_requests();
    kube.restart();
    assert!(kube.resource_version() < rv_before, "versions were reset");
    kube.delete("Service", Some("default"), "b").unwrap();
    poll(&api, "/api/v1/allocations", "b released after the relist", |r| {
        (!r["items"].as_array()?.iter().any(|x| x["owner"] == "cluster/k1/default/b")).then_some(())
    })
    .await;
    let relisted = kube.requests().iter().any(|r| r.path == "/api/v1/services" && r.param("watch").is_none());
    assert!(relisted, "the Services were listed again");
    kube.create("Service", Some("default"), lb_service("c", json!({}))).unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    for r in kube.requests() {
        eprintln!("REQ {} {} {} {}", r.method, r.path, r.query, r.code);
    }
    wait_vips(&kube, "default", "c", 1).await;
    assert_eq!(allocated_to(&api, "cluster/k1/default/a").await, a);
    assert_eq!(kube.count_requests("PATCH", "/api/v1/namespaces/default/services/a/status"), 0);
    wait_connected(&api, "k1").await;
}

#[tokio::test]
async fn server_errors_are_survived() {
    let (_app, api) = appliance_with_pools(&[("edge", &["192.0.2.0/29"])]).await;
    let (kube, _) = connected_cluster(&api, "k1").await;
    kube.create("Service", Some("default"), lb_service("a", json!({}))).unwrap();
    wait_vips(&kube, "default", "a", 1).await;
    wait_connected(&api, "k1").await;

    // Watches drop and the next requests for Services fail with 500: the watch recovers.
    kube.fail_next(3, Some("/services"));
    kube.drop_watches();
    kube.create("Service", Some("default"), lb_service("b", json!({}))).unwrap();
    wait_vips(&kube, "default", "b", 1).await;
    let failed = kube.requests().iter().filter(|r| r.code == 500).count();
    assert!(failed >= 1, "the faults were hit");

    // A status write that fails is retried, without any other change to trigger it.
    kube.fail_next(2, Some("/status"));
    kube.create("Service", Some("default"), lb_service("c", json!({}))).unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    for r in kube.requests() {
        eprintln!("REQ {} {} {} {}", r.method, r.path, r.query, r.code);
    }
    wait_vips(&kube, "default", "c", 1).await;
    assert!(kube.count_requests("PATCH", "/api/v1/namespaces/default/services/c/status") >= 2);
    // Events failing do not stop anything either.
    kube.fail_next(2, Some("/events"));
    kube.create("Service", Some("default"), lb_service("d", json!({}))).unwrap();
    wait_vips(&kube, "default", "d", 1).await;
    wait_event(&kube, "d", "IPAllocated").await;
    wait_connected(&api, "k1").await;
}
