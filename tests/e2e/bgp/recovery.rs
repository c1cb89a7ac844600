//! Recovery: BIRD restarted, and the link cut and mended; the session and the routes come back each time.

use super::*;

#[tokio::test]
async fn sessions_and_routes_recover_after_a_peer_restart_and_a_link_cut() {
    let net = PeerNet::new();
    let mut bird = bird(&net, |n| n);
    let (_app, api) = appliance(Some(net.ours()), None).await;
    add_pool(&api, "public", &["203.0.113.0/28"]).await;
    let vip = add_service(&api, "web", "public", &["192.0.2.10:8080"]).await;
    let prefix = format!("{vip}/32");
    add_peer(&api, "bird", net.theirs(), BIRD_AS, json!({})).await;
    wait_established(&api, "bird").await;
    bird_route(&bird, &prefix).await;

    // BIRD stops (Cease) and starts again.
    bird.stop();
    let st = wait_status(&api, "bird", "down after BIRD stopped", |s| s["state"] != "established").await;
    assert!(st["last_error"].is_string(), "{st:#}");
    bird.start_again();
    let st = wait_established(&api, "bird").await;
    assert_eq!(st["flaps"], 1, "{st:#}");
    bird_route(&bird, &prefix).await;

    // The link is cut: no NOTIFICATION can pass, the hold timer (3 s) ends the session on both sides.
    net.link.set_up(false);
    let st = wait_status(&api, "bird", "down after the link cut", |s| s["state"] != "established").await;
    let err = st["last_error"].as_str().unwrap_or_default().to_string();
    assert!(err.contains("Hold Timer Expired") || err.contains("hold"), "{st:#}");
    bird.wait_down("portico", WAIT).await;
    bird_no_route(&bird, &prefix).await;
    net.link.set_up(true);
    let st = wait_established(&api, "bird").await;
    assert_eq!(st["flaps"], 2, "{st:#}");
    assert!(st["last_error"].is_null(), "a new session clears the error: {st:#}");
    let r = bird_route(&bird, &prefix).await;
    assert_eq!(r.next_hop, Some(net.ours()), "{r:?}");
    wait_status(&api, "bird", "the VIP advertised again", |s| s["prefixes_advertised"] == 1).await;
}
