//! Real BGP peers for end-to-end tests: BIRD 2 ([`Bird`]) and GoBGP ([`Gobgp`]), each inside its own network
//! namespace (see `netns.rs`), configured from small builders and queried through their own CLIs.
//!
//! The appliance runs in the root namespace; a peer is a namespace joined to it by a [`Link`]:
//!
//! ```ignore
//! let ns = Netns::new();
//! let link = Link::to_root(&ns);            // appliance side: link.a.v4 / link.a.v6, peer side: link.b.*
//! let bird = Bird::start(&ns, &BirdConfig::new(link.b.v4).neighbor(
//!     BirdNeighbor::new("portico", 65001, link.a.v4.into(), 65000).passive().graceful_restart(30),
//! ));
//! // settings.bgp.listen = link.a.v4:179 and a bgp_peer at link.b.v4 AS 65001 (through the API), then:
//! bird.wait_established("portico", Duration::from_secs(30)).await;
//! let route = bird.wait_route("203.0.113.10/32", Duration::from_secs(30)).await;
//! assert_eq!(route.communities, ["65000:100"]);
//! ```
//!
//! Both peers report routes as [`PeerRoute`] (communities as `65000:100`, large communities as `a:b:c`).
//! Timers default to what makes tests fast: hold 3 s, keepalive 1 s, connect retry 1 s, and no long error waits.
//! A daemon's log is printed when its owner drops during a panic; dropping kills the daemon and removes its
//! files. For many routes: [`BirdConfig::static_prefixes`] (BIRD announces N static routes) and
//! [`Gobgp::inject_prefixes`] (an MRT TABLE_DUMP_V2 file written here and loaded with `gobgp mrt inject global`,
//! the fastest way into GoBGP's RIB short of a gRPC client), with [`synthetic_prefixes`] making the prefixes.
//! Measured here (2 shared cores, `bulk_500k_routes`, an ignored self-test): GoBGP takes in 500,000 IPv4 routes in
//! about 45 s and BIRD has them all a second later; BIRD loads 500,000 static routes in under a second and
//! GoBGP has them all about 14 s later.

#![allow(dead_code)] // the API for the BGP end-to-end tests; not all of it is used yet

use crate::netns::{Netns, NsChild, poll, try_run};
use serde_json::Value;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::process::Output;
use std::time::{Duration, Instant};

/// How long a daemon may take to answer its control socket or API after start.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a daemon may take to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// ORIGIN of a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Origin {
    Igp,
    Egp,
    Incomplete,
}

impl Origin {
    fn gobgp(self) -> &'static str {
        match self {
            Origin::Igp => "igp",
            Origin::Egp => "egp",
            Origin::Incomplete => "incomplete",
        }
    }

    fn bird(self) -> &'static str {
        match self {
            Origin::Igp => "ORIGIN_IGP",
            Origin::Egp => "ORIGIN_EGP",
            Origin::Incomplete => "ORIGIN_INCOMPLETE",
        }
    }

    fn code(self) -> u8 {
        match self {
            Origin::Igp => 0,
            Origin::Egp => 1,
            Origin::Incomplete => 2,
        }
    }
}

/// An address family (of a GoBGP RIB query, or of generated prefixes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Afi {
    Ipv4,
    Ipv6,
}

impl Afi {
    pub fn of(prefix: &str) -> Afi {
        if prefix.contains(':') { Afi::Ipv6 } else { Afi::Ipv4 }
    }

    fn gobgp(self) -> &'static str {
        match self {
            Afi::Ipv4 => "ipv4",
            Afi::Ipv6 => "ipv6",
        }
    }
}

/// A route as a peer sees it in its RIB.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerRoute {
    /// `198.51.100.0/24`, `2001:db8::/48`, as the daemon prints it.
    pub prefix: String,
    pub next_hop: Option<IpAddr>,
    pub as_path: Vec<u32>,
    pub origin: Option<Origin>,
    pub local_pref: Option<u32>,
    pub med: Option<u32>,
    /// `65000:100`, in the order received.
    pub communities: Vec<String>,
    /// `65000:1:2`, in the order received.
    pub large_communities: Vec<String>,
    /// Kept from a session that went down during graceful restart. BIRD 2.0 does not mark single routes: a route
    /// is stale while its protocol shows `Neighbor graceful restart active` (that is, until the restarted peer
    /// has sent End-of-RIB), or when it carries the LLGR_STALE community. GoBGP marks each path.
    pub stale: bool,
    /// Where it came from: BIRD's protocol name (`static4`, a `protocol bgp` name); GoBGP's neighbor address,
    /// `None` for a route GoBGP originated.
    pub source: Option<String>,
    /// The daemon's best route for the prefix.
    pub best: bool,
}

/// A route to announce: to GoBGP's RIB ([`Gobgp::add_route`]), as a BIRD static route ([`BirdConfig::static_route`]),
/// or as the attributes of generated routes ([`Gobgp::inject_prefixes`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteSpec {
    pub prefix: String,
    /// GoBGP only; BIRD announces static routes with itself as next hop.
    pub next_hop: Option<IpAddr>,
    /// GoBGP only.
    pub as_path: Vec<u32>,
    pub origin: Option<Origin>,
    pub local_pref: Option<u32>,
    pub med: Option<u32>,
    pub communities: Vec<String>,
    pub large_communities: Vec<String>,
}

impl RouteSpec {
    pub fn new(prefix: &str) -> RouteSpec {
        RouteSpec { prefix: prefix.into(), ..RouteSpec::default() }
    }

    pub fn next_hop(mut self, ip: impl Into<IpAddr>) -> Self {
        self.next_hop = Some(ip.into());
        self
    }

    /// The AS_PATH (a sequence), `aspath` as in the gobgp CLI.
    pub fn aspath(mut self, path: &[u32]) -> Self {
        self.as_path = path.to_vec();
        self
    }

    pub fn origin(mut self, origin: Origin) -> Self {
        self.origin = Some(origin);
        self
    }

    pub fn local_pref(mut self, v: u32) -> Self {
        self.local_pref = Some(v);
        self
    }

    pub fn med(mut self, v: u32) -> Self {
        self.med = Some(v);
        self
    }

    /// `["65000:100"]`
    pub fn communities(mut self, c: &[&str]) -> Self {
        self.communities = c.iter().map(|s| s.to_string()).collect();
        self
    }

    /// `["65000:1:2"]`
    pub fn large_communities(mut self, c: &[&str]) -> Self {
        self.large_communities = c.iter().map(|s| s.to_string()).collect();
        self
    }
}

/// `count` distinct prefixes for bulk announcements: IPv4 /24s from 16.0.0.0 up (500,000 of them end in
/// 23.160.0.0/11), IPv6 /48s from 2a00::/48 up. Nothing ever sends traffic to them.
pub fn synthetic_prefixes(afi: Afi, count: u32) -> impl Iterator<Item = (IpAddr, u8)> {
    (0..count).map(move |i| match afi {
        Afi::Ipv4 => (IpAddr::V4(Ipv4Addr::from(u32::from(Ipv4Addr::new(16, 0, 0, 0)) + (i << 8))), 24),
        Afi::Ipv6 => {
            let hi = (i >> 16) as u16;
            let lo = (i & 0xffff) as u16;
            (IpAddr::V6(Ipv6Addr::new(0x2a00, hi, lo, 0, 0, 0, 0, 0)), 48)
        }
    })
}

fn community_pair(c: &str) -> (u32, u32) {
    let (a, b) = c.split_once(':').unwrap_or_else(|| panic!("community {c:?} is not a:b"));
    (a.parse().expect("community high half"), b.parse().expect("community low half"))
}

fn large_triple(c: &str) -> (u32, u32, u32) {
    let parts: Vec<u32> =
        c.split(':').map(|p| p.parse().unwrap_or_else(|_| panic!("large community {c:?} is not a:b:c"))).collect();
    assert_eq!(parts.len(), 3, "large community {c:?} is not a:b:c");
    (parts[0], parts[1], parts[2])
}

fn log_tail(path: &std::path::Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

// The path keeps the module findable when this file is included elsewhere with `#[path]` (the BGP benchmark).
#[cfg(test)]
#[path = "bgp_peers/selftest.rs"]
mod selftest;

/// `settings.bgp` for an appliance that peers over links made by `Link::to_root`: `listen` is the root end's
/// address (port 179 of that address only, so parallel tests never clash); `None` makes it connect out only.
/// Shaped like `model::bgp::BgpSettings`; add fields with `v["graceful_restart"] = json!(...)`.
pub fn appliance_bgp_settings(
    asn: u32,
    router_id: Ipv4Addr,
    listen: Option<IpAddr>,
    restart_time: Option<u16>,
) -> Value {
    let mut v = serde_json::json!({ "asn": asn, "router_id": router_id.to_string() });
    if let Some(a) = listen {
        v["listen"] = serde_json::json!({ "address": a.to_string(), "port": 179 });
    }
    if let Some(t) = restart_time {
        v["graceful_restart"] = serde_json::json!({ "enabled": true, "restart_time": t });
    }
    v
}

/// A `bgp_peers` item for a peer at `address` with the harness's fast timers (hold 3 s, connect retry 1 s).
/// Shaped like `model::bgp::BgpPeer`; add `passive`, `password`, `families`, `advertise` as needed.
pub fn appliance_peer(name: &str, address: IpAddr, asn: u32) -> Value {
    serde_json::json!({
        "name": name,
        "address": address.to_string(),
        "asn": asn,
        "hold_time": 3,
        "connect_retry": 1,
    })
}

// ---------------------------------------------------------------------------------------------------------------
// BIRD

/// The session options a BIRD and a GoBGP neighbour share, with the harness's fast timers.
#[derive(Debug, Clone)]
pub struct SessionOptions {
    /// The neighbour's port.
    pub port: u16,
    /// The source address; `None` lets the daemon pick.
    pub local_address: Option<IpAddr>,
    pub passive: bool,
    /// TCP-MD5 key.
    pub password: Option<String>,
    /// Graceful restart with this restart time.
    pub graceful_restart: Option<u16>,
    /// Multihop with this TTL; `None` is a directly connected session.
    pub multihop: Option<u8>,
    pub hold_time: u16,
    pub keepalive: u16,
    pub connect_retry: u16,
    pub ipv4: bool,
    pub ipv6: bool,
}

impl Default for SessionOptions {
    /// Active, direct, IPv4 and IPv6, hold 3 s, keepalive 1 s, connect retry 1 s.
    fn default() -> Self {
        SessionOptions {
            port: 179,
            local_address: None,
            passive: false,
            password: None,
            graceful_restart: None,
            multihop: None,
            hold_time: 3,
            keepalive: 1,
            connect_retry: 1,
            ipv4: true,
            ipv6: true,
        }
    }
}

/// Builder methods for the shared session options of [`BirdNeighbor`] and [`GobgpNeighbor`].
pub trait Session: Sized {
    fn session_mut(&mut self) -> &mut SessionOptions;

    fn port(mut self, port: u16) -> Self {
        self.session_mut().port = port;
        self
    }
    fn local_address(mut self, ip: impl Into<IpAddr>) -> Self {
        self.session_mut().local_address = Some(ip.into());
        self
    }
    fn passive(mut self) -> Self {
        self.session_mut().passive = true;
        self
    }
    fn password(mut self, key: &str) -> Self {
        self.session_mut().password = Some(key.into());
        self
    }
    fn graceful_restart(mut self, restart_time: u16) -> Self {
        self.session_mut().graceful_restart = Some(restart_time);
        self
    }
    fn multihop(mut self, ttl: u8) -> Self {
        self.session_mut().multihop = Some(ttl);
        self
    }
    /// Hold time and keepalive (BIRD wants keepalive < hold).
    fn timers(mut self, hold: u16, keepalive: u16) -> Self {
        let s = self.session_mut();
        s.hold_time = hold;
        s.keepalive = keepalive;
        self
    }
    fn families(mut self, ipv4: bool, ipv6: bool) -> Self {
        let s = self.session_mut();
        s.ipv4 = ipv4;
        s.ipv6 = ipv6;
        self
    }
}

impl Session for BirdNeighbor {
    fn session_mut(&mut self) -> &mut SessionOptions {
        &mut self.session
    }
}

impl Session for GobgpNeighbor {
    fn session_mut(&mut self) -> &mut SessionOptions {
        &mut self.session
    }
}

/// One `protocol bgp` of a BIRD config.
#[derive(Debug, Clone)]
pub struct BirdNeighbor {
    /// The protocol's name (what `protocol_state` takes).
    pub name: String,
    pub local_as: u32,
    /// `local port P`: where BIRD listens for this neighbor (default 179).
    pub local_port: Option<u16>,
    pub neighbor: IpAddr,
    pub neighbor_as: u32,
    pub session: SessionOptions,
    /// Export the static routes of this config (with their MED, and `next hop self`), else none.
    pub export_static: bool,
    /// The IPv6 next hop to announce when IPv6 runs over an IPv4 session that is not `direct`.
    pub ipv6_next_hop: Option<Ipv6Addr>,
    /// Raw lines added inside the protocol block.
    pub extra: String,
}

impl BirdNeighbor {
    /// An active, direct session carrying IPv4 and IPv6, importing everything and exporting nothing.
    pub fn new(name: &str, local_as: u32, neighbor: IpAddr, neighbor_as: u32) -> BirdNeighbor {
        BirdNeighbor {
            name: name.into(),
            local_as,
            local_port: None,
            neighbor,
            neighbor_as,
            session: SessionOptions::default(),
            export_static: false,
            ipv6_next_hop: None,
            extra: String::new(),
        }
    }

    pub fn local_port(mut self, port: u16) -> Self {
        self.local_port = Some(port);
        self
    }
    pub fn export_static(mut self) -> Self {
        self.export_static = true;
        self
    }
    pub fn ipv6_next_hop(mut self, ip: Ipv6Addr) -> Self {
        self.ipv6_next_hop = Some(ip);
        self
    }
    pub fn extra(mut self, lines: &str) -> Self {
        self.extra.push_str(lines);
        self.extra.push('\n');
        self
    }

    fn render(&self, out: &mut String) {
        let _ = writeln!(out, "protocol bgp {} {{", self.name);
        let mut local = String::from("  local");
        if let Some(a) = self.session.local_address {
            let _ = write!(local, " {a}");
        }
        if let Some(p) = self.local_port {
            let _ = write!(local, " port {p}");
        }
        let _ = writeln!(out, "{local} as {};", self.local_as);
        let _ = writeln!(out, "  neighbor {} port {} as {};", self.neighbor, self.session.port, self.neighbor_as);
        match self.session.multihop {
            Some(ttl) => _ = writeln!(out, "  multihop {ttl};"),
            None => out.push_str("  direct;\n"),
        }
        if self.session.passive {
            out.push_str("  passive on;\n");
        }
        if let Some(p) = &self.session.password {
            let _ = writeln!(out, "  password \"{}\";", p.replace('\\', "\\\\").replace('"', "\\\""));
        }
        let _ = writeln!(
            out,
            "  hold time {}; startup hold time {}; keepalive time {}; connect retry time {}; connect delay time 1;",
            self.session.hold_time, self.session.hold_time, self.session.keepalive, self.session.connect_retry
        );
        out.push_str("  error wait time 1, 2; error forget time 10;\n");
        if let Some(t) = self.session.graceful_restart {
            let _ = writeln!(out, "  graceful restart on; graceful restart time {t};");
        }
        for (on, family) in [(self.session.ipv4, "ipv4"), (self.session.ipv6, "ipv6")] {
            if !on {
                continue;
            }
            let _ = write!(out, "  {family} {{ import all; ");
            if self.export_static {
                // BIRD sends MED to an eBGP peer only when the export filter set it.
                out.push_str(
                    "export filter { if source != RTS_STATIC then reject; \
                     if defined(bgp_med) then bgp_med = bgp_med; accept; }; ",
                );
                match (family, self.ipv6_next_hop) {
                    ("ipv6", Some(nh)) => _ = write!(out, "next hop address {nh}; "),
                    _ => out.push_str("next hop self; "),
                }
            } else {
                out.push_str("export none; ");
            }
            out.push_str("};\n");
        }
        out.push_str(&self.extra);
        out.push_str("}\n");
    }
}

/// A BIRD config: `router id`, `protocol device`, static routes (`static4`, `static6`, blackhole routes with
/// BGP attributes) and BGP neighbors.
#[derive(Debug, Clone)]
pub struct BirdConfig {
    pub router_id: Ipv4Addr,
    pub neighbors: Vec<BirdNeighbor>,
    /// `route ...;` lines of `protocol static static4` / `static6`.
    static4: String,
    static6: String,
    /// Raw config appended at the end.
    pub extra: String,
}

impl BirdConfig {
    pub fn new(router_id: Ipv4Addr) -> BirdConfig {
        BirdConfig {
            router_id,
            neighbors: Vec::new(),
            static4: String::new(),
            static6: String::new(),
            extra: String::new(),
        }
    }

    pub fn neighbor(mut self, n: BirdNeighbor) -> Self {
        self.neighbors.push(n);
        self
    }

    /// A blackhole static route with the spec's ORIGIN, LOCAL_PREF, MED and (large) communities. Exported by
    /// neighbors with `export_static`.
    pub fn static_route(mut self, r: &RouteSpec) -> Self {
        let mut attrs = String::new();
        if let Some(o) = r.origin {
            let _ = write!(attrs, " bgp_origin = {};", o.bird());
        }
        if let Some(v) = r.local_pref {
            let _ = write!(attrs, " bgp_local_pref = {v};");
        }
        if let Some(v) = r.med {
            let _ = write!(attrs, " bgp_med = {v};");
        }
        for c in &r.communities {
            let (a, b) = community_pair(c);
            let _ = write!(attrs, " bgp_community.add(({a},{b}));");
        }
        for c in &r.large_communities {
            let (a, b, c) = large_triple(c);
            let _ = write!(attrs, " bgp_large_community.add(({a},{b},{c}));");
        }
        let lines = if Afi::of(&r.prefix) == Afi::Ipv6 { &mut self.static6 } else { &mut self.static4 };
        if attrs.is_empty() {
            let _ = writeln!(lines, "  route {} blackhole;", r.prefix);
        } else {
            let _ = writeln!(lines, "  route {} blackhole {{{attrs} }};", r.prefix);
        }
        self
    }

    /// Many plain blackhole static routes (for benchmarks: BIRD announcing N routes).
    pub fn static_prefixes(mut self, prefixes: impl IntoIterator<Item = (IpAddr, u8)>) -> Self {
        for (ip, len) in prefixes {
            let lines = if ip.is_ipv6() { &mut self.static6 } else { &mut self.static4 };
            let _ = writeln!(lines, "  route {ip}/{len} blackhole;");
        }
        self
    }

    pub fn extra(mut self, text: &str) -> Self {
        self.extra.push_str(text);
        self.extra.push('\n');
        self
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "router id {};", self.router_id);
        out.push_str("log stderr all;\n");
        out.push_str("protocol device { }\n");
        for (name, family, routes) in [("static4", "ipv4", &self.static4), ("static6", "ipv6", &self.static6)] {
            if !routes.is_empty() {
                let _ = writeln!(out, "protocol static {name} {{\n  {family};\n{routes}}}");
            }
        }
        for n in &self.neighbors {
            n.render(&mut out);
        }
        out.push_str(&self.extra);
        out
    }
}

/// What `birdc show protocols all NAME` says about one protocol.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProtocolState {
    pub name: String,
    /// `BGP`, `Static`, `Device`.
    pub proto: String,
    /// BIRD's protocol state: `up`, `start`, `down`, `flush`.
    pub state: String,
    /// `BGP state:` — `Established`, `Active`, `Connect`, `OpenSent`, `OpenConfirm`, `Idle`, `Down`.
    pub bgp_state: Option<String>,
    /// `Last error:` — `Socket: Connection refused`, `Received: Hold timer expired`, ...
    pub last_error: Option<String>,
    pub neighbor_address: Option<String>,
    /// `Neighbor graceful restart active`: the peer is restarting and its routes are kept stale.
    pub gr_active: bool,
    /// Sum over channels of `Routes: N imported`.
    pub imported: u64,
    /// The whole block as BIRD printed it.
    pub raw: String,
}

impl ProtocolState {
    pub fn established(&self) -> bool {
        self.bgp_state.as_deref() == Some("Established")
    }
}

/// Parses `show protocols all` output into one state per protocol.
pub fn parse_bird_protocols(text: &str) -> Vec<ProtocolState> {
    let mut out: Vec<ProtocolState> = Vec::new();
    for line in text.lines() {
        if line.starts_with("BIRD ") || line.starts_with("Name ") || line.trim().is_empty() {
            continue;
        }
        if !line.starts_with(' ') {
            let words: Vec<&str> = line.split_whitespace().collect();
            out.push(ProtocolState {
                name: words.first().copied().unwrap_or_default().into(),
                proto: words.get(1).copied().unwrap_or_default().into(),
                state: words.get(3).copied().unwrap_or_default().into(),
                raw: format!("{line}\n"),
                ..ProtocolState::default()
            });
            continue;
        }
        let Some(p) = out.last_mut() else { continue };
        p.raw.push_str(line);
        p.raw.push('\n');
        let t = line.trim();
        let value = |key: &str| t.strip_prefix(key).map(|v| v.trim().to_string());
        if let Some(v) = value("BGP state:") {
            p.bgp_state = Some(v);
        } else if let Some(v) = value("Last error:") {
            p.last_error = Some(v);
        } else if let Some(v) = value("Neighbor address:") {
            p.neighbor_address = Some(v);
        } else if t == "Neighbor graceful restart active" {
            p.gr_active = true;
        } else if let Some(v) = value("Routes:") {
            p.imported += v.split_whitespace().next().and_then(|n| n.parse::<u64>().ok()).unwrap_or(0);
        }
    }
    out
}

/// Parses `show route all` output. `gr_active` names the protocols whose routes are stale (see
/// [`PeerRoute::stale`]).
pub fn parse_bird_routes(text: &str, gr_active: &[String]) -> Vec<PeerRoute> {
    let mut routes: Vec<PeerRoute> = Vec::new();
    let mut prefix = String::new();
    // Whether the current route's next hop came from BGP.next_hop (which wins over `via`).
    for line in text.lines() {
        if line.starts_with("BIRD ") || line.starts_with("Table ") || line.trim().is_empty() {
            continue;
        }
        if let Some(attr) = line.strip_prefix('\t') {
            let Some(r) = routes.last_mut() else { continue };
            let (key, value) = attr.split_once(':').map(|(k, v)| (k.trim(), v.trim())).unwrap_or((attr.trim(), ""));
            match key {
                "BGP.origin" => {
                    r.origin = match value {
                        "IGP" => Some(Origin::Igp),
                        "EGP" => Some(Origin::Egp),
                        "Incomplete" => Some(Origin::Incomplete),
                        _ => None,
                    }
                }
                "BGP.as_path" => {
                    r.as_path = value
                        .split(|c: char| c.is_whitespace() || c == '{' || c == '}' || c == ',')
                        .filter_map(|w| w.parse().ok())
                        .collect()
                }
                "BGP.next_hop" => r.next_hop = value.split_whitespace().next().and_then(|a| a.parse().ok()),
                "BGP.med" => r.med = value.parse().ok(),
                "BGP.local_pref" => r.local_pref = value.parse().ok(),
                "BGP.community" => r.communities = bird_tuples(value),
                "BGP.large_community" => r.large_communities = bird_tuples(value),
                _ => {
                    if let Some(via) = attr.trim().strip_prefix("via ")
                        && r.next_hop.is_none()
                    {
                        r.next_hop = via.split_whitespace().next().and_then(|a| a.parse().ok());
                    }
                }
            }
            continue;
        }
        // A route line: `PREFIX  DEST [PROTO TIME (from X)] * (PREF[s]) [ASn?]`, the prefix blank for a further
        // route to the same net.
        let Some(open) = line.find('[') else { continue };
        let head: Vec<&str> = line[..open].split_whitespace().collect();
        if !line.starts_with(' ') {
            prefix = head.first().copied().unwrap_or_default().to_string();
        }
        let close = line[open..].find(']').map(|i| open + i).unwrap_or(line.len());
        let source = line[open + 1..close].split_whitespace().next().unwrap_or_default().to_string();
        let rest = line.get(close + 1..).unwrap_or("");
        let best = rest.trim_start().starts_with('*');
        let llgr_stale = rest
            .find('(')
            .and_then(|i| rest[i..].find(')').map(|j| &rest[i + 1..i + j]))
            .is_some_and(|pref| pref.ends_with('s'));
        routes.push(PeerRoute {
            prefix: prefix.clone(),
            stale: llgr_stale || gr_active.contains(&source),
            source: Some(source),
            best,
            ..PeerRoute::default()
        });
    }
    routes
}

/// `(65000,100) (65000,200)` → `65000:100`, `65000:200`; `(65000, 1, 2)` → `65000:1:2`.
fn bird_tuples(value: &str) -> Vec<String> {
    value
        .split('(')
        .filter_map(|t| t.split(')').next())
        .map(|t| t.split(',').map(str::trim).collect::<Vec<_>>().join(":"))
        .filter(|t| !t.is_empty())
        .collect()
}

/// BIRD 2 (`bird -f`) running in a namespace, with its config, control socket, pid file and log in a temporary
/// directory.
#[derive(Debug)]
pub struct Bird {
    ns: Netns,
    dir: tempfile::TempDir,
    child: Option<NsChild>,
}

impl Bird {
    /// Writes the config and starts BIRD; returns once its control socket answers.
    pub fn start(ns: &Netns, config: &BirdConfig) -> Bird {
        Bird::start_raw(ns, &config.render())
    }

    /// Starts BIRD on a hand-written config.
    pub fn start_raw(ns: &Netns, config: &str) -> Bird {
        let dir = tempfile::Builder::new().prefix("portico-bird-").tempdir().expect("temp dir");
        let mut bird = Bird { ns: ns.clone(), dir, child: None };
        std::fs::write(bird.conf_path(), config).expect("write bird.conf");
        bird.launch();
        bird
    }

    pub fn conf_path(&self) -> PathBuf {
        self.dir.path().join("bird.conf")
    }
    pub fn socket_path(&self) -> PathBuf {
        self.dir.path().join("bird.ctl")
    }
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("bird.log")
    }
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }
    pub fn netns(&self) -> &Netns {
        &self.ns
    }

    fn launch(&mut self) {
        assert!(self.child.is_none(), "BIRD is already running");
        let _ = std::fs::remove_file(self.socket_path());
        let mut cmd = self.ns.command("bird");
        cmd.arg("-f")
            .arg("-c")
            .arg(self.conf_path())
            .arg("-s")
            .arg(self.socket_path())
            .arg("-P")
            .arg(self.dir.path().join("bird.pid"));
        let mut child = self.ns.spawn(cmd, &self.log_path());
        let sock = self.socket_path();
        poll(START_TIMEOUT, "BIRD answering on its control socket", || {
            if let Some(status) = child.exited() {
                panic!("BIRD exited during start ({status}); config:\n{}\nlog:\n{}", self.config_text(), self.log());
            }
            let out = try_run(std::process::Command::new("birdc").arg("-s").arg(&sock).arg("show").arg("status"));
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            if out.status.success() && text.contains("Daemon is up") { Ok(()) } else { Err(text) }
        });
        self.child = Some(child);
    }

    fn config_text(&self) -> String {
        std::fs::read_to_string(self.conf_path()).unwrap_or_default()
    }

    /// Runs a `birdc` command (`show route all`, `disable NAME`, ...) and returns its output, also when BIRD
    /// answers with an error (`Network not found`, `syntax error`: birdc then exits 1); panics when birdc cannot
    /// reach BIRD.
    #[track_caller]
    pub fn birdc(&self, command: &str) -> String {
        let out: Output = try_run(
            std::process::Command::new("birdc").arg("-s").arg(self.socket_path()).args(command.split_whitespace()),
        );
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            text.starts_with("BIRD ") && text.contains(" ready."),
            "birdc {command} failed ({}): {text}{}\nBIRD log:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            log_tail(&self.log_path(), 40)
        );
        text
    }

    /// Every protocol's state.
    pub fn protocols(&self) -> Vec<ProtocolState> {
        parse_bird_protocols(&self.birdc("show protocols all"))
    }

    /// One protocol's state; panics if there is no such protocol.
    #[track_caller]
    pub fn protocol_state(&self, name: &str) -> ProtocolState {
        let text = self.birdc(&format!("show protocols all {name}"));
        parse_bird_protocols(&text)
            .into_iter()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("BIRD has no protocol {name}: {text}"))
    }

    /// Every route in BIRD's tables (`show route all`), BGP-learned and static; `stale` set as described at
    /// [`PeerRoute::stale`].
    pub fn routes(&self) -> Vec<PeerRoute> {
        let gr: Vec<String> = self.protocols().into_iter().filter(|p| p.gr_active).map(|p| p.name).collect();
        parse_bird_routes(&self.birdc("show route all"), &gr)
    }

    /// The routes of one prefix (several when more than one protocol has it; the best first as BIRD prints).
    pub fn routes_for(&self, prefix: &str) -> Vec<PeerRoute> {
        let gr: Vec<String> = self.protocols().into_iter().filter(|p| p.gr_active).map(|p| p.name).collect();
        parse_bird_routes(&self.birdc(&format!("show route {prefix} all")), &gr)
            .into_iter()
            .filter(|r| r.prefix == prefix)
            .collect()
    }

    /// The route to `prefix` learned from the BGP protocol `protocol`, if BIRD has it.
    pub fn route(&self, protocol: &str, prefix: &str) -> Option<PeerRoute> {
        self.routes_for(prefix).into_iter().find(|r| r.source.as_deref() == Some(protocol))
    }

    /// How many routes all tables hold (`show route count`), cheap also for a million routes.
    pub fn route_count(&self) -> u64 {
        parse_bird_count(&self.birdc("show route count"))
    }

    /// How many routes came from one protocol (`show route count protocol NAME`).
    pub fn route_count_from(&self, protocol: &str) -> u64 {
        parse_bird_count(&self.birdc(&format!("show route count protocol {protocol}")))
    }

    /// Polls `check` until it returns `Some`, up to `bound`; the panic says what was awaited, every protocol's
    /// state and the end of BIRD's log.
    pub async fn wait_for<T>(&self, bound: Duration, what: &str, mut check: impl FnMut(&Bird) -> Option<T>) -> T {
        let deadline = Instant::now() + bound;
        loop {
            if let Some(v) = check(self) {
                return v;
            }
            if Instant::now() > deadline {
                panic!(
                    "BIRD: {what} did not happen within {bound:?}\n{}\nlog:\n{}",
                    self.birdc("show protocols all"),
                    log_tail(&self.log_path(), 40)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the BGP protocol `name` is Established.
    pub async fn wait_established(&self, name: &str, bound: Duration) -> ProtocolState {
        self.wait_for(bound, &format!("{name} Established"), |b| {
            Some(b.protocol_state(name)).filter(|p| p.established())
        })
        .await
    }

    /// Waits until the BGP protocol `name` is no longer Established.
    pub async fn wait_down(&self, name: &str, bound: Duration) -> ProtocolState {
        self.wait_for(bound, &format!("{name} down"), |b| Some(b.protocol_state(name)).filter(|p| !p.established()))
            .await
    }

    /// Waits until BIRD has a route to `prefix` from a BGP peer (any protocol but the static ones) and returns it.
    pub async fn wait_route(&self, prefix: &str, bound: Duration) -> PeerRoute {
        self.wait_for(bound, &format!("a BGP route to {prefix}"), |b| {
            b.routes_for(prefix).into_iter().find(|r| !r.source.as_deref().is_some_and(|s| s.starts_with("static")))
        })
        .await
    }

    /// Waits until BIRD has no BGP route to `prefix`.
    pub async fn wait_no_route(&self, prefix: &str, bound: Duration) {
        self.wait_for(bound, &format!("no BGP route to {prefix}"), |b| {
            let any =
                b.routes_for(prefix).into_iter().any(|r| !r.source.as_deref().is_some_and(|s| s.starts_with("static")));
            (!any).then_some(())
        })
        .await
    }

    /// Writes a new config and reloads it (`birdc configure`); panics with BIRD's answer unless it took it.
    pub fn configure(&self, config: &BirdConfig) {
        self.configure_raw(&config.render());
    }

    pub fn configure_raw(&self, config: &str) {
        std::fs::write(self.conf_path(), config).expect("write bird.conf");
        let answer = self.birdc("configure");
        assert!(
            answer.contains("Reconfigured") || answer.contains("Reconfiguration in progress"),
            "birdc configure: {answer}"
        );
    }

    /// SIGTERM (BIRD closes its sessions with a Cease NOTIFICATION) and wait for the exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.stop("TERM", STOP_TIMEOUT);
        }
    }

    /// SIGKILL: sessions die without a NOTIFICATION, as in a crash (what a graceful-restart helper must ride out).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.stop("KILL", STOP_TIMEOUT);
        }
    }

    /// Starts BIRD again on its current config file (after `stop` or `kill`).
    pub fn start_again(&mut self) {
        self.launch();
    }

    /// `stop` and start again.
    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }

    pub fn running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| c.exited().is_none())
    }
}

impl Drop for Bird {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "----- BIRD in {} ({}) -----\n{}----- log -----\n{}----- end of BIRD -----",
                self.ns.name(),
                self.dir.path().display(),
                self.config_text(),
                self.log()
            );
        }
        if let Some(mut child) = self.child.take() {
            child.stop("KILL", STOP_TIMEOUT);
        }
    }
}

fn parse_bird_count(text: &str) -> u64 {
    // `Total: 4 of 4 routes for 4 networks in 2 tables`, or per table `2 of 2 routes for 2 networks in table
    // master4` when there is one table.
    if let Some(total) = text.lines().find_map(|l| l.strip_prefix("Total:")) {
        return total.split_whitespace().next().and_then(|n| n.parse().ok()).unwrap_or(0);
    }
    text.lines()
        .filter(|l| l.contains(" routes for "))
        .filter_map(|l| l.split_whitespace().next().and_then(|n| n.parse::<u64>().ok()))
        .sum()
}

// ---------------------------------------------------------------------------------------------------------------
// GoBGP

/// One `[[neighbors]]` of a GoBGP config.
#[derive(Debug, Clone)]
pub struct GobgpNeighbor {
    pub address: IpAddr,
    pub peer_as: u32,
    pub session: SessionOptions,
}

impl GobgpNeighbor {
    pub fn new(address: IpAddr, peer_as: u32) -> GobgpNeighbor {
        GobgpNeighbor { address, peer_as, session: SessionOptions::default() }
    }

    fn render(&self, out: &mut String) {
        let q = |s: &str| format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""));
        out.push_str("[[neighbors]]\n  [neighbors.config]\n");
        let _ = writeln!(out, "    neighbor-address = \"{}\"\n    peer-as = {}", self.address, self.peer_as);
        if let Some(p) = &self.session.password {
            let _ = writeln!(out, "    auth-password = {}", q(p));
        }
        let _ = writeln!(
            out,
            "  [neighbors.timers.config]\n    hold-time = {}\n    keepalive-interval = {}\n    connect-retry = {}\n    \
             idle-hold-time-after-reset = 1",
            self.session.hold_time, self.session.keepalive, self.session.connect_retry
        );
        let _ = writeln!(out, "  [neighbors.transport.config]\n    remote-port = {}", self.session.port);
        if self.session.passive {
            out.push_str("    passive-mode = true\n");
        }
        if let Some(a) = self.session.local_address {
            let _ = writeln!(out, "    local-address = \"{a}\"");
        }
        if let Some(ttl) = self.session.multihop {
            let _ = writeln!(out, "  [neighbors.ebgp-multihop.config]\n    enabled = true\n    multihop-ttl = {ttl}");
        }
        if let Some(t) = self.session.graceful_restart {
            let _ = writeln!(out, "  [neighbors.graceful-restart.config]\n    enabled = true\n    restart-time = {t}");
        }
        for (on, family) in [(self.session.ipv4, "ipv4-unicast"), (self.session.ipv6, "ipv6-unicast")] {
            if !on {
                continue;
            }
            let _ = writeln!(
                out,
                "  [[neighbors.afi-safis]]\n    [neighbors.afi-safis.config]\n      afi-safi-name = \"{family}\""
            );
            if self.session.graceful_restart.is_some() {
                out.push_str("    [neighbors.afi-safis.mp-graceful-restart.config]\n      enabled = true\n");
            }
        }
    }
}

/// A GoBGP config (TOML): the global AS, router id and listen port, and neighbors.
#[derive(Debug, Clone)]
pub struct GobgpConfig {
    pub asn: u32,
    pub router_id: Ipv4Addr,
    /// The BGP listen port; `None` listens nowhere (`port = -1`, only active sessions).
    pub listen_port: Option<u16>,
    pub neighbors: Vec<GobgpNeighbor>,
    /// Raw TOML appended at the end.
    pub extra: String,
}

impl GobgpConfig {
    pub fn new(asn: u32, router_id: Ipv4Addr) -> GobgpConfig {
        GobgpConfig { asn, router_id, listen_port: Some(179), neighbors: Vec::new(), extra: String::new() }
    }

    pub fn neighbor(mut self, n: GobgpNeighbor) -> Self {
        self.neighbors.push(n);
        self
    }

    pub fn listen_port(mut self, port: Option<u16>) -> Self {
        self.listen_port = port;
        self
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let port = self.listen_port.map_or(-1, i32::from);
        let _ = writeln!(
            out,
            "[global.config]\n  as = {}\n  router-id = \"{}\"\n  port = {port}\n",
            self.asn, self.router_id
        );
        for n in &self.neighbors {
            n.render(&mut out);
            out.push('\n');
        }
        out.push_str(&self.extra);
        out
    }
}

/// What `gobgp neighbor ADDR -j` says about one neighbor.
#[derive(Debug, Clone, PartialEq)]
pub struct NeighborState {
    /// `idle`, `connect`, `active`, `opensent`, `openconfirm`, `established` (or `unknown`).
    pub session_state: String,
    /// Summed over families.
    pub received: u64,
    pub accepted: u64,
    pub advertised: u64,
    pub raw: Value,
}

impl NeighborState {
    pub fn established(&self) -> bool {
        self.session_state == "established"
    }
}

/// Parses `gobgp neighbor ADDR -j`.
pub fn parse_gobgp_neighbor(v: &Value) -> NeighborState {
    let state = &v["state"]["session_state"];
    let session_state = match state.as_u64() {
        Some(1) => "idle",
        Some(2) => "connect",
        Some(3) => "active",
        Some(4) => "opensent",
        Some(5) => "openconfirm",
        Some(6) => "established",
        Some(_) => "unknown",
        // Newer GoBGPs print the enum's name (`SESSION_STATE_ESTABLISHED`).
        None => state.as_str().map_or("unknown", |s| {
            let s = s.trim_start_matches("SESSION_STATE_").trim_start_matches("BGP_FSM_");
            match s.to_ascii_lowercase().as_str() {
                "idle" => "idle",
                "connect" => "connect",
                "active" => "active",
                "opensent" => "opensent",
                "openconfirm" => "openconfirm",
                "established" => "established",
                _ => "unknown",
            }
        }),
    }
    .to_string();
    let sum = |key: &str| {
        v["afi_safis"].as_array().map(|a| a.iter().map(|f| f["state"][key].as_u64().unwrap_or(0)).sum()).unwrap_or(0)
    };
    NeighborState {
        session_state,
        received: sum("received"),
        accepted: sum("accepted"),
        advertised: sum("advertised"),
        raw: v.clone(),
    }
}

/// Parses `gobgp global rib -a FAMILY -j`: `{"PREFIX": [path, ...], ...}`, each path with `attrs` by type code.
pub fn parse_gobgp_rib(v: &Value) -> Vec<PeerRoute> {
    let mut routes = Vec::new();
    let Some(map) = v.as_object() else { return routes };
    for (prefix, paths) in map {
        for p in paths.as_array().into_iter().flatten() {
            let mut r = PeerRoute {
                prefix: p["nlri"]["prefix"].as_str().unwrap_or(prefix).to_string(),
                stale: p["stale"].as_bool().unwrap_or(false),
                best: p["best"].as_bool().unwrap_or(false),
                source: p["neighbor-ip"].as_str().map(str::to_string),
                ..PeerRoute::default()
            };
            for a in p["attrs"].as_array().into_iter().flatten() {
                match a["type"].as_u64() {
                    Some(1) => {
                        r.origin = match a["value"].as_u64() {
                            Some(0) => Some(Origin::Igp),
                            Some(1) => Some(Origin::Egp),
                            Some(2) => Some(Origin::Incomplete),
                            _ => None,
                        }
                    }
                    Some(2) => {
                        r.as_path = a["as_paths"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .flat_map(|seg| seg["asns"].as_array().cloned().unwrap_or_default())
                            .filter_map(|n| n.as_u64().and_then(|n| u32::try_from(n).ok()))
                            .collect()
                    }
                    Some(3 | 14) if r.next_hop.is_none() => {
                        r.next_hop = a["nexthop"].as_str().and_then(|s| s.parse().ok());
                    }
                    Some(4) => r.med = a["metric"].as_u64().and_then(|n| u32::try_from(n).ok()),
                    Some(5) => r.local_pref = a["value"].as_u64().and_then(|n| u32::try_from(n).ok()),
                    Some(8) => {
                        r.communities = a["communities"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter_map(Value::as_u64)
                            .map(|c| format!("{}:{}", c >> 16, c & 0xffff))
                            .collect()
                    }
                    Some(32) => {
                        r.large_communities = a["value"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .map(|c| format!("{}:{}:{}", c["ASN"], c["LocalData1"], c["LocalData2"]))
                            .collect()
                    }
                    _ => {}
                }
            }
            routes.push(r);
        }
    }
    routes
}

/// `gobgpd` running in a namespace, its gRPC API on 127.0.0.1:50051 of that namespace (one per namespace, so
/// no clash), driven with the `gobgp` CLI. Config and log live in a temporary directory.
#[derive(Debug)]
pub struct Gobgp {
    ns: Netns,
    dir: tempfile::TempDir,
    child: Option<NsChild>,
}

impl Gobgp {
    /// Writes the config and starts gobgpd; returns once its API answers.
    pub fn start(ns: &Netns, config: &GobgpConfig) -> Gobgp {
        let dir = tempfile::Builder::new().prefix("portico-gobgp-").tempdir().expect("temp dir");
        let mut g = Gobgp { ns: ns.clone(), dir, child: None };
        std::fs::write(g.conf_path(), config.render()).expect("write gobgpd.toml");
        g.launch(false);
        g
    }

    pub fn conf_path(&self) -> PathBuf {
        self.dir.path().join("gobgpd.toml")
    }
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("gobgpd.log")
    }
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }
    pub fn netns(&self) -> &Netns {
        &self.ns
    }

    fn launch(&mut self, graceful: bool) {
        assert!(self.child.is_none(), "gobgpd is already running");
        let mut cmd = self.ns.command("gobgpd");
        cmd.arg("-f").arg(self.conf_path()).args(["-t", "toml", "--api-hosts", "127.0.0.1:50051", "--pprof-disable"]);
        if graceful {
            cmd.arg("--graceful-restart");
        }
        let mut child = self.ns.spawn(cmd, &self.log_path());
        poll(START_TIMEOUT, "gobgpd answering on its API", || {
            if let Some(status) = child.exited() {
                panic!(
                    "gobgpd exited during start ({status}); config:\n{}\nlog:\n{}",
                    std::fs::read_to_string(self.conf_path()).unwrap_or_default(),
                    self.log()
                );
            }
            let out = self.ns.try_exec(&["gobgp", "global", "-j"]);
            if out.status.success() { Ok(()) } else { Err(String::from_utf8_lossy(&out.stderr).into_owned()) }
        });
        self.child = Some(child);
    }

    /// Runs `gobgp ARGS` in the namespace; panics with its output unless it succeeds. Returns stdout.
    #[track_caller]
    pub fn cli(&self, args: &[&str]) -> String {
        let out = self.ns.try_exec(&[&["gobgp"], args].concat());
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "gobgp {} failed ({}): {text}{}\ngobgpd log:\n{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr),
            log_tail(&self.log_path(), 40)
        );
        text
    }

    fn cli_json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.push("-j");
        let text = self.cli(&all);
        if text.trim().is_empty() {
            return Value::Null;
        }
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("gobgp {}: {e}: {text}", all.join(" ")))
    }

    /// Every path in the global RIB of one family, GoBGP's own and learned ones (`gobgp global rib -a F -j`).
    pub fn routes(&self, afi: Afi) -> Vec<PeerRoute> {
        parse_gobgp_rib(&self.cli_json(&["global", "rib", "-a", afi.gobgp()]))
    }

    /// Both families.
    pub fn all_routes(&self) -> Vec<PeerRoute> {
        let mut r = self.routes(Afi::Ipv4);
        r.extend(self.routes(Afi::Ipv6));
        r
    }

    /// The learned (not self-originated) path to `prefix`, if any.
    pub fn learned_route(&self, prefix: &str) -> Option<PeerRoute> {
        self.routes(Afi::of(prefix)).into_iter().find(|r| r.prefix == prefix && r.source.is_some())
    }

    /// The number of destinations in the global RIB of a family (`gobgp global rib summary`), cheap for big
    /// tables.
    pub fn route_count(&self, afi: Afi) -> u64 {
        let text = self.cli(&["global", "rib", "summary", "-a", afi.gobgp()]);
        // `Table ipv4-unicast\nDestination: 2, Path: 2`
        text.split("Destination:")
            .nth(1)
            .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).find(|w| !w.is_empty()))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }

    /// The session with the neighbor at `addr`; panics if GoBGP has no such neighbor.
    #[track_caller]
    pub fn neighbor_state(&self, addr: IpAddr) -> NeighborState {
        parse_gobgp_neighbor(&self.cli_json(&["neighbor", &addr.to_string()]))
    }

    /// Adds a route to the global RIB through the CLI (one `gobgp global rib add` per route: fine for a few).
    pub fn add_route(&self, r: &RouteSpec) {
        let afi = Afi::of(&r.prefix);
        let mut args: Vec<String> = ["global", "rib", "-a", afi.gobgp(), "add", &r.prefix].map(String::from).to_vec();
        if let Some(nh) = r.next_hop {
            args.extend(["nexthop".into(), nh.to_string()]);
        }
        if !r.as_path.is_empty() {
            args.extend(["aspath".into(), r.as_path.iter().map(u32::to_string).collect::<Vec<_>>().join(",")]);
        }
        if let Some(o) = r.origin {
            args.extend(["origin".into(), o.gobgp().into()]);
        }
        if let Some(v) = r.med {
            args.extend(["med".into(), v.to_string()]);
        }
        if let Some(v) = r.local_pref {
            args.extend(["local-pref".into(), v.to_string()]);
        }
        if !r.communities.is_empty() {
            args.extend(["community".into(), r.communities.join(",")]);
        }
        if !r.large_communities.is_empty() {
            args.extend(["large-community".into(), r.large_communities.join(",")]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.cli(&args);
    }

    /// Withdraws a route added with [`Gobgp::add_route`].
    pub fn del_route(&self, prefix: &str) {
        self.cli(&["global", "rib", "-a", Afi::of(prefix).gobgp(), "del", prefix]);
    }

    /// Loads many routes fast: writes an MRT TABLE_DUMP_V2 file with one RIB entry per prefix, each with the
    /// template's next hop (required), AS path, ORIGIN, MED, LOCAL_PREF and (large) communities, then runs
    /// `gobgp mrt inject global FILE` (which streams them into gobgpd over gRPC). All prefixes must be of one
    /// family. Returns how many were written, once gobgpd holds them all. `gobgp global rib add` costs a process
    /// per route; this loads 500,000 routes in about 45 s here (gobgpd's own pace, while it also sends them on).
    pub fn inject_prefixes(&self, prefixes: impl IntoIterator<Item = (IpAddr, u8)>, template: &RouteSpec) -> u64 {
        let path = self.dir.path().join("inject.mrt");
        let afi = if template.next_hop.is_some_and(|nh| nh.is_ipv6()) { Afi::Ipv6 } else { Afi::Ipv4 };
        let before = self.route_count(afi);
        let count = write_mrt(&path, prefixes, template);
        // Streams that lost their tail anyway (see `write_mrt`) are topped up from where they stopped.
        let mut skip = 0;
        for attempt in 0.. {
            assert!(attempt < 5, "gobgp mrt inject stops short: {skip} of {count} routes");
            self.cli(&["mrt", "inject", "global", &path.to_string_lossy(), "1000000000", &skip.to_string()]);
            // The CLI returns when it has streamed the paths; wait until gobgpd's count stops moving.
            let mut now = self.route_count(afi);
            loop {
                std::thread::sleep(Duration::from_millis(300));
                let next = self.route_count(afi);
                if next == now {
                    break;
                }
                now = next;
            }
            if now >= before + count {
                break;
            }
            skip = now - before;
        }
        let _ = std::fs::remove_file(&path);
        count
    }

    /// Waits until `check` returns `Some`, up to `bound`; the panic says what was awaited, the neighbors and the
    /// end of gobgpd's log.
    pub async fn wait_for<T>(&self, bound: Duration, what: &str, mut check: impl FnMut(&Gobgp) -> Option<T>) -> T {
        let deadline = Instant::now() + bound;
        loop {
            if let Some(v) = check(self) {
                return v;
            }
            if Instant::now() > deadline {
                let neighbors = self.ns.try_exec(&["gobgp", "neighbor"]);
                panic!(
                    "GoBGP: {what} did not happen within {bound:?}\n{}\nlog:\n{}",
                    String::from_utf8_lossy(&neighbors.stdout),
                    log_tail(&self.log_path(), 40)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn wait_established(&self, addr: IpAddr, bound: Duration) -> NeighborState {
        self.wait_for(bound, &format!("{addr} established"), |g| {
            Some(g.neighbor_state(addr)).filter(NeighborState::established)
        })
        .await
    }

    pub async fn wait_down(&self, addr: IpAddr, bound: Duration) -> NeighborState {
        self.wait_for(bound, &format!("{addr} down"), |g| Some(g.neighbor_state(addr)).filter(|n| !n.established()))
            .await
    }

    /// Waits until GoBGP has learned a path to `prefix` from a neighbor and returns it.
    pub async fn wait_route(&self, prefix: &str, bound: Duration) -> PeerRoute {
        self.wait_for(bound, &format!("a learned route to {prefix}"), |g| g.learned_route(prefix)).await
    }

    pub async fn wait_no_route(&self, prefix: &str, bound: Duration) {
        self.wait_for(bound, &format!("no learned route to {prefix}"), |g| {
            g.learned_route(prefix).is_none().then_some(())
        })
        .await
    }

    /// SIGTERM: GoBGP sends a Cease NOTIFICATION to every peer (so no graceful restart) and exits.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.stop("TERM", STOP_TIMEOUT);
        }
    }

    /// SIGKILL: sessions die without a NOTIFICATION; graceful-restart helpers keep GoBGP's routes (stale).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.stop("KILL", STOP_TIMEOUT);
        }
    }

    /// Starts gobgpd again on its config (after `stop` or `kill`); `graceful` sets the Restart State bit
    /// (`gobgpd --graceful-restart`), as after a graceful restart. Routes added through the CLI are gone.
    pub fn start_again(&mut self, graceful: bool) {
        self.launch(graceful);
    }

    /// `stop` and start again.
    pub fn restart(&mut self) {
        self.stop();
        self.launch(false);
    }

    /// A graceful restart: `kill` (no NOTIFICATION) and start again with the Restart State bit.
    pub fn restart_graceful(&mut self) {
        self.kill();
        self.launch(true);
    }
}

impl Drop for Gobgp {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "----- GoBGP in {} ({}) -----\n{}----- log -----\n{}----- end of GoBGP -----",
                self.ns.name(),
                self.dir.path().display(),
                std::fs::read_to_string(self.conf_path()).unwrap_or_default(),
                log_tail(&self.log_path(), 200)
            );
        }
        if let Some(mut child) = self.child.take() {
            child.stop("KILL", STOP_TIMEOUT);
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// MRT (RFC 6396) TABLE_DUMP_V2, just enough for `gobgp mrt inject global`.

fn attr(out: &mut Vec<u8>, flags: u8, code: u8, value: &[u8]) {
    if value.len() > 255 {
        out.extend([flags | 0x10, code]);
        out.extend(u16::try_from(value.len()).expect("attribute length").to_be_bytes());
    } else {
        out.extend([flags, code, value.len() as u8]);
    }
    out.extend(value);
}

fn mrt_record(out: &mut impl std::io::Write, subtype: u16, body: &[u8]) {
    let mut head = Vec::with_capacity(12);
    head.extend(0u32.to_be_bytes()); // timestamp
    head.extend(13u16.to_be_bytes()); // TABLE_DUMP_V2
    head.extend(subtype.to_be_bytes());
    head.extend(u32::try_from(body.len()).expect("record length").to_be_bytes());
    out.write_all(&head).expect("write MRT");
    out.write_all(body).expect("write MRT");
}

/// How often `write_mrt` repeats the last record.
const MRT_TAIL_PAD: u32 = 2048;

/// Writes an MRT TABLE_DUMP_V2 file (one peer, one RIB entry per prefix, attributes from `template`, then the
/// last entry [`MRT_TAIL_PAD`] times more); returns the number of prefixes.
pub fn write_mrt(path: &std::path::Path, prefixes: impl IntoIterator<Item = (IpAddr, u8)>, t: &RouteSpec) -> u64 {
    let file = std::fs::File::create(path).expect("create MRT file");
    let mut out = std::io::BufWriter::new(file);
    // PEER_INDEX_TABLE: collector id, empty view name, one peer (IPv4 address, 4-octet AS).
    let mut body = Vec::new();
    body.extend([10, 0, 0, 1]);
    body.extend(0u16.to_be_bytes());
    body.extend(1u16.to_be_bytes());
    body.push(0x02);
    body.extend([10, 0, 0, 1]);
    body.extend([10, 0, 0, 1]);
    body.extend(0u32.to_be_bytes()); // peer AS 0: gobgp takes the paths as its own
    mrt_record(&mut out, 1, &body);

    let next_hop = t.next_hop.expect("inject_prefixes needs a next hop in the template");
    // Attributes shared by every entry (MP_REACH_NLRI, per family, is added below).
    let mut common = Vec::new();
    attr(&mut common, 0x40, 1, &[t.origin.unwrap_or(Origin::Igp).code()]);
    let mut path = Vec::new();
    if !t.as_path.is_empty() {
        path.extend([2u8, u8::try_from(t.as_path.len()).expect("AS path length")]);
        for asn in &t.as_path {
            path.extend(asn.to_be_bytes());
        }
    }
    attr(&mut common, 0x40, 2, &path);
    if let Some(m) = t.med {
        attr(&mut common, 0x80, 4, &m.to_be_bytes());
    }
    if let Some(lp) = t.local_pref {
        attr(&mut common, 0x40, 5, &lp.to_be_bytes());
    }
    if !t.communities.is_empty() {
        let v: Vec<u8> = t
            .communities
            .iter()
            .flat_map(|c| {
                let (a, b) = community_pair(c);
                ((a << 16) | (b & 0xffff)).to_be_bytes()
            })
            .collect();
        attr(&mut common, 0xc0, 8, &v);
    }
    if !t.large_communities.is_empty() {
        let v: Vec<u8> = t
            .large_communities
            .iter()
            .flat_map(|c| {
                let (a, b, c) = large_triple(c);
                [a.to_be_bytes(), b.to_be_bytes(), c.to_be_bytes()].concat()
            })
            .collect();
        attr(&mut common, 0xc0, 32, &v);
    }
    let attrs = match next_hop {
        IpAddr::V4(nh) => {
            let mut a = common.clone();
            attr(&mut a, 0x40, 3, &nh.octets());
            a
        }
        IpAddr::V6(nh) => {
            // Full MP_REACH_NLRI (AFI 2, SAFI 1, next hop, reserved, no NLRI): gobgp takes the next hop from it
            // and the prefix from the RIB entry.
            let mut v = vec![0, 2, 1, 16];
            v.extend(nh.octets());
            v.push(0);
            let mut a = common.clone();
            attr(&mut a, 0x80, 14, &v);
            a
        }
    };
    let mut seq: u32 = 0;
    let mut last = Vec::new();
    for (ip, len) in prefixes {
        let mut body = Vec::with_capacity(32 + attrs.len());
        body.extend(seq.to_be_bytes());
        body.push(len);
        let bytes = usize::from(len).div_ceil(8);
        let subtype = match ip {
            IpAddr::V4(a) => {
                assert!(next_hop.is_ipv4(), "an IPv4 prefix with an IPv6 next hop");
                body.extend(&a.octets()[..bytes]);
                2
            }
            IpAddr::V6(a) => {
                assert!(next_hop.is_ipv6(), "an IPv6 prefix with an IPv4 next hop");
                body.extend(&a.octets()[..bytes]);
                4
            }
        };
        body.extend(1u16.to_be_bytes()); // entry count
        body.extend(0u16.to_be_bytes()); // peer index
        body.extend(0u32.to_be_bytes()); // originated time
        body.extend(u16::try_from(attrs.len()).expect("attributes length").to_be_bytes());
        body.extend(&attrs);
        mrt_record(&mut out, subtype, &body);
        seq += 1;
        last = body;
    }
    // `gobgp mrt inject` (3.10) loses the last few hundred records of its stream; repeats of the last record
    // (the same path again, no change) absorb that.
    if !last.is_empty() {
        let subtype = if next_hop.is_ipv6() { 4 } else { 2 };
        for _ in 0..MRT_TAIL_PAD {
            mrt_record(&mut out, subtype, &last);
        }
    }
    std::io::Write::flush(&mut out).expect("flush MRT file");
    u64::from(seq)
}
