//! BGP configuration (the speaker in `settings.bgp`, and `bgp_peers`) and what the speaker reports about itself.
//! The speaker itself lives in the `bgp` crate; these types are shared with the API and the control plane.

use crate::names::dns_label_problem;
use crate::validation::Collector;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use utoipa::ToSchema;

/// The appliance's own BGP speaker. Absent (`null`) means BGP is off.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BgpSettings {
    /// Our AS number (1 to 4294967294; four-octet numbers are sent as AS_TRANS to old peers).
    pub asn: u32,
    /// Our BGP identifier, an IPv4 address (need not be configured on any interface).
    pub router_id: String,
    /// Where to accept connections from peers. Without it the appliance only connects out, and no peer may be
    /// `passive`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<BgpListen>,
    #[serde(default)]
    pub graceful_restart: GracefulRestart,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BgpListen {
    /// `0.0.0.0`, `::` (both families) or one local address.
    pub address: String,
    #[serde(default = "default_bgp_port")]
    pub port: u16,
}

/// RFC 4724. When enabled, the appliance announces the capability, keeps a restarting peer's routes as a helper,
/// and after its own restart asks peers to keep its routes until it has sent them again (End-of-RIB).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GracefulRestart {
    #[serde(default)]
    pub enabled: bool,
    /// Seconds a peer keeps our routes while we restart (1 to 4095).
    #[serde(default = "default_restart_time")]
    pub restart_time: u16,
}

impl Default for GracefulRestart {
    fn default() -> Self {
        GracefulRestart { enabled: false, restart_time: default_restart_time() }
    }
}

/// An address family the session carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema)]
pub enum AddressFamily {
    #[serde(rename = "ipv4-unicast")]
    Ipv4Unicast,
    #[serde(rename = "ipv6-unicast")]
    Ipv6Unicast,
}

impl AddressFamily {
    pub fn as_str(self) -> &'static str {
        match self {
            AddressFamily::Ipv4Unicast => "ipv4-unicast",
            AddressFamily::Ipv6Unicast => "ipv6-unicast",
        }
    }

    pub fn of(ip: IpAddr) -> AddressFamily {
        if ip.is_ipv4() { AddressFamily::Ipv4Unicast } else { AddressFamily::Ipv6Unicast }
    }
}

/// When a VIP is announced.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum AnnounceWhen {
    /// Only while the VIP's service has at least one backend that is ready and passes its health checks.
    #[default]
    Healthy,
    /// Whenever the VIP is allocated.
    Always,
}

/// One BGP neighbour.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BgpPeer {
    /// DNS label, unique among peers.
    pub name: String,
    /// The peer's IPv4 or IPv6 address.
    pub address: String,
    /// The peer's AS number; equal to ours makes the session iBGP.
    pub asn: u32,
    #[serde(default = "default_bgp_port")]
    pub port: u16,
    /// Seconds, 0 (no keepalives) or 3 to 65535; the session uses the smaller of ours and the peer's.
    #[serde(default = "default_hold_time")]
    pub hold_time: u16,
    /// Seconds between KEEPALIVEs; default a third of the negotiated hold time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keepalive: Option<u16>,
    /// Seconds between connection attempts (1 to 65535).
    #[serde(default = "default_connect_retry")]
    pub connect_retry: u16,
    /// Never connect out; wait for the peer.
    #[serde(default)]
    pub passive: bool,
    /// TTL of our packets for a peer that is not directly connected (1 to 255). Without it, eBGP sessions use
    /// TTL 1 and iBGP sessions 64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multihop_ttl: Option<u8>,
    /// The local address to connect from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_address: Option<String>,
    /// TCP-MD5 (RFC 2385) key, 1 to 80 bytes. Write-only: sealed at rest, never returned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// Generalized TTL security (RFC 5082): send with TTL 255 and accept only packets that arrive with a TTL of
    /// at least 255 minus the hops allowed (`multihop_ttl`, or 1).
    #[serde(default)]
    pub gtsm: bool,
    /// The families the session carries (multiprotocol, RFC 4760).
    #[serde(default = "default_families")]
    pub families: Vec<AddressFamily>,
    /// The most prefixes accepted from the peer; beyond it the session is closed with a Cease NOTIFICATION.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_prefixes: Option<u32>,
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default)]
    pub advertise: Advertise,
}

/// What the appliance announces to a peer, and how.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Advertise {
    /// Announce only VIPs from these pools; empty means every pool.
    #[serde(default)]
    pub pools: Vec<String>,
    /// Announce only the VIPs of these services, named as in the snapshot (`web`, `global/<name>`,
    /// `<cluster>/<namespace>/<name>`); empty means every service.
    #[serde(default)]
    pub services: Vec<String>,
    /// Standard communities (RFC 1997): `65000:100`, or `no-export`, `no-advertise`, `no-export-subconfed`,
    /// `no-peer`, `blackhole`, `graceful-shutdown`.
    #[serde(default)]
    pub communities: Vec<String>,
    /// Large communities (RFC 8092): `global:local1:local2`.
    #[serde(default)]
    pub large_communities: Vec<String>,
    /// LOCAL_PREF, for iBGP peers only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_pref: Option<u32>,
    /// MULTI_EXIT_DISC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub med: Option<u32>,
    /// Next hops to announce instead of our own session address: at most one IPv4 and one IPv6 address. A
    /// family with none uses our address (for IPv6 routes over an IPv4 session: `source_address` if it is IPv6,
    /// otherwise this is needed).
    #[serde(default)]
    pub next_hop: Vec<String>,
    /// Announce, per pool, the covering prefix of this length instead of each /32 or /128.
    #[serde(default)]
    pub aggregate_length: BTreeMap<String, AggregateLength>,
    #[serde(default)]
    pub announce_when: AnnounceWhen,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AggregateLength {
    /// 0 to 32.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4: Option<u8>,
    /// 0 to 128.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<u8>,
}

fn default_bgp_port() -> u16 {
    179
}
fn default_restart_time() -> u16 {
    120
}
fn default_hold_time() -> u16 {
    90
}
fn default_connect_retry() -> u16 {
    30
}
fn default_families() -> Vec<AddressFamily> {
    vec![AddressFamily::Ipv4Unicast, AddressFamily::Ipv6Unicast]
}
fn yes() -> bool {
    true
}

/// A standard community value, from its text form.
pub fn parse_community(text: &str) -> Option<u32> {
    let well_known = match text {
        "graceful-shutdown" => Some(0xFFFF_0000),
        "blackhole" => Some(0xFFFF_029A),
        "no-export" => Some(0xFFFF_FF01),
        "no-advertise" => Some(0xFFFF_FF02),
        "no-export-subconfed" => Some(0xFFFF_FF03),
        "no-peer" => Some(0xFFFF_FF04),
        _ => None,
    };
    if well_known.is_some() {
        return well_known;
    }
    let (high, low) = text.split_once(':')?;
    let high: u16 = high.parse().ok()?;
    let low: u16 = low.parse().ok()?;
    Some((u32::from(high) << 16) | u32::from(low))
}

/// A large community (global administrator, local data 1, local data 2), from `a:b:c`.
pub fn parse_large_community(text: &str) -> Option<[u32; 3]> {
    let mut parts = text.split(':');
    let a = parts.next()?.parse().ok()?;
    let b = parts.next()?.parse().ok()?;
    let c = parts.next()?.parse().ok()?;
    if parts.next().is_some() {
        return None;
    }
    Some([a, b, c])
}

impl BgpSettings {
    /// The router id; call after validation.
    pub fn router_id(&self) -> Ipv4Addr {
        self.router_id.parse().unwrap_or(Ipv4Addr::UNSPECIFIED)
    }

    /// The listening socket address, if any; call after validation.
    pub fn listen_addr(&self) -> Option<SocketAddr> {
        let l = self.listen.as_ref()?;
        Some(SocketAddr::new(l.address.parse().ok()?, l.port))
    }

    pub fn validate(&self, c: &mut Collector<'_>) {
        if self.asn == 0 || self.asn == u32::MAX || self.asn == 23_456 {
            c.error("asn", "must be 1 to 4294967294 and not 23456 (AS_TRANS)");
        }
        match self.router_id.parse::<Ipv4Addr>() {
            Ok(id) if id.is_unspecified() || id.is_broadcast() => {
                c.error("router_id", "must not be 0.0.0.0 or 255.255.255.255")
            }
            Ok(_) => {}
            Err(_) => c.error("router_id", format!("'{}' is not an IPv4 address", self.router_id)),
        }
        if let Some(l) = &self.listen {
            if l.address.parse::<IpAddr>().is_err() {
                c.error("listen.address", format!("'{}' is not an IP address", l.address));
            }
            if l.port == 0 {
                c.error("listen.port", "must be 1 to 65535");
            }
        }
        if !(1..=4095).contains(&self.graceful_restart.restart_time) {
            c.error("graceful_restart.restart_time", "must be 1 to 4095 seconds");
        }
    }
}

impl BgpPeer {
    /// The peer's address; call after validation.
    pub fn ip(&self) -> IpAddr {
        self.address.parse().unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
    }

    /// The configured next hop for a family, if any; call after validation.
    pub fn next_hop_for(&self, family: AddressFamily) -> Option<IpAddr> {
        self.advertise
            .next_hop
            .iter()
            .filter_map(|n| n.parse::<IpAddr>().ok())
            .find(|ip| AddressFamily::of(*ip) == family)
    }

    /// The keepalive interval for a negotiated hold time.
    pub fn keepalive_for(&self, negotiated_hold: u16) -> u16 {
        match self.keepalive {
            Some(k) => k.min(negotiated_hold / 3).max(u16::from(negotiated_hold > 0)),
            None => negotiated_hold / 3,
        }
    }

    /// Checks the peer on its own; `bgp` is the speaker's settings and `pools` the names of every pool.
    pub fn validate(&self, c: &mut Collector<'_>, bgp: Option<&BgpSettings>, pools: &BTreeSet<&str>) {
        if let Some(p) = dns_label_problem(&self.name) {
            c.error("name", p);
        }
        let address = self.address.parse::<IpAddr>();
        match &address {
            Ok(ip) if ip.is_unspecified() || ip.is_multicast() => {
                c.error("address", format!("{ip} cannot be a BGP peer"))
            }
            Ok(_) => {}
            Err(_) => c.error("address", format!("'{}' is not an IP address", self.address)),
        }
        if self.asn == 0 || self.asn == u32::MAX || self.asn == 23_456 {
            c.error("asn", "must be 1 to 4294967294 and not 23456 (AS_TRANS)");
        }
        if self.port == 0 {
            c.error("port", "must be 1 to 65535");
        }
        if matches!(self.hold_time, 1 | 2) {
            c.error("hold_time", "must be 0 or 3 to 65535 seconds (RFC 4271)");
        }
        if let Some(k) = self.keepalive {
            if k == 0 {
                c.error("keepalive", "must be 1 to 65535 seconds; leave it out for a third of the hold time");
            } else if self.hold_time > 0 && k > self.hold_time / 3 {
                c.error("keepalive", format!("must be at most a third of hold_time ({})", self.hold_time / 3));
            }
        }
        if self.connect_retry == 0 {
            c.error("connect_retry", "must be 1 to 65535 seconds");
        }
        if self.multihop_ttl == Some(0) {
            c.error("multihop_ttl", "must be 1 to 255");
        }
        if let Some(src) = &self.source_address {
            match src.parse::<IpAddr>() {
                Ok(s) => {
                    if let Ok(ip) = &address
                        && s.is_ipv4() != ip.is_ipv4()
                    {
                        c.error("source_address", "must be of the same family as `address`");
                    }
                }
                Err(_) => c.error("source_address", format!("'{src}' is not an IP address")),
            }
        }
        if let Some(pw) = &self.password
            && (pw.is_empty() || pw.len() > 80)
        {
            c.error("password", "must be 1 to 80 bytes (the TCP-MD5 key limit)");
        }
        if self.families.is_empty() {
            c.error("families", "must list ipv4-unicast, ipv6-unicast or both");
        }
        let mut seen = BTreeSet::new();
        for (i, f) in self.families.iter().enumerate() {
            if !seen.insert(*f) {
                c.error(&format!("families[{i}]"), format!("{} is listed twice", f.as_str()));
            }
        }
        if self.max_prefixes == Some(0) {
            c.error("max_prefixes", "must be at least 1; leave it out for no limit");
        }
        self.advertise.validate(&mut c.at("advertise"), pools);
        match bgp {
            None => c.error("", "BGP is off: set `settings.bgp` (asn, router_id) before adding peers"),
            Some(bgp) => {
                if self.passive && bgp.listen.is_none() {
                    c.error("passive", "a passive peer needs `settings.bgp.listen`, or the peer cannot reach us");
                }
                if self.advertise.local_pref.is_some() && self.asn != bgp.asn {
                    c.error("advertise.local_pref", "is only sent to iBGP peers (asn equal to settings.bgp.asn)");
                }
            }
        }
    }
}

impl Advertise {
    fn validate(&self, c: &mut Collector<'_>, pools: &BTreeSet<&str>) {
        for (i, p) in self.pools.iter().enumerate() {
            if !pools.contains(p.as_str()) {
                c.error(&format!("pools[{i}]"), format!("no pool is named '{p}'"));
            }
        }
        for (i, s) in self.services.iter().enumerate() {
            if s.is_empty() {
                c.error(&format!("services[{i}]"), "must not be empty");
            }
        }
        for (i, text) in self.communities.iter().enumerate() {
            if parse_community(text).is_none() {
                c.error(
                    &format!("communities[{i}]"),
                    format!("'{text}' is not a community: use asn:value (each 0 to 65535) or a well-known name"),
                );
            }
        }
        for (i, text) in self.large_communities.iter().enumerate() {
            if parse_large_community(text).is_none() {
                c.error(
                    &format!("large_communities[{i}]"),
                    format!("'{text}' is not a large community: use three numbers a:b:c, each 0 to 4294967295"),
                );
            }
        }
        let mut families = BTreeSet::new();
        for (i, n) in self.next_hop.iter().enumerate() {
            match n.parse::<IpAddr>() {
                Ok(ip) if ip.is_unspecified() || ip.is_multicast() => {
                    c.error(&format!("next_hop[{i}]"), format!("{ip} cannot be a next hop"))
                }
                Ok(ip) => {
                    if !families.insert(ip.is_ipv4()) {
                        c.error(&format!("next_hop[{i}]"), "at most one IPv4 and one IPv6 next hop");
                    }
                }
                Err(_) => c.error(&format!("next_hop[{i}]"), format!("'{n}' is not an IP address")),
            }
        }
        for (pool, len) in &self.aggregate_length {
            if !pools.contains(pool.as_str()) {
                c.error(&format!("aggregate_length.{pool}"), format!("no pool is named '{pool}'"));
            }
            if len.ipv4.is_some_and(|l| l > 32) {
                c.error(&format!("aggregate_length.{pool}.ipv4"), "must be 0 to 32");
            }
            if len.ipv6.is_some_and(|l| l > 128) {
                c.error(&format!("aggregate_length.{pool}.ipv6"), "must be 0 to 128");
            }
        }
    }
}

/// The RFC 4271 session states, plus `disabled` for a peer that is switched off.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SessionState {
    #[default]
    Idle,
    Connect,
    Active,
    OpenSent,
    OpenConfirm,
    Established,
    Disabled,
}

/// A NOTIFICATION sent or received.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct NotificationInfo {
    pub code: u8,
    pub subcode: u8,
    /// The code and subcode in words, e.g. `OPEN Message Error / Bad Peer AS`.
    pub description: String,
    /// For a Cease with a shutdown communication (RFC 8203), the peer's text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// RFC 3339.
    pub at: String,
}

/// What the two speakers agreed on in their OPEN messages.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, ToSchema)]
pub struct Negotiated {
    pub peer_asn: u32,
    pub peer_router_id: String,
    pub hold_time: u16,
    pub keepalive: u16,
    pub families: Vec<AddressFamily>,
    pub four_octet_as: bool,
    pub route_refresh: bool,
    pub enhanced_route_refresh: bool,
    /// Both sides announced graceful restart (RFC 4724).
    pub graceful_restart: bool,
    /// The restart time the peer asked for, if it announced graceful restart.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_restart_time: Option<u16>,
}

/// What `GET /api/v1/bgp/peers/{name}/status` reports.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, ToSchema)]
pub struct PeerStatus {
    pub name: String,
    pub address: String,
    pub asn: u32,
    pub state: SessionState,
    /// When `state` last changed (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// Seconds in Established, if it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uptime_seconds: Option<u64>,
    /// How many times the session has left Established.
    pub flaps: u64,
    /// The last problem in words (connection refused, hold timer expired, a NOTIFICATION...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_notification_sent: Option<NotificationInfo>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_notification_received: Option<NotificationInfo>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub negotiated: Option<Negotiated>,
    pub prefixes_advertised: u64,
    pub prefixes_received: u64,
    pub messages_sent: u64,
    pub messages_received: u64,
    pub updates_sent: u64,
    pub updates_received: u64,
}

/// One route received from a peer (its Adj-RIB-In); kept and shown, never installed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct ReceivedRoute {
    pub prefix: String,
    pub next_hop: String,
    pub as_path: Vec<u32>,
    /// `igp`, `egp` or `incomplete`.
    pub origin: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub local_pref: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub med: Option<u32>,
    pub communities: Vec<String>,
    pub large_communities: Vec<String>,
    /// Kept from before the peer restarted (graceful restart), until it sends the route again or End-of-RIB.
    pub stale: bool,
}

/// One prefix the appliance announces, and to which peers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct Announcement {
    /// `203.0.113.10/32`, `2001:db8::10/128`, or an aggregate.
    pub prefix: String,
    /// The VIPs (and their services) this prefix carries.
    pub vips: Vec<String>,
    pub services: Vec<String>,
    /// Peers it is sent to (Established sessions whose policy selects it).
    pub peers: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validation::FieldError;

    fn settings() -> BgpSettings {
        BgpSettings {
            asn: 64_512,
            router_id: "192.0.2.1".into(),
            listen: None,
            graceful_restart: GracefulRestart::default(),
        }
    }

    fn peer() -> BgpPeer {
        serde_json::from_value(serde_json::json!({"name": "tor1", "address": "192.0.2.254", "asn": 64513}))
            .unwrap_or_else(|e| unreachable!("{e}"))
    }

    fn errors(p: &BgpPeer, bgp: Option<&BgpSettings>) -> Vec<FieldError> {
        let mut errs = Vec::new();
        let pools: BTreeSet<&str> = ["public"].into_iter().collect();
        p.validate(&mut Collector::new(&mut errs), bgp, &pools);
        errs
    }

    #[test]
    fn a_minimal_peer_gets_the_usual_defaults() {
        let p = peer();
        assert_eq!((p.port, p.hold_time, p.connect_retry, p.enabled), (179, 90, 30, true));
        assert_eq!(p.families, [AddressFamily::Ipv4Unicast, AddressFamily::Ipv6Unicast]);
        assert_eq!(p.keepalive_for(90), 30);
        assert_eq!(p.keepalive_for(0), 0);
        assert!(errors(&p, Some(&settings())).is_empty());
    }

    #[test]
    fn every_bad_field_is_named() {
        let mut p = peer();
        p.address = "nope".into();
        p.asn = 23_456;
        p.hold_time = 2;
        p.password = Some(String::new());
        p.advertise.communities = vec!["65536:1".into(), "no-export".into()];
        p.advertise.large_communities = vec!["1:2".into()];
        p.advertise.pools = vec!["missing".into()];
        p.advertise.local_pref = Some(200);
        p.passive = true;
        let fields: Vec<String> = errors(&p, Some(&settings())).into_iter().map(|e| e.field).collect();
        assert_eq!(
            fields,
            [
                "address",
                "asn",
                "hold_time",
                "password",
                "advertise.pools[0]",
                "advertise.communities[0]",
                "advertise.large_communities[0]",
                "passive",
                "advertise.local_pref"
            ]
        );
    }

    #[test]
    fn peers_need_the_speaker() {
        let errs = errors(&peer(), None);
        assert_eq!(errs.len(), 1);
        assert!(errs[0].message.contains("settings.bgp"), "{}", errs[0].message);
    }

    #[test]
    fn communities_parse_in_both_forms() {
        assert_eq!(parse_community("65000:100"), Some(0xFDE8_0064));
        assert_eq!(parse_community("no-export"), Some(0xFFFF_FF01));
        assert_eq!(parse_community("1:2:3"), None);
        assert_eq!(parse_large_community("4200000000:1:2"), Some([4_200_000_000, 1, 2]));
        assert_eq!(parse_large_community("1:2:3:4"), None);
    }

    #[test]
    fn speaker_settings_are_checked() {
        let mut s = settings();
        s.asn = 0;
        s.router_id = "::1".into();
        s.listen = Some(BgpListen { address: "x".into(), port: 0 });
        s.graceful_restart.restart_time = 5000;
        let mut errs = Vec::new();
        s.validate(&mut Collector::new(&mut errs));
        let fields: Vec<String> = errs.into_iter().map(|e| e.field).collect();
        assert_eq!(fields, ["asn", "router_id", "listen.address", "listen.port", "graceful_restart.restart_time"]);
    }
}
