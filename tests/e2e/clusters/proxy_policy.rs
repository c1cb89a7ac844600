//! How the L4 proxy serves a cluster Service: `sessionAffinity` from its spec and the rest from the
//! `portico.io/proxy` annotation; a bad annotation is a Warning Event and the defaults apply.

use super::*;

#[tokio::test]
async fn session_affinity_and_the_proxy_annotation_reach_the_snapshot() {
    let (_app, api) = appliance_with_pools(&[("edge", &["192.0.2.0/29"])]).await;
    let (kube, _) = connected_cluster(&api, "k1").await;
    let annotation = json!({"algorithm": "maglev", "drain_timeout": 5,
        "health_check": {"kind": "http", "path": "/healthz", "expected_status": "204"},
        "proxy_protocol": {"send": "v2"}})
    .to_string();
    kube.create(
        "Service",
        Some("default"),
        json!({"metadata": {"name": "web", "annotations": {"portico.io/proxy": annotation}},
               "spec": {"type": "LoadBalancer", "loadBalancerClass": "portico.io/lb",
                        "sessionAffinity": "ClientIP",
                        "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 600}},
                        "ports": [{"name": "http", "port": 80}]}}),
    )
    .unwrap();
    let entry =
        wait_snapshot(&api, "k1/default/web", "the policy in force", |s| s["proxy"]["algorithm"] == "maglev").await;
    let proxy = &entry["proxy"];
    assert_eq!((proxy["affinity"].clone(), proxy["affinity_timeout"].clone()), (json!("client_ip"), json!(600)));
    assert_eq!(proxy["health_check"]["path"], "/healthz");
    assert_eq!(proxy["health_check"]["expected_status"], "204");
    assert_eq!(proxy["proxy_protocol"]["send"], "v2");
    assert_eq!(proxy["drain_timeout"], 5);

    // A bad value: reported on the Service, naming the field, and the defaults apply (the affinity stays: it
    // comes from the spec).
    kube.patch(
        "Service",
        Some("default"),
        "web",
        json!({"metadata": {"annotations": {"portico.io/proxy": "{\"idle_timeout\": 0}"}}}),
    )
    .unwrap();
    let entry = wait_snapshot(&api, "k1/default/web", "the defaults again", |s| {
        s["proxy"]["algorithm"] == "weighted_round_robin"
    })
    .await;
    assert_eq!(entry["proxy"]["affinity"], "client_ip");
    assert!(entry["warnings"].to_string().contains("idle_timeout"), "{entry}");
    let event = wait_event(&kube, "web", "InvalidConfiguration").await;
    assert!(event.to_string().contains("portico.io/proxy"), "{event}");
}
