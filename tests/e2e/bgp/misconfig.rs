//! A wrong AS number on either side: the OPEN is refused with OPEN Message Error / Bad Peer AS, and the status
//! shows the NOTIFICATION and a clear last error.

use super::*;

#[tokio::test]
async fn a_wrong_peer_as_shows_the_notification_both_ways() {
    let (ours_wrong, theirs_wrong) = (PeerNet::new(), PeerNet::new());
    // We expect AS 65099 but BIRD is 65001.
    let bird_a = bird(&ours_wrong, |n| n);
    // BIRD expects us to be AS 65098.
    let bird_b = bird(&theirs_wrong, |mut n| {
        n.neighbor_as = 65098;
        n
    });
    let (_app, api) = appliance(Some(ours_wrong.ours()), None).await;
    add_peer(&api, "ours-wrong", ours_wrong.theirs(), 65099, json!({})).await;
    add_peer(&api, "theirs-wrong", theirs_wrong.theirs(), BIRD_AS, json!({})).await;

    let st = wait_status(&api, "ours-wrong", "a Bad Peer AS sent", |s| s["last_notification_sent"].is_object()).await;
    let n = &st["last_notification_sent"];
    assert_eq!((n["code"].as_u64(), n["subcode"].as_u64()), (Some(2), Some(2)), "{st:#}");
    assert_eq!(n["description"], "OPEN Message Error / Bad Peer AS", "{st:#}");
    let err = st["last_error"].as_str().unwrap_or_else(|| panic!("no last_error: {st:#}"));
    assert!(err.contains("Bad Peer AS"), "{st:#}");
    assert_ne!(st["state"], "established", "{st:#}");
    let p = bird_a.protocol_state("portico");
    assert!(!p.established(), "{}", p.raw);

    let st =
        wait_status(&api, "theirs-wrong", "a Bad Peer AS received", |s| s["last_notification_received"].is_object())
            .await;
    let n = &st["last_notification_received"];
    assert_eq!((n["code"].as_u64(), n["subcode"].as_u64()), (Some(2), Some(2)), "{st:#}");
    assert_eq!(n["description"], "OPEN Message Error / Bad Peer AS", "{st:#}");
    let err = st["last_error"].as_str().unwrap_or_else(|| panic!("no last_error: {st:#}"));
    assert!(err.contains("received") && err.contains("Bad Peer AS"), "{st:#}");
    assert_ne!(st["state"], "established", "{st:#}");
    let p = bird_b.protocol_state("portico");
    assert!(!p.established(), "{}", p.raw);

    // Fixing our side brings the first session up.
    put_peer(&api, "ours-wrong", ours_wrong.theirs(), BIRD_AS, json!({})).await;
    wait_established(&api, "ours-wrong").await;
}
