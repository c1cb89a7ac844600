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
fn appliance_json_matches_the_model() {
    let ip: IpAddr = "10.201.0.1".parse().unwrap();
    let s: model::bgp::BgpSettings =
        serde_json::from_value(appliance_bgp_settings(65000, Ipv4Addr::new(192, 0, 2, 1), Some(ip), Some(30))).unwrap();
    assert_eq!((s.listen.unwrap().address, s.graceful_restart.restart_time), ("10.201.0.1".to_string(), 30));
    let p: model::bgp::BgpPeer = serde_json::from_value(appliance_peer("bird", ip, 65001)).unwrap();
    assert_eq!((p.hold_time, p.connect_retry, p.port), (3, 1, 179));
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

/// Reads one BGP message header (marker, length, type) and returns the type.
async fn read_bgp_type(stream: &mut tokio::net::TcpStream) -> u8 {
    use tokio::io::AsyncReadExt as _;
    let mut head = [0u8; 19];
    tokio::time::timeout(UP, stream.read_exact(&mut head)).await.expect("a message in time").unwrap();
    assert_eq!(head[..16], [0xff; 16], "a BGP marker");
    head[18]
}

/// What the appliance will do: listen on the root end of a link (port 179 of that address only, so parallel
/// tests do not clash) for a peer that connects, and connect from the root end to a passive peer; over IPv4 and
/// IPv6, with a second link into the same namespace. An OPEN arriving proves the path and the peer's config.
#[tokio::test]
async fn root_link_reaches_a_peer_both_ways() {
    use std::net::{IpAddr, SocketAddr};
    let ns = Netns::new();
    let (link, second) = (Link::to_root(&ns), Link::to_root(&ns));
    let listeners = [
        tokio::net::TcpListener::bind((link.a.v4, 179)).await.expect("bind the root end, port 179"),
        tokio::net::TcpListener::bind((link.a.v6, 179)).await.expect("bind the root end, port 179"),
    ];
    let _bird = Bird::start(
        &ns,
        &BirdConfig::new(link.b.v4)
            .neighbor(BirdNeighbor::new("out4", 65001, link.a.v4.into(), 65000).local_address(link.b.v4))
            .neighbor(BirdNeighbor::new("out6", 65001, link.a.v6.into(), 65000).local_address(link.b.v6))
            .neighbor(BirdNeighbor::new("in4", 65001, second.a.v4.into(), 65000).passive())
            .neighbor(BirdNeighbor::new("in6", 65001, second.a.v6.into(), 65000).passive()),
    );
    for (listener, from) in listeners.iter().zip([IpAddr::from(link.b.v4), link.b.v6.into()]) {
        let (mut stream, peer) = tokio::time::timeout(UP, listener.accept()).await.expect("BIRD connects").unwrap();
        assert_eq!(peer.ip(), from);
        assert_eq!(read_bgp_type(&mut stream).await, 1, "an OPEN");
    }
    for (local, remote) in
        [(IpAddr::from(second.a.v4), IpAddr::from(second.b.v4)), (second.a.v6.into(), second.b.v6.into())]
    {
        let socket = if local.is_ipv4() { tokio::net::TcpSocket::new_v4() } else { tokio::net::TcpSocket::new_v6() };
        let socket = socket.unwrap();
        socket.bind(SocketAddr::new(local, 0)).unwrap();
        let mut stream = socket.connect(SocketAddr::new(remote, 179)).await.expect("connect to BIRD");
        assert_eq!(read_bgp_type(&mut stream).await, 1, "an OPEN from the passive side");
    }
}

/// Not run by default (minutes, and a few hundred MB): how long the bulk paths take for 500,000 IPv4 routes —
/// GoBGP taking them in through MRT injection and sending them to BIRD, and BIRD announcing as many static
/// routes to GoBGP. `cargo test -p portico --test e2e bulk_500k -- --ignored --nocapture`
#[tokio::test]
#[ignore]
async fn bulk_500k_routes() {
    const N: u32 = 500_000;
    let big = Duration::from_secs(600);
    let p = pair(65001, 65002, &[], |n| n, |n| n);
    p.bird.wait_established("gob", UP).await;
    let t = std::time::Instant::now();
    let template = RouteSpec::new("").next_hop(p.link.b.v4).communities(&["65000:5"]);
    p.gobgp.inject_prefixes(synthetic_prefixes(Afi::Ipv4, N), &template);
    let injected = t.elapsed();
    p.bird.wait_for(big, "500,000 routes at BIRD", |b| (b.route_count_from("gob") == u64::from(N)).then_some(())).await;
    println!("GoBGP: {N} routes injected in {injected:?}, all at BIRD after {:?}", t.elapsed());

    let (na, nb) = (Netns::new(), Netns::new());
    let link = Link::between(&na, &nb);
    let t = std::time::Instant::now();
    let bird = Bird::start(
        &na,
        &BirdConfig::new(link.a.v4)
            .neighbor(BirdNeighbor::new("gob", 65001, link.b.v4.into(), 65002).export_static())
            .static_prefixes(synthetic_prefixes(Afi::Ipv4, N)),
    );
    let started = t.elapsed();
    let gobgp =
        Gobgp::start(&nb, &GobgpConfig::new(65002, link.b.v4).neighbor(GobgpNeighbor::new(link.a.v4.into(), 65001)));
    gobgp.wait_for(big, "500,000 routes at GoBGP", |g| (g.route_count(Afi::Ipv4) == u64::from(N)).then_some(())).await;
    println!("BIRD: {N} static routes loaded in {started:?}, all at GoBGP after {:?}", t.elapsed());
    assert_eq!(bird.route_count_from("static4"), u64::from(N));
}
