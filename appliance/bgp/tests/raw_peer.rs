//! A raw test peer: a TCP client that writes hand-built bytes to a real speaker and reads back exactly what it
//! answers. Each malformed message must produce the NOTIFICATION RFC 4271 / RFC 7606 prescribe, or be
//! treated as a withdrawal with the session kept up.

// Test helpers live outside #[test] functions, where clippy.toml's test allowances do not reach; a failed
// unwrap here is a failed test, which is what it should be.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::*;
use model::bgp::SessionState;
use model::subsystem::Subsystem;
use portico_bgp::{Speaker, SpeakerHandle, SpeakerOptions};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const RAW_IP: &str = "127.0.0.3";
const RAW_AS: u16 = 65_010;

struct Setup {
    speaker: Speaker,
    handle: SpeakerHandle,
    addr: SocketAddr,
}

/// A speaker (AS 65000, id 10.0.0.1) listening on loopback, with the raw peer (AS 65010 at 127.0.0.3)
/// configured as passive, and optionally a service to announce.
async fn speaker(hold_time: u16, services: Vec<model::snapshot::ServiceEntry>) -> Setup {
    let port = free_port("127.0.0.1");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut speaker = Speaker::new(SpeakerOptions::default());
    let handle = speaker.handle();
    let p = peer(serde_json::json!({
        "name": "raw", "address": RAW_IP, "asn": RAW_AS, "passive": true, "hold_time": hold_time,
    }));
    speaker.apply(snapshot(1, Some(settings(65_000, "10.0.0.1", addr, false)), vec![p], services)).await.unwrap();
    Setup { speaker, handle, addr }
}

async fn connect_from(ip: &str, to: SocketAddr) -> TcpStream {
    let s = TcpSocket::new_v4().unwrap();
    s.bind(format!("{ip}:0").parse().unwrap()).unwrap();
    s.connect(to).await.unwrap()
}

fn frame(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![0xff; 16];
    m.extend_from_slice(&((19 + body.len()) as u16).to_be_bytes());
    m.push(kind);
    m.extend_from_slice(body);
    m
}

fn open(version: u8, my_as: u16, hold: u16, id: [u8; 4], params: &[u8]) -> Vec<u8> {
    let mut b = vec![version];
    b.extend_from_slice(&my_as.to_be_bytes());
    b.extend_from_slice(&hold.to_be_bytes());
    b.extend_from_slice(&id);
    b.push(params.len() as u8);
    b.extend_from_slice(params);
    frame(1, &b)
}

/// Capabilities: IPv4 and IPv6 unicast, route refresh, four-octet AS 65010.
fn caps() -> Vec<u8> {
    let c = [1, 4, 0, 1, 0, 1, 1, 4, 0, 2, 0, 1, 2, 0, 65, 4, 0, 0, 0xfd, 0xf2];
    let mut p = vec![2, c.len() as u8];
    p.extend_from_slice(&c);
    p
}

fn good_open() -> Vec<u8> {
    open(4, RAW_AS, 90, [10, 0, 0, 3], &caps())
}

const KEEPALIVE: [u8; 19] =
    [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 19, 4];

fn update(attrs: &[u8], nlri: &[u8]) -> Vec<u8> {
    let mut b = vec![0, 0];
    b.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
    b.extend_from_slice(attrs);
    b.extend_from_slice(nlri);
    frame(2, &b)
}

const ORIGIN: [u8; 4] = [0x40, 1, 1, 0];
/// AS_SEQUENCE [65010], four octets.
const AS_PATH: [u8; 9] = [0x40, 2, 6, 2, 1, 0, 0, 0xfd, 0xf2];
const NEXT_HOP: [u8; 7] = [0x40, 3, 4, 127, 0, 0, 3];
const NLRI: [u8; 4] = [24, 10, 9, 0];

fn good_attrs() -> Vec<u8> {
    [&ORIGIN[..], &AS_PATH, &NEXT_HOP].concat()
}

/// Reads one message: (type, body); `None` at end of stream.
async fn read_msg(s: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
    let mut h = [0u8; 19];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut h)).await.expect("speaker answered").ok()?;
    let len = usize::from(u16::from_be_bytes([h[16], h[17]]));
    let mut body = vec![0; len.saturating_sub(19)];
    s.read_exact(&mut body).await.ok()?;
    Some((h[18], body))
}

/// Reads until a NOTIFICATION arrives; its (code, subcode).
async fn notification(s: &mut TcpStream) -> (u8, u8) {
    loop {
        match read_msg(s).await {
            Some((3, body)) => return (body[0], body[1]),
            Some(_) => continue,
            None => panic!("connection closed without a NOTIFICATION"),
        }
    }
}

/// Connects, exchanges OPEN and KEEPALIVE; returns the stream in Established.
async fn establish(setup: &Setup, open: &[u8]) -> TcpStream {
    let mut s = connect_from(RAW_IP, setup.addr).await;
    let (kind, _) = read_msg(&mut s).await.unwrap();
    assert_eq!(kind, 1, "the speaker opens with OPEN");
    s.write_all(open).await.unwrap();
    s.write_all(&KEEPALIVE).await.unwrap();
    loop {
        let (kind, _) = read_msg(&mut s).await.unwrap();
        if kind == 4 {
            break;
        }
    }
    established(&setup.handle, "raw").await;
    s
}

/// Sends `bytes` after the speaker's OPEN and returns the NOTIFICATION it answers with.
async fn answer_to(bytes: &[u8]) -> (u8, u8) {
    let setup = speaker(90, vec![]).await;
    let mut s = connect_from(RAW_IP, setup.addr).await;
    assert_eq!(read_msg(&mut s).await.unwrap().0, 1);
    s.write_all(bytes).await.unwrap();
    let n = notification(&mut s).await;
    assert_ne!(setup.handle.peer("raw").unwrap().state, SessionState::Established);
    n
}

#[tokio::test]
async fn message_header_errors() {
    let mut bad_marker = KEEPALIVE;
    bad_marker[0] = 0;
    assert_eq!(answer_to(&bad_marker).await, (1, 1));
    let mut bad_length = KEEPALIVE;
    bad_length[17] = 18;
    assert_eq!(answer_to(&bad_length).await, (1, 2));
    let mut huge = KEEPALIVE;
    huge[16..18].copy_from_slice(&5000u16.to_be_bytes());
    assert_eq!(answer_to(&huge).await, (1, 2));
    assert_eq!(answer_to(&frame(9, &[])).await, (1, 3));
    // A truncated OPEN: a header that says 25 octets.
    assert_eq!(answer_to(&frame(1, &[4, 0xfe, 0xf2, 0, 90, 10])).await, (1, 2));
}

#[tokio::test]
async fn open_errors() {
    assert_eq!(answer_to(&open(3, RAW_AS, 90, [10, 0, 0, 3], &caps())).await, (2, 1));
    // Bad peer AS: neither the two-octet field nor a capability says 65010.
    assert_eq!(answer_to(&open(4, 65_011, 90, [10, 0, 0, 3], &[])).await, (2, 2));
    assert_eq!(answer_to(&open(4, RAW_AS, 2, [10, 0, 0, 3], &caps())).await, (2, 6));
    assert_eq!(answer_to(&open(4, RAW_AS, 90, [0, 0, 0, 0], &caps())).await, (2, 3));
    assert_eq!(answer_to(&open(4, RAW_AS, 90, [10, 0, 0, 1], &caps())).await, (2, 3), "our own identifier");
    // Optional parameter 1 (authentication, deprecated) is not supported.
    assert_eq!(answer_to(&open(4, RAW_AS, 90, [10, 0, 0, 3], &[1, 1, 0])).await, (2, 4));
    // Only a family we do not carry.
    assert_eq!(answer_to(&open(4, RAW_AS, 90, [10, 0, 0, 3], &[2, 6, 1, 4, 0, 1, 0, 128])).await, (2, 7));
}

#[tokio::test]
async fn messages_out_of_order_are_fsm_errors() {
    // An UPDATE before the OPEN.
    assert_eq!(answer_to(&update(&[], &[])).await, (5, 1));
    // An UPDATE in OpenConfirm.
    let setup = speaker(90, vec![]).await;
    let mut s = connect_from(RAW_IP, setup.addr).await;
    assert_eq!(read_msg(&mut s).await.unwrap().0, 1);
    s.write_all(&good_open()).await.unwrap();
    s.write_all(&update(&[], &[])).await.unwrap();
    assert_eq!(notification(&mut s).await, (5, 2));
}

async fn update_answer(attrs: &[u8], nlri: &[u8]) -> (u8, u8) {
    let setup = speaker(90, vec![]).await;
    let mut s = establish(&setup, &good_open()).await;
    s.write_all(&update(attrs, nlri)).await.unwrap();
    notification(&mut s).await
}

#[tokio::test]
async fn update_errors_that_reset_the_session() {
    // MP_REACH_NLRI for IPv6 with a 5-octet next hop.
    let bad_mp = [0x80, 14, 11, 0, 2, 1, 5, 0x20, 1, 0x0d, 0xb8, 0, 0, 0];
    assert_eq!(update_answer(&[&good_attrs()[..], &bad_mp].concat(), &[]).await, (3, 9));
    // MP_REACH_NLRI whose prefix runs past the attribute.
    let overrun = [0x80, 14, 22, 0, 2, 1, 16, 0x20, 1, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 64, 0x20];
    assert_eq!(update_answer(&[&good_attrs()[..], &overrun].concat(), &[]).await, (3, 9));
    let unreach = [0x80, 15, 3, 0, 2, 1];
    assert_eq!(update_answer(&[&unreach[..], &unreach].concat(), &[]).await, (3, 1));
    assert_eq!(update_answer(&[&good_attrs()[..], &[0x40, 99, 0]].concat(), &NLRI).await, (3, 2));
    assert_eq!(update_answer(&[0x40, 1, 9, 0], &NLRI).await, (3, 1), "attribute longer than the list");
    assert_eq!(update_answer(&good_attrs(), &[40, 10, 0, 0, 0, 0]).await, (3, 10), "a /40 IPv4 prefix");
}

#[tokio::test]
async fn malformed_attributes_are_treated_as_withdraw_and_the_session_stays_up() {
    let setup = speaker(90, vec![]).await;
    let mut s = establish(&setup, &good_open()).await;
    let h = setup.handle.clone();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("bad ORIGIN", [&[0x40, 1, 1, 5][..], &AS_PATH, &NEXT_HOP].concat()),
        ("bad AS_PATH", [&ORIGIN[..], &[0x40, 2, 6, 7, 1, 0, 0, 0xfd, 0xf2], &NEXT_HOP].concat()),
        ("bad NEXT_HOP", [&ORIGIN[..], &AS_PATH, &[0x40, 3, 4, 224, 0, 0, 1]].concat()),
        ("missing NEXT_HOP", [&ORIGIN[..], &AS_PATH].concat()),
        ("missing AS_PATH", [&ORIGIN[..], &NEXT_HOP].concat()),
        (
            "AS_PATH not starting with the peer",
            [&ORIGIN[..], &[0x40, 2, 6, 2, 1, 0, 0, 0xfd, 0xf3], &NEXT_HOP].concat(),
        ),
        ("bad COMMUNITIES", [&good_attrs()[..], &[0xc0, 8, 2, 0, 1]].concat()),
    ];
    for (name, attrs) in cases {
        s.write_all(&update(&good_attrs(), &NLRI)).await.unwrap();
        eventually("route installed in Adj-RIB-In", 10, || {
            let r = received(&h, "raw");
            async move { r == ["10.9.0.0/24"] }
        })
        .await;
        s.write_all(&update(&attrs, &NLRI)).await.unwrap();
        eventually(&format!("{name}: route withdrawn"), 10, || {
            let r = received(&h, "raw");
            async move { r.is_empty() }
        })
        .await;
        assert_eq!(h.peer("raw").unwrap().state, SessionState::Established, "{name}");
        assert!(h.peer("raw").unwrap().last_error.unwrap().contains("treated as withdraw"), "{name}");
    }
    // A duplicate attribute is discarded, not an error: the route stays.
    s.write_all(&update(&[&good_attrs()[..], &[0x40, 1, 1, 2]].concat(), &NLRI)).await.unwrap();
    eventually("route with a duplicate ORIGIN kept", 10, || {
        let r = h.received_routes("raw").unwrap_or_default();
        async move { r.len() == 1 && r[0].origin == "igp" }
    })
    .await;
    // Communities and large communities are shown as received.
    let with_communities =
        [&good_attrs()[..], &[0xc0, 8, 4, 0xfd, 0xe8, 0, 0x64], &[0xc0, 32, 12, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3]]
            .concat();
    s.write_all(&update(&with_communities, &NLRI)).await.unwrap();
    eventually("communities shown", 10, || {
        let r = h.received_routes("raw").unwrap_or_default();
        async move { r.len() == 1 && r[0].communities == ["65000:100"] && r[0].large_communities == ["1:2:3"] }
    })
    .await;
    // Still up and still answering.
    s.write_all(&KEEPALIVE).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(h.peer("raw").unwrap().state, SessionState::Established);
    drop(setup.speaker);
}

#[tokio::test]
async fn a_silent_peer_hits_the_hold_timer() {
    let setup = speaker(3, vec![]).await;
    let mut s = establish(&setup, &open(4, RAW_AS, 3, [10, 0, 0, 3], &caps())).await;
    let started = std::time::Instant::now();
    // Read (and so see the speaker's keepalives) but never answer.
    assert_eq!(notification(&mut s).await, (4, 0));
    assert!(started.elapsed() >= Duration::from_secs(2), "{:?}", started.elapsed());
    let st = setup.handle.peer("raw").unwrap();
    assert_eq!(st.last_notification_sent.map(|n| (n.code, n.subcode)), Some((4, 0)));
}

/// The IPv4 prefixes announced in an UPDATE body's classic NLRI field.
fn nlri_of(body: &[u8]) -> Vec<Vec<u8>> {
    let wl = usize::from(u16::from_be_bytes([body[0], body[1]]));
    let al = usize::from(u16::from_be_bytes([body[2 + wl], body[3 + wl]]));
    let mut rest = &body[4 + wl + al..];
    let mut out = Vec::new();
    while let Some((&len, tail)) = rest.split_first() {
        let n = usize::from(len).div_ceil(8);
        out.push([&[len][..], &tail[..n]].concat());
        rest = &tail[n..];
    }
    out
}

#[tokio::test]
async fn route_refresh_resends_the_adj_rib_out() {
    let setup = speaker(90, vec![service("web", &["203.0.113.10"])]).await;
    let mut s = establish(&setup, &good_open()).await;
    let want = vec![vec![32, 203, 0, 113, 10]];
    loop {
        let (kind, body) = read_msg(&mut s).await.unwrap();
        if kind == 2 && nlri_of(&body) == want {
            break;
        }
    }
    s.write_all(&frame(5, &[0, 1, 0, 1])).await.unwrap();
    loop {
        let (kind, body) = read_msg(&mut s).await.unwrap();
        if kind == 2 && nlri_of(&body) == want {
            break;
        }
    }
    // A ROUTE-REFRESH of the wrong length is its own error (RFC 7313).
    s.write_all(&frame(5, &[0, 1, 0])).await.unwrap();
    assert_eq!(notification(&mut s).await, (7, 1));
}

#[tokio::test]
async fn connections_from_unknown_addresses_are_closed_at_once() {
    let setup = speaker(90, vec![]).await;
    let mut s = connect_from("127.0.0.9", setup.addr).await;
    let mut buf = [0u8; 19];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await.unwrap().unwrap_or(0);
    assert_eq!(n, 0, "no OPEN for a stranger");
}

#[tokio::test]
async fn max_prefixes_from_a_raw_peer() {
    let port = free_port("127.0.0.1");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut speaker = Speaker::new(SpeakerOptions::default());
    let handle = speaker.handle();
    let p =
        peer(serde_json::json!({"name": "raw", "address": RAW_IP, "asn": RAW_AS, "passive": true, "max_prefixes": 1}));
    speaker.apply(snapshot(1, Some(settings(65_000, "10.0.0.1", addr, false)), vec![p], vec![])).await.unwrap();
    let setup = Setup { speaker, handle, addr };
    let mut s = establish(&setup, &good_open()).await;
    s.write_all(&update(&good_attrs(), &[24, 10, 9, 0, 24, 10, 9, 1])).await.unwrap();
    assert_eq!(notification(&mut s).await, (6, 1));
    assert!(setup.handle.peer("raw").unwrap().last_error.unwrap().contains("maximum prefixes"));
}

/// Path attributes of an UPDATE body: (type, value).
fn attrs_of(body: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let wl = usize::from(u16::from_be_bytes([body[0], body[1]]));
    let al = usize::from(u16::from_be_bytes([body[2 + wl], body[3 + wl]]));
    let mut a = &body[4 + wl..4 + wl + al];
    let mut out = Vec::new();
    while a.len() >= 3 {
        let (flags, t) = (a[0], a[1]);
        let (len, head) =
            if flags & 0x10 != 0 { (usize::from(u16::from_be_bytes([a[2], a[3]])), 4) } else { (usize::from(a[2]), 3) };
        out.push((t, a[head..head + len].to_vec()));
        a = &a[head + len..];
    }
    out
}

async fn establish_as(name: &str, handle: &SpeakerHandle, mut s: TcpStream) -> TcpStream {
    assert_eq!(read_msg(&mut s).await.unwrap().0, 1);
    s.write_all(&good_open()).await.unwrap();
    s.write_all(&KEEPALIVE).await.unwrap();
    while read_msg(&mut s).await.unwrap().0 != 4 {}
    established(handle, name).await;
    s
}

#[tokio::test]
async fn a_dual_stack_listener_serves_ipv6_and_ipv4_peers_with_next_hop_self() {
    let port = free_port("::1");
    let listen: SocketAddr = format!("[::]:{port}").parse().unwrap();
    let mut speaker = Speaker::new(SpeakerOptions::default());
    let h = speaker.handle();
    let peers = vec![
        peer(serde_json::json!({"name": "raw6", "address": "::1", "asn": RAW_AS, "passive": true})),
        peer(serde_json::json!({"name": "raw", "address": RAW_IP, "asn": RAW_AS, "passive": true})),
    ];
    let services = vec![service("web", &["203.0.113.10", "2001:db8::10"])];
    speaker.apply(snapshot(1, Some(settings(65_000, "10.0.0.1", listen, false)), peers, services)).await.unwrap();

    let mut s6 = establish_as("raw6", &h, TcpStream::connect(("::1", port)).await.unwrap()).await;
    // Over IPv6, the IPv6 route comes in MP_REACH_NLRI with our session address as next hop.
    loop {
        let (kind, body) = read_msg(&mut s6).await.unwrap();
        if kind != 2 {
            continue;
        }
        if let Some((_, mp)) = attrs_of(&body).into_iter().find(|(t, _)| *t == 14) {
            assert_eq!(&mp[..3], &[0, 2, 1]);
            assert_eq!(mp[3], 16);
            assert_eq!(&mp[4..20], &std::net::Ipv6Addr::LOCALHOST.octets());
            assert_eq!(&mp[21..], &[128, 0x20, 1, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10]);
            break;
        }
    }
    // An IPv4 peer reaches the same socket; it gets the IPv4 route with NEXT_HOP self, and not the IPv6 one,
    // for which the session has no next hop; the status says so.
    let mut s4 =
        establish_as("raw", &h, connect_from(RAW_IP, format!("127.0.0.1:{port}").parse().unwrap()).await).await;
    loop {
        let (kind, body) = read_msg(&mut s4).await.unwrap();
        if kind == 2 && nlri_of(&body) == [vec![32, 203, 0, 113, 10]] {
            let nh = attrs_of(&body).into_iter().find(|(t, _)| *t == 3).unwrap().1;
            assert_eq!(nh, [127, 0, 0, 1]);
            break;
        }
    }
    let err = h.peer("raw").unwrap().last_error.unwrap_or_default();
    assert!(err.contains("advertise.next_hop"), "{err}");
    let ann = h.announcements();
    let v6 = ann.iter().find(|a| a.prefix == "2001:db8::10/128").unwrap();
    assert_eq!(v6.peers, ["raw6"]);
    let v4 = ann.iter().find(|a| a.prefix == "203.0.113.10/32").unwrap();
    // Likewise no IPv4 next hop over the IPv6 session: the IPv4 route goes to the IPv4 peer only.
    assert_eq!(v4.peers, ["raw"]);
    let err6 = h.peer("raw6").unwrap().last_error.unwrap_or_default();
    assert!(err6.contains("ipv4-unicast routes need a next hop"), "{err6}");
}
