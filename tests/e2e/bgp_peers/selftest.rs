//! Self-tests of the peer harness without the appliance: BIRD in one namespace, GoBGP in another, a veth pair
//! between them. They prove the builders produce configs both daemons accept, the sessions come up, and the
//! parsers read routes, attributes, session states and staleness correctly. Run alone with
//! `cargo test -p portico --test e2e bgp_peers::selftest`.

use super::*;
use crate::netns::{Link, Netns};
use std::time::Duration;

const UP: Duration = Duration::from_secs(20);

struct Pair {
    bird: Bird,
    gobgp: Gobgp,
    /// `a` is BIRD's end, `b` GoBGP's.
    link: Link,
    // Dropped last: the daemons above go first.
    _ns: (Netns, Netns),
}

/// BIRD (AS `bird_as`, protocol `gob`) and GoBGP (AS `gobgp_as`) on a fresh link, each with what `bird_neighbor`
/// and `gobgp_neighbor` add to the default neighbor; BIRD exports its static routes.
fn pair(
    bird_as: u32,
    gobgp_as: u32,
    statics: &[RouteSpec],
    bird_neighbor: impl FnOnce(BirdNeighbor) -> BirdNeighbor,
    gobgp_neighbor: impl FnOnce(GobgpNeighbor) -> GobgpNeighbor,
) -> Pair {
    let (na, nb) = (Netns::new(), Netns::new());
    let link = Link::between(&na, &nb);
    let mut config = BirdConfig::new(link.a.v4).neighbor(bird_neighbor(
        BirdNeighbor::new("gob", bird_as, link.b.v4.into(), gobgp_as).local_address(link.a.v4).export_static(),
    ));
    for s in statics {
        config = config.static_route(s);
    }
    let bird = Bird::start(&na, &config);
    let gobgp = Gobgp::start(
        &nb,
        &GobgpConfig::new(gobgp_as, link.b.v4)
            .neighbor(gobgp_neighbor(GobgpNeighbor::new(link.a.v4.into(), bird_as).local_address(link.b.v4))),
    );
    Pair { bird, gobgp, link, _ns: (na, nb) }
}

#[tokio::test]
async fn namespaces_and_links_are_removed_on_drop() {
    let (ns, other) = (Netns::new(), Netns::new());
    let name = ns.name().to_string();
    let to_root = Link::to_root(&ns);
    let between = Link::between(&ns, &other);
    let root_if = to_root.a.ifname.clone();
    assert!(crate::netns::ip(&["-o", "addr", "show", "dev", &root_if]).contains(&to_root.a.v4.to_string()));
    let inside = ns.exec(&["ip", "-o", "addr"]);
    for addr in [to_root.b.v4.to_string(), to_root.b.v6.to_string(), between.a.v4.to_string()] {
        assert!(inside.contains(&addr), "{addr} not in {inside}");
    }
    // A cut is visible on the far side as a lost carrier, and mending it restores both ends.
    to_root.set_up(false);
    let far = ns.exec(&["ip", "-br", "link", "show", "dev", &to_root.b.ifname]);
    assert!(far.contains("LOWERLAYERDOWN") || far.contains("DOWN"), "{far}");
    to_root.set_up(true);
    assert!(ns.exec(&["ip", "-o", "addr"]).contains(&to_root.b.v6.to_string()), "IPv6 kept across the cut");
    // A process spawned inside dies with the namespace.
    let mut sleeper = ns.command("sleep");
    // Not an NsChild: left for the namespace's drop to kill (and reaped below).
    let mut child = sleeper.arg("600").spawn().unwrap();
    let pid = child.id();
    drop((to_root, between, ns, other));
    assert!(!crate::netns::ip(&["netns", "list"]).lines().any(|l| l.split_whitespace().next() == Some(&name)));
    assert!(
        crate::netns::try_run(std::process::Command::new("ip").args(["link", "show", "dev", &root_if])).status.code()
            != Some(0)
    );
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    assert!(stat.is_empty() || stat.contains(") Z "), "the process inside survived: {stat}");
    child.wait().unwrap();
}

#[tokio::test]
async fn ebgp_routes_and_attributes_both_ways() {
    let statics = [
        RouteSpec::new("203.0.113.0/24")
            .med(30)
            .communities(&["65001:10", "65001:20"])
            .large_communities(&["65001:7:8"]),
        RouteSpec::new("2001:db8:1::/48").communities(&["65001:60"]).origin(Origin::Egp),
    ];
    let p = pair(65001, 65002, &statics, |n| n, |n| n);
    let st = p.bird.wait_established("gob", UP).await;
    assert_eq!(st.neighbor_address.as_deref(), Some(p.link.b.v4.to_string().as_str()));
    p.gobgp.wait_established(p.link.a.v4.into(), UP).await;

    // GoBGP → BIRD, IPv4 and IPv6.
    p.gobgp.add_route(
        &RouteSpec::new("198.51.100.0/24")
            .next_hop(p.link.b.v4)
            .med(50)
            .origin(Origin::Incomplete)
            .communities(&["65000:100", "65000:200"])
            .large_communities(&["65000:1:2", "65000:3:4"]),
    );
    p.gobgp.add_route(&RouteSpec::new("2001:db8:2::/48").next_hop(p.link.b.v6).med(7).communities(&["65000:300"]));
    let r = p.bird.wait_route("198.51.100.0/24", UP).await;
    assert_eq!(r.source.as_deref(), Some("gob"));
    assert_eq!(r.next_hop, Some(p.link.b.v4.into()));
    assert_eq!(r.as_path, [65002]);
    assert_eq!(r.origin, Some(Origin::Incomplete));
    assert_eq!(r.med, Some(50));
    assert_eq!(r.communities, ["65000:100", "65000:200"]);
    assert_eq!(r.large_communities, ["65000:1:2", "65000:3:4"]);
    assert!(r.best && !r.stale, "{r:?}");
    let r6 = p.bird.wait_route("2001:db8:2::/48", UP).await;
    assert_eq!(r6.next_hop, Some(p.link.b.v6.into()));
    assert_eq!((r6.med, r6.communities.as_slice()), (Some(7), ["65000:300".to_string()].as_slice()));
    assert_eq!(p.bird.route_count_from("gob"), 2);
    assert!(p.bird.routes().iter().any(|r| r.prefix == "203.0.113.0/24" && r.source.as_deref() == Some("static4")));

    // BIRD's static routes → GoBGP.
    let g = p.gobgp.wait_route("203.0.113.0/24", UP).await;
    assert_eq!(g.source, Some(p.link.a.v4.to_string()));
    assert_eq!(g.next_hop, Some(p.link.a.v4.into()));
    assert_eq!(g.as_path, [65001]);
    assert_eq!(g.med, Some(30));
    assert_eq!(g.communities, ["65001:10", "65001:20"]);
    assert_eq!(g.large_communities, ["65001:7:8"]);
    assert_eq!(g.origin, Some(Origin::Igp));
    let g6 = p.gobgp.wait_route("2001:db8:1::/48", UP).await;
    assert_eq!(g6.next_hop, Some(p.link.a.v6.into()));
    assert_eq!((g6.origin, g6.communities.as_slice()), (Some(Origin::Egp), ["65001:60".to_string()].as_slice()));
    assert_eq!(p.gobgp.route_count(Afi::Ipv4), 2, "GoBGP's own and BIRD's");
    assert_eq!(p.gobgp.neighbor_state(p.link.a.v4.into()).accepted, 2);

    // A withdrawal reaches BIRD.
    p.gobgp.del_route("198.51.100.0/24");
    p.bird.wait_no_route("198.51.100.0/24", UP).await;
}

#[tokio::test]
async fn ibgp_carries_local_pref() {
    let statics = [RouteSpec::new("203.0.113.0/24").local_pref(300)];
    let p = pair(65010, 65010, &statics, |n| n, |n| n);
    p.bird.wait_established("gob", UP).await;
    p.gobgp.add_route(&RouteSpec::new("198.51.100.0/24").next_hop(p.link.b.v4).local_pref(200).med(5));
    let r = p.bird.wait_route("198.51.100.0/24", UP).await;
    assert_eq!((r.local_pref, r.med, r.as_path.len()), (Some(200), Some(5), 0), "{r:?}");
    let g = p.gobgp.wait_route("203.0.113.0/24", UP).await;
    assert_eq!((g.local_pref, g.as_path.len()), (Some(300), 0), "{g:?}");
}

#[tokio::test]
async fn tcp_md5_right_key_connects_wrong_key_stays_down() {
    let p = pair(65001, 65002, &[], |n| n.password("s3cret key"), |n| n.password("s3cret key"));
    p.bird.wait_established("gob", UP).await;
    p.gobgp.wait_established(p.link.a.v4.into(), UP).await;

    // BIRD changes its key: the session drops and stays down (SYNs with a wrong signature are dropped).
    let wrong = BirdConfig::new(p.link.a.v4).neighbor(
        BirdNeighbor::new("gob", 65001, p.link.b.v4.into(), 65002).local_address(p.link.a.v4).password("wrong"),
    );
    p.bird.configure(&wrong);
    p.bird.wait_down("gob", UP).await;
    let until = std::time::Instant::now() + Duration::from_secs(5);
    while std::time::Instant::now() < until {
        let st = p.bird.protocol_state("gob");
        assert!(!st.established(), "established with a wrong key: {st:?}");
        assert!(!p.gobgp.neighbor_state(p.link.a.v4.into()).established());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let st = p.bird.protocol_state("gob");
    assert!(matches!(st.bgp_state.as_deref(), Some("Connect" | "Active" | "Idle")), "{st:?}");
}

#[tokio::test]
async fn cutting_the_link_brings_the_session_down_and_mending_it_up() {
    let p = pair(65001, 65002, &[], |n| n, |n| n);
    p.bird.wait_established("gob", UP).await;
    p.gobgp.add_route(&RouteSpec::new("198.51.100.0/24").next_hop(p.link.b.v4));
    p.bird.wait_route("198.51.100.0/24", UP).await;

    p.link.set_up(false);
    let st = p.bird.wait_down("gob", UP).await;
    p.gobgp.wait_down(p.link.a.v4.into(), UP).await;
    p.bird.wait_no_route("198.51.100.0/24", UP).await;
    assert_ne!(st.state, "up", "{st:?}");

    p.link.set_up(true);
    p.bird.wait_established("gob", UP).await;
    p.bird.wait_route("198.51.100.0/24", UP).await;
}

#[tokio::test]
async fn graceful_restart_keeps_routes_stale() {
    let statics = [RouteSpec::new("203.0.113.0/24")];
    let p = pair(65001, 65002, &statics, |n| n.graceful_restart(60), |n| n.graceful_restart(60));
    let mut p = p;
    p.bird.wait_established("gob", UP).await;
    let route = RouteSpec::new("198.51.100.0/24").next_hop(p.link.b.v4).communities(&["65000:1"]);
    p.gobgp.add_route(&route);
    assert!(!p.bird.wait_route("198.51.100.0/24", UP).await.stale);
    assert!(!p.gobgp.wait_route("203.0.113.0/24", UP).await.stale);

    // GoBGP dies without a NOTIFICATION: BIRD, as helper, keeps its route, stale.
    p.gobgp.kill();
    let r = p.bird.wait_for(UP, "GoBGP's route stale", |b| b.route("gob", "198.51.100.0/24").filter(|r| r.stale)).await;
    assert_eq!(r.communities, ["65000:1"]);
    assert!(p.bird.protocol_state("gob").gr_active);

    // It comes back with the Restart State bit and announces the route again: fresh after End-of-RIB.
    p.gobgp.start_again(true);
    p.gobgp.add_route(&route);
    p.bird.wait_established("gob", UP).await;
    p.bird.wait_for(UP, "GoBGP's route fresh", |b| b.route("gob", "198.51.100.0/24").filter(|r| !r.stale)).await;
    assert!(!p.bird.protocol_state("gob").gr_active);

    // The other way round: BIRD dies, GoBGP keeps BIRD's route and marks the path stale.
    p.gobgp.wait_for(UP, "BIRD's route learned", |g| g.learned_route("203.0.113.0/24").filter(|r| !r.stale)).await;
    p.bird.kill();
    p.gobgp.wait_for(UP, "BIRD's route stale", |g| g.learned_route("203.0.113.0/24").filter(|r| r.stale)).await;
}

#[tokio::test]
async fn many_routes_through_mrt_injection() {
    let p = pair(65001, 65002, &[], |n| n, |n| n);
    p.bird.wait_established("gob", UP).await;
    let template = RouteSpec::new("").next_hop(p.link.b.v4).med(9).communities(&["65000:5"]).aspath(&[65100]);
    assert_eq!(p.gobgp.inject_prefixes(synthetic_prefixes(Afi::Ipv4, 20_000), &template), 20_000);
    let template6 = RouteSpec::new("").next_hop(p.link.b.v6).large_communities(&["65000:1:1"]);
    assert_eq!(p.gobgp.inject_prefixes(synthetic_prefixes(Afi::Ipv6, 2_000), &template6), 2_000);
    assert_eq!(p.gobgp.route_count(Afi::Ipv4), 20_000);
    p.bird
        .wait_for(Duration::from_secs(60), "22,000 routes", |b| (b.route_count_from("gob") == 22_000).then_some(()))
        .await;
    let last = p.bird.route("gob", "16.78.31.0/24").expect("the 20,000th prefix");
    assert_eq!((last.as_path.as_slice(), last.med), ([65002, 65100].as_slice(), Some(9)), "{last:?}");
    assert_eq!(last.communities, ["65000:5"]);
    let v6 = p.bird.route("gob", "2a00:0:7cf::/48").expect("the 2,000th IPv6 prefix");
    assert_eq!(
        (v6.next_hop, v6.large_communities.as_slice()),
        (Some(p.link.b.v6.into()), ["65000:1:1".to_string()].as_slice())
    );
}

#[test]
fn bird_parsers_read_real_output() {
    let routes = "BIRD 2.0.12 ready.
Table master4:
198.51.100.0/24      unicast [gob 08:14:02.191] * (100) [AS65002?]
\tvia 10.250.0.2 on xva
\tType: BGP univ
\tBGP.origin: Incomplete
\tBGP.as_path: 65002 65003
\tBGP.next_hop: 10.250.0.2
\tBGP.med: 50
\tBGP.local_pref: 100
\tBGP.community: (65000,100) (65000,200)
\tBGP.large_community: (65000, 1, 2) (65000, 3, 4)
                     unicast [gob2 08:14:03.000] (100s) [AS65009i]
\tvia 10.250.0.6 on xvc
\tType: BGP univ
\tBGP.origin: IGP
\tBGP.as_path: 65009
203.0.113.0/24       blackhole [s4 08:13:56.521] * (200)
\tType: static univ

Table master6:
2001:db8:2::/48      unicast [gob 08:14:02.207 from 10.250.0.2] * (100) [AS65002?]
\tvia fd00:250::2 on xva
\tBGP.next_hop: fd00:250::2 fe80::1
";
    let r = parse_bird_routes(routes, &[]);
    assert_eq!(r.len(), 4, "{r:#?}");
    assert_eq!(r[0].as_path, [65002, 65003]);
    assert_eq!(r[0].large_communities, ["65000:1:2", "65000:3:4"]);
    assert!(r[0].best && !r[0].stale);
    assert_eq!(
        (r[1].prefix.as_str(), r[1].source.as_deref(), r[1].best, r[1].stale),
        ("198.51.100.0/24", Some("gob2"), false, true)
    );
    assert_eq!(r[1].next_hop, Some("10.250.0.6".parse().unwrap()));
    assert_eq!((r[2].source.as_deref(), r[2].next_hop), (Some("s4"), None));
    assert_eq!(r[3].next_hop, Some("fd00:250::2".parse().unwrap()));
    assert!(parse_bird_routes(routes, &["gob".into()])[0].stale);
    assert_eq!(parse_bird_count("BIRD 2.0.12 ready.\n2 of 2 routes for 2 networks in table master4\n"), 2);
    assert_eq!(
        parse_bird_count(
            "1 of 1 routes for 1 networks in table master4\n3 of 3 routes for 3 networks in table master6\nTotal: 4 of 4 routes for 4 networks in 2 tables\n"
        ),
        4
    );
}
