//! Ingresses whose IngressClass has our controller get the cluster's Ingress VIP in their status.

use super::*;

fn ingress(name: &str, class: &str) -> Value {
    json!({
        "metadata": {"name": name},
        "spec": {"ingressClassName": class, "rules": [{"host": format!("{name}.example.com"), "http": {"paths": [
            {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "web", "port": {"number": 80}}}}
        ]}}]}
    })
}

fn ingress_ips(ing: &Value) -> Vec<String> {
    status_ips(ing)
}

#[tokio::test]
async fn ingresses_of_our_class_get_the_ingress_vip() {
    let (_app, api) = appliance_with_pools(&[("edge", &["192.0.2.0/29"])]).await;
    let (kube, _) = connected_cluster(&api, "k1").await;
    kube.create(
        "IngressClass",
        None,
        json!({"metadata": {"name": "portico"}, "spec": {"controller": "portico.io/ingress"}}),
    )
    .unwrap();
    kube.create(
        "IngressClass",
        None,
        json!({"metadata": {"name": "nginx"}, "spec": {"controller": "k8s.io/ingress-nginx"}}),
    )
    .unwrap();
    kube.create("Service", Some("default"), lb_service("web", json!({}))).unwrap();
    // Only TLS Secrets are watched (for Ingress TLS); the cluster's other Secrets are never read.
    kube.create(
        "Secret",
        Some("default"),
        json!({"metadata": {"name": "shop-tls"}, "type": "kubernetes.io/tls",
               "stringData": {"tls.crt": "cert", "tls.key": "key"}}),
    )
    .unwrap();
    kube.create("Secret", Some("default"), json!({"metadata": {"name": "db"}, "stringData": {"password": "p"}}))
        .unwrap();
    kube.create("Ingress", Some("default"), ingress("shop", "portico")).unwrap();
    kube.create("Ingress", Some("default"), ingress("blog", "nginx")).unwrap();

    let vip = poll(&api, "/api/v1/allocations", "the Ingress VIP", |a| {
        a["items"].as_array()?.iter().find(|r| r["owner"] == "ingress/k1").map(|r| r["address"].clone())
    })
    .await;
    let vip = vip.as_str().unwrap().to_string();
    let shop = eventually(20, "shop's status", || {
        let ing = kube.get("Ingress", Some("default"), "shop")?;
        (!ingress_ips(&ing).is_empty()).then_some(ing)
    })
    .await;
    assert_eq!(ingress_ips(&shop), std::slice::from_ref(&vip));
    assert_eq!(
        shop["status"]["loadBalancer"]["ingress"][0].as_object().unwrap().keys().collect::<Vec<_>>(),
        ["ip"],
        "an Ingress status has no ipMode: {shop}"
    );
    let web = wait_vips(&kube, "default", "web", 1).await;
    assert_ne!(web, std::slice::from_ref(&vip), "the Ingress VIP is its own");

    // A second Ingress of our class shares the same VIP.
    kube.create("Ingress", Some("default"), ingress("docs", "portico")).unwrap();
    eventually(20, "docs's status", || {
        (ingress_ips(&kube.get("Ingress", Some("default"), "docs")?) == [vip.clone()]).then_some(())
    })
    .await;
    let status = wait_connected(&api, "k1").await;
    assert_eq!(status["claimed_ingresses"], 2, "{status}");
    assert_eq!(status["objects"]["ingressclasses"], 2, "{status}");
    assert_eq!(status["objects"]["ingresses"], 3, "{status}");
    assert_eq!(status["objects"]["secrets"], 1, "{status}");
    let secret_reads: Vec<String> =
        kube.requests().iter().filter(|r| r.path.contains("/secrets")).map(|r| r.query.clone()).collect();
    assert!(
        !secret_reads.is_empty() && secret_reads.iter().all(|q| q.contains("fieldSelector=type")),
        "{secret_reads:?}"
    );

    // Another controller's Ingress is left alone.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let blog = kube.get("Ingress", Some("default"), "blog").unwrap();
    assert!(ingress_ips(&blog).is_empty(), "{blog}");
    assert_eq!(kube.count_requests("PATCH", "/apis/networking.k8s.io/v1/namespaces/default/ingresses/blog/status"), 0);
    assert_eq!(kube.count_requests("PATCH", "/apis/networking.k8s.io/v1/namespaces/default/ingresses/shop/status"), 1);

    // Someone clears shop's status: it is written again.
    let mut cleared = kube.get("Ingress", Some("default"), "shop").unwrap();
    cleared["status"] = json!({"loadBalancer": {}});
    kube.update_status("Ingress", Some("default"), cleared).unwrap();
    eventually(20, "shop's status written again", || {
        (ingress_ips(&kube.get("Ingress", Some("default"), "shop")?) == [vip.clone()]).then_some(())
    })
    .await;

    // docs moves to another controller's class: our VIP comes off its status (and only ours would).
    kube.patch("Ingress", Some("default"), "docs", json!({"spec": {"ingressClassName": "nginx"}})).unwrap();
    eventually(20, "docs's status cleared", || {
        ingress_ips(&kube.get("Ingress", Some("default"), "docs")?).is_empty().then_some(())
    })
    .await;
    poll(&api, "/api/v1/clusters/k1/status", "one Ingress claimed", |s| (s["claimed_ingresses"] == 1).then_some(()))
        .await;
    // The last Ingress of ours goes: the Ingress VIP is released.
    kube.delete("Ingress", Some("default"), "shop").unwrap();
    poll(&api, "/api/v1/allocations", "the Ingress VIP released", |a| {
        (!a["items"].as_array()?.iter().any(|r| r["owner"] == "ingress/k1")).then_some(())
    })
    .await;
    assert_eq!(status_ips(&kube.get("Service", Some("default"), "web").unwrap()), web);
}
