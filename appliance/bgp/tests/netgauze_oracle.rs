//! Our encoder checked against an independent implementation: every message the speaker sends must decode
//! in netgauze-bgp-pkt with the same meaning.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use netgauze_bgp_pkt::BgpMessage;
use netgauze_bgp_pkt::wire::deserializer::BgpParsingContext;
use netgauze_parse_utils::reader::SliceReader;
use netgauze_parse_utils::traits::ParseFromWithOneInput;
use portico_bgp::wire::{self, AfiSafi, Capability, GracefulRestartCap, Notification, Open, OutAttributes};
use std::net::Ipv4Addr;

fn parse(bytes: &[u8]) -> BgpMessage {
    let mut ctx = BgpParsingContext::default();
    let mut r = SliceReader::new(bytes);
    let m = BgpMessage::parse(&mut r, &mut ctx).unwrap_or_else(|e| panic!("netgauze rejects our message: {e:?}"));
    assert_eq!(r.remaining(), 0, "netgauze left bytes over");
    m
}

#[test]
fn our_open_is_an_open() {
    let o = Open {
        version: 4,
        my_as: 23_456,
        hold_time: 90,
        router_id: Ipv4Addr::new(192, 0, 2, 1),
        capabilities: vec![
            Capability::Multiprotocol(AfiSafi::IPV4_UNICAST),
            Capability::Multiprotocol(AfiSafi::IPV6_UNICAST),
            Capability::RouteRefresh,
            Capability::FourOctetAs(4_200_000_000),
            Capability::GracefulRestart(GracefulRestartCap {
                restarting: true,
                restart_time: 120,
                families: vec![(AfiSafi::IPV4_UNICAST, true)],
            }),
        ],
    };
    let BgpMessage::Open(open) = parse(&wire::encode_open(&o)) else { panic!("not an OPEN") };
    assert_eq!(open.my_asn4(), 4_200_000_000);
    assert_eq!(open.hold_time(), 90);
    assert_eq!(open.bgp_id(), Ipv4Addr::new(192, 0, 2, 1));
}

#[test]
fn our_updates_keepalives_and_notifications_parse() {
    let attrs = OutAttributes {
        as_path: vec![65_001],
        next_hop: "192.0.2.1".parse().unwrap(),
        med: Some(5),
        communities: vec![0xFFFF_FF01],
        large_communities: vec![[1, 2, 3]],
        ..Default::default()
    };
    let v4: Vec<ipnet::IpNet> =
        (0..2000u32).map(|i| ipnet::IpNet::new(Ipv4Addr::from(0x0A00_0000 + i).into(), 32).unwrap()).collect();
    let mut count = 0;
    for m in wire::encode_announcements(AfiSafi::IPV4_UNICAST, &attrs, &v4, true) {
        let BgpMessage::Update(u) = parse(&m) else { panic!("not an UPDATE") };
        count += u.nlri().len();
        assert_eq!(u.path_attributes().len(), 6, "ORIGIN, AS_PATH, MED, COMMUNITIES, LARGE_COMMUNITY, NEXT_HOP");
    }
    assert_eq!(count, 2000);
    let mut v6attrs = attrs.clone();
    v6attrs.next_hop = "2001:db8::1".parse().unwrap();
    let v6 = vec!["2001:db8::10/128".parse().unwrap()];
    for m in wire::encode_announcements(AfiSafi::IPV6_UNICAST, &v6attrs, &v6, true) {
        assert!(matches!(parse(&m), BgpMessage::Update(_)));
    }
    for m in wire::encode_withdrawals(AfiSafi::IPV4_UNICAST, &v4)
        .into_iter()
        .chain(wire::encode_withdrawals(AfiSafi::IPV6_UNICAST, &v6))
    {
        assert!(matches!(parse(&m), BgpMessage::Update(_)));
    }
    for f in [AfiSafi::IPV4_UNICAST, AfiSafi::IPV6_UNICAST] {
        assert!(matches!(parse(&wire::encode_end_of_rib(f)), BgpMessage::Update(_)));
        assert!(matches!(parse(&wire::encode_route_refresh(f)), BgpMessage::RouteRefresh(_)));
    }
    assert!(matches!(parse(&wire::encode_keepalive()), BgpMessage::KeepAlive));
    let n = Notification::cease_with_message(wire::subcode::ADMIN_SHUTDOWN, "maintenance");
    assert!(matches!(parse(&wire::encode_notification(&n)), BgpMessage::Notification(_)));
}
