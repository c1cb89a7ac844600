//! Graceful restart (RFC 4724) with BIRD as the helper: while the appliance restarts cleanly BIRD keeps its
//! route (stale); the restarted appliance re-establishes, sends End-of-RIB and the route is fresh. A deleted
//! peer, and a stop without graceful restart, withdraw at once.

use super::*;
use crate::bgp_peers::appliance_bgp_settings;

#[tokio::test]
async fn graceful_restart_keeps_routes_at_bird_across_an_appliance_restart() {
    let net = PeerNet::new();
    let bird = bird(&net, |n| n.graceful_restart(60));
    let (mut app, api) = appliance(Some(net.ours()), Some(60)).await;
    add_pool(&api, "public", &["203.0.113.0/28"]).await;
    let vip = add_service(&api, "web", "public", &["192.0.2.10:8080"]).await;
    let prefix = format!("{vip}/32");
    add_peer(&api, "bird", net.theirs(), BIRD_AS, json!({})).await;
    let st = wait_established(&api, "bird").await;
    assert_eq!(st["negotiated"]["graceful_restart"], true, "{st:#}");
    assert_eq!(st["negotiated"]["peer_restart_time"], 60, "{st:#}");
    let r = bird_route(&bird, &prefix).await;
    assert!(!r.stale, "{r:?}");

    // A clean stop (SIGTERM): the connection closes without a NOTIFICATION, BIRD keeps the route as stale.
    app.stop().await;
    let p = bird
        .wait_for(WAIT, "graceful restart active", |b| Some(b.protocol_state("portico")).filter(|p| p.gr_active))
        .await;
    assert!(!p.established(), "{}", p.raw);
    let r = bird
        .route("portico", &prefix)
        .unwrap_or_else(|| panic!("BIRD dropped the route: {}", bird.birdc("show route all")));
    assert!(r.stale, "{r:?}");

    // Started again on the same data dir: re-established (Restart State), End-of-RIB ends BIRD's restart
    // handling, the route is fresh again; BIRD is watched all along, the route must never go missing.
    let watch = async {
        let mut missing = 0;
        bird.wait_for(WAIT, "re-established with graceful restart over and the route fresh", |b| {
            let p = b.protocol_state("portico");
            let r = b.route("portico", &prefix);
            missing += usize::from(r.is_none());
            (p.established() && !p.gr_active).then_some(())?;
            r.filter(|r| !r.stale)
        })
        .await;
        missing
    };
    let ((), missing) = tokio::join!(app.start_again(), watch);
    assert_eq!(missing, 0, "BIRD lost the route during the restart; log:\n{}", bird.log());
    let api = app.admin_token().await;
    let st = wait_established(&api, "bird").await;
    assert_eq!(st["negotiated"]["graceful_restart"], true, "{st:#}");

    // Deleting the peer sends a Cease: BIRD drops the route at once, graceful restart or not.
    api.delete("/api/v1/bgp/peers/bird").await.expect(StatusCode::NO_CONTENT);
    bird_no_route(&bird, &prefix).await;
    assert!(!bird.protocol_state("portico").gr_active);
    add_peer(&api, "bird", net.theirs(), BIRD_AS, json!({})).await;
    wait_established(&api, "bird").await;
    bird_route(&bird, &prefix).await;

    // Graceful restart switched off: a stop withdraws the route at BIRD.
    let bgp = appliance_bgp_settings(OUR_AS, std::net::Ipv4Addr::new(192, 0, 2, 1), Some(net.ours()), None);
    api.put("/api/v1/settings", json!({ "log_level": "debug", "bgp": bgp })).await.expect(StatusCode::OK);
    let st = wait_status(&api, "bird", "re-established without graceful restart", |s| {
        s["state"] == "established" && s["negotiated"]["graceful_restart"] == false
    })
    .await;
    assert!(st["flaps"].as_u64().unwrap() >= 1, "{st:#}");
    bird_route(&bird, &prefix).await;
    app.stop().await;
    bird_no_route(&bird, &prefix).await;
    let p = bird.protocol_state("portico");
    assert!(!p.gr_active && !p.established(), "{}", p.raw);
}
