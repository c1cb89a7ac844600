//! The Kubernetes allocation rules end to end: sharing keys, requested addresses, dual stack, pool selectors
//! and chosen pools, and which Services are ours (classes, types).

use super::*;

fn svc(name: &str, annotations: Value, ports: Value) -> Value {
    json!({
        "metadata": {"name": name, "annotations": annotations},
        "spec": {"type": "LoadBalancer", "loadBalancerClass": "portico.io/lb", "ports": ports}
    })
}

#[tokio::test]
async fn sharing_keys_and_requested_addresses() {
    let (_app, api) = appliance_with_pools(&[("edge", &["192.0.2.0/28"])]).await;
    let (kube, _) = connected_cluster(&api, "k1").await;
    let dns = json!({"portico.io/sharing-key": "dns"});
    let create = |name: &str, annotations: &Value, ports: Value| {
        kube.create("Service", Some("default"), svc(name, annotations.clone(), ports)).unwrap();
    };

    // Same key, ports that do not clash (53/TCP and 53/UDP): one VIP.
    create("dns-tcp", &dns, json!([{"port": 53, "protocol": "TCP"}]));
    let tcp = wait_vips(&kube, "default", "dns-tcp", 1).await;
    create("dns-udp", &dns, json!([{"port": 53, "protocol": "UDP"}]));
    let udp = wait_vips(&kube, "default", "dns-udp", 1).await;
    assert_eq!(tcp, udp, "53/TCP and 53/UDP share");
    // Same key, 53/TCP again: a VIP of its own.
    create("dns-clash", &dns, json!([{"port": 53, "protocol": "TCP"}]));
    let clash = wait_vips(&kube, "default", "dns-clash", 1).await;
    assert_ne!(clash, tcp, "a port clash gets another VIP");
    // Another key never shares, even without a clash.
    create("web", &json!({"portico.io/sharing-key": "web"}), json!([{"port": 80}]));
    let web = wait_vips(&kube, "default", "web", 1).await;
    assert!(web != tcp && web != clash, "{web:?}");
    let mut owners: Vec<String> =
        allocations(&api).await.into_iter().filter(|(_, a)| *a == tcp[0]).map(|(o, _)| o).collect();
    owners.sort();
    assert_eq!(owners, ["cluster/k1/default/dns-tcp", "cluster/k1/default/dns-udp"], "one row per sharer");

    // Asking for the shared address with a clashing port: refused, saying why.
    let late = json!({"portico.io/sharing-key": "dns", "portico.io/load-balancer-ips": tcp[0]});
    create("dns-late", &late, json!([{"port": 53, "protocol": "UDP"}]));
    let warning = wait_event(&kube, "dns-late", "AllocationFailed").await;
    let note = warning["note"].as_str().unwrap();
    assert!(note.contains(&tcp[0]) && note.contains("53/udp"), "{note}");

    // Releasing one sharer keeps the address for the other.
    kube.delete("Service", Some("default"), "dns-tcp").unwrap();
    poll(&api, "/api/v1/allocations", "dns-tcp released", |a| {
        let rows = a["items"].as_array()?;
        (!rows.iter().any(|r| r["owner"] == "cluster/k1/default/dns-tcp")).then_some(())
    })
    .await;
    assert_eq!(allocated_to(&api, "cluster/k1/default/dns-udp").await, tcp);
    assert_eq!(status_ips(&kube.get("Service", Some("default"), "dns-udp").unwrap()), tcp);

    // Requested addresses: the annotation (several, comma-separated), the deprecated spec.loadBalancerIP, and
    // the annotation winning over the field.
    create("pinned", &json!({"portico.io/load-balancer-ips": "192.0.2.10, 192.0.2.11"}), json!([{"port": 80}]));
    let mut field = svc("legacy", json!({}), json!([{"port": 80}]));
    field["spec"]["loadBalancerIP"] = json!("192.0.2.12");
    kube.create("Service", Some("default"), field).unwrap();
    let mut both = svc("both", json!({"portico.io/load-balancer-ips": "192.0.2.13"}), json!([{"port": 80}]));
    both["spec"]["loadBalancerIP"] = json!("192.0.2.14");
    kube.create("Service", Some("default"), both).unwrap();
    assert_eq!(wait_vips(&kube, "default", "pinned", 2).await, ["192.0.2.10", "192.0.2.11"]);
    assert_eq!(wait_vips(&kube, "default", "legacy", 1).await, ["192.0.2.12"]);
    assert_eq!(wait_vips(&kube, "default", "both", 1).await, ["192.0.2.13"]);
    assert!(allocated_to(&api, "cluster/k1/default/both").await == ["192.0.2.13"]);

    // An address outside every pool, and one that is taken.
    create("outside", &json!({"portico.io/load-balancer-ips": "198.51.100.1"}), json!([{"port": 80}]));
    let warning = wait_event(&kube, "outside", "AllocationFailed").await;
    assert!(warning["note"].as_str().unwrap().contains("198.51.100.1 is outside every pool"), "{warning}");
    create("taken", &json!({"portico.io/load-balancer-ips": "192.0.2.12"}), json!([{"port": 80}]));
    let warning = wait_event(&kube, "taken", "AllocationFailed").await;
    let note = warning["note"].as_str().unwrap();
    assert!(note.contains("192.0.2.12") && note.contains("cluster/k1/default/legacy"), "{note}");
    // A static service cannot take a cluster Service's address either.
    let r = api
        .post(
            "/api/v1/services",
            json!({"name": "static", "addresses": ["192.0.2.12"], "ports": [{"port": 80}],
                   "backends": [{"address": "10.0.0.1:80"}]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{r:?}");
    assert!(r.text.contains("cluster/k1/default/legacy"), "{r:?}");
    for name in ["outside", "taken"] {
        assert!(status_ips(&kube.get("Service", Some("default"), name).unwrap()).is_empty(), "{name}");
    }

    // Two Services asking for the same address under one sharing key (ports that do not clash) both get it.
    let both_ask = json!({"portico.io/sharing-key": "pair", "portico.io/load-balancer-ips": "192.0.2.9"});
    create("pair-tcp", &both_ask, json!([{"port": 53, "protocol": "TCP"}]));
    create("pair-udp", &both_ask, json!([{"port": 53, "protocol": "UDP"}]));
    assert_eq!(wait_vips(&kube, "default", "pair-tcp", 1).await, ["192.0.2.9"]);
    assert_eq!(wait_vips(&kube, "default", "pair-udp", 1).await, ["192.0.2.9"]);

    // Changing the request moves the VIP (and the old address is free again).
    kube.patch(
        "Service",
        Some("default"),
        "pinned",
        json!({"metadata": {"annotations": {"portico.io/load-balancer-ips": "192.0.2.15"}}}),
    )
    .unwrap();
    assert_eq!(wait_vips(&kube, "default", "pinned", 1).await, ["192.0.2.15"]);
    assert_eq!(allocated_to(&api, "cluster/k1/default/pinned").await, ["192.0.2.15"]);
}

#[tokio::test]
async fn dual_stack_follows_ip_family_policy() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let kube = TestApiServer::builder().bookmark_interval(Duration::from_millis(500)).dual_stack(true).start().await;
    let token = kube.add_token("portico", permissions::appliance());
    let (_app, api) = appliance_with_pools(&[("v4", &["192.0.2.0/29"])]).await;
    add_cluster(&api, "k1", &kube, &token, json!({})).await;
    let with_policy = |name: &str, policy: &str, families: Value| {
        let mut s = lb_service(name, json!({}));
        s["spec"]["ipFamilyPolicy"] = json!(policy);
        if !families.is_null() {
            s["spec"]["ipFamilies"] = families;
        }
        s
    };

    // Only IPv4 pools: PreferDualStack gets its IPv4 address; RequireDualStack gets nothing and a warning.
    let prefer = kube.create("Service", Some("default"), with_policy("prefer", "PreferDualStack", Value::Null));
    assert_eq!(prefer.unwrap()["spec"]["ipFamilies"], json!(["IPv4", "IPv6"]), "a dual-stack cluster");
    kube.create("Service", Some("default"), with_policy("require", "RequireDualStack", Value::Null)).unwrap();
    let prefer_v4 = wait_vips(&kube, "default", "prefer", 1).await;
    assert!(prefer_v4[0].starts_with("192.0.2."), "{prefer_v4:?}");
    let warning = wait_event(&kube, "require", "AllocationFailed").await;
    assert!(warning["note"].as_str().unwrap().contains("IPv6"), "{warning}");
    assert!(status_ips(&kube.get("Service", Some("default"), "require").unwrap()).is_empty());
    assert!(allocated_to(&api, "cluster/k1/default/require").await.is_empty(), "all or nothing");
    assert!(kube.events().iter().all(|e| !(e["reason"] == "AllocationFailed" && e["regarding"]["name"] == "prefer")));

    // An IPv6 pool appears: RequireDualStack gets one address of each family, primary first in the cluster.
    api.post("/api/v1/pools", json!({"name": "v6", "addresses": ["2001:db8::/125"]})).await.expect(StatusCode::CREATED);
    let require = wait_vips(&kube, "default", "require", 2).await;
    let v4: Vec<&String> = require.iter().filter(|ip| ip.contains('.')).collect();
    let v6: Vec<&String> = require.iter().filter(|ip| ip.contains(':')).collect();
    assert_eq!((v4.len(), v6.len()), (1, 1), "{require:?}");
    assert!(v6[0].starts_with("2001:db8::"), "{require:?}");
    let svc = kube.get("Service", Some("default"), "require").unwrap();
    for ing in svc["status"]["loadBalancer"]["ingress"].as_array().unwrap() {
        assert_eq!(ing["ipMode"], "VIP");
    }
    assert!(status_ips(&kube.get("Service", Some("default"), "prefer").unwrap()).contains(&prefer_v4[0]));

    // IPv6 first, single stack: one IPv6 address only.
    kube.create("Service", Some("default"), with_policy("v6only", "SingleStack", json!(["IPv6"]))).unwrap();
    let v6only = wait_vips(&kube, "default", "v6only", 1).await;
    assert!(v6only[0].starts_with("2001:db8::"), "{v6only:?}");
    // IPv6 primary, dual: both.
    kube.create("Service", Some("default"), with_policy("v6dual", "RequireDualStack", json!(["IPv6", "IPv4"])))
        .unwrap();
    let v6dual = wait_vips(&kube, "default", "v6dual", 2).await;
    assert_eq!(v6dual.iter().filter(|ip| ip.contains(':')).count(), 1, "{v6dual:?}");
}

#[tokio::test]
async fn pool_selectors_and_chosen_pools() {
    let (_app, api) = appliance_with_pools(&[]).await;
    let (k1, _) = connected_cluster(&api, "k1").await;
    let (k2, _) = connected_cluster(&api, "k2").await;
    for pool in [
        json!({"name": "a-gold", "addresses": ["192.0.2.0/30"], "selectors": {"service_labels": {"tier": "gold"}}}),
        json!({"name": "b-team", "addresses": ["192.0.2.4/30"], "selectors": {"namespaces": ["team"]}}),
        json!({"name": "c-k2", "addresses": ["192.0.2.8/30"], "selectors": {"clusters": ["k2"]}}),
        json!({"name": "d-manual", "addresses": ["192.0.2.12/30"], "auto_assign": false}),
        json!({"name": "z-any", "addresses": ["192.0.2.16/30"]}),
    ] {
        api.post("/api/v1/pools", pool).await.expect(StatusCode::CREATED);
    }
    let labelled = |name: &str, labels: Value, annotations: Value| {
        let mut s = lb_service(name, annotations);
        s["metadata"]["labels"] = labels;
        s
    };
    k1.create("Service", Some("default"), lb_service("plain", json!({}))).unwrap();
    k1.create("Service", Some("default"), labelled("gold", json!({"tier": "gold"}), json!({}))).unwrap();
    k1.create("Service", Some("team"), lb_service("app", json!({}))).unwrap();
    k2.create("Service", Some("default"), lb_service("plain", json!({}))).unwrap();
    k1.create("Service", Some("default"), lb_service("manual", json!({"portico.io/pool": "d-manual"}))).unwrap();
    k1.create(
        "Service",
        Some("default"),
        labelled("gold-general", json!({"tier": "gold"}), json!({"portico.io/pool": "z-any"})),
    )
    .unwrap();
    k1.create("Service", Some("default"), lb_service("not-admitted", json!({"portico.io/pool": "c-k2"}))).unwrap();
    k1.create("Service", Some("default"), lb_service("no-such-pool", json!({"portico.io/pool": "nope"}))).unwrap();

    let pool_of = |owner: &str| {
        let owner = owner.to_string();
        let api = api.clone();
        async move {
            poll(&api, "/api/v1/allocations?limit=1000", &format!("an allocation of {owner}"), |a| {
                a["items"].as_array()?.iter().find(|r| r["owner"] == owner.as_str()).map(|r| r["pool"].clone())
            })
            .await
        }
    };
    assert_eq!(pool_of("cluster/k1/default/plain").await, "z-any", "no selector matches it");
    assert_eq!(pool_of("cluster/k1/default/gold").await, "a-gold");
    assert_eq!(pool_of("cluster/k1/team/app").await, "b-team");
    assert_eq!(pool_of("cluster/k2/default/plain").await, "c-k2");
    assert_eq!(pool_of("cluster/k1/default/manual").await, "d-manual", "a chosen pool need not auto-assign");
    assert_eq!(pool_of("cluster/k1/default/gold-general").await, "z-any", "the annotation chooses");
    let ip = wait_vips(&k1, "default", "gold", 1).await;
    assert!(["192.0.2.0", "192.0.2.1", "192.0.2.2", "192.0.2.3"].contains(&ip[0].as_str()), "{ip:?}");

    let warning = wait_event(&k1, "not-admitted", "AllocationFailed").await;
    let note = warning["note"].as_str().unwrap();
    assert!(note.contains("'c-k2' does not admit"), "{note}");
    let warning = wait_event(&k1, "no-such-pool", "AllocationFailed").await;
    assert!(warning["note"].as_str().unwrap().contains("no pool is named 'nope'"), "{warning}");
    for name in ["not-admitted", "no-such-pool"] {
        assert!(allocated_to(&api, &format!("cluster/k1/default/{name}")).await.is_empty(), "{name}");
    }

    // The gold pool has 4 addresses: once they are taken, gold Services fall back to the next pool that admits
    // them (z-any, without selectors).
    for n in 0..4 {
        k1.create("Service", Some("default"), labelled(&format!("gold{n}"), json!({"tier": "gold"}), json!({})))
            .unwrap();
    }
    let mut pools = Vec::new();
    for n in 0..4 {
        pools.push(pool_of(&format!("cluster/k1/default/gold{n}")).await);
    }
    assert_eq!(pools.iter().filter(|p| **p == "a-gold").count(), 3, "{pools:?}");
    assert_eq!(pools.iter().filter(|p| **p == "z-any").count(), 1, "{pools:?}");
}

#[tokio::test]
async fn class_and_type_decide_what_is_ours() {
    let (_app, api) = appliance_with_pools(&[("edge", &["192.0.2.0/29"])]).await;
    let kube = kube_server().await;
    let token = kube.add_token("portico", permissions::appliance());
    add_cluster(&api, "k1", &kube, &token, json!({"default_class": true})).await;
    let classless = json!({"metadata": {"name": "classless"},
                           "spec": {"type": "LoadBalancer", "ports": [{"port": 80}]}});
    kube.create("Service", Some("default"), classless).unwrap();
    kube.create("Service", Some("default"), lb_service("ours", json!({}))).unwrap();
    kube.create(
        "Service",
        Some("default"),
        json!({"metadata": {"name": "theirs"},
               "spec": {"type": "LoadBalancer", "loadBalancerClass": "example.com/other", "ports": [{"port": 80}]}}),
    )
    .unwrap();
    kube.create(
        "Service",
        Some("default"),
        json!({"metadata": {"name": "nodeport"},
        "spec": {"type": "NodePort", "ports": [{"port": 80}]}}),
    )
    .unwrap();
    let classless_ip = wait_vips(&kube, "default", "classless", 1).await;
    let ours_ip = wait_vips(&kube, "default", "ours", 1).await;
    assert_ne!(classless_ip, ours_ip);
    wait_connected(&api, "k1").await;
    assert_eq!(api.json("/api/v1/clusters/k1/status").await["claimed_services"], 2);
    for name in ["theirs", "nodeport"] {
        assert!(status_ips(&kube.get("Service", Some("default"), name).unwrap()).is_empty(), "{name}");
    }

    // A type change away from LoadBalancer releases the VIP and takes it off the status.
    kube.patch("Service", Some("default"), "ours", json!({"spec": {"type": "ClusterIP"}})).unwrap();
    wait_no_vips(&kube, "default", "ours").await;
    poll(&api, "/api/v1/allocations", "ours released", |a| {
        (!a["items"].as_array()?.iter().any(|r| r["owner"] == "cluster/k1/default/ours")).then_some(())
    })
    .await;
    wait_not_served(&api, "k1/default/ours").await;
    // Back to LoadBalancer, now of another class: still not ours.
    kube.patch(
        "Service",
        Some("default"),
        "ours",
        json!({"spec": {"type": "LoadBalancer", "loadBalancerClass": "example.com/other"}}),
    )
    .unwrap();

    // The cluster stops claiming class-less Services: released, status cleared, nothing else touched.
    api.put("/api/v1/clusters/k1", json!({"name": "k1", "default_class": false})).await.expect(StatusCode::OK);
    wait_no_vips(&kube, "default", "classless").await;
    poll(&api, "/api/v1/allocations", "classless released", |a| a["items"].as_array()?.is_empty().then_some(())).await;
    // And claims them again: a VIP again.
    api.put("/api/v1/clusters/k1", json!({"name": "k1", "default_class": true})).await.expect(StatusCode::OK);
    wait_vips(&kube, "default", "classless", 1).await;
    // A status someone else wrote on a Service that is not ours is left alone.
    assert!(status_ips(&kube.get("Service", Some("default"), "ours").unwrap()).is_empty());
    assert!(status_ips(&kube.get("Service", Some("default"), "theirs").unwrap()).is_empty());
}
