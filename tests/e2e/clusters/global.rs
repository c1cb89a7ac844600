//! A global service across two clusters: one VIP on every member's status, priority failover in the snapshot.

use super::*;

#[tokio::test]
async fn global_service_shares_one_vip_and_fails_over_by_priority() {
    let (_app, api) = appliance_with_pools(&[("edge", &["192.0.2.0/29"])]).await;
    let (k1, _) = connected_cluster(&api, "k1").await;
    let (k2, _) = connected_cluster(&api, "k2").await;
    k1.create("Service", Some("default"), lb_service("web", json!({}))).unwrap();
    k1.create("EndpointSlice", Some("default"), slice("web-1", "web", 8080, &[("10.1.0.1", true), ("10.1.0.2", true)]))
        .unwrap();
    k2.create("Service", Some("default"), lb_service("web", json!({}))).unwrap();
    k2.create("EndpointSlice", Some("default"), slice("web-1", "web", 8080, &[("10.2.0.1", true)])).unwrap();
    k1.create("Service", Some("default"), lb_service("solo", json!({}))).unwrap();
    // Before the global service, each member has a VIP of its own.
    let own1 = wait_vips(&k1, "default", "web", 1).await;
    let own2 = wait_vips(&k2, "default", "web", 1).await;
    assert_ne!(own1, own2);
    let solo = wait_vips(&k1, "default", "solo", 1).await;

    let r = api
        .post(
            "/api/v1/global_services",
            json!({"name": "web", "members": [
                {"cluster": "k1", "namespace": "default", "service": "web", "priority": 0, "weight": 2},
                {"cluster": "k2", "namespace": "default", "service": "web", "priority": 1}
            ]}),
        )
        .await;
    r.expect(StatusCode::CREATED);
    let gvip = allocated_to(&api, "global/web").await;
    assert_eq!(gvip.len(), 1, "one VIP for the global service");
    assert_ne!(gvip, solo);

    // Every member Service shows the shared VIP; their own VIPs are released.
    for kube in [&k1, &k2] {
        eventually(20, "the global VIP on a member", || {
            (status_ips(&kube.get("Service", Some("default"), "web")?) == gvip).then_some(())
        })
        .await;
    }
    poll(&api, "/api/v1/allocations", "the members' own VIPs released", |a| {
        let owners: Vec<&str> = a["items"].as_array()?.iter().filter_map(|r| r["owner"].as_str()).collect();
        (!owners.contains(&"cluster/k1/default/web") && !owners.contains(&"cluster/k2/default/web")).then_some(())
    })
    .await;
    assert_eq!(status_ips(&k1.get("Service", Some("default"), "solo").unwrap()), solo, "others keep theirs");
    for member in ["k1/default/web", "k2/default/web"] {
        let entry = wait_snapshot(&api, member, "a member using the global VIP", |s| s["vips"] == json!(gvip)).await;
        assert_eq!(entry["global"], "web", "{entry}");
    }

    // Priority 0 serves while it has ready endpoints, with its members' weight.
    let global = wait_snapshot(&api, "global/web", "priority 0's backends", |s| {
        backend_addresses(s) == ["10.1.0.1", "10.1.0.2"]
    })
    .await;
    assert_eq!(global["origin"], "global");
    assert_eq!(global["vips"], json!(gvip));
    assert!(global["backends"].as_array().unwrap().iter().all(|b| b["weight"] == 2), "{global}");
    assert_eq!(global["ports"][0]["port"], 80);
    assert_eq!(global["ports"][0]["target_port"], 8080);

    // One endpoint of priority 0 not ready: still priority 0, with the other.
    k1.patch(
        "EndpointSlice",
        Some("default"),
        "web-1",
        json!({"endpoints": endpoint_list(&[("10.1.0.1", false), ("10.1.0.2", true)])}),
    )
    .unwrap();
    wait_snapshot(&api, "global/web", "priority 0 with one backend", |s| backend_addresses(s) == ["10.1.0.2"]).await;
    // All of priority 0 not ready: fails over to priority 1.
    k1.patch(
        "EndpointSlice",
        Some("default"),
        "web-1",
        json!({"endpoints": endpoint_list(&[("10.1.0.1", false), ("10.1.0.2", false)])}),
    )
    .unwrap();
    let global =
        wait_snapshot(&api, "global/web", "failover to priority 1", |s| backend_addresses(s) == ["10.2.0.1"]).await;
    assert_eq!(global["backends"][0]["weight"], 1);
    assert_eq!(global["vips"], json!(gvip), "the VIP does not move on failover");
    // Priority 0 recovers: back to it.
    k1.patch("EndpointSlice", Some("default"), "web-1", json!({"endpoints": endpoint_list(&[("10.1.0.1", true)])}))
        .unwrap();
    wait_snapshot(&api, "global/web", "back to priority 0", |s| backend_addresses(s) == ["10.1.0.1"]).await;
    // Priority 0's Service deleted: priority 1 serves.
    k1.delete("Service", Some("default"), "web").unwrap();
    wait_snapshot(&api, "global/web", "priority 1 after a deletion", |s| backend_addresses(s) == ["10.2.0.1"]).await;
    assert_eq!(status_ips(&k2.get("Service", Some("default"), "web").unwrap()), gvip);

    // Deleting the global service: the remaining member gets a VIP of its own again.
    api.delete("/api/v1/global_services/web").await.expect(StatusCode::NO_CONTENT);
    poll(&api, "/api/v1/allocations", "the global VIP released", |a| {
        let owners: Vec<&str> = a["items"].as_array()?.iter().filter_map(|r| r["owner"].as_str()).collect();
        (!owners.contains(&"global/web") && owners.contains(&"cluster/k2/default/web")).then_some(())
    })
    .await;
    let own = allocated_to(&api, "cluster/k2/default/web").await;
    assert_eq!(own.len(), 1);
    wait_not_served(&api, "global/").await;
    let entry = wait_snapshot(&api, "k2/default/web", "k2's web on its own", |s| s["global"].is_null()).await;
    assert_eq!(entry["vips"], json!(own));
    eventually(20, "k2's web with its own VIP", || {
        (status_ips(&k2.get("Service", Some("default"), "web")?) == own).then_some(())
    })
    .await;
}
