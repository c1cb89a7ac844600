//! Two clusters at once: distinct VIPs, correct status, per-cluster status reports, and an address asked for
//! by both.

use super::*;

#[tokio::test]
async fn two_clusters_get_distinct_vips_and_the_first_to_ask_keeps_a_contested_address() {
    let (_app, api) = appliance_with_pools(&[("edge", &["192.0.2.0/29"])]).await;
    let (k1, _) = connected_cluster(&api, "k1").await;
    let (k2, _) = connected_cluster(&api, "k2").await;
    for kube in [&k1, &k2] {
        kube.create("Service", Some("default"), lb_service("web", json!({}))).unwrap();
        kube.create("Service", Some("shop"), lb_service("api", json!({}))).unwrap();
        kube.create(
            "Service",
            Some("default"),
            json!({"metadata": {"name": "internal"}, "spec": {"ports": [{"port": 80}]}}),
        )
        .unwrap();
    }

    let mut all = Vec::new();
    for (cluster, kube) in [("k1", &k1), ("k2", &k2)] {
        for (ns, name) in [("default", "web"), ("shop", "api")] {
            let ips = wait_vips(kube, ns, name, 1).await;
            let svc = kube.get("Service", Some(ns), name).unwrap();
            assert_eq!(
                svc["status"]["loadBalancer"]["ingress"],
                json!([{"ip": ips[0], "ipMode": "VIP"}]),
                "{cluster}/{ns}/{name}"
            );
            assert_eq!(allocated_to(&api, &format!("cluster/{cluster}/{ns}/{name}")).await, ips);
            let status_writer = svc["metadata"]["managedFields"]
                .as_array()
                .and_then(|m| m.iter().find(|f| f["subresource"] == "status"))
                .map(|f| f["manager"].clone());
            assert_eq!(status_writer, Some(json!("portico")), "{svc}");
            all.push(ips[0].clone());
        }
        assert!(status_ips(&kube.get("Service", Some("default"), "internal").unwrap()).is_empty());
    }
    let mut unique = all.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 4, "VIPs are unique across clusters: {all:?}");
    assert!(all.iter().all(|ip| ip.starts_with("192.0.2.")), "{all:?}");

    for name in ["k1", "k2"] {
        let status = wait_connected(&api, name).await;
        assert_eq!(status["name"], name);
        assert_eq!(status["enabled"], true);
        assert_eq!(status["claimed_services"], 2, "{status}");
        assert_eq!(status["objects"]["services"], 3, "{status}");
        assert_eq!(status["objects"]["endpointslices"], 0, "{status}");
        assert!(status["since"].is_string() && status["last_sync"].is_string(), "{status}");
        assert_eq!(status["errors"], json!({}), "{status}");
    }
    api.get("/api/v1/clusters/nope/status").await.expect(StatusCode::NOT_FOUND);
    // At rest, nothing is compiled again: once the last status echoes are in, no new snapshot.
    let mut last = api.json("/api/v1/status").await["generation"].as_u64().unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = api.json("/api/v1/status").await["generation"].as_u64().unwrap();
        if now == last {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "snapshots never settle (generation {now})");
        last = now;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(api.json("/api/v1/status").await["generation"], last, "a snapshot while nothing changed");

    // Both clusters ask for 192.0.2.6; k2 asks first and keeps it, although k1 sorts first by name.
    let wanted = json!({"portico.io/load-balancer-ips": "192.0.2.6"});
    k2.create("Service", Some("default"), lb_service("wanted", wanted.clone())).unwrap();
    assert_eq!(wait_vips(&k2, "default", "wanted", 1).await, ["192.0.2.6"]);
    k1.create("Service", Some("default"), lb_service("wanted", wanted)).unwrap();
    let warning = wait_event(&k1, "wanted", "AllocationFailed").await;
    assert_eq!(warning["type"], "Warning");
    let note = warning["note"].as_str().unwrap();
    assert!(note.contains("192.0.2.6") && note.contains("cluster/k2/default/wanted"), "{note}");
    let entry = wait_snapshot(&api, "k1/default/wanted", "k1's allocation error", |s| {
        s["allocation_error"].as_str().is_some_and(|e| e.contains("192.0.2.6"))
    })
    .await;
    assert_eq!(entry["vips"], json!([]));
    assert!(status_ips(&k1.get("Service", Some("default"), "wanted").unwrap()).is_empty());
    assert_eq!(status_ips(&k2.get("Service", Some("default"), "wanted").unwrap()), ["192.0.2.6"]);
    assert!(k2.events().iter().all(|e| e["reason"] != "AllocationFailed"), "the holder is not warned");

    // Someone clears a status we wrote: it is written again.
    let mut cleared = k2.get("Service", Some("shop"), "api").unwrap();
    let api_vip = status_ips(&cleared);
    cleared["status"] = json!({"loadBalancer": {}});
    k2.update_status("Service", Some("shop"), cleared).unwrap();
    eventually(20, "k2's api status written again", || {
        (status_ips(&k2.get("Service", Some("shop"), "api")?) == api_vip).then_some(())
    })
    .await;

    // When the holder goes, the address goes to the one that waited for it.
    k2.delete("Service", Some("default"), "wanted").unwrap();
    assert_eq!(wait_vips(&k1, "default", "wanted", 1).await, ["192.0.2.6"]);
    let allocated = wait_event(&k1, "wanted", "IPAllocated").await;
    assert!(allocated["note"].as_str().unwrap().contains("192.0.2.6"), "{allocated}");
    assert_eq!(allocated_to(&api, "cluster/k1/default/wanted").await, ["192.0.2.6"]);
    assert!(allocated_to(&api, "cluster/k2/default/wanted").await.is_empty());
}
