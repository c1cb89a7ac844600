//! A Kubernetes Service (the test API server) is announced while its EndpointSlice has ready endpoints, and
//! withdrawn while it has none (healthy mode).

use super::*;
use crate::clusters::{connected_cluster, lb_service, slice, wait_vips};

#[tokio::test]
async fn a_cluster_service_is_announced_while_it_has_ready_endpoints() {
    let net = PeerNet::new();
    let bird = bird(&net, |n| n);
    let (_app, api) = appliance(Some(net.ours()), None).await;
    add_pool(&api, "edge", &["203.0.113.0/28"]).await;
    add_peer(&api, "bird", net.theirs(), BIRD_AS, json!({})).await;
    let (kube, _) = connected_cluster(&api, "k1").await;
    kube.create("Service", Some("default"), lb_service("web", json!({}))).unwrap();
    kube.create("EndpointSlice", Some("default"), slice("web-1", "web", 8080, &[("10.1.0.1", true)])).unwrap();
    let vip = wait_vips(&kube, "default", "web", 1).await.remove(0);
    let prefix = format!("{vip}/32");
    wait_established(&api, "bird").await;
    bird_route(&bird, &prefix).await;
    let a = wait_api(WAIT, "the announcement", || async {
        announcement(&api, &prefix).await.filter(|a| a["peers"] == json!(["bird"]))
    })
    .await;
    assert_eq!(a["services"], json!(["k1/default/web"]), "{a:#}");

    // No ready endpoint: withdrawn; ready again: back.
    kube.patch(
        "EndpointSlice",
        Some("default"),
        "web-1",
        json!({ "endpoints": crate::clusters::endpoint_list(&[("10.1.0.1", false)]) }),
    )
    .unwrap();
    bird_no_route(&bird, &prefix).await;
    kube.patch(
        "EndpointSlice",
        Some("default"),
        "web-1",
        json!({ "endpoints": crate::clusters::endpoint_list(&[("10.1.0.2", true)]) }),
    )
    .unwrap();
    bird_route(&bird, &prefix).await;
}
