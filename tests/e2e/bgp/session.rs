//! eBGP over IPv4 with BIRD: Established with negotiated capabilities, and a VIP as a /32 with the configured
//! attributes, next hop self and then a configured next hop.

use super::*;

#[tokio::test]
async fn ebgp_session_with_bird_announces_a_vip_with_its_attributes() {
    let net = PeerNet::new();
    let bird = bird(&net, |n| n);
    let (_app, api) = appliance(Some(net.ours()), None).await;
    add_pool(&api, "public", &["203.0.113.0/28"]).await;
    let vip = add_service(&api, "web", "public", &["192.0.2.10:8080"]).await;
    let prefix = format!("{vip}/32");
    let advertise = json!({
        "communities": ["65000:100", "65000:200"],
        "large_communities": ["65000:1:2"],
        "med": 50,
    });
    add_peer(&api, "bird", net.theirs(), BIRD_AS, json!({ "advertise": advertise })).await;

    let st = wait_established(&api, "bird").await;
    bird.wait_established("portico", WAIT).await;
    let neg = &st["negotiated"];
    assert_eq!(neg["peer_asn"], BIRD_AS, "{st:#}");
    assert_eq!(neg["peer_router_id"], net.link.b.v4.to_string(), "{st:#}");
    assert_eq!(neg["hold_time"], 3, "{st:#}");
    assert_eq!(neg["keepalive"], 1, "{st:#}");
    assert_eq!(neg["four_octet_as"], true, "{st:#}");
    assert_eq!(neg["route_refresh"], true, "{st:#}");
    assert_eq!(neg["families"], json!(["ipv4-unicast", "ipv6-unicast"]), "{st:#}");
    assert!(st["since"].is_string() && st["uptime_seconds"].is_u64(), "{st:#}");
    assert_eq!(st["flaps"], 0, "{st:#}");

    let r = bird_route(&bird, &prefix).await;
    assert_eq!(r.as_path, [OUR_AS], "{r:?}");
    assert_eq!(r.next_hop, Some(net.ours()), "next hop self: {r:?}");
    assert_eq!(r.communities, ["65000:100", "65000:200"], "{r:?}");
    assert_eq!(r.large_communities, ["65000:1:2"], "{r:?}");
    assert_eq!(r.med, Some(50), "{r:?}");
    assert_eq!(r.origin, Some(crate::bgp_peers::Origin::Igp), "{r:?}");

    let a = wait_api(WAIT, "the announcement sent to bird", || async {
        announcement(&api, &prefix).await.filter(|a| a["peers"] == json!(["bird"]))
    })
    .await;
    assert_eq!(a["vips"], json!([vip]), "{a:#}");
    assert_eq!(a["services"], json!(["web"]), "{a:#}");
    let st = wait_status(&api, "bird", "one prefix advertised", |s| s["prefixes_advertised"] == 1).await;
    assert!(st["updates_sent"].as_u64().unwrap() >= 1, "{st:#}");
    // IPv6 is negotiated too, but with no IPv6 VIP nothing lacks a next hop: no error.
    assert!(st["last_error"].is_null(), "{st:#}");
    let sessions = api.json("/api/v1/bgp/sessions").await;
    assert_eq!(sessions["items"].as_array().unwrap().len(), 1, "{sessions:#}");
    assert_eq!(sessions["items"][0]["name"], "bird", "{sessions:#}");
    assert_eq!(sessions["items"][0]["state"], "established", "{sessions:#}");

    // A configured next hop (an address of a network BIRD has on its side of the link, as an eBGP next hop must
    // be) replaces our own; changing `advertise` keeps the session.
    net.link.add_address(true, "198.18.0.2/24");
    let advertise = json!({
        "communities": ["65000:100", "65000:200"],
        "large_communities": ["65000:1:2"],
        "med": 50,
        "next_hop": ["198.18.0.1"],
    });
    put_peer(&api, "bird", net.theirs(), BIRD_AS, json!({ "advertise": advertise })).await;
    let r = bird
        .wait_for(WAIT, "the configured next hop", |b| {
            b.route("portico", &prefix).filter(|r| r.next_hop == Some("198.18.0.1".parse().unwrap()))
        })
        .await;
    assert_eq!(r.med, Some(50), "{r:?}");
    let st = status(&api, "bird").await;
    assert_eq!((st["state"].as_str(), st["flaps"].as_u64()), (Some("established"), Some(0)), "{st:#}");
}

/// An IPv6 VIP over an IPv4 session (MP-BGP) needs a configured IPv6 next hop: without one it is held back and
/// `last_error` says so; with one BIRD gets the /128 with that next hop, and the error is gone.
#[tokio::test]
async fn an_ipv6_vip_over_an_ipv4_session_needs_a_configured_next_hop() {
    let net = PeerNet::new();
    let bird = bird(&net, |n| n);
    let (_app, api) = appliance(Some(net.ours()), None).await;
    add_pool(&api, "v6", &["2001:db8:2::/124"]).await;
    let vip = add_service(&api, "web6", "v6", &["[2001:db8:ff::10]:8080"]).await;
    let prefix = format!("{vip}/128");
    add_peer(&api, "bird", net.theirs(), BIRD_AS, json!({})).await;
    let st = wait_status(&api, "bird", "the missing next hop reported", |s| {
        s["state"] == "established" && s["last_error"].is_string()
    })
    .await;
    assert!(st["last_error"].as_str().unwrap().contains("advertise.next_hop"), "{st:#}");
    assert_eq!(st["prefixes_advertised"], 0, "{st:#}");
    assert!(bird.route("portico", &prefix).is_none());

    put_peer(&api, "bird", net.theirs(), BIRD_AS, json!({ "advertise": { "next_hop": [net.link.a.v6.to_string()] } }))
        .await;
    let r = bird_route(&bird, &prefix).await;
    assert_eq!(r.next_hop, Some(net.link.a.v6.into()), "{r:?}");
    assert_eq!(r.as_path, [OUR_AS], "{r:?}");
    let st = wait_status(&api, "bird", "one prefix advertised", |s| s["prefixes_advertised"] == 1).await;
    assert_eq!((st["state"].as_str(), st["flaps"].as_u64()), (Some("established"), Some(0)), "{st:#}");
    assert!(st["last_error"].is_null(), "the next hop problem is solved: {st:#}");
}
