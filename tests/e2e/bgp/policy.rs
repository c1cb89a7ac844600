//! Per-peer policy: `advertise.pools` and `advertise.services` choose what each peer gets, and
//! `aggregate_length` announces a pool's covering prefix instead of its host routes.

use super::*;

#[tokio::test]
async fn pools_services_and_aggregates_shape_what_each_peer_gets() {
    let (net1, net2) = (PeerNet::new(), PeerNet::new());
    let bird1 = bird(&net1, |n| n);
    let bird2 = bird(&net2, |n| n);
    let (_app, api) = appliance(Some(net1.ours()), None).await;
    add_pool(&api, "a", &["203.0.113.0/28"]).await;
    add_pool(&api, "b", &["198.51.100.0/28"]).await;
    let sa = add_service(&api, "sa", "a", &["192.0.2.10:80"]).await;
    let sb = add_service(&api, "sb", "b", &["192.0.2.11:80"]).await;
    let sc = add_service(&api, "sc", "a", &["192.0.2.12:80"]).await;
    add_peer(&api, "p1", net1.theirs(), BIRD_AS, json!({ "advertise": { "pools": ["a"] } })).await;
    add_peer(&api, "p2", net2.theirs(), BIRD_AS, json!({ "advertise": { "services": ["sb"] } })).await;
    wait_established(&api, "p1").await;
    wait_established(&api, "p2").await;

    let (pa, pb, pc) = (format!("{sa}/32"), format!("{sb}/32"), format!("{sc}/32"));
    bird_exactly(&bird1, &[&pa, &pc]).await;
    bird_exactly(&bird2, &[&pb]).await;
    let a = wait_api(WAIT, "sb announced to p2 only", || async {
        announcement(&api, &pb).await.filter(|a| a["peers"] == json!(["p2"]))
    })
    .await;
    assert_eq!(a["services"], json!(["sb"]), "{a:#}");
    wait_api(WAIT, "sa announced to p1 only", || async {
        announcement(&api, &pa).await.filter(|a| a["peers"] == json!(["p1"]))
    })
    .await;

    // p1 gets pool a's covering /28 instead of the host routes.
    put_peer(
        &api,
        "p1",
        net1.theirs(),
        BIRD_AS,
        json!({ "advertise": { "pools": ["a"], "aggregate_length": { "a": { "ipv4": 28 } } } }),
    )
    .await;
    bird_exactly(&bird1, &["203.0.113.0/28"]).await;
    let r = bird_route(&bird1, "203.0.113.0/28").await;
    assert_eq!(r.as_path, [OUR_AS], "{r:?}");
    let a = wait_api(WAIT, "the aggregate announced to p1", || async {
        announcement(&api, "203.0.113.0/28").await.filter(|a| a["peers"] == json!(["p1"]))
    })
    .await;
    let mut vips: Vec<String> = a["vips"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().into()).collect();
    vips.sort();
    let mut want = vec![sa.clone(), sc.clone()];
    want.sort();
    assert_eq!(vips, want, "{a:#}");
    assert_eq!(a["services"], json!(["sa", "sc"]), "{a:#}");
    // p2 is untouched.
    bird_exactly(&bird2, &[&pb]).await;
    for name in ["p1", "p2"] {
        let st = status(&api, name).await;
        assert_eq!(st["flaps"], 0, "policy changes keep sessions: {st:#}");
    }
}
