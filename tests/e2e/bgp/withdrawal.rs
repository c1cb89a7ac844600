//! Withdrawals: a service without ready backends (healthy mode), `announce_when: always`, and a deleted service
//! whose VIP is released.

use super::*;

#[tokio::test]
async fn vips_are_withdrawn_without_backends_and_when_released() {
    let net = PeerNet::new();
    let bird = bird(&net, |n| n);
    let (_app, api) = appliance(Some(net.ours()), None).await;
    add_pool(&api, "public", &["203.0.113.0/28"]).await;
    let vip = add_service(&api, "web", "public", &["192.0.2.10:8080"]).await;
    let prefix = format!("{vip}/32");
    add_peer(&api, "bird", net.theirs(), BIRD_AS, json!({})).await;
    wait_established(&api, "bird").await;
    bird_route(&bird, &prefix).await;

    // Backends gone (healthy mode, the default): withdrawn, though the VIP stays allocated.
    api.put("/api/v1/services/web", service_json("web", "public", &[])).await.expect(StatusCode::OK);
    bird_no_route(&bird, &prefix).await;
    assert_eq!(vip_of(&api, "web").await, vip, "the VIP stays allocated");
    wait_api(WAIT, "the announcement gone", || async { announcement(&api, &prefix).await.is_none().then_some(()) })
        .await;
    // A backend returns: announced again.
    api.put("/api/v1/services/web", service_json("web", "public", &["192.0.2.11:8080"])).await.expect(StatusCode::OK);
    bird_route(&bird, &prefix).await;

    // `announce_when: always`: announced also without backends; the session stays up through the policy change.
    put_peer(&api, "bird", net.theirs(), BIRD_AS, json!({ "advertise": { "announce_when": "always" } })).await;
    api.put("/api/v1/services/web", service_json("web", "public", &[])).await.expect(StatusCode::OK);
    wait_api(WAIT, "the service without backends in the snapshot", || async {
        let s = api.json("/api/v1/snapshot/services?prefix=web").await;
        (s["items"][0]["backends"] == json!([])).then_some(())
    })
    .await;
    holds_for(Duration::from_secs(2), "the route with announce_when: always", async || {
        bird.route("portico", &prefix).map(|_| ()).ok_or_else(|| bird_prefixes(&bird).join(", "))
    })
    .await;
    let st = status(&api, "bird").await;
    assert_eq!((st["state"].as_str(), st["flaps"].as_u64()), (Some("established"), Some(0)), "{st:#}");

    // Deleting the service releases the VIP: withdrawn even in `always` mode.
    api.delete("/api/v1/services/web").await.expect(StatusCode::NO_CONTENT);
    bird_no_route(&bird, &prefix).await;
    let st = wait_status(&api, "bird", "nothing advertised", |s| s["prefixes_advertised"] == 0).await;
    assert_eq!(st["state"], "established", "{st:#}");
}
