//! EndpointSlice changes flow into what the appliance serves (GET /api/v1/snapshot/services).

use super::*;

#[tokio::test]
async fn endpoint_slice_changes_flow_into_the_snapshot() {
    let (_app, api) = appliance_with_pools(&[("edge", &["192.0.2.0/29"])]).await;
    let (kube, _) = connected_cluster(&api, "k1").await;
    kube.create(
        "Service",
        Some("default"),
        json!({"metadata": {"name": "web"},
               "spec": {"type": "LoadBalancer", "loadBalancerClass": "portico.io/lb",
                        "ports": [{"name": "http", "port": 80, "targetPort": "web"},
                                  {"name": "metrics", "port": 9100, "targetPort": 9100}]}}),
    )
    .unwrap();
    let vip = wait_vips(&kube, "default", "web", 1).await;

    // No endpoints yet: the service is served with its VIP, without backends.
    let entry = wait_snapshot(&api, "k1/default/web", "web in the snapshot", |s| s["vips"] == json!(vip)).await;
    assert_eq!(entry["origin"], "cluster");
    assert_eq!(entry["backends"], json!([]));

    // The pods listen on other ports than the Service's targetPort says: the slice's ports win, by name.
    kube.create(
        "EndpointSlice",
        Some("default"),
        json!({
            "metadata": {"name": "web-abc", "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}, {"name": "metrics", "port": 9101}],
            "endpoints": [
                {"addresses": ["10.1.0.1"], "conditions": {"ready": true, "serving": true, "terminating": false},
                 "zone": "z1", "nodeName": "n1"},
                {"addresses": ["10.1.0.2"], "conditions": {"ready": true}, "zone": "z2", "nodeName": "n2"}
            ]
        }),
    )
    .unwrap();
    let entry = wait_snapshot(&api, "k1/default/web", "two backends", |s| backend_addresses(s).len() == 2).await;
    assert_eq!(backend_addresses(&entry), ["10.1.0.1", "10.1.0.2"]);
    let ports: Vec<(Value, Value)> =
        entry["ports"].as_array().unwrap().iter().map(|p| (p["name"].clone(), p["target_port"].clone())).collect();
    assert_eq!(ports, [(json!("http"), json!(8080)), (json!("metrics"), json!(9101))]);
    let first = &entry["backends"][0];
    assert_eq!(first["ports"], json!({"http": 8080, "metrics": 9101}));
    assert_eq!((first["zone"].clone(), first["node"].clone()), (json!("z1"), json!("n1")));
    assert_eq!(
        (first["ready"].clone(), first["serving"].clone(), first["terminating"].clone()),
        (json!(true), json!(true), json!(false))
    );
    assert_eq!(entry["backends"][1]["zone"], "z2");
    // Only this cluster's services under its prefix.
    assert!(snapshot(&api, "k1/").await.iter().all(|s| s["name"].as_str().unwrap().starts_with("k1/")));

    // One endpoint stops being ready: it is no longer a backend.
    kube.patch(
        "EndpointSlice",
        Some("default"),
        "web-abc",
        json!({"endpoints": [
            {"addresses": ["10.1.0.1"], "conditions": {"ready": true}, "zone": "z1", "nodeName": "n1"},
            {"addresses": ["10.1.0.2"], "conditions": {"ready": false, "serving": false}, "zone": "z2"}
        ]}),
    )
    .unwrap();
    let entry = wait_snapshot(&api, "k1/default/web", "10.1.0.2 gone", |s| backend_addresses(s) == ["10.1.0.1"]).await;
    assert_eq!(entry["backends"][0]["ready"], true);

    // A second slice of the same Service adds its endpoints.
    kube.create("EndpointSlice", Some("default"), slice("web-def", "web", 8080, &[("10.1.0.3", true)])).unwrap();
    wait_snapshot(&api, "k1/default/web", "both slices", |s| backend_addresses(s) == ["10.1.0.1", "10.1.0.3"]).await;
    // A slice of another Service does not.
    kube.create("EndpointSlice", Some("default"), slice("other-1", "other", 8080, &[("10.9.0.1", true)])).unwrap();

    // A rollout: nothing ready, one endpoint still serving while terminating: it drains.
    kube.delete("EndpointSlice", Some("default"), "web-def").unwrap();
    kube.patch(
        "EndpointSlice",
        Some("default"),
        "web-abc",
        json!({"endpoints": [
            {"addresses": ["10.1.0.1"], "conditions": {"ready": false, "serving": true, "terminating": true}},
            {"addresses": ["10.1.0.2"], "conditions": {"ready": false, "serving": false, "terminating": true}}
        ]}),
    )
    .unwrap();
    let entry =
        wait_snapshot(&api, "k1/default/web", "a draining backend", |s| backend_addresses(s) == ["10.1.0.1"]).await;
    let b = &entry["backends"][0];
    assert_eq!(
        (b["ready"].clone(), b["serving"].clone(), b["terminating"].clone()),
        (json!(false), json!(true), json!(true))
    );

    // Endpoints removed: no backends, the VIP stays.
    kube.patch("EndpointSlice", Some("default"), "web-abc", json!({"endpoints": []})).unwrap();
    let entry = wait_snapshot(&api, "k1/default/web", "no backends", |s| s["backends"] == json!([])).await;
    assert_eq!(entry["vips"], json!(vip));
    kube.delete("EndpointSlice", Some("default"), "web-abc").unwrap();
    kube.create("EndpointSlice", Some("default"), slice("web-new", "web", 8443, &[("10.1.0.9", true)])).unwrap();
    let entry = wait_snapshot(&api, "k1/default/web", "a new slice", |s| backend_addresses(s) == ["10.1.0.9"]).await;
    assert_eq!(entry["ports"][0]["target_port"], 8443);
    assert_eq!(status_ips(&kube.get("Service", Some("default"), "web").unwrap()), vip, "the VIP never moved");
}
