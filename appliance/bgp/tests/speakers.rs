//! Two speakers against each other over loopback: establishment (with connection collisions, since both
//! connect), routes both ways, withdrawals, max prefixes, shutdown with and without graceful restart.

// Test helpers live outside #[test] functions, where clippy.toml's test allowances do not reach; a failed
// unwrap here is a failed test, which is what it should be.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use model::bgp::{BgpPeer, BgpSettings, SessionState};
use model::subsystem::{Health, Subsystem};
use portico_bgp::{Speaker, SpeakerOptions};
use std::net::SocketAddr;

struct Pair {
    a_settings: BgpSettings,
    b_settings: BgpSettings,
    a_peer: BgpPeer,
    b_peer: BgpPeer,
}

/// A at 127.0.0.1 (AS 65001), B at `b_ip` (AS 65002); each configured with the other as a peer.
fn pair(b_ip: &str, gr: bool) -> Pair {
    let pa = free_port("127.0.0.1");
    let pb = free_port(b_ip);
    let a_listen: SocketAddr = format!("127.0.0.1:{pa}").parse().unwrap();
    let b_listen: SocketAddr = format!("{b_ip}:{pb}").parse().unwrap();
    Pair {
        a_settings: settings(65_001, "10.0.0.1", a_listen, gr),
        b_settings: settings(65_002, "10.0.0.2", b_listen, gr),
        a_peer: peer(serde_json::json!({
            "name": "b", "address": b_ip, "asn": 65002, "port": pb, "connect_retry": 1,
            "source_address": "127.0.0.1", "hold_time": 9,
            "advertise": {"communities": ["65001:100", "no-export"], "large_communities": ["65001:1:2"],
                          "next_hop": ["2001:db8::1"], "med": 5}
        })),
        b_peer: peer(serde_json::json!({
            "name": "a", "address": "127.0.0.1", "asn": 65001, "port": pa, "connect_retry": 1,
            "source_address": b_ip, "hold_time": 9, "advertise": {"next_hop": ["2001:db8::2"]}
        })),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_flow_both_ways_and_withdrawals_follow() {
    let p = pair("127.0.0.2", false);
    let mut a = Speaker::new(SpeakerOptions::default());
    let mut b = Speaker::new(SpeakerOptions::default());
    let (ha, hb) = (a.handle(), b.handle());
    let web = service("web", &["203.0.113.10", "2001:db8::10"]);
    let report =
        a.apply(snapshot(1, Some(p.a_settings.clone()), vec![p.a_peer.clone()], vec![web.clone()])).await.unwrap();
    assert_eq!(report.health, Health::Degraded, "not established yet: {}", report.detail);
    assert!(report.detail.contains('b'), "{}", report.detail);
    b.apply(snapshot(1, Some(p.b_settings.clone()), vec![p.b_peer.clone()], vec![service("api", &["203.0.113.20"])]))
        .await
        .unwrap();
    established(&ha, "b").await;
    established(&hb, "a").await;

    eventually("B has A's routes", 10, || {
        let r = received(&hb, "a");
        async move { r.len() == 2 }
    })
    .await;
    let routes = hb.received_routes("a").unwrap();
    let v4 = routes.iter().find(|r| r.prefix == "203.0.113.10/32").unwrap();
    assert_eq!(v4.as_path, [65_001]);
    assert_eq!(v4.next_hop, "127.0.0.1");
    assert_eq!(v4.origin, "igp");
    assert_eq!(v4.med, Some(5));
    assert_eq!(v4.communities, ["65001:100", "no-export"]);
    assert_eq!(v4.large_communities, ["65001:1:2"]);
    let v6 = routes.iter().find(|r| r.prefix == "2001:db8::10/128").unwrap();
    assert_eq!(v6.next_hop, "2001:db8::1");
    eventually("A has B's route", 10, || {
        let r = received(&ha, "b");
        async move { r == ["203.0.113.20/32"] }
    })
    .await;

    let st = status(&ha, "b");
    let neg = st.negotiated.unwrap();
    assert_eq!((neg.peer_asn, neg.hold_time, neg.keepalive), (65_002, 9, 3));
    assert!(neg.four_octet_as && neg.route_refresh);
    assert_eq!(st.prefixes_advertised, 2);
    assert_eq!(st.prefixes_received, 1);
    let ann = ha.announcements();
    let web_ann = ann.iter().find(|x| x.prefix == "203.0.113.10/32").unwrap();
    assert_eq!((web_ann.services.clone(), web_ann.peers.clone()), (vec!["web".to_string()], vec!["b".to_string()]));

    // Everything established now: the report says so.
    let report =
        a.apply(snapshot(2, Some(p.a_settings.clone()), vec![p.a_peer.clone()], vec![web.clone()])).await.unwrap();
    assert_eq!(report.health, Health::Ok, "{}", report.detail);

    // A policy-only change (a new community) re-sends with new attributes without a new session.
    let mut changed = p.a_peer.clone();
    changed.advertise.communities = vec!["65001:200".into()];
    let flaps = status(&ha, "b").flaps;
    a.apply(snapshot(3, Some(p.a_settings.clone()), vec![changed.clone()], vec![web.clone()])).await.unwrap();
    eventually("new community", 10, || {
        let r = hb.received_routes("a").unwrap_or_default();
        async move { r.iter().any(|r| r.communities == ["65001:200"]) }
    })
    .await;
    assert_eq!(status(&ha, "b").flaps, flaps);
    assert_eq!(status(&ha, "b").state, SessionState::Established);

    // The service goes away: both prefixes are withdrawn.
    a.apply(snapshot(4, Some(p.a_settings.clone()), vec![changed.clone()], vec![])).await.unwrap();
    eventually("withdrawn", 10, || {
        let r = received(&hb, "a");
        async move { r.is_empty() }
    })
    .await;
    assert!(ha.announcements().is_empty());

    // A session-affecting change restarts only that session, with an Administrative Reset.
    let mut reset = changed.clone();
    reset.hold_time = 30;
    a.apply(snapshot(5, Some(p.a_settings.clone()), vec![reset], vec![])).await.unwrap();
    eventually("B saw the reset", 10, || {
        let n = status(&hb, "a").last_notification_received;
        async move { n.is_some_and(|n| (n.code, n.subcode) == (6, 4)) }
    })
    .await;
    established(&ha, "b").await;
    assert_eq!(status(&ha, "b").negotiated.unwrap().hold_time, 9, "B still asks for 9");

    // Switching BGP off closes with Cease / Administrative Shutdown and its message.
    let report = a.apply(snapshot(6, None, vec![], vec![])).await.unwrap();
    assert_eq!(report.health, Health::Ok);
    eventually("B saw the shutdown", 10, || {
        let n = status(&hb, "a").last_notification_received;
        async move {
            n.is_some_and(|n| (n.code, n.subcode) == (6, 2) && n.message.as_deref() == Some("BGP is switched off"))
        }
    })
    .await;
    assert!(ha.peers().is_empty());
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_or_removed_peer_gets_a_cease() {
    let p = pair("127.0.0.4", false);
    let mut a = Speaker::new(SpeakerOptions::default());
    let mut b = Speaker::new(SpeakerOptions::default());
    let (ha, hb) = (a.handle(), b.handle());
    a.apply(snapshot(1, Some(p.a_settings.clone()), vec![p.a_peer.clone()], vec![])).await.unwrap();
    b.apply(snapshot(1, Some(p.b_settings.clone()), vec![p.b_peer.clone()], vec![])).await.unwrap();
    established(&ha, "b").await;
    established(&hb, "a").await;
    let mut off = p.a_peer.clone();
    off.enabled = false;
    a.apply(snapshot(2, Some(p.a_settings.clone()), vec![off], vec![])).await.unwrap();
    assert_eq!(status(&ha, "b").state, SessionState::Disabled);
    eventually("B saw the shutdown", 10, || {
        let n = status(&hb, "a").last_notification_received;
        async move { n.is_some_and(|n| (n.code, n.subcode) == (6, 2) && n.message.as_deref() == Some("peer disabled")) }
    })
    .await;
    // Re-enabled, then removed: Peer De-configured.
    a.apply(snapshot(3, Some(p.a_settings.clone()), vec![p.a_peer.clone()], vec![])).await.unwrap();
    established(&ha, "b").await;
    a.apply(snapshot(4, Some(p.a_settings.clone()), vec![], vec![])).await.unwrap();
    assert!(ha.peer("b").is_none());
    eventually("B saw the deconfiguration", 10, || {
        let n = status(&hb, "a").last_notification_received;
        async move { n.is_some_and(|n| (n.code, n.subcode) == (6, 3)) }
    })
    .await;
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exceeding_max_prefixes_closes_with_a_cease() {
    let mut p = pair("127.0.0.5", false);
    p.a_peer.max_prefixes = Some(2);
    let mut a = Speaker::new(SpeakerOptions::default());
    let mut b = Speaker::new(SpeakerOptions::default());
    let (ha, hb) = (a.handle(), b.handle());
    a.apply(snapshot(1, Some(p.a_settings.clone()), vec![p.a_peer.clone()], vec![])).await.unwrap();
    let three = vec![service("x", &["203.0.113.1", "203.0.113.2", "203.0.113.3"])];
    b.apply(snapshot(1, Some(p.b_settings.clone()), vec![p.b_peer.clone()], three)).await.unwrap();
    eventually("A sent max-prefixes", 20, || {
        let n = status(&ha, "b").last_notification_sent;
        async move { n.is_some_and(|n| (n.code, n.subcode) == (6, 1)) }
    })
    .await;
    eventually("A says why", 10, || {
        let e = status(&ha, "b").last_error.unwrap_or_default();
        async move { e.contains("maximum prefixes") }
    })
    .await;
    // B hears the max-prefixes Cease; A then holds the session down, so B's reconnections get Cease /
    // Connection Rejected, which may already have replaced it when B's status is read.
    eventually("B received it", 10, || {
        let n = status(&hb, "a").last_notification_received;
        async move { n.is_some_and(|n| matches!((n.code, n.subcode), (6, 1) | (6, 5))) }
    })
    .await;
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_restart_keeps_routes_until_end_of_rib() {
    let p = pair("127.0.0.6", true);
    let mut a = Speaker::new(SpeakerOptions::default());
    let mut b = Speaker::new(SpeakerOptions::default());
    let (ha, hb) = (a.handle(), b.handle());
    a.apply(snapshot(1, Some(p.a_settings.clone()), vec![p.a_peer.clone()], vec![])).await.unwrap();
    let before = vec![service("old", &["203.0.113.1"]), service("kept", &["203.0.113.2"])];
    b.apply(snapshot(1, Some(p.b_settings.clone()), vec![p.b_peer.clone()], before)).await.unwrap();
    established(&ha, "b").await;
    eventually("A has B's routes", 10, || {
        let r = received(&ha, "b");
        async move { r.len() == 2 }
    })
    .await;
    assert!(status(&ha, "b").negotiated.unwrap().graceful_restart);

    // B stops with graceful restart: no Cease, and A keeps B's routes (stale) while B is away. (Both sides
    // connect, so the session may have begun with a Cease / Connection Collision Resolution: nothing new may
    // arrive after that.)
    let notified_before = status(&ha, "b").last_notification_received;
    b.shutdown().await;
    drop(hb);
    eventually("A noticed", 10, || {
        let s = state(&ha, "b");
        async move { s != SessionState::Established }
    })
    .await;
    assert_eq!(status(&ha, "b").last_notification_received, notified_before);
    assert_eq!(received(&ha, "b"), ["203.0.113.1/32", "203.0.113.2/32"]);

    // B comes back as a restart with one route gone and one new: after its End-of-RIB, A holds exactly the new
    // set.
    let mut b2 = Speaker::new(SpeakerOptions { restarting: true });
    let after = vec![service("kept", &["203.0.113.2"]), service("new", &["203.0.113.3"])];
    b2.apply(snapshot(1, Some(p.b_settings.clone()), vec![p.b_peer.clone()], after)).await.unwrap();
    established(&ha, "b").await;
    eventually("stale route gone after End-of-RIB", 10, || {
        let r = received(&ha, "b");
        async move { r == ["203.0.113.2/32", "203.0.113.3/32"] }
    })
    .await;
    a.shutdown().await;
    b2.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_without_graceful_restart_sends_admin_shutdown() {
    let p = pair("127.0.0.7", false);
    let mut a = Speaker::new(SpeakerOptions::default());
    let mut b = Speaker::new(SpeakerOptions::default());
    let (ha, hb) = (a.handle(), b.handle());
    a.apply(snapshot(1, Some(p.a_settings.clone()), vec![p.a_peer.clone()], vec![])).await.unwrap();
    b.apply(snapshot(1, Some(p.b_settings.clone()), vec![p.b_peer.clone()], vec![service("s", &["203.0.113.9"])]))
        .await
        .unwrap();
    established(&ha, "b").await;
    eventually("route", 10, || {
        let r = received(&ha, "b");
        async move { r.len() == 1 }
    })
    .await;
    b.shutdown().await;
    drop(hb);
    eventually("A got the Cease and dropped the route", 10, || {
        let s = status(&ha, "b");
        let r = received(&ha, "b");
        async move { s.last_notification_received.is_some_and(|n| (n.code, n.subcode) == (6, 2)) && r.is_empty() }
    })
    .await;
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_vips_reach_the_peer_and_leave_it() {
    let p = pair("127.0.0.8", false);
    let mut a = Speaker::new(SpeakerOptions::default());
    let mut b = Speaker::new(SpeakerOptions::default());
    let (ha, hb) = (a.handle(), b.handle());
    let vips: Vec<String> = (0..10_000u32).map(|i| std::net::Ipv4Addr::from(0x6440_0000 + i).to_string()).collect();
    let refs: Vec<&str> = vips.iter().map(String::as_str).collect();
    let many: Vec<_> = refs.chunks(1000).enumerate().map(|(i, c)| service(&format!("s{i}"), c)).collect();
    b.apply(snapshot(1, Some(p.b_settings.clone()), vec![p.b_peer.clone()], vec![])).await.unwrap();
    a.apply(snapshot(1, Some(p.a_settings.clone()), vec![p.a_peer.clone()], many.clone())).await.unwrap();
    established(&ha, "b").await;
    eventually("10,000 routes at B", 60, || {
        let n = hb.peer("a").map(|s| s.prefixes_received).unwrap_or(0);
        async move { n == 10_000 }
    })
    .await;
    let updates = status(&ha, "b").updates_sent;
    assert!(updates < 40, "packed into few UPDATEs, not one per prefix: {updates}");
    a.apply(snapshot(2, Some(p.a_settings.clone()), vec![p.a_peer.clone()], many[..5].to_vec())).await.unwrap();
    eventually("5,000 withdrawn", 60, || {
        let n = hb.peer("a").map(|s| s.prefixes_received).unwrap_or(0);
        async move { n == 5_000 }
    })
    .await;
    a.shutdown().await;
    b.shutdown().await;
}
