//! TCP-MD5 (RFC 2385) with BIRD: the right key comes up, a wrong one stays down.

use super::*;

#[tokio::test]
async fn tcp_md5_with_the_right_key_comes_up_and_a_wrong_key_stays_down() {
    let (good, bad) = (PeerNet::new(), PeerNet::new());
    let bird_good = bird(&good, |n| n.password("s3cret-key"));
    let bird_bad = bird(&bad, |n| n.password("s3cret-key"));
    let (_app, api) = appliance(Some(good.ours()), None).await;
    add_pool(&api, "public", &["203.0.113.0/28"]).await;
    let vip = add_service(&api, "web", "public", &["192.0.2.10:8080"]).await;
    add_peer(&api, "good", good.theirs(), BIRD_AS, json!({ "password": "s3cret-key" })).await;
    add_peer(&api, "bad", bad.theirs(), BIRD_AS, json!({ "password": "not-the-key" })).await;

    wait_established(&api, "good").await;
    bird_good.wait_established("portico", WAIT).await;
    bird_route(&bird_good, &format!("{vip}/32")).await;
    let peer = api.json("/api/v1/bgp/peers/good").await;
    assert!(peer.get("password").is_none(), "the key is never shown: {peer:#}");

    // The wrong key: the SYNs are dropped by the kernel on both sides; the session never comes up. Give it
    // several connect retries and a hold time.
    holds_for(Duration::from_secs(5), "the session with the wrong key being down", async || {
        let st = status(&api, "bad").await;
        if st["state"] == "established" { Err(format!("{st:#}")) } else { Ok(()) }
    })
    .await;
    assert!(!bird_bad.protocol_state("portico").established());
    // No byte of BGP ever passes; the speaker says its connection attempts time out.
    let st = wait_status(&api, "bad", "a last_error", |s| s["last_error"].is_string()).await;
    assert_ne!(st["state"], "established", "{st:#}");
    assert!(st["negotiated"].is_null(), "{st:#}");
    assert_eq!((st["messages_received"].as_u64(), st["flaps"].as_u64()), (Some(0), Some(0)), "{st:#}");
    assert!(st["last_error"].as_str().unwrap().contains("timed out"), "{st:#}");
}
