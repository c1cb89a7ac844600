use super::*;
use proptest::prelude::*;

fn msg(kind: u8, body: &[u8]) -> Vec<u8> {
    frame(kind, body)
}

fn err(bytes: &[u8]) -> (u8, u8) {
    match decode(bytes, &DecodeContext::default()) {
        Err(DecodeError::Invalid(n)) => (n.code, n.subcode),
        other => panic!("expected a NOTIFICATION, got {other:?}"),
    }
}

fn update(bytes: &[u8]) -> Update {
    match decode(bytes, &DecodeContext::default()) {
        Ok((Message::Update(u), n)) => {
            assert_eq!(n, bytes.len());
            u
        }
        other => panic!("expected an UPDATE, got {other:?}"),
    }
}

/// An UPDATE from attribute bytes and classic NLRI.
fn update_msg(attrs: &[u8], nlri: &[u8]) -> Vec<u8> {
    let mut body = vec![0, 0];
    body.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
    body.extend_from_slice(attrs);
    body.extend_from_slice(nlri);
    msg(MSG_UPDATE, &body)
}

const ORIGIN_IGP: [u8; 4] = [0x40, 1, 1, 0];
const AS_PATH_65001: [u8; 9] = [0x40, 2, 6, 2, 1, 0, 0, 0xfd, 0xe9];
const NEXT_HOP: [u8; 7] = [0x40, 3, 4, 192, 0, 2, 1];
const NLRI: [u8; 4] = [24, 10, 0, 0];

fn good_attrs() -> Vec<u8> {
    [&ORIGIN_IGP[..], &AS_PATH_65001, &NEXT_HOP].concat()
}

#[test]
fn header_errors() {
    let mut bad_marker = encode_keepalive();
    bad_marker[3] = 0;
    assert_eq!(err(&bad_marker), (1, 1));
    let mut short = encode_keepalive();
    short[16..18].copy_from_slice(&18u16.to_be_bytes());
    assert_eq!(err(&short), (1, 2));
    let mut long = encode_keepalive();
    long[16..18].copy_from_slice(&4097u16.to_be_bytes());
    assert_eq!(err(&long), (1, 2));
    let mut keepalive_with_body = msg(MSG_KEEPALIVE, &[0]);
    assert_eq!(err(&keepalive_with_body), (1, 2));
    keepalive_with_body[18] = 9;
    let Err(DecodeError::Invalid(n)) = decode(&keepalive_with_body, &DecodeContext::default()) else { panic!() };
    assert_eq!((n.code, n.subcode, n.data), (1, 3, vec![9]), "the bad type is echoed");
    assert_eq!(err(&msg(MSG_OPEN, &[4, 0])), (1, 2), "an OPEN shorter than 29 octets");
    assert_eq!(err(&msg(MSG_ROUTE_REFRESH, &[0, 1, 0])), (7, 1));
}

#[test]
fn partial_messages_wait_for_more() {
    let k = encode_keepalive();
    for n in 0..k.len() {
        assert_eq!(decode(&k[..n], &DecodeContext::default()), Err(DecodeError::Incomplete));
    }
    let two = [k.clone(), k].concat();
    assert_eq!(decode(&two, &DecodeContext::default()), Ok((Message::Keepalive, 19)));
}

fn open_body(version: u8, params: &[u8]) -> Vec<u8> {
    let mut b = vec![version, 0xfd, 0xe9, 0, 90, 192, 0, 2, 2, params.len() as u8];
    b.extend_from_slice(params);
    b
}

#[test]
fn open_errors() {
    let Err(DecodeError::Invalid(n)) = decode(&msg(MSG_OPEN, &open_body(3, &[])), &DecodeContext::default()) else {
        panic!()
    };
    assert_eq!((n.code, n.subcode, n.data), (2, 1, vec![0, 4]));
    assert_eq!(err(&msg(MSG_OPEN, &open_body(4, &[1, 2, 0, 0]))), (2, 4), "authentication parameter");
    let mut lying_length = open_body(4, &[2, 2, 2, 0]);
    lying_length[9] = 9;
    assert_eq!(err(&msg(MSG_OPEN, &lying_length)), (2, 0));
    assert_eq!(err(&msg(MSG_OPEN, &open_body(4, &[2, 4, 65, 4, 0]))), (2, 0), "capability overruns");
}

#[test]
fn open_round_trips_with_every_capability() {
    let o = Open {
        version: 4,
        my_as: 23_456,
        hold_time: 90,
        router_id: Ipv4Addr::new(192, 0, 2, 1),
        capabilities: vec![
            Capability::Multiprotocol(AfiSafi::IPV4_UNICAST),
            Capability::Multiprotocol(AfiSafi::IPV6_UNICAST),
            Capability::RouteRefresh,
            Capability::EnhancedRouteRefresh,
            Capability::FourOctetAs(4_200_000_000),
            Capability::GracefulRestart(GracefulRestartCap {
                restarting: true,
                restart_time: 120,
                families: vec![(AfiSafi::IPV4_UNICAST, true), (AfiSafi::IPV6_UNICAST, false)],
            }),
            Capability::Unknown { code: 73, value: b"host".to_vec() },
        ],
    };
    let bytes = encode_open(&o);
    assert_eq!(decode(&bytes, &DecodeContext::default()), Ok((Message::Open(o.clone()), bytes.len())));
    assert_eq!(o.asn(), 4_200_000_000);
}

#[test]
fn a_good_update_decodes() {
    let mut attrs = good_attrs();
    attrs.extend_from_slice(&[0xc0, 8, 8, 0xff, 0xff, 0xff, 0x01, 0, 1, 0, 2]);
    attrs.extend_from_slice(&[0xc0, 32, 12, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3]);
    let u = update(&update_msg(&attrs, &NLRI));
    assert_eq!(u.announced, ["10.0.0.0/24".parse::<IpNet>().unwrap()]);
    assert_eq!(u.treat_as_withdraw, None);
    assert_eq!(u.attributes.flat_as_path(), [65_001]);
    assert_eq!(u.attributes.communities, [0xFFFF_FF01, 0x0001_0002]);
    assert_eq!(u.attributes.large_communities, [[1, 2, 3]]);
}

#[test]
fn update_session_resets() {
    // Withdrawn length beyond the message.
    assert_eq!(err(&msg(MSG_UPDATE, &[0, 9, 0, 0])), (3, 1));
    // Attribute length beyond the attribute field.
    assert_eq!(err(&update_msg(&[0x40, 1, 5, 0], &NLRI)), (3, 1));
    // An NLRI longer than 32 bits.
    assert_eq!(err(&update_msg(&good_attrs(), &[33, 10, 0, 0, 0, 0])), (3, 10));
    // An NLRI running past the message.
    assert_eq!(err(&update_msg(&good_attrs(), &[24, 10])), (3, 10));
    // An unrecognized well-known attribute.
    let mut a = good_attrs();
    a.extend_from_slice(&[0x40, 99, 0]);
    assert_eq!(err(&update_msg(&a, &NLRI)), (3, 2));
    // MP_REACH_NLRI with an IPv6 next hop of 5 octets.
    let mut a = good_attrs();
    a.extend_from_slice(&[0x80, 14, 11, 0, 2, 1, 5, 0x20, 1, 0x0d, 0xb8, 0, 0, 0]);
    assert_eq!(err(&update_msg(&a, &[])), (3, 9));
    // Two MP_UNREACH_NLRI.
    let unreach = [0x80, 15, 3, 0, 2, 1];
    assert_eq!(err(&update_msg(&[&unreach[..], &unreach].concat(), &[])), (3, 1));
}

#[test]
fn update_treat_as_withdraw() {
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("bad ORIGIN value", [&[0x40, 1, 1, 7][..], &AS_PATH_65001, &NEXT_HOP].concat()),
        ("bad ORIGIN length", [&[0x40, 1, 2, 0, 0][..], &AS_PATH_65001, &NEXT_HOP].concat()),
        ("bad AS_PATH segment type", [&ORIGIN_IGP[..], &[0x40, 2, 6, 9, 1, 0, 0, 0xfd, 0xe9], &NEXT_HOP].concat()),
        ("AS_PATH segment overrun", [&ORIGIN_IGP[..], &[0x40, 2, 6, 2, 2, 0, 0, 0xfd, 0xe9], &NEXT_HOP].concat()),
        ("NEXT_HOP 0.0.0.0", [&ORIGIN_IGP[..], &AS_PATH_65001, &[0x40, 3, 4, 0, 0, 0, 0]].concat()),
        ("NEXT_HOP length", [&ORIGIN_IGP[..], &AS_PATH_65001, &[0x40, 3, 3, 1, 2, 3]].concat()),
        ("missing NEXT_HOP", [&ORIGIN_IGP[..], &AS_PATH_65001].concat()),
        ("missing ORIGIN", [&AS_PATH_65001[..], &NEXT_HOP].concat()),
        ("ORIGIN flagged optional", [&[0xc0, 1, 1, 0][..], &AS_PATH_65001, &NEXT_HOP].concat()),
        ("COMMUNITIES length", [&good_attrs()[..], &[0xc0, 8, 3, 0, 0, 1]].concat()),
        ("MED length", [&good_attrs()[..], &[0x80, 4, 2, 0, 1]].concat()),
        ("LARGE_COMMUNITY length", [&good_attrs()[..], &[0xc0, 32, 4, 0, 0, 0, 1]].concat()),
    ];
    for (name, attrs) in cases {
        let u = update(&update_msg(&attrs, &NLRI));
        assert!(u.treat_as_withdraw.is_some(), "{name}");
        assert!(u.announced.is_empty(), "{name}");
        assert_eq!(u.withdrawn, ["10.0.0.0/24".parse::<IpNet>().unwrap()], "{name}");
    }
}

#[test]
fn update_attribute_discard() {
    // A duplicate ORIGIN: the first one counts.
    let a = [&good_attrs()[..], &[0x40, 1, 1, 2]].concat();
    let u = update(&update_msg(&a, &NLRI));
    assert_eq!((u.treat_as_withdraw.as_deref(), u.announced.len()), (None, 1));
    assert_eq!(u.attributes.origin, Some(Origin::Igp));
    assert_eq!(u.discarded, ["duplicate ORIGIN"]);
    // AGGREGATOR of the wrong length, ATOMIC_AGGREGATE with a value.
    let a = [&good_attrs()[..], &[0xc0, 7, 3, 0, 0, 0], &[0x40, 6, 1, 0]].concat();
    let u = update(&update_msg(&a, &NLRI));
    assert_eq!((u.treat_as_withdraw.as_deref(), u.announced.len(), u.discarded.len()), (None, 1, 2));
}

#[test]
fn attributes_without_nlri_are_not_an_error() {
    let u = update(&update_msg(&[0x40, 1, 1, 7], &[]));
    assert_eq!(u.treat_as_withdraw, None);
    assert!(u.announced.is_empty() && u.withdrawn.is_empty());
}

#[test]
fn end_of_rib_markers() {
    assert_eq!(update(&encode_end_of_rib(AfiSafi::IPV4_UNICAST)).end_of_rib, Some(AfiSafi::IPV4_UNICAST));
    assert_eq!(update(&encode_end_of_rib(AfiSafi::IPV6_UNICAST)).end_of_rib, Some(AfiSafi::IPV6_UNICAST));
    assert_eq!(
        update(&encode_withdrawals(AfiSafi::IPV6_UNICAST, &["2001:db8::/32".parse().unwrap()])[0]).end_of_rib,
        None
    );
}

#[test]
fn announcements_round_trip_for_both_families_and_as_widths() {
    let attrs = OutAttributes {
        as_path: vec![4_200_000_000],
        next_hop: "2001:db8::1".parse().unwrap(),
        med: Some(7),
        local_pref: Some(100),
        communities: vec![0x0001_0002],
        large_communities: vec![[1, 2, 3]],
        ..Default::default()
    };
    let p6: Vec<IpNet> = vec!["2001:db8::10/128".parse().unwrap(), "2001:db8:1::/48".parse().unwrap()];
    let m = encode_announcements(AfiSafi::IPV6_UNICAST, &attrs, &p6, true);
    let u = update(&m[0]);
    assert_eq!(u.announced, p6);
    assert_eq!(u.attributes.mp_next_hop, Some("2001:db8::1".parse().unwrap()));
    assert_eq!((u.attributes.med, u.attributes.local_pref), (Some(7), Some(100)));
    assert_eq!(u.attributes.flat_as_path(), [4_200_000_000]);
    // To a two-octet speaker: AS_TRANS in AS_PATH, the real number in AS4_PATH.
    let mut v4 = attrs.clone();
    v4.next_hop = "192.0.2.1".parse().unwrap();
    let m = encode_announcements(AfiSafi::IPV4_UNICAST, &v4, &["203.0.113.10/32".parse().unwrap()], false);
    let two = DecodeContext { four_octet_as: false };
    let Ok((Message::Update(u), _)) = decode(&m[0], &two) else { panic!() };
    assert_eq!(u.attributes.as_path.as_ref().unwrap()[0].asns, [23_456]);
    assert_eq!(u.attributes.flat_as_path(), [4_200_000_000]);
    assert_eq!(u.attributes.next_hop, Some("192.0.2.1".parse().unwrap()));
}

#[test]
fn shutdown_communication_round_trips_and_is_cut_at_a_char_boundary() {
    let n = Notification::cease_with_message(subcode::ADMIN_SHUTDOWN, "maintenance: back at 10:00");
    let bytes = encode_notification(&n);
    let Ok((Message::Notification(back), _)) = decode(&bytes, &DecodeContext::default()) else { panic!() };
    assert_eq!(back.shutdown_message().as_deref(), Some("maintenance: back at 10:00"));
    assert_eq!(back.description(), "Cease / Administrative Shutdown");
    let long = "é".repeat(200);
    let n = Notification::cease_with_message(subcode::ADMIN_SHUTDOWN, &long);
    assert!(n.data.len() <= 256);
    assert!(n.shutdown_message().is_some());
}

#[test]
fn error_actions_follow_rfc_7606() {
    assert_eq!(error_action(ATTR_MP_REACH), ErrorAction::SessionReset);
    assert_eq!(error_action(ATTR_ORIGIN), ErrorAction::TreatAsWithdraw);
    assert_eq!(error_action(ATTR_COMMUNITIES), ErrorAction::TreatAsWithdraw);
    assert_eq!(error_action(ATTR_AGGREGATOR), ErrorAction::AttributeDiscard);
    assert_eq!(error_action(ATTR_AS4_PATH), ErrorAction::AttributeDiscard);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    /// Whatever arrives, decoding returns.
    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600), four in any::<bool>()) {
        let _ = decode(&bytes, &DecodeContext { four_octet_as: four });
    }

    /// Random bodies behind a valid header reach the message parsers instead of stopping at the header.
    #[test]
    fn random_bodies_never_panic(kind in 1u8..=5, body in proptest::collection::vec(any::<u8>(), 0..600), four in any::<bool>()) {
        let _ = decode(&frame(kind, &body), &DecodeContext { four_octet_as: four });
    }

    /// Random attribute lists in an otherwise valid UPDATE.
    #[test]
    fn random_attributes_never_panic(attrs in proptest::collection::vec(any::<u8>(), 0..400), nlri in proptest::collection::vec(any::<u8>(), 0..40)) {
        let _ = decode(&update_msg(&attrs, &nlri), &DecodeContext::default());
    }
}
