//! Restarting the appliance re-asserts what it allocated, and removing a cluster releases what it held.

use super::*;

/// Requests that change something in the cluster (status patches, events), as "METHOD path".
fn writes(kube: &TestApiServer) -> Vec<String> {
    kube.requests()
        .iter()
        .filter(|r| !matches!(r.method.as_str(), "GET" | "HEAD") && !r.path.contains("selfsubjectaccessreviews"))
        .map(|r| format!("{} {}", r.method, r.path))
        .collect()
}

#[tokio::test]
async fn restart_reasserts_and_removing_a_cluster_releases_its_allocations() {
    let (mut app, api) = appliance_with_pools(&[("edge", &["192.0.2.0/28"])]).await;
    let (k1, _) = connected_cluster(&api, "k1").await;
    let (k2, _) = connected_cluster(&api, "k2").await;
    for (kube, pinned) in [(&k1, "192.0.2.12"), (&k2, "192.0.2.13")] {
        kube.create("Service", Some("default"), lb_service("web", json!({}))).unwrap();
        kube.create("Service", Some("default"), lb_service("api", json!({}))).unwrap();
        let annotations = json!({"portico.io/load-balancer-ips": pinned});
        kube.create("Service", Some("default"), lb_service("pinned", annotations)).unwrap();
    }
    let mut vips = Vec::new();
    for kube in [&k1, &k2] {
        for name in ["web", "api", "pinned"] {
            vips.push(wait_vips(kube, "default", name, 1).await);
            wait_event(kube, name, "IPAllocated").await;
        }
    }
    wait_connected(&api, "k1").await;
    wait_connected(&api, "k2").await;
    let before = allocations(&api).await;
    assert_eq!(before.len(), 6);
    // Let the last status writes and events settle.
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Restart: same allocations, no status patched, no event re-published.
    k1.clear_requests();
    k2.clear_requests();
    app.restart().await;
    let api = Api::new(app.base(), api.token.clone(), false);
    wait_connected(&api, "k1").await;
    wait_connected(&api, "k2").await;
    for (kube, cluster) in [(&k1, "k1"), (&k2, "k2")] {
        wait_snapshot(&api, &format!("{cluster}/default/web"), "web served after the restart", |s| {
            s["vips"].as_array().is_some_and(|v| !v.is_empty())
        })
        .await;
        // A change after the restart is served: the appliance is through its start.
        kube.create("Service", Some("default"), lb_service("late", json!({}))).unwrap();
        wait_vips(kube, "default", "late", 1).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after: Vec<(String, String)> =
        allocations(&api).await.into_iter().filter(|(o, _)| !o.ends_with("/late")).collect();
    assert_eq!(after, before, "nothing reallocated");
    let mut i = 0;
    for kube in [&k1, &k2] {
        for name in ["web", "api", "pinned"] {
            assert_eq!(status_ips(&kube.get("Service", Some("default"), name).unwrap()), vips[i], "{name}");
            i += 1;
        }
        // Writes about `late` are expected; its events are named by generated names, so they are counted.
        let writes = writes(kube);
        let statuses: Vec<&String> = writes.iter().filter(|w| w.contains("/status")).collect();
        assert_eq!(statuses, ["PATCH /api/v1/namespaces/default/services/late/status"], "no other status patched");
        let events = writes.iter().filter(|w| w.contains("/events")).count();
        let late_events = kube.events().iter().filter(|e| e["regarding"]["name"] == "late").count();
        assert_eq!(events, late_events, "no event re-published: {writes:?}");
    }

    // Removing k1 at runtime: its allocations are released, its Services lose our VIPs, k2 is untouched.
    let k1_vips: Vec<String> =
        allocations(&api).await.into_iter().filter(|(o, _)| o.starts_with("cluster/k1/")).map(|(_, a)| a).collect();
    assert_eq!(k1_vips.len(), 4);
    k2.clear_requests();
    api.delete("/api/v1/clusters/k1").await.expect(StatusCode::NO_CONTENT);
    poll(&api, "/api/v1/allocations", "k1's allocations released", |a| {
        let rows = a["items"].as_array()?;
        (!rows.iter().any(|r| r["owner"].as_str().is_some_and(|o| o.starts_with("cluster/k1/")))).then_some(())
    })
    .await;
    for name in ["web", "api", "pinned", "late"] {
        wait_no_vips(&k1, "default", name).await;
    }
    wait_not_served(&api, "k1/").await;
    api.get("/api/v1/clusters/k1/status").await.expect(StatusCode::NOT_FOUND);
    let k2_rows = allocations(&api).await;
    assert_eq!(k2_rows.len(), 4, "{k2_rows:?}");
    assert!(k2_rows.iter().all(|(o, _)| o.starts_with("cluster/k2/")), "{k2_rows:?}");
    assert_eq!(status_ips(&k2.get("Service", Some("default"), "web").unwrap()), vips[3]);
    assert!(writes(&k2).is_empty(), "k2 untouched: {:?}", writes(&k2));
    // k1 is no longer watched: new Services there are left alone.
    eventually(20, "k1's watches closed", || (k1.open_watches() == 0).then_some(())).await;
    k1.create("Service", Some("default"), lb_service("ignored", json!({}))).unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(status_ips(&k1.get("Service", Some("default"), "ignored").unwrap()).is_empty());
    // The released addresses are free for k2.
    k2.create("Service", Some("default"), lb_service("more", json!({}))).unwrap();
    let more = wait_vips(&k2, "default", "more", 1).await;
    assert!(k1_vips.contains(&more[0]), "the lowest free address is one k1 held: {more:?} {k1_vips:?}");
}

#[tokio::test]
async fn a_disabled_cluster_is_disconnected_and_releases_its_vips() {
    let (_app, api) = appliance_with_pools(&[("edge", &["192.0.2.0/29"])]).await;
    let (kube, _) = connected_cluster(&api, "k1").await;
    kube.create("Service", Some("default"), lb_service("web", json!({}))).unwrap();
    let vip = wait_vips(&kube, "default", "web", 1).await;
    wait_connected(&api, "k1").await;

    api.put("/api/v1/clusters/k1", json!({"name": "k1", "enabled": false})).await.expect(StatusCode::OK);
    wait_no_vips(&kube, "default", "web").await;
    poll(&api, "/api/v1/allocations", "k1's VIPs released", |a| a["items"].as_array()?.is_empty().then_some(())).await;
    wait_not_served(&api, "k1/").await;
    let status = api.json("/api/v1/clusters/k1/status").await;
    assert_eq!((status["enabled"].clone(), status["connected"].clone()), (json!(false), json!(false)), "{status}");
    eventually(20, "k1's watches closed", || (kube.open_watches() == 0).then_some(())).await;

    // Enabled again (the stored credentials were kept): connected, and the Service gets a VIP again.
    api.put("/api/v1/clusters/k1", json!({"name": "k1", "enabled": true})).await.expect(StatusCode::OK);
    wait_connected(&api, "k1").await;
    let again = wait_vips(&kube, "default", "web", 1).await;
    assert_eq!(again, vip, "the Service gets its last address back");
}

#[tokio::test]
async fn changes_while_the_appliance_is_down_are_caught_up_on_start() {
    let (mut app, api) = appliance_with_pools(&[("edge", &["192.0.2.0/29"])]).await;
    let (kube, _) = connected_cluster(&api, "k1").await;
    for name in ["a", "b"] {
        kube.create("Service", Some("default"), lb_service(name, json!({}))).unwrap();
    }
    let a = wait_vips(&kube, "default", "a", 1).await;
    let b = wait_vips(&kube, "default", "b", 1).await;

    app.stop().await;
    kube.delete("Service", Some("default"), "b").unwrap();
    kube.create("Service", Some("default"), lb_service("c", json!({"portico.io/load-balancer-ips": b[0]}))).unwrap();
    app.start_again().await;
    let api = Api::new(app.base(), api.token.clone(), false);

    // The deletion is seen by the fresh list: b's address is released, and c (which asked for it) gets it.
    assert_eq!(wait_vips(&kube, "default", "c", 1).await, b);
    assert_eq!(allocated_to(&api, "cluster/k1/default/c").await, b);
    assert!(allocated_to(&api, "cluster/k1/default/b").await.is_empty());
    assert_eq!(allocated_to(&api, "cluster/k1/default/a").await, a);
    assert_eq!(kube.count_requests("PATCH", "/api/v1/namespaces/default/services/a/status"), 1, "only at first");
}

#[tokio::test]
async fn a_restart_during_an_outage_keeps_serving_the_last_known_state() {
    let (mut app, api) = appliance_with_pools(&[("edge", &["192.0.2.0/29"])]).await;
    let (kube, _) = connected_cluster(&api, "k1").await;
    kube.create("Service", Some("default"), lb_service("a", json!({}))).unwrap();
    kube.create("EndpointSlice", Some("default"), slice("a-1", "a", 8080, &[("10.1.0.1", true)])).unwrap();
    let a = wait_vips(&kube, "default", "a", 1).await;
    wait_snapshot(&api, "k1/default/a", "a's backends", |s| backend_addresses(s) == ["10.1.0.1"]).await;

    kube.stop_listening().await;
    app.restart().await;
    let api = Api::new(app.base(), api.token.clone(), false);
    poll(&api, "/api/v1/clusters/k1/status", "k1 failing", |s| {
        s["errors"].as_object().is_some_and(|e| !e.is_empty()).then_some(())
    })
    .await;
    assert_eq!(allocated_to(&api, "cluster/k1/default/a").await, a, "the VIP stays allocated");
    let entry = wait_snapshot(&api, "k1/default/a", "a still served", |s| s["vips"] == json!(a)).await;
    assert_eq!(backend_addresses(&entry), ["10.1.0.1"]);
}
