//! Routes a peer announces to the appliance: listed with their attributes (never installed), and a
//! `max_prefixes` below what the peer sends closes the session with Cease / Maximum Number of Prefixes Reached.

use super::*;
use crate::bgp_peers::{Gobgp, GobgpConfig, GobgpNeighbor, Origin, RouteSpec};

const GOBGP_AS: u32 = 65010;

#[tokio::test]
async fn received_routes_are_listed_and_max_prefixes_closes_the_session() {
    let net = PeerNet::new();
    let (a4, b4) = (net.link.a.v4, net.link.b.v4);
    let gobgp = Gobgp::start(
        &net.ns,
        &GobgpConfig::new(GOBGP_AS, b4).neighbor(GobgpNeighbor::new(a4.into(), OUR_AS).local_address(b4)),
    );
    let routes = [
        RouteSpec::new("198.51.100.0/24")
            .next_hop(b4)
            .aspath(&[65020])
            .origin(Origin::Igp)
            .med(10)
            .communities(&["65010:1", "65010:2"])
            .large_communities(&["65010:7:8"]),
        RouteSpec::new("198.51.101.0/24").next_hop(b4).origin(Origin::Incomplete),
        RouteSpec::new("198.51.102.0/25").next_hop(b4),
    ];
    for r in &routes {
        gobgp.add_route(r);
    }
    let (_app, api) = appliance(Some(net.ours()), None).await;
    add_peer(&api, "gob", b4.into(), GOBGP_AS, json!({})).await;
    wait_established(&api, "gob").await;
    let st = wait_status(&api, "gob", "three prefixes received", |s| s["prefixes_received"] == 3).await;
    assert_eq!(st["prefixes_advertised"], 0, "{st:#}");

    let page = api.json("/api/v1/bgp/peers/gob/routes").await;
    let items = page["items"].as_array().unwrap();
    let prefixes: Vec<&str> = items.iter().map(|r| r["prefix"].as_str().unwrap()).collect();
    assert_eq!(prefixes, ["198.51.100.0/24", "198.51.101.0/24", "198.51.102.0/25"], "{page:#}");
    let first = &items[0];
    assert_eq!(first["next_hop"], b4.to_string(), "{first:#}");
    assert_eq!(first["as_path"], json!([GOBGP_AS, 65020]), "{first:#}");
    assert_eq!(first["origin"], "igp", "{first:#}");
    assert_eq!(first["med"], 10, "{first:#}");
    assert_eq!(first["communities"], json!(["65010:1", "65010:2"]), "{first:#}");
    assert_eq!(first["large_communities"], json!(["65010:7:8"]), "{first:#}");
    assert_eq!(items[1]["origin"], "incomplete", "{page:#}");
    assert_eq!(items[1]["as_path"], json!([GOBGP_AS]), "{page:#}");
    // Left to GoBGP's default: what GoBGP itself holds.
    let own = gobgp.routes(crate::bgp_peers::Afi::Ipv4).into_iter().find(|r| r.prefix == "198.51.102.0/25").unwrap();
    let origin = match own.origin {
        Some(Origin::Igp) => "igp",
        Some(Origin::Egp) => "egp",
        _ => "incomplete",
    };
    assert_eq!(items[2]["origin"], origin, "GoBGP has {own:?}: {page:#}");
    // Paging by prefix.
    let p1 = api.json("/api/v1/bgp/peers/gob/routes?limit=2").await;
    assert_eq!(p1["items"].as_array().unwrap().len(), 2, "{p1:#}");
    let cursor = p1["next_cursor"].as_str().unwrap_or_else(|| panic!("no next_cursor: {p1:#}"));
    let p2 = api.json(&format!("/api/v1/bgp/peers/gob/routes?limit=2&cursor={cursor}")).await;
    assert_eq!(p2["items"][0]["prefix"], "198.51.102.0/25", "{p2:#}");
    api.get("/api/v1/bgp/peers/nope/routes").await.expect(StatusCode::NOT_FOUND);

    // A withdrawal at GoBGP leaves the Adj-RIB-In.
    gobgp.del_route("198.51.102.0/25");
    wait_status(&api, "gob", "two prefixes received", |s| s["prefixes_received"] == 2).await;
    gobgp.add_route(&routes[2]);
    wait_status(&api, "gob", "three prefixes received again", |s| s["prefixes_received"] == 3).await;

    // At most two prefixes: the session is closed with a Cease, and the status says why.
    put_peer(&api, "gob", b4.into(), GOBGP_AS, json!({ "max_prefixes": 2 })).await;
    // Wait for the session to be down, not just for the NOTIFICATION: the error is set before the session ends.
    let st = wait_status(&api, "gob", "a max-prefixes Cease", |s| {
        s["last_notification_sent"]["code"] == 6
            && s["last_error"].as_str().is_some_and(|e| e.contains("stays down"))
            && s["flaps"].as_u64().is_some_and(|f| f >= 1)
    })
    .await;
    let n = &st["last_notification_sent"];
    assert_eq!(n["subcode"], 1, "{st:#}");
    assert_eq!(n["description"], "Cease / Maximum Number of Prefixes Reached", "{st:#}");
    let err = st["last_error"].as_str().unwrap();
    assert!(err.contains("maximum prefixes exceeded") && err.contains("limit is 2"), "{st:#}");
    assert!(st["flaps"].as_u64().unwrap() >= 1, "{st:#}");
    // It stays down for the hold-down (30 s the first time) instead of flapping, and keeps saying why, though
    // GoBGP keeps connecting.
    let until = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while std::time::Instant::now() < until {
        let s = api.json("/api/v1/bgp/peers/gob/status").await;
        assert_ne!(s["state"], "established", "held down: {s:#}");
        let err = s["last_error"].as_str().unwrap_or_default();
        assert!(err.contains("maximum prefixes exceeded") && err.contains("stays down for 30 s"), "{s:#}");
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}
