//! The frames the responder reads and writes: ARP requests and replies (RFC 826, RFC 5227 for probes and
//! announcements) and ICMPv6 Neighbor Solicitations and Advertisements (RFC 4861), parsed and emitted with
//! `smoltcp::wire`. Everything here is pure: no sockets, no allocation, and no panic on any input.

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr, Icmpv6Packet,
    Icmpv6Repr, IpProtocol, Ipv6Packet, Ipv6Repr, NdiscNeighborFlags, NdiscRepr, RawHardwareAddress,
};
use std::net::{Ipv4Addr, Ipv6Addr};

/// Enough for every frame this module writes (Ethernet 14 + IPv6 40 + NA 24 + option 8 = 86).
pub const MAX_FRAME: usize = 128;

/// A MAC address.
pub type Mac = [u8; 6];

pub const BROADCAST: Mac = [0xff; 6];

/// The hop limit every Neighbor Discovery message carries and requires (RFC 4861 §7.1).
pub const ND_HOP_LIMIT: u8 = 255;

/// All-nodes multicast, the destination of unsolicited Neighbor Advertisements.
pub const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);

/// A request the responder may answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// An ARP request (or an RFC 5227 probe, whose sender address is 0.0.0.0) for `target`.
    Arp { sender_mac: Mac, sender_ip: Ipv4Addr, target: Ipv4Addr },
    /// A valid Neighbor Solicitation for `target`. `reply_mac` is where the advertisement goes (the source
    /// link-layer address option, else the frame's source); `source` is unspecified (`::`) for duplicate
    /// address detection.
    Ns { reply_mac: Mac, source: Ipv6Addr, target: Ipv6Addr },
}

/// Why a frame is not answered; the label of `portico_l2_frames_ignored_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Ignored {
    /// Too short, wrong lengths, bad checksum, unknown hardware type.
    Malformed,
    /// Well formed but not an ARP request or a Neighbor Solicitation (replies, other ICMPv6, other ethertypes).
    NotRequest,
    /// A gratuitous ARP request (sender = target) from someone else: an announcement, not a question.
    Gratuitous,
    /// A Neighbor Solicitation RFC 4861 §7.1.1 says to discard (hop limit, code, options, addresses).
    InvalidNs,
    /// Sent by this interface (our own MAC as source).
    Own,
    /// For an address this interface does not announce.
    OtherAddress,
}

impl Ignored {
    pub const ALL: [Ignored; 6] = [
        Ignored::Malformed,
        Ignored::NotRequest,
        Ignored::Gratuitous,
        Ignored::InvalidNs,
        Ignored::Own,
        Ignored::OtherAddress,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Ignored::Malformed => "malformed",
            Ignored::NotRequest => "not_request",
            Ignored::Gratuitous => "gratuitous",
            Ignored::InvalidNs => "invalid_ns",
            Ignored::Own => "own",
            Ignored::OtherAddress => "other_address",
        }
    }

    pub fn index(self) -> usize {
        match self {
            Ignored::Malformed => 0,
            Ignored::NotRequest => 1,
            Ignored::Gratuitous => 2,
            Ignored::InvalidNs => 3,
            Ignored::Own => 4,
            Ignored::OtherAddress => 5,
        }
    }
}

/// The solicited-node multicast address of `ip` (RFC 4291 §2.7.1): ff02::1:ffXX:XXXX.
pub fn solicited_node(ip: Ipv6Addr) -> Ipv6Addr {
    let o = ip.octets();
    Ipv6Addr::new(0xff02, 0, 0, 0, 0, 1, 0xff00 | u16::from(o[13]), (u16::from(o[14]) << 8) | u16::from(o[15]))
}

/// The Ethernet multicast address an IPv6 multicast group maps to (RFC 2464 §7): 33:33 + the last 32 bits.
pub fn multicast_mac(group: Ipv6Addr) -> Mac {
    let o = group.octets();
    [0x33, 0x33, o[12], o[13], o[14], o[15]]
}

fn checksums() -> ChecksumCapabilities {
    // Default: compute on emit, verify on parse (ICMPv6 has no offload on an AF_PACKET socket).
    ChecksumCapabilities::default()
}

/// Reads one Ethernet frame. `own` is the MAC of the interface it arrived on.
pub fn parse(frame: &[u8], own: Mac) -> Result<Request, Ignored> {
    let eth = EthernetFrame::new_checked(frame).map_err(|_| Ignored::Malformed)?;
    let src = eth.src_addr().0;
    if src == own {
        return Err(Ignored::Own);
    }
    match eth.ethertype() {
        EthernetProtocol::Arp => parse_arp(eth.payload(), src),
        EthernetProtocol::Ipv6 => parse_ns(eth.payload(), src),
        _ => Err(Ignored::NotRequest),
    }
}

fn parse_arp(payload: &[u8], _eth_src: Mac) -> Result<Request, Ignored> {
    let packet = ArpPacket::new_checked(payload).map_err(|_| Ignored::Malformed)?;
    match ArpRepr::parse(&packet).map_err(|_| Ignored::Malformed)? {
        ArpRepr::EthernetIpv4 {
            operation: ArpOperation::Request,
            source_hardware_addr,
            source_protocol_addr,
            target_protocol_addr,
            ..
        } => {
            if source_protocol_addr == target_protocol_addr {
                return Err(Ignored::Gratuitous);
            }
            let sender_mac = source_hardware_addr.0;
            if sender_mac == [0; 6] || sender_mac[0] & 1 == 1 {
                // Nowhere to send the reply: a multicast or zero sender hardware address is not valid.
                return Err(Ignored::Malformed);
            }
            Ok(Request::Arp { sender_mac, sender_ip: source_protocol_addr, target: target_protocol_addr })
        }
        ArpRepr::EthernetIpv4 { .. } => Err(Ignored::NotRequest),
        #[allow(unreachable_patterns)]
        _ => Err(Ignored::Malformed),
    }
}

fn parse_ns(payload: &[u8], eth_src: Mac) -> Result<Request, Ignored> {
    let ip = Ipv6Packet::new_checked(payload).map_err(|_| Ignored::Malformed)?;
    let ip_repr = Ipv6Repr::parse(&ip).map_err(|_| Ignored::Malformed)?;
    if ip_repr.next_header != IpProtocol::Icmpv6 {
        // Extension headers before ICMPv6 (legal, but never used for NS in practice) are not followed.
        return Err(Ignored::NotRequest);
    }
    let icmp = Icmpv6Packet::new_checked(ip.payload()).map_err(|_| Ignored::Malformed)?;
    if icmp.msg_type() != smoltcp::wire::Icmpv6Message::NeighborSolicit {
        return Err(Ignored::NotRequest);
    }
    // RFC 4861 §7.1.1: hop limit 255 (the sender is on-link), ICMP code 0, ICMP length 24 or more.
    if ip_repr.hop_limit != ND_HOP_LIMIT || icmp.msg_code() != 0 || ip.payload().len() < 24 {
        return Err(Ignored::InvalidNs);
    }
    if !icmp.verify_checksum(&ip_repr.src_addr, &ip_repr.dst_addr) {
        return Err(Ignored::Malformed);
    }
    // Option lengths of 0 make the parse fail: §7.1.1 says discard.
    let repr =
        Icmpv6Repr::parse(&ip_repr.src_addr, &ip_repr.dst_addr, &icmp, &checksums()).map_err(|_| Ignored::InvalidNs)?;
    let Icmpv6Repr::Ndisc(NdiscRepr::NeighborSolicit { target_addr, lladdr }) = repr else {
        return Err(Ignored::NotRequest);
    };
    if target_addr.is_multicast() || target_addr.is_unspecified() {
        return Err(Ignored::InvalidNs);
    }
    let source = ip_repr.src_addr;
    if source.is_multicast() {
        return Err(Ignored::InvalidNs);
    }
    let dst = ip_repr.dst_addr;
    if source.is_unspecified() {
        // Duplicate address detection: to the solicited-node group and without a source link-layer option.
        if dst != solicited_node(target_addr) || lladdr.is_some() {
            return Err(Ignored::InvalidNs);
        }
    } else if dst != target_addr && dst != solicited_node(target_addr) {
        return Err(Ignored::InvalidNs);
    }
    let reply_mac = match lladdr {
        Some(l) => {
            let b = l.as_bytes();
            let Ok(mac) = <Mac>::try_from(b) else { return Err(Ignored::InvalidNs) };
            mac
        }
        None => eth_src,
    };
    if reply_mac[0] & 1 == 1 || reply_mac == [0; 6] {
        return Err(Ignored::InvalidNs);
    }
    Ok(Request::Ns { reply_mac, source, target: target_addr })
}

fn emit_ethernet(buf: &mut [u8; MAX_FRAME], src: Mac, dst: Mac, ethertype: EthernetProtocol) {
    let mut frame = EthernetFrame::new_unchecked(&mut buf[..]);
    EthernetRepr { src_addr: EthernetAddress(src), dst_addr: EthernetAddress(dst), ethertype }.emit(&mut frame);
}

const ETH: usize = 14;

fn emit_arp(buf: &mut [u8; MAX_FRAME], eth_dst: Mac, repr: ArpRepr, own: Mac) -> usize {
    emit_ethernet(buf, own, eth_dst, EthernetProtocol::Arp);
    let len = repr.buffer_len();
    let mut packet = ArpPacket::new_unchecked(&mut buf[ETH..ETH + len]);
    repr.emit(&mut packet);
    // Pad to the Ethernet minimum (60 without FCS); the kernel does not pad AF_PACKET frames on every driver.
    let end = ETH + len;
    let padded = end.max(60);
    buf[end..padded].fill(0);
    padded
}

/// An ARP reply from `own` for `vip` to the requester. Returns the frame length.
pub fn arp_reply(buf: &mut [u8; MAX_FRAME], own: Mac, vip: Ipv4Addr, to_mac: Mac, to_ip: Ipv4Addr) -> usize {
    let repr = ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Reply,
        source_hardware_addr: EthernetAddress(own),
        source_protocol_addr: vip,
        target_hardware_addr: EthernetAddress(to_mac),
        target_protocol_addr: to_ip,
    };
    emit_arp(buf, to_mac, repr, own)
}

/// An ordinary ARP request from `own`/`sender` for `target` (what hosts send; the tests' flood generator).
#[doc(hidden)]
pub fn arp_request_for_tests(buf: &mut [u8; MAX_FRAME], own: Mac, sender: Ipv4Addr, target: Ipv4Addr) -> usize {
    let repr = ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Request,
        source_hardware_addr: EthernetAddress(own),
        source_protocol_addr: sender,
        target_hardware_addr: EthernetAddress([0; 6]),
        target_protocol_addr: target,
    };
    emit_arp(buf, BROADCAST, repr, own)
}

/// A gratuitous ARP in request form (sender = target = `vip`, broadcast), which every common stack takes as
/// an update of its cache entry. Returns the frame length.
pub fn gratuitous_arp(buf: &mut [u8; MAX_FRAME], own: Mac, vip: Ipv4Addr) -> usize {
    let repr = ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Request,
        source_hardware_addr: EthernetAddress(own),
        source_protocol_addr: vip,
        target_hardware_addr: EthernetAddress([0; 6]),
        target_protocol_addr: vip,
    };
    emit_arp(buf, BROADCAST, repr, own)
}

fn emit_na(buf: &mut [u8; MAX_FRAME], own: Mac, vip: Ipv6Addr, eth_dst: Mac, dst: Ipv6Addr, solicited: bool) -> usize {
    let mut flags = NdiscNeighborFlags::OVERRIDE;
    if solicited {
        flags |= NdiscNeighborFlags::SOLICITED;
    }
    let icmp = Icmpv6Repr::Ndisc(NdiscRepr::NeighborAdvert {
        flags,
        target_addr: vip,
        lladdr: Some(RawHardwareAddress::from_bytes(&own)),
    });
    let icmp_len = icmp.buffer_len();
    let ip = Ipv6Repr {
        src_addr: vip,
        dst_addr: dst,
        next_header: IpProtocol::Icmpv6,
        payload_len: icmp_len,
        hop_limit: ND_HOP_LIMIT,
    };
    emit_ethernet(buf, own, eth_dst, EthernetProtocol::Ipv6);
    let ip_len = ip.buffer_len();
    let total = ETH + ip_len + icmp_len;
    {
        let mut packet = Ipv6Packet::new_unchecked(&mut buf[ETH..total]);
        ip.emit(&mut packet);
    }
    let mut packet = Icmpv6Packet::new_unchecked(&mut buf[ETH + ip_len..total]);
    icmp.emit(&vip, &dst, &mut packet, &checksums());
    total
}

/// The Neighbor Advertisement answering `request`'s solicitation for `vip` (RFC 4861 §7.2.4): unicast with
/// Solicited and Override to the solicitor, or to all-nodes without Solicited when the solicitation came from
/// the unspecified address (duplicate address detection).
pub fn neighbor_advert(buf: &mut [u8; MAX_FRAME], own: Mac, vip: Ipv6Addr, reply_mac: Mac, source: Ipv6Addr) -> usize {
    if source.is_unspecified() {
        unsolicited_na(buf, own, vip)
    } else {
        emit_na(buf, own, vip, reply_mac, source, true)
    }
}

/// An unsolicited Neighbor Advertisement (Override, not Solicited) to all-nodes (RFC 4861 §7.2.6).
pub fn unsolicited_na(buf: &mut [u8; MAX_FRAME], own: Mac, vip: Ipv6Addr) -> usize {
    emit_na(buf, own, vip, multicast_mac(ALL_NODES), ALL_NODES, false)
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Option<Mac> {
    let mut mac = [0u8; 6];
    let mut parts = s.trim().split(':');
    for b in &mut mac {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

pub fn format_mac(mac: Mac) -> String {
    let [a, b, c, d, e, f] = mac;
    format!("{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{f:02x}")
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use smoltcp::wire::{Icmpv6Message, NdiscOptionType};

    const OURS: Mac = [0x02, 0, 0, 0, 0, 1];
    const PEER: Mac = [0x02, 0, 0, 0, 0, 2];
    const VIP4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
    const PEER4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
    const VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0x1234, 0x5678);
    const PEER6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 2);

    fn arp(op: ArpOperation, sha: Mac, spa: Ipv4Addr, tpa: Ipv4Addr) -> Vec<u8> {
        let mut buf = [0u8; MAX_FRAME];
        let repr = ArpRepr::EthernetIpv4 {
            operation: op,
            source_hardware_addr: EthernetAddress(sha),
            source_protocol_addr: spa,
            target_hardware_addr: EthernetAddress([0; 6]),
            target_protocol_addr: tpa,
        };
        let n = emit_arp(&mut buf, BROADCAST, repr, sha);
        buf[..n].to_vec()
    }

    /// A Neighbor Solicitation as a host sends it, with knobs to break it.
    struct Ns {
        src: Ipv6Addr,
        dst: Ipv6Addr,
        target: Ipv6Addr,
        hop_limit: u8,
        lladdr: Option<Mac>,
        code: u8,
        break_checksum: bool,
    }

    impl Ns {
        fn good() -> Ns {
            Ns {
                src: PEER6,
                dst: solicited_node(VIP6),
                target: VIP6,
                hop_limit: 255,
                lladdr: Some(PEER),
                code: 0,
                break_checksum: false,
            }
        }

        fn frame(&self) -> Vec<u8> {
            let icmp = Icmpv6Repr::Ndisc(NdiscRepr::NeighborSolicit {
                target_addr: self.target,
                lladdr: self.lladdr.map(|m| RawHardwareAddress::from_bytes(&m)),
            });
            let ip = Ipv6Repr {
                src_addr: self.src,
                dst_addr: self.dst,
                next_header: IpProtocol::Icmpv6,
                payload_len: icmp.buffer_len(),
                hop_limit: self.hop_limit,
            };
            let mut buf = vec![0u8; ETH + ip.buffer_len() + icmp.buffer_len()];
            let mut f = EthernetFrame::new_unchecked(&mut buf[..]);
            EthernetRepr {
                src_addr: EthernetAddress(PEER),
                dst_addr: EthernetAddress(multicast_mac(self.dst)),
                ethertype: EthernetProtocol::Ipv6,
            }
            .emit(&mut f);
            let mut p = Ipv6Packet::new_unchecked(&mut buf[ETH..]);
            ip.emit(&mut p);
            let mut i = Icmpv6Packet::new_unchecked(&mut buf[ETH + 40..]);
            icmp.emit(&self.src, &self.dst, &mut i, &checksums());
            if self.code != 0 {
                i.set_msg_code(self.code);
                i.fill_checksum(&self.src, &self.dst);
            }
            if self.break_checksum {
                let c = i.checksum();
                i.set_checksum(c ^ 0x0101);
            }
            buf
        }
    }

    #[test]
    fn arp_request_is_parsed_and_answered() {
        let f = arp(ArpOperation::Request, PEER, PEER4, VIP4);
        let req = parse(&f, OURS).unwrap();
        assert_eq!(req, Request::Arp { sender_mac: PEER, sender_ip: PEER4, target: VIP4 });
        let mut out = [0u8; MAX_FRAME];
        let n = arp_reply(&mut out, OURS, VIP4, PEER, PEER4);
        assert_eq!(n, 60);
        let eth = EthernetFrame::new_checked(&out[..n]).unwrap();
        assert_eq!((eth.dst_addr().0, eth.src_addr().0, eth.ethertype()), (PEER, OURS, EthernetProtocol::Arp));
        let reply = ArpRepr::parse(&ArpPacket::new_checked(eth.payload()).unwrap()).unwrap();
        assert_eq!(
            reply,
            ArpRepr::EthernetIpv4 {
                operation: ArpOperation::Reply,
                source_hardware_addr: EthernetAddress(OURS),
                source_protocol_addr: VIP4,
                target_hardware_addr: EthernetAddress(PEER),
                target_protocol_addr: PEER4,
            }
        );
        // Our own reply is not a request.
        assert_eq!(parse(&out[..n], PEER), Err(Ignored::NotRequest));
    }

    #[test]
    fn arp_oddities_are_ignored() {
        assert_eq!(parse(&arp(ArpOperation::Reply, PEER, PEER4, VIP4), OURS), Err(Ignored::NotRequest));
        assert_eq!(parse(&arp(ArpOperation::Unknown(9), PEER, PEER4, VIP4), OURS), Err(Ignored::NotRequest));
        // Someone else's gratuitous ARP for the VIP is an announcement, not a question.
        assert_eq!(parse(&arp(ArpOperation::Request, PEER, VIP4, VIP4), OURS), Err(Ignored::Gratuitous));
        // An RFC 5227 probe (sender 0.0.0.0) is answered.
        assert!(matches!(
            parse(&arp(ArpOperation::Request, PEER, Ipv4Addr::UNSPECIFIED, VIP4), OURS),
            Ok(Request::Arp { sender_ip: Ipv4Addr::UNSPECIFIED, .. })
        ));
        // Our own frames, and senders with nowhere to reply to.
        assert_eq!(parse(&arp(ArpOperation::Request, OURS, PEER4, VIP4), OURS), Err(Ignored::Own));
        assert_eq!(parse(&arp(ArpOperation::Request, [1, 0, 0, 0, 0, 1], PEER4, VIP4), OURS), Err(Ignored::Malformed));
        // Wrong lengths and hardware types.
        let mut f = arp(ArpOperation::Request, PEER, PEER4, VIP4);
        f[ETH + 4] = 8; // hardware length
        assert_eq!(parse(&f, OURS), Err(Ignored::Malformed));
        let mut f = arp(ArpOperation::Request, PEER, PEER4, VIP4);
        f[ETH + 1] = 6; // hardware type IEEE 802
        assert_eq!(parse(&f, OURS), Err(Ignored::Malformed));
        let f = arp(ArpOperation::Request, PEER, PEER4, VIP4);
        assert_eq!(parse(&f[..ETH + 20], OURS), Err(Ignored::Malformed));
        assert_eq!(parse(&f[..10], OURS), Err(Ignored::Malformed));
        assert_eq!(parse(&[], OURS), Err(Ignored::Malformed));
    }

    #[test]
    fn gratuitous_arp_is_a_broadcast_request_for_itself() {
        let mut out = [0u8; MAX_FRAME];
        let n = gratuitous_arp(&mut out, OURS, VIP4);
        let eth = EthernetFrame::new_checked(&out[..n]).unwrap();
        assert_eq!(eth.dst_addr().0, BROADCAST);
        let r = ArpRepr::parse(&ArpPacket::new_checked(eth.payload()).unwrap()).unwrap();
        let ArpRepr::EthernetIpv4 {
            operation, source_hardware_addr, source_protocol_addr, target_protocol_addr, ..
        } = r
        else {
            panic!("{r:?}")
        };
        assert_eq!(operation, ArpOperation::Request);
        assert_eq!((source_hardware_addr.0, source_protocol_addr, target_protocol_addr), (OURS, VIP4, VIP4));
        // Another responder seeing it does not answer it.
        assert_eq!(parse(&out[..n], PEER), Err(Ignored::Gratuitous));
    }

    fn na(frame: &[u8]) -> (Mac, Ipv6Repr, NdiscNeighborFlags, Ipv6Addr, Option<Mac>) {
        let eth = EthernetFrame::new_checked(frame).unwrap();
        let ip = Ipv6Packet::new_checked(eth.payload()).unwrap();
        let ip_repr = Ipv6Repr::parse(&ip).unwrap();
        let icmp = Icmpv6Packet::new_checked(ip.payload()).unwrap();
        assert!(icmp.verify_checksum(&ip_repr.src_addr, &ip_repr.dst_addr), "checksum");
        assert_eq!(icmp.msg_type(), Icmpv6Message::NeighborAdvert);
        // The option is a target link-layer address option.
        assert_eq!(ip.payload()[24], u8::from(NdiscOptionType::TargetLinkLayerAddr));
        let repr = Icmpv6Repr::parse(&ip_repr.src_addr, &ip_repr.dst_addr, &icmp, &checksums()).unwrap();
        let Icmpv6Repr::Ndisc(NdiscRepr::NeighborAdvert { flags, target_addr, lladdr }) = repr else {
            panic!("{repr:?}")
        };
        let mac = lladdr.map(|l| <Mac>::try_from(l.as_bytes()).unwrap());
        (eth.dst_addr().0, ip_repr, flags, target_addr, mac)
    }

    #[test]
    fn neighbor_solicitation_is_parsed_and_answered() {
        let req = parse(&Ns::good().frame(), OURS).unwrap();
        assert_eq!(req, Request::Ns { reply_mac: PEER, source: PEER6, target: VIP6 });
        let mut out = [0u8; MAX_FRAME];
        let n = neighbor_advert(&mut out, OURS, VIP6, PEER, PEER6);
        assert_eq!(n, 86);
        let (eth_dst, ip, flags, target, mac) = na(&out[..n]);
        assert_eq!(eth_dst, PEER);
        assert_eq!((ip.src_addr, ip.dst_addr, ip.hop_limit), (VIP6, PEER6, 255));
        assert_eq!(flags, NdiscNeighborFlags::SOLICITED | NdiscNeighborFlags::OVERRIDE);
        assert_eq!((target, mac), (VIP6, Some(OURS)));
        // Unicast solicitations (cache refresh) are fine too; without a source option we answer the frame's
        // source.
        let ns = Ns { dst: VIP6, lladdr: None, ..Ns::good() };
        assert_eq!(parse(&ns.frame(), OURS), Ok(Request::Ns { reply_mac: PEER, source: PEER6, target: VIP6 }));
    }

    #[test]
    fn duplicate_address_detection_gets_an_all_nodes_advertisement() {
        let ns = Ns { src: Ipv6Addr::UNSPECIFIED, lladdr: None, ..Ns::good() };
        let Ok(Request::Ns { reply_mac, source, target }) = parse(&ns.frame(), OURS) else { panic!() };
        let mut out = [0u8; MAX_FRAME];
        let n = neighbor_advert(&mut out, OURS, target, reply_mac, source);
        let (eth_dst, ip, flags, _, _) = na(&out[..n]);
        assert_eq!((eth_dst, ip.dst_addr), (multicast_mac(ALL_NODES), ALL_NODES));
        assert_eq!(flags, NdiscNeighborFlags::OVERRIDE);
        // DAD must go to the solicited-node group and carry no source link-layer option.
        let bad = Ns { src: Ipv6Addr::UNSPECIFIED, ..Ns::good() };
        assert_eq!(parse(&bad.frame(), OURS), Err(Ignored::InvalidNs));
        let bad = Ns { src: Ipv6Addr::UNSPECIFIED, lladdr: None, dst: VIP6, ..Ns::good() };
        assert_eq!(parse(&bad.frame(), OURS), Err(Ignored::InvalidNs));
    }

    #[test]
    fn invalid_solicitations_are_dropped() {
        let cases = [
            Ns { hop_limit: 64, ..Ns::good() },
            Ns { code: 1, ..Ns::good() },
            Ns { target: solicited_node(VIP6), ..Ns::good() },
            Ns { src: ALL_NODES, ..Ns::good() },
            Ns { dst: ALL_NODES, ..Ns::good() },
        ];
        for ns in cases {
            assert_eq!(parse(&ns.frame(), OURS), Err(Ignored::InvalidNs));
        }
        assert_eq!(parse(&Ns { break_checksum: true, ..Ns::good() }.frame(), OURS), Err(Ignored::Malformed));
        // An option of length 0.
        let mut f = Ns::good().frame();
        f[ETH + 40 + 25] = 0;
        let (s, d) = (PEER6, solicited_node(VIP6));
        Icmpv6Packet::new_unchecked(&mut f[ETH + 40..]).fill_checksum(&s, &d);
        assert_eq!(parse(&f, OURS), Err(Ignored::InvalidNs));
        // Truncated: the IPv6 payload length says more than there is.
        let f = Ns::good().frame();
        assert_eq!(parse(&f[..f.len() - 4], OURS), Err(Ignored::Malformed));
        // Other ICMPv6 and other protocols.
        let mut out = [0u8; MAX_FRAME];
        let n = unsolicited_na(&mut out, PEER, VIP6);
        assert_eq!(parse(&out[..n], OURS), Err(Ignored::NotRequest));
        let mut f = Ns::good().frame();
        f[ETH + 6] = 17; // UDP
        assert_eq!(parse(&f, OURS), Err(Ignored::NotRequest));
        let mut f = Ns::good().frame();
        f[12] = 0x08;
        f[13] = 0x00; // IPv4
        assert_eq!(parse(&f, OURS), Err(Ignored::NotRequest));
    }

    #[test]
    fn unsolicited_advertisement() {
        let mut out = [0u8; MAX_FRAME];
        let n = unsolicited_na(&mut out, OURS, VIP6);
        let (eth_dst, ip, flags, target, mac) = na(&out[..n]);
        assert_eq!(eth_dst, [0x33, 0x33, 0, 0, 0, 1]);
        assert_eq!((ip.src_addr, ip.dst_addr, ip.hop_limit), (VIP6, ALL_NODES, 255));
        assert_eq!(flags, NdiscNeighborFlags::OVERRIDE);
        assert_eq!((target, mac), (VIP6, Some(OURS)));
    }

    #[test]
    fn addresses() {
        assert_eq!(solicited_node(VIP6), "ff02::1:ff34:5678".parse::<Ipv6Addr>().unwrap());
        assert_eq!(multicast_mac(solicited_node(VIP6)), [0x33, 0x33, 0xff, 0x34, 0x56, 0x78]);
        assert_eq!(parse_mac("02:00:00:0a:bB:ff\n"), Some([2, 0, 0, 0x0a, 0xbb, 0xff]));
        assert_eq!(parse_mac("02:00:00:0a:bb"), None);
        assert_eq!(parse_mac("02:00:00:0a:bb:ff:00"), None);
        assert_eq!(format_mac([2, 0, 0, 0x0a, 0xbb, 0xff]), "02:00:00:0a:bb:ff");
    }

    /// No input panics: random bytes, and every truncation and single-byte corruption of valid frames.
    #[test]
    fn never_panics() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut buf = [0u8; 200];
        for _ in 0..20_000 {
            let len = (next() % 200) as usize;
            for b in &mut buf[..len] {
                *b = next() as u8;
            }
            if next() % 2 == 0 && len > 14 {
                buf[12] = 0x86;
                buf[13] = 0xdd;
                if len > 20 {
                    buf[20] = 58;
                }
            }
            let _ = parse(&buf[..len], OURS);
        }
        for f in [Ns::good().frame(), arp(ArpOperation::Request, PEER, PEER4, VIP4)] {
            for len in 0..=f.len() {
                let _ = parse(&f[..len], OURS);
            }
            for i in 0..f.len() {
                for v in [0u8, 1, 0x7f, 0xff] {
                    let mut g = f.clone();
                    g[i] = v;
                    let _ = parse(&g, OURS);
                }
            }
        }
    }
}
