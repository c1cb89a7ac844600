//! BGP-4 messages on the wire (RFC 4271, 4760, 6793, 2918, 4724, 1997, 8092, 8203/9003) and the revised
//! UPDATE error handling of RFC 7606.
//!
//! Decoding never panics: every read goes through [`Reader`], which checks bounds. A message either decodes,
//! or yields the NOTIFICATION the speaker must send; an UPDATE whose attributes are malformed in a way RFC 7606
//! allows to survive decodes with [`Update::treat_as_withdraw`] set or with the attribute dropped.

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub const HEADER_LEN: usize = 19;
pub const MAX_MESSAGE_LEN: usize = 4096;
/// The two-octet stand-in for a four-octet AS number (RFC 6793).
pub const AS_TRANS: u32 = 23_456;
pub const BGP_VERSION: u8 = 4;

pub const MSG_OPEN: u8 = 1;
pub const MSG_UPDATE: u8 = 2;
pub const MSG_NOTIFICATION: u8 = 3;
pub const MSG_KEEPALIVE: u8 = 4;
pub const MSG_ROUTE_REFRESH: u8 = 5;

// Path attribute type codes.
pub const ATTR_ORIGIN: u8 = 1;
pub const ATTR_AS_PATH: u8 = 2;
pub const ATTR_NEXT_HOP: u8 = 3;
pub const ATTR_MED: u8 = 4;
pub const ATTR_LOCAL_PREF: u8 = 5;
pub const ATTR_ATOMIC_AGGREGATE: u8 = 6;
pub const ATTR_AGGREGATOR: u8 = 7;
pub const ATTR_COMMUNITIES: u8 = 8;
pub const ATTR_ORIGINATOR_ID: u8 = 9;
pub const ATTR_CLUSTER_LIST: u8 = 10;
pub const ATTR_MP_REACH: u8 = 14;
pub const ATTR_MP_UNREACH: u8 = 15;
pub const ATTR_AS4_PATH: u8 = 17;
pub const ATTR_AS4_AGGREGATOR: u8 = 18;
pub const ATTR_LARGE_COMMUNITIES: u8 = 32;

const FLAG_OPTIONAL: u8 = 0x80;
const FLAG_TRANSITIVE: u8 = 0x40;
const FLAG_EXTENDED: u8 = 0x10;

// Capability codes.
pub const CAP_MULTIPROTOCOL: u8 = 1;
pub const CAP_ROUTE_REFRESH: u8 = 2;
pub const CAP_GRACEFUL_RESTART: u8 = 64;
pub const CAP_FOUR_OCTET_AS: u8 = 65;
pub const CAP_ENHANCED_ROUTE_REFRESH: u8 = 70;

/// An address family and subsequent address family (RFC 4760), as numbers so unknown ones survive decoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AfiSafi {
    pub afi: u16,
    pub safi: u8,
}

impl AfiSafi {
    pub const IPV4_UNICAST: AfiSafi = AfiSafi { afi: 1, safi: 1 };
    pub const IPV6_UNICAST: AfiSafi = AfiSafi { afi: 2, safi: 1 };

    pub fn family(self) -> Option<model::bgp::AddressFamily> {
        match self {
            AfiSafi::IPV4_UNICAST => Some(model::bgp::AddressFamily::Ipv4Unicast),
            AfiSafi::IPV6_UNICAST => Some(model::bgp::AddressFamily::Ipv6Unicast),
            _ => None,
        }
    }

    pub fn of(family: model::bgp::AddressFamily) -> AfiSafi {
        match family {
            model::bgp::AddressFamily::Ipv4Unicast => AfiSafi::IPV4_UNICAST,
            model::bgp::AddressFamily::Ipv6Unicast => AfiSafi::IPV6_UNICAST,
        }
    }
}

/// A NOTIFICATION: what went wrong, as the peer will read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    pub code: u8,
    pub subcode: u8,
    pub data: Vec<u8>,
}

pub mod code {
    pub const HEADER: u8 = 1;
    pub const OPEN: u8 = 2;
    pub const UPDATE: u8 = 3;
    pub const HOLD_TIMER: u8 = 4;
    pub const FSM: u8 = 5;
    pub const CEASE: u8 = 6;
    pub const ROUTE_REFRESH: u8 = 7;
}

pub mod subcode {
    // Message header errors.
    pub const CONNECTION_NOT_SYNCHRONIZED: u8 = 1;
    pub const BAD_MESSAGE_LENGTH: u8 = 2;
    pub const BAD_MESSAGE_TYPE: u8 = 3;
    // OPEN errors.
    pub const UNSUPPORTED_VERSION: u8 = 1;
    pub const BAD_PEER_AS: u8 = 2;
    pub const BAD_BGP_IDENTIFIER: u8 = 3;
    pub const UNSUPPORTED_OPTIONAL_PARAMETER: u8 = 4;
    pub const UNACCEPTABLE_HOLD_TIME: u8 = 6;
    pub const UNSUPPORTED_CAPABILITY: u8 = 7;
    // UPDATE errors.
    pub const MALFORMED_ATTRIBUTE_LIST: u8 = 1;
    pub const UNRECOGNIZED_WELL_KNOWN: u8 = 2;
    pub const OPTIONAL_ATTRIBUTE_ERROR: u8 = 9;
    pub const INVALID_NETWORK_FIELD: u8 = 10;
    // FSM errors (RFC 6608).
    pub const UNEXPECTED_IN_OPENSENT: u8 = 1;
    pub const UNEXPECTED_IN_OPENCONFIRM: u8 = 2;
    pub const UNEXPECTED_IN_ESTABLISHED: u8 = 3;
    // Cease (RFC 4486).
    pub const MAX_PREFIXES: u8 = 1;
    pub const ADMIN_SHUTDOWN: u8 = 2;
    pub const PEER_DECONFIGURED: u8 = 3;
    pub const ADMIN_RESET: u8 = 4;
    pub const CONNECTION_REJECTED: u8 = 5;
    pub const OTHER_CONFIG_CHANGE: u8 = 6;
    pub const CONNECTION_COLLISION: u8 = 7;
    // ROUTE-REFRESH errors (RFC 7313).
    pub const INVALID_ROUTE_REFRESH_LENGTH: u8 = 1;
}

impl Notification {
    pub fn new(code: u8, subcode: u8, data: Vec<u8>) -> Notification {
        Notification { code, subcode, data }
    }

    /// A Cease with a shutdown communication (RFC 8203, lengthened to 255 octets by RFC 9003).
    pub fn cease_with_message(subcode: u8, message: &str) -> Notification {
        let mut text = message.as_bytes();
        let mut cut = text.len().min(255);
        // Never cut inside a UTF-8 sequence: the peer must be able to read what it gets.
        while cut > 0 && !message.is_char_boundary(cut) {
            cut -= 1;
        }
        text = &text[..cut];
        let mut data = Vec::with_capacity(text.len() + 1);
        data.push(text.len() as u8);
        data.extend_from_slice(text);
        Notification::new(code::CEASE, subcode, data)
    }

    /// The shutdown communication of an admin shutdown or reset, if it carries one that is valid UTF-8.
    pub fn shutdown_message(&self) -> Option<String> {
        if self.code != code::CEASE || !matches!(self.subcode, subcode::ADMIN_SHUTDOWN | subcode::ADMIN_RESET) {
            return None;
        }
        let (&len, rest) = self.data.split_first()?;
        let text = rest.get(..usize::from(len))?;
        if text.is_empty() {
            return None;
        }
        std::str::from_utf8(text).ok().map(str::to_owned)
    }

    /// Code and subcode in words, e.g. `OPEN Message Error / Bad Peer AS`.
    pub fn description(&self) -> String {
        let (c, s) = describe(self.code, self.subcode);
        format!("{c} / {s}")
    }
}

fn describe(c: u8, s: u8) -> (&'static str, &'static str) {
    match c {
        code::HEADER => (
            "Message Header Error",
            match s {
                1 => "Connection Not Synchronized",
                2 => "Bad Message Length",
                3 => "Bad Message Type",
                _ => "Unspecific",
            },
        ),
        code::OPEN => (
            "OPEN Message Error",
            match s {
                1 => "Unsupported Version Number",
                2 => "Bad Peer AS",
                3 => "Bad BGP Identifier",
                4 => "Unsupported Optional Parameter",
                6 => "Unacceptable Hold Time",
                7 => "Unsupported Capability",
                11 => "Role Mismatch",
                _ => "Unspecific",
            },
        ),
        code::UPDATE => (
            "UPDATE Message Error",
            match s {
                1 => "Malformed Attribute List",
                2 => "Unrecognized Well-known Attribute",
                3 => "Missing Well-known Attribute",
                4 => "Attribute Flags Error",
                5 => "Attribute Length Error",
                6 => "Invalid ORIGIN Attribute",
                8 => "Invalid NEXT_HOP Attribute",
                9 => "Optional Attribute Error",
                10 => "Invalid Network Field",
                11 => "Malformed AS_PATH",
                _ => "Unspecific",
            },
        ),
        code::HOLD_TIMER => ("Hold Timer Expired", "Unspecific"),
        code::FSM => (
            "Finite State Machine Error",
            match s {
                1 => "Receive Unexpected Message in OpenSent State",
                2 => "Receive Unexpected Message in OpenConfirm State",
                3 => "Receive Unexpected Message in Established State",
                _ => "Unspecified Error",
            },
        ),
        code::CEASE => (
            "Cease",
            match s {
                1 => "Maximum Number of Prefixes Reached",
                2 => "Administrative Shutdown",
                3 => "Peer De-configured",
                4 => "Administrative Reset",
                5 => "Connection Rejected",
                6 => "Other Configuration Change",
                7 => "Connection Collision Resolution",
                8 => "Out of Resources",
                9 => "Hard Reset",
                10 => "BFD Down",
                _ => "Unspecific",
            },
        ),
        code::ROUTE_REFRESH => (
            "ROUTE-REFRESH Message Error",
            match s {
                1 => "Invalid Message Length",
                _ => "Unspecific",
            },
        ),
        _ => ("Unknown Error Code", "Unknown"),
    }
}

/// Graceful restart capability (RFC 4724).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GracefulRestartCap {
    /// The R bit: the sender has restarted.
    pub restarting: bool,
    pub restart_time: u16,
    /// Families, each with the F bit (forwarding state preserved).
    pub families: Vec<(AfiSafi, bool)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Capability {
    Multiprotocol(AfiSafi),
    RouteRefresh,
    EnhancedRouteRefresh,
    FourOctetAs(u32),
    GracefulRestart(GracefulRestartCap),
    Unknown { code: u8, value: Vec<u8> },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Open {
    pub version: u8,
    /// The two-octet My Autonomous System field (AS_TRANS for four-octet numbers).
    pub my_as: u16,
    pub hold_time: u16,
    pub router_id: Ipv4Addr,
    pub capabilities: Vec<Capability>,
}

impl Open {
    /// The sender's AS: the four-octet capability if present, else the My AS field.
    pub fn asn(&self) -> u32 {
        self.four_octet_as().unwrap_or(u32::from(self.my_as))
    }

    pub fn four_octet_as(&self) -> Option<u32> {
        self.capabilities.iter().find_map(|c| match c {
            Capability::FourOctetAs(a) => Some(*a),
            _ => None,
        })
    }

    /// Families from multiprotocol capabilities; a peer that sends none speaks IPv4 unicast (RFC 4760 §8).
    pub fn families(&self) -> Vec<AfiSafi> {
        let mp: Vec<AfiSafi> = self
            .capabilities
            .iter()
            .filter_map(|c| match c {
                Capability::Multiprotocol(f) => Some(*f),
                _ => None,
            })
            .collect();
        if mp.is_empty() { vec![AfiSafi::IPV4_UNICAST] } else { mp }
    }

    pub fn has(&self, wanted: impl Fn(&Capability) -> bool) -> bool {
        self.capabilities.iter().any(wanted)
    }

    pub fn graceful_restart(&self) -> Option<&GracefulRestartCap> {
        self.capabilities.iter().find_map(|c| match c {
            Capability::GracefulRestart(g) => Some(g),
            _ => None,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Origin {
    #[default]
    Igp,
    Egp,
    Incomplete,
}

impl Origin {
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Igp => "igp",
            Origin::Egp => "egp",
            Origin::Incomplete => "incomplete",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegmentType {
    Set,
    Sequence,
    ConfedSequence,
    ConfedSet,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AsSegment {
    pub kind: SegmentType,
    pub asns: Vec<u32>,
}

/// The path attributes of an UPDATE that the speaker understands. Others are skipped (optional) or reset the
/// session (unrecognized well-known).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PathAttributes {
    pub origin: Option<Origin>,
    pub as_path: Option<Vec<AsSegment>>,
    pub next_hop: Option<Ipv4Addr>,
    pub med: Option<u32>,
    pub local_pref: Option<u32>,
    pub atomic_aggregate: bool,
    pub communities: Vec<u32>,
    pub large_communities: Vec<[u32; 3]>,
    /// The next hop of the MP_REACH_NLRI attribute (the global address when a link-local one follows it).
    pub mp_next_hop: Option<IpAddr>,
    pub as4_path: Option<Vec<AsSegment>>,
}

impl PathAttributes {
    /// The AS path as a flat list, with AS4_PATH merged in for a two-octet peer (RFC 6793 §4.2.3).
    pub fn flat_as_path(&self) -> Vec<u32> {
        let flat = |segs: &[AsSegment]| segs.iter().flat_map(|s| s.asns.iter().copied()).collect::<Vec<u32>>();
        let path = self.as_path.as_deref().map(flat).unwrap_or_default();
        match self.as4_path.as_deref().map(flat) {
            Some(as4) if as4.len() <= path.len() => {
                let keep = path.len() - as4.len();
                path[..keep].iter().copied().chain(as4).collect()
            }
            _ => path,
        }
    }
}

/// A decoded UPDATE.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Update {
    /// Withdrawn Routes and MP_UNREACH_NLRI prefixes.
    pub withdrawn: Vec<IpNet>,
    /// NLRI and MP_REACH_NLRI prefixes.
    pub announced: Vec<IpNet>,
    pub attributes: PathAttributes,
    /// Set when RFC 7606 says to treat the announced prefixes as withdrawn; says why.
    pub treat_as_withdraw: Option<String>,
    /// Attributes dropped under RFC 7606 "attribute discard", with why.
    pub discarded: Vec<String>,
    /// An End-of-RIB marker (RFC 4724 §2) for this family.
    pub end_of_rib: Option<AfiSafi>,
    /// MP families this UPDATE spoke of that we do not handle (ignored).
    pub other_families: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Open(Open),
    Update(Update),
    Notification(Notification),
    Keepalive,
    RouteRefresh(AfiSafi),
}

impl Message {
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Open(_) => "open",
            Message::Update(_) => "update",
            Message::Notification(_) => "notification",
            Message::Keepalive => "keepalive",
            Message::RouteRefresh(_) => "route_refresh",
        }
    }
}

/// What decoding needs to know about the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeContext {
    /// Both sides announced four-octet AS numbers: AS_PATH carries four octets per AS.
    pub four_octet_as: bool,
}

impl Default for DecodeContext {
    fn default() -> Self {
        DecodeContext { four_octet_as: true }
    }
}

/// A bounds-checked cursor; every accessor fails instead of panicking.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }
    fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
    fn remaining(&self) -> usize {
        self.buf.len()
    }
    fn u8(&mut self) -> Option<u8> {
        let (&b, rest) = self.buf.split_first()?;
        self.buf = rest;
        Some(b)
    }
    fn u16(&mut self) -> Option<u16> {
        let b = self.take(2)?;
        Some(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Option<u32> {
        let b = self.take(4)?;
        Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.buf.len() {
            return None;
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Some(head)
    }
    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }
}

/// Why [`decode`] could not produce a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Not a whole message yet; read more.
    #[error("incomplete message")]
    Incomplete,
    /// The bytes are bad; send this NOTIFICATION and close the session.
    #[error("{}", .0.description())]
    Invalid(Notification),
}

fn header_error(sub: u8, data: Vec<u8>) -> DecodeError {
    DecodeError::Invalid(Notification::new(code::HEADER, sub, data))
}

/// Decodes one message from the front of `buf`, returning it and how many bytes it took. This is the public
/// entry point that the fuzz target drives; it must return for every input.
pub fn decode(buf: &[u8], ctx: &DecodeContext) -> Result<(Message, usize), DecodeError> {
    if buf.len() < HEADER_LEN {
        return Err(DecodeError::Incomplete);
    }
    let mut r = Reader::new(buf);
    let marker = r.take(16).ok_or(DecodeError::Incomplete)?;
    if marker.iter().any(|&b| b != 0xff) {
        return Err(header_error(subcode::CONNECTION_NOT_SYNCHRONIZED, Vec::new()));
    }
    let len_field = r.u16().ok_or(DecodeError::Incomplete)?;
    let kind = r.u8().ok_or(DecodeError::Incomplete)?;
    let len = usize::from(len_field);
    let bad_length = || header_error(subcode::BAD_MESSAGE_LENGTH, len_field.to_be_bytes().to_vec());
    if !(HEADER_LEN..=MAX_MESSAGE_LEN).contains(&len) {
        return Err(bad_length());
    }
    let length_ok = match kind {
        MSG_OPEN => len >= 29,
        MSG_UPDATE => len >= 23,
        MSG_NOTIFICATION => len >= 21,
        MSG_KEEPALIVE => len == HEADER_LEN,
        // RFC 7313 answers a wrong ROUTE-REFRESH length with its own error code, below.
        MSG_ROUTE_REFRESH => true,
        _ => return Err(header_error(subcode::BAD_MESSAGE_TYPE, vec![kind])),
    };
    if !length_ok {
        return Err(bad_length());
    }
    if buf.len() < len {
        return Err(DecodeError::Incomplete);
    }
    let body = buf.get(HEADER_LEN..len).ok_or(DecodeError::Incomplete)?;
    let msg = match kind {
        MSG_OPEN => Message::Open(decode_open(body).map_err(DecodeError::Invalid)?),
        MSG_UPDATE => Message::Update(decode_update(body, ctx).map_err(DecodeError::Invalid)?),
        MSG_NOTIFICATION => {
            let mut r = Reader::new(body);
            let c = r.u8().unwrap_or(0);
            let s = r.u8().unwrap_or(0);
            Message::Notification(Notification::new(c, s, r.rest().to_vec()))
        }
        MSG_KEEPALIVE => Message::Keepalive,
        _ => {
            if body.len() != 4 {
                let mut data = buf.get(..len).unwrap_or_default().to_vec();
                data.truncate(MAX_MESSAGE_LEN - 21);
                return Err(DecodeError::Invalid(Notification::new(
                    code::ROUTE_REFRESH,
                    subcode::INVALID_ROUTE_REFRESH_LENGTH,
                    data,
                )));
            }
            let mut r = Reader::new(body);
            let afi = r.u16().unwrap_or(0);
            let _subtype = r.u8();
            let safi = r.u8().unwrap_or(0);
            Message::RouteRefresh(AfiSafi { afi, safi })
        }
    };
    Ok((msg, len))
}

fn open_error(sub: u8, data: Vec<u8>) -> Notification {
    Notification::new(code::OPEN, sub, data)
}

fn decode_open(body: &[u8]) -> Result<Open, Notification> {
    let mut r = Reader::new(body);
    let short = || open_error(0, Vec::new());
    let version = r.u8().ok_or_else(short)?;
    if version != BGP_VERSION {
        // The data is the highest version we speak (RFC 4271 §6.2).
        return Err(open_error(subcode::UNSUPPORTED_VERSION, u16::from(BGP_VERSION).to_be_bytes().to_vec()));
    }
    let my_as = r.u16().ok_or_else(short)?;
    let hold_time = r.u16().ok_or_else(short)?;
    let router_id = Ipv4Addr::from(r.u32().ok_or_else(short)?);
    let opt_len = usize::from(r.u8().ok_or_else(short)?);
    if opt_len != r.remaining() {
        return Err(short());
    }
    let mut params = Reader::new(r.rest());
    let mut capabilities = Vec::new();
    while !params.is_empty() {
        let kind = params.u8().ok_or_else(short)?;
        let len = usize::from(params.u8().ok_or_else(short)?);
        let value = params.take(len).ok_or_else(short)?;
        if kind != 2 {
            // Only capabilities (type 2) are defined; RFC 9072's extended length is not spoken.
            return Err(open_error(subcode::UNSUPPORTED_OPTIONAL_PARAMETER, Vec::new()));
        }
        let mut caps = Reader::new(value);
        while !caps.is_empty() {
            let code = caps.u8().ok_or_else(short)?;
            let len = usize::from(caps.u8().ok_or_else(short)?);
            let v = caps.take(len).ok_or_else(short)?;
            capabilities.push(decode_capability(code, v));
        }
    }
    Ok(Open { version, my_as, hold_time, router_id, capabilities })
}

/// A capability whose value does not have the expected shape is kept as unknown rather than failing the
/// OPEN: RFC 5492 leaves it to the receiver, and ignoring what we cannot read is the robust choice.
fn decode_capability(code: u8, v: &[u8]) -> Capability {
    let mut r = Reader::new(v);
    let parsed = match code {
        CAP_MULTIPROTOCOL if v.len() == 4 => {
            let afi = r.u16().unwrap_or(0);
            let _reserved = r.u8();
            let safi = r.u8().unwrap_or(0);
            Some(Capability::Multiprotocol(AfiSafi { afi, safi }))
        }
        CAP_ROUTE_REFRESH if v.is_empty() => Some(Capability::RouteRefresh),
        CAP_ENHANCED_ROUTE_REFRESH if v.is_empty() => Some(Capability::EnhancedRouteRefresh),
        CAP_FOUR_OCTET_AS if v.len() == 4 => r.u32().map(Capability::FourOctetAs),
        CAP_GRACEFUL_RESTART if v.len() >= 2 && (v.len() - 2).is_multiple_of(4) => {
            let head = r.u16().unwrap_or(0);
            let mut families = Vec::new();
            while let (Some(afi), Some(safi), Some(flags)) = (r.u16(), r.u8(), r.u8()) {
                families.push((AfiSafi { afi, safi }, flags & 0x80 != 0));
            }
            Some(Capability::GracefulRestart(GracefulRestartCap {
                restarting: head & 0x8000 != 0,
                restart_time: head & 0x0fff,
                families,
            }))
        }
        _ => None,
    };
    parsed.unwrap_or_else(|| Capability::Unknown { code, value: v.to_vec() })
}

fn update_error(sub: u8, data: Vec<u8>) -> Notification {
    Notification::new(code::UPDATE, sub, data)
}

/// How RFC 7606 says to handle a malformed attribute of each type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorAction {
    /// Send a NOTIFICATION and reset the session.
    SessionReset,
    /// Keep the session; treat the UPDATE's announced prefixes as withdrawn.
    TreatAsWithdraw,
    /// Keep the session and the routes; drop only this attribute.
    AttributeDiscard,
}

/// RFC 7606 §7 (and RFC 4760 §7, RFC 6793 §6, RFC 8092 §6) per attribute type.
pub fn error_action(attr_type: u8) -> ErrorAction {
    match attr_type {
        ATTR_MP_REACH | ATTR_MP_UNREACH => ErrorAction::SessionReset,
        ATTR_ATOMIC_AGGREGATE | ATTR_AGGREGATOR | ATTR_AS4_PATH | ATTR_AS4_AGGREGATOR => ErrorAction::AttributeDiscard,
        _ => ErrorAction::TreatAsWithdraw,
    }
}

/// The flags (optional, transitive) RFC 4271 and its extensions prescribe, for the types we know.
fn expected_flags(attr_type: u8) -> Option<u8> {
    match attr_type {
        ATTR_ORIGIN | ATTR_AS_PATH | ATTR_NEXT_HOP | ATTR_LOCAL_PREF | ATTR_ATOMIC_AGGREGATE => Some(FLAG_TRANSITIVE),
        ATTR_MED | ATTR_ORIGINATOR_ID | ATTR_CLUSTER_LIST | ATTR_MP_REACH | ATTR_MP_UNREACH => Some(FLAG_OPTIONAL),
        ATTR_AGGREGATOR | ATTR_COMMUNITIES | ATTR_AS4_PATH | ATTR_AS4_AGGREGATOR | ATTR_LARGE_COMMUNITIES => {
            Some(FLAG_OPTIONAL | FLAG_TRANSITIVE)
        }
        _ => None,
    }
}

fn attr_name(t: u8) -> String {
    let n = match t {
        ATTR_ORIGIN => "ORIGIN",
        ATTR_AS_PATH => "AS_PATH",
        ATTR_NEXT_HOP => "NEXT_HOP",
        ATTR_MED => "MULTI_EXIT_DISC",
        ATTR_LOCAL_PREF => "LOCAL_PREF",
        ATTR_ATOMIC_AGGREGATE => "ATOMIC_AGGREGATE",
        ATTR_AGGREGATOR => "AGGREGATOR",
        ATTR_COMMUNITIES => "COMMUNITIES",
        ATTR_ORIGINATOR_ID => "ORIGINATOR_ID",
        ATTR_CLUSTER_LIST => "CLUSTER_LIST",
        ATTR_MP_REACH => "MP_REACH_NLRI",
        ATTR_MP_UNREACH => "MP_UNREACH_NLRI",
        ATTR_AS4_PATH => "AS4_PATH",
        ATTR_AS4_AGGREGATOR => "AS4_AGGREGATOR",
        ATTR_LARGE_COMMUNITIES => "LARGE_COMMUNITY",
        other => return format!("attribute {other}"),
    };
    n.to_owned()
}

/// Parses prefixes of one family; `None` when the field is syntactically wrong (RFC 7606 §5.3).
fn decode_prefixes(buf: &[u8], v6: bool) -> Option<Vec<IpNet>> {
    let mut r = Reader::new(buf);
    let max = if v6 { 128 } else { 32 };
    let mut out = Vec::new();
    while !r.is_empty() {
        let len = r.u8()?;
        if len > max {
            return None;
        }
        let bytes = r.take(usize::from(len).div_ceil(8))?;
        let net = if v6 {
            let mut a = [0u8; 16];
            a[..bytes.len()].copy_from_slice(bytes);
            IpNet::V6(Ipv6Net::new(Ipv6Addr::from(a), len).ok()?.trunc())
        } else {
            let mut a = [0u8; 4];
            a[..bytes.len()].copy_from_slice(bytes);
            IpNet::V4(Ipv4Net::new(Ipv4Addr::from(a), len).ok()?.trunc())
        };
        out.push(net);
    }
    Some(out)
}

fn decode_as_path(v: &[u8], four_octet: bool) -> Option<Vec<AsSegment>> {
    let mut r = Reader::new(v);
    let mut segs = Vec::new();
    while !r.is_empty() {
        let kind = match r.u8()? {
            1 => SegmentType::Set,
            2 => SegmentType::Sequence,
            3 => SegmentType::ConfedSequence,
            4 => SegmentType::ConfedSet,
            _ => return None,
        };
        let n = usize::from(r.u8()?);
        if n == 0 {
            return None;
        }
        let mut asns = Vec::with_capacity(n);
        for _ in 0..n {
            asns.push(if four_octet { r.u32()? } else { u32::from(r.u16()?) });
        }
        segs.push(AsSegment { kind, asns });
    }
    Some(segs)
}

fn is_bad_next_hop(nh: Ipv4Addr) -> bool {
    nh.is_unspecified() || nh.is_multicast() || nh.is_broadcast() || nh.octets()[0] >= 240
}

struct MpReach {
    family: AfiSafi,
    next_hop: Option<IpAddr>,
    prefixes: Vec<IpNet>,
}

fn decode_mp_reach(v: &[u8]) -> Option<MpReach> {
    let mut r = Reader::new(v);
    let family = AfiSafi { afi: r.u16()?, safi: r.u8()? };
    let nh_len = usize::from(r.u8()?);
    let nh = r.take(nh_len)?;
    let _reserved = r.u8()?;
    let (next_hop, v6) = match family {
        AfiSafi::IPV4_UNICAST => match nh_len {
            4 => (Some(IpAddr::V4(Ipv4Addr::new(nh[0], nh[1], nh[2], nh[3]))), false),
            16 | 32 => (Some(IpAddr::V6(v6_from(nh)?)), false),
            _ => return None,
        },
        AfiSafi::IPV6_UNICAST => match nh_len {
            16 | 32 => (Some(IpAddr::V6(v6_from(nh)?)), true),
            _ => return None,
        },
        _ => return Some(MpReach { family, next_hop: None, prefixes: Vec::new() }),
    };
    let prefixes = decode_prefixes(r.rest(), v6)?;
    Some(MpReach { family, next_hop, prefixes })
}

fn v6_from(b: &[u8]) -> Option<Ipv6Addr> {
    let a: [u8; 16] = b.get(..16)?.try_into().ok()?;
    Some(Ipv6Addr::from(a))
}

fn decode_mp_unreach(v: &[u8]) -> Option<(AfiSafi, Vec<IpNet>)> {
    let mut r = Reader::new(v);
    let family = AfiSafi { afi: r.u16()?, safi: r.u8()? };
    let prefixes = match family {
        AfiSafi::IPV4_UNICAST => decode_prefixes(r.rest(), false)?,
        AfiSafi::IPV6_UNICAST => decode_prefixes(r.rest(), true)?,
        _ => Vec::new(),
    };
    Some((family, prefixes))
}

/// The raw bytes of an attribute, for a NOTIFICATION's data field.
fn attr_bytes(flags: u8, t: u8, v: &[u8]) -> Vec<u8> {
    let mut out = vec![flags, t];
    if flags & FLAG_EXTENDED != 0 {
        out.extend_from_slice(&(v.len() as u16).to_be_bytes());
    } else {
        out.push(v.len() as u8);
    }
    out.extend_from_slice(v);
    out.truncate(MAX_MESSAGE_LEN - 21);
    out
}

fn decode_update(body: &[u8], ctx: &DecodeContext) -> Result<Update, Notification> {
    let malformed_list = || update_error(subcode::MALFORMED_ATTRIBUTE_LIST, Vec::new());
    let mut r = Reader::new(body);
    let wlen = usize::from(r.u16().ok_or_else(malformed_list)?);
    let withdrawn_raw = r.take(wlen).ok_or_else(malformed_list)?;
    let alen = usize::from(r.u16().ok_or_else(malformed_list)?);
    let attrs_raw = r.take(alen).ok_or_else(malformed_list)?;
    let nlri_raw = r.rest();

    let invalid_network = || update_error(subcode::INVALID_NETWORK_FIELD, Vec::new());
    let mut u =
        Update { withdrawn: decode_prefixes(withdrawn_raw, false).ok_or_else(invalid_network)?, ..Default::default() };
    let nlri = decode_prefixes(nlri_raw, false).ok_or_else(invalid_network)?;

    let mut seen = [false; 256];
    let mut a = Reader::new(attrs_raw);
    let mut withdraw_reason: Option<String> = None;
    let mut mp_reach_seen = false;
    let mut mp_unreach_family = None;
    let mut attr_count = 0usize;
    while !a.is_empty() {
        let flags = a.u8().ok_or_else(malformed_list)?;
        let t = a.u8().ok_or_else(malformed_list)?;
        let len = if flags & FLAG_EXTENDED != 0 {
            usize::from(a.u16().ok_or_else(malformed_list)?)
        } else {
            usize::from(a.u8().ok_or_else(malformed_list)?)
        };
        // An attribute running past the attribute field may hide an MP_REACH_NLRI we could never find, so
        // RFC 7606 §3 (j) leaves no safe alternative to a reset here.
        let v = a.take(len).ok_or_else(malformed_list)?;
        attr_count += 1;
        if std::mem::replace(&mut seen[usize::from(t)], true) {
            if t == ATTR_MP_REACH || t == ATTR_MP_UNREACH {
                return Err(malformed_list());
            }
            // RFC 7606 §3 (g): later copies of any other attribute are discarded.
            u.discarded.push(format!("duplicate {}", attr_name(t)));
            continue;
        }
        let flags_ok = match expected_flags(t) {
            Some(want) => flags & (FLAG_OPTIONAL | FLAG_TRANSITIVE) == want,
            None => {
                if flags & FLAG_OPTIONAL == 0 {
                    return Err(update_error(subcode::UNRECOGNIZED_WELL_KNOWN, attr_bytes(flags, t, v)));
                }
                // Unknown optional attributes are not ours to judge, and we never pass routes on.
                continue;
            }
        };
        let mut malformed = |why: &str, u: &mut Update| -> Result<(), Notification> {
            let text = format!("{}: {why}", attr_name(t));
            match error_action(t) {
                ErrorAction::SessionReset => {
                    Err(update_error(subcode::OPTIONAL_ATTRIBUTE_ERROR, attr_bytes(flags, t, v)))
                }
                ErrorAction::TreatAsWithdraw => {
                    withdraw_reason.get_or_insert(text);
                    Ok(())
                }
                ErrorAction::AttributeDiscard => {
                    u.discarded.push(text);
                    Ok(())
                }
            }
        };
        if !flags_ok {
            malformed("wrong attribute flags", &mut u)?;
            continue;
        }
        let mut vr = Reader::new(v);
        match t {
            ATTR_ORIGIN => match (v.len(), v.first()) {
                (1, Some(0)) => u.attributes.origin = Some(Origin::Igp),
                (1, Some(1)) => u.attributes.origin = Some(Origin::Egp),
                (1, Some(2)) => u.attributes.origin = Some(Origin::Incomplete),
                (1, _) => malformed("undefined value", &mut u)?,
                _ => malformed("length is not 1", &mut u)?,
            },
            ATTR_AS_PATH => match decode_as_path(v, ctx.four_octet_as) {
                Some(p) => u.attributes.as_path = Some(p),
                None => malformed("malformed segments", &mut u)?,
            },
            ATTR_AS4_PATH => match decode_as_path(v, true) {
                Some(p) if !ctx.four_octet_as => u.attributes.as4_path = Some(p),
                // A four-octet speaker must not send AS4_PATH; RFC 6793 §6 says to discard it.
                Some(_) => u.discarded.push("AS4_PATH from a four-octet AS speaker".into()),
                None => malformed("malformed segments", &mut u)?,
            },
            ATTR_NEXT_HOP => match vr.u32() {
                Some(nh) if v.len() == 4 && !is_bad_next_hop(Ipv4Addr::from(nh)) => {
                    u.attributes.next_hop = Some(Ipv4Addr::from(nh))
                }
                Some(nh) if v.len() == 4 => {
                    malformed(&format!("{} is not a usable address", Ipv4Addr::from(nh)), &mut u)?
                }
                _ => malformed("length is not 4", &mut u)?,
            },
            ATTR_MED | ATTR_LOCAL_PREF => match vr.u32() {
                Some(x) if v.len() == 4 => {
                    if t == ATTR_MED {
                        u.attributes.med = Some(x)
                    } else {
                        u.attributes.local_pref = Some(x)
                    }
                }
                _ => malformed("length is not 4", &mut u)?,
            },
            ATTR_ATOMIC_AGGREGATE => {
                if v.is_empty() {
                    u.attributes.atomic_aggregate = true
                } else {
                    malformed("length is not 0", &mut u)?
                }
            }
            ATTR_AGGREGATOR => {
                let want = if ctx.four_octet_as { 8 } else { 6 };
                if v.len() != want {
                    malformed(&format!("length is not {want}"), &mut u)?
                }
            }
            ATTR_AS4_AGGREGATOR if v.len() != 8 => malformed("length is not 8", &mut u)?,
            ATTR_COMMUNITIES => {
                if v.is_empty() || !v.len().is_multiple_of(4) {
                    malformed("length is not a non-zero multiple of 4", &mut u)?
                } else {
                    u.attributes.communities =
                        v.chunks_exact(4).map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]])).collect();
                }
            }
            ATTR_LARGE_COMMUNITIES => {
                if v.is_empty() || !v.len().is_multiple_of(12) {
                    malformed("length is not a non-zero multiple of 12", &mut u)?
                } else {
                    u.attributes.large_communities = v
                        .chunks_exact(12)
                        .map(|c| {
                            let w = |i: usize| u32::from_be_bytes([c[i], c[i + 1], c[i + 2], c[i + 3]]);
                            [w(0), w(4), w(8)]
                        })
                        .collect();
                }
            }
            ATTR_ORIGINATOR_ID if v.len() != 4 => malformed("length is not 4", &mut u)?,
            ATTR_CLUSTER_LIST if v.is_empty() || !v.len().is_multiple_of(4) => {
                malformed("length is not a non-zero multiple of 4", &mut u)?
            }
            ATTR_MP_REACH => {
                mp_reach_seen = true;
                match decode_mp_reach(v) {
                    Some(mp) if mp.family.family().is_some() => {
                        u.attributes.mp_next_hop = mp.next_hop;
                        u.announced.extend(mp.prefixes);
                    }
                    Some(_) => u.other_families = true,
                    None => malformed("malformed", &mut u)?,
                }
            }
            ATTR_MP_UNREACH => match decode_mp_unreach(v) {
                Some((f, p)) if f.family().is_some() => {
                    if p.is_empty() {
                        mp_unreach_family = Some(f);
                    }
                    u.withdrawn.extend(p);
                }
                Some(_) => u.other_families = true,
                None => malformed("malformed", &mut u)?,
            },
            _ => {}
        }
    }

    let classic_nlri = !nlri.is_empty();
    u.announced.extend(nlri);
    if !u.announced.is_empty() && withdraw_reason.is_none() {
        // RFC 7606 §3 (d): a missing well-known mandatory attribute withdraws instead of resetting.
        let missing = [
            (u.attributes.origin.is_none(), "ORIGIN"),
            (u.attributes.as_path.is_none(), "AS_PATH"),
            (classic_nlri && u.attributes.next_hop.is_none(), "NEXT_HOP"),
        ];
        if let Some((_, name)) = missing.iter().find(|(m, _)| *m) {
            withdraw_reason = Some(format!("missing well-known attribute {name}"));
        }
    }
    if let Some(why) = withdraw_reason
        && !u.announced.is_empty()
    {
        u.withdrawn.append(&mut u.announced);
        u.treat_as_withdraw = Some(why);
    }
    if body.len() == 4 {
        u.end_of_rib = Some(AfiSafi::IPV4_UNICAST);
    } else if let Some(f) = mp_unreach_family
        && attr_count == 1
        && u.withdrawn.is_empty()
        && u.announced.is_empty()
        && !mp_reach_seen
    {
        u.end_of_rib = Some(f);
    }
    Ok(u)
}

// ---------------------------------------------------------------------------------------------------------
// Encoding

fn frame(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.extend_from_slice(&[0xff; 16]);
    // Callers keep bodies within MAX_MESSAGE_LEN, so the length fits in 16 bits.
    out.extend_from_slice(&((HEADER_LEN + body.len()) as u16).to_be_bytes());
    out.push(kind);
    out.extend_from_slice(body);
    out
}

pub fn encode_keepalive() -> Vec<u8> {
    frame(MSG_KEEPALIVE, &[])
}

pub fn encode_notification(n: &Notification) -> Vec<u8> {
    let mut body = vec![n.code, n.subcode];
    let room = MAX_MESSAGE_LEN - HEADER_LEN - 2;
    body.extend_from_slice(&n.data[..n.data.len().min(room)]);
    frame(MSG_NOTIFICATION, &body)
}

pub fn encode_route_refresh(f: AfiSafi) -> Vec<u8> {
    let mut body = f.afi.to_be_bytes().to_vec();
    body.push(0);
    body.push(f.safi);
    frame(MSG_ROUTE_REFRESH, &body)
}

fn encode_capability(c: &Capability, out: &mut Vec<u8>) {
    let (code, value): (u8, Vec<u8>) = match c {
        Capability::Multiprotocol(f) => {
            let mut v = f.afi.to_be_bytes().to_vec();
            v.extend_from_slice(&[0, f.safi]);
            (CAP_MULTIPROTOCOL, v)
        }
        Capability::RouteRefresh => (CAP_ROUTE_REFRESH, Vec::new()),
        Capability::EnhancedRouteRefresh => (CAP_ENHANCED_ROUTE_REFRESH, Vec::new()),
        Capability::FourOctetAs(a) => (CAP_FOUR_OCTET_AS, a.to_be_bytes().to_vec()),
        Capability::GracefulRestart(g) => {
            let head = (u16::from(g.restarting) << 15) | (g.restart_time & 0x0fff);
            let mut v = head.to_be_bytes().to_vec();
            for (f, fwd) in &g.families {
                v.extend_from_slice(&f.afi.to_be_bytes());
                v.push(f.safi);
                v.push(if *fwd { 0x80 } else { 0 });
            }
            (CAP_GRACEFUL_RESTART, v)
        }
        Capability::Unknown { code, value } => (*code, value.clone()),
    };
    out.push(code);
    out.push(value.len().min(255) as u8);
    out.extend_from_slice(&value[..value.len().min(255)]);
}

pub fn encode_open(o: &Open) -> Vec<u8> {
    let mut caps = Vec::new();
    for c in &o.capabilities {
        encode_capability(c, &mut caps);
    }
    let mut body = vec![o.version];
    body.extend_from_slice(&o.my_as.to_be_bytes());
    body.extend_from_slice(&o.hold_time.to_be_bytes());
    body.extend_from_slice(&o.router_id.octets());
    // One capabilities parameter holding them all; our handful stays far below 255 octets.
    let param_len = caps.len().min(253);
    body.push((param_len + 2) as u8);
    body.push(2);
    body.push(param_len as u8);
    body.extend_from_slice(&caps[..param_len]);
    frame(MSG_OPEN, &body)
}

/// The attributes the speaker sends with its routes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutAttributes {
    pub origin: Origin,
    /// One AS_SEQUENCE (empty for iBGP).
    pub as_path: Vec<u32>,
    pub next_hop: IpAddr,
    pub med: Option<u32>,
    pub local_pref: Option<u32>,
    pub communities: Vec<u32>,
    pub large_communities: Vec<[u32; 3]>,
}

impl Default for OutAttributes {
    fn default() -> Self {
        OutAttributes {
            origin: Origin::Igp,
            as_path: Vec::new(),
            next_hop: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            med: None,
            local_pref: None,
            communities: Vec::new(),
            large_communities: Vec::new(),
        }
    }
}

fn push_attr(out: &mut Vec<u8>, flags: u8, t: u8, v: &[u8]) {
    if v.len() > 255 {
        out.push(flags | FLAG_EXTENDED);
        out.push(t);
        out.extend_from_slice(&(v.len().min(usize::from(u16::MAX)) as u16).to_be_bytes());
    } else {
        out.push(flags);
        out.push(t);
        out.push(v.len() as u8);
    }
    out.extend_from_slice(v);
}

fn as_path_value(asns: &[u32], four_octet: bool) -> Vec<u8> {
    let mut v = Vec::new();
    for chunk in asns.chunks(255) {
        v.push(2);
        v.push(chunk.len() as u8);
        for a in chunk {
            if four_octet {
                v.extend_from_slice(&a.to_be_bytes());
            } else {
                let two = u16::try_from(*a).unwrap_or(AS_TRANS as u16);
                v.extend_from_slice(&two.to_be_bytes());
            }
        }
    }
    v
}

/// The attributes common to every family; NEXT_HOP and MP_REACH_NLRI are added by the caller.
fn common_attrs(a: &OutAttributes, four_octet: bool) -> Vec<u8> {
    let mut out = Vec::new();
    push_attr(&mut out, FLAG_TRANSITIVE, ATTR_ORIGIN, &[a.origin as u8]);
    push_attr(&mut out, FLAG_TRANSITIVE, ATTR_AS_PATH, &as_path_value(&a.as_path, four_octet));
    if let Some(med) = a.med {
        push_attr(&mut out, FLAG_OPTIONAL, ATTR_MED, &med.to_be_bytes());
    }
    if let Some(lp) = a.local_pref {
        push_attr(&mut out, FLAG_TRANSITIVE, ATTR_LOCAL_PREF, &lp.to_be_bytes());
    }
    if !a.communities.is_empty() {
        let v: Vec<u8> = a.communities.iter().flat_map(|c| c.to_be_bytes()).collect();
        push_attr(&mut out, FLAG_OPTIONAL | FLAG_TRANSITIVE, ATTR_COMMUNITIES, &v);
    }
    if !four_octet && a.as_path.iter().any(|&x| x > 0xffff) {
        push_attr(&mut out, FLAG_OPTIONAL | FLAG_TRANSITIVE, ATTR_AS4_PATH, &as_path_value(&a.as_path, true));
    }
    if !a.large_communities.is_empty() {
        let v: Vec<u8> = a.large_communities.iter().flat_map(|c| c.iter().flat_map(|x| x.to_be_bytes())).collect();
        push_attr(&mut out, FLAG_OPTIONAL | FLAG_TRANSITIVE, ATTR_LARGE_COMMUNITIES, &v);
    }
    out
}

fn encode_prefix(p: &IpNet, out: &mut Vec<u8>) {
    let len = p.prefix_len();
    out.push(len);
    let n = usize::from(len).div_ceil(8);
    match p {
        IpNet::V4(n4) => out.extend_from_slice(&n4.network().octets()[..n]),
        IpNet::V6(n6) => out.extend_from_slice(&n6.network().octets()[..n]),
    }
}

fn prefix_wire_len(p: &IpNet) -> usize {
    1 + usize::from(p.prefix_len()).div_ceil(8)
}

/// Splits prefixes into runs whose encodings fit in `room` octets each.
fn chunks_fitting(prefixes: &[IpNet], room: usize) -> Vec<&[IpNet]> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut used = 0;
    for (i, p) in prefixes.iter().enumerate() {
        let l = prefix_wire_len(p);
        if used + l > room && i > start {
            out.push(&prefixes[start..i]);
            start = i;
            used = 0;
        }
        used += l;
    }
    if start < prefixes.len() {
        out.push(&prefixes[start..]);
    }
    out
}

/// UPDATEs announcing `prefixes` (all of `family`) with one attribute set, packed as full as 4096 octets allow.
pub fn encode_announcements(
    family: AfiSafi,
    attrs: &OutAttributes,
    prefixes: &[IpNet],
    four_octet: bool,
) -> Vec<Vec<u8>> {
    let common = common_attrs(attrs, four_octet);
    let mut out = Vec::new();
    if family == AfiSafi::IPV4_UNICAST {
        let mut path = common;
        if let IpAddr::V4(nh) = attrs.next_hop {
            push_attr(&mut path, FLAG_TRANSITIVE, ATTR_NEXT_HOP, &nh.octets());
        }
        let room = MAX_MESSAGE_LEN - HEADER_LEN - 4 - path.len();
        for chunk in chunks_fitting(prefixes, room) {
            let mut body = vec![0, 0];
            body.extend_from_slice(&(path.len() as u16).to_be_bytes());
            body.extend_from_slice(&path);
            for p in chunk {
                encode_prefix(p, &mut body);
            }
            out.push(frame(MSG_UPDATE, &body));
        }
    } else {
        let nh: Vec<u8> = match attrs.next_hop {
            IpAddr::V6(v6) => v6.octets().to_vec(),
            IpAddr::V4(v4) => v4.to_ipv6_mapped().octets().to_vec(),
        };
        // MP_REACH_NLRI header: AFI, SAFI, next hop length and value, reserved; 4 octets of attribute header.
        let mp_head = 3 + 1 + nh.len() + 1;
        let room = MAX_MESSAGE_LEN - HEADER_LEN - 4 - common.len() - 4 - mp_head;
        for chunk in chunks_fitting(prefixes, room) {
            let mut mp = family.afi.to_be_bytes().to_vec();
            mp.push(family.safi);
            mp.push(nh.len() as u8);
            mp.extend_from_slice(&nh);
            mp.push(0);
            for p in chunk {
                encode_prefix(p, &mut mp);
            }
            let mut path = Vec::with_capacity(common.len() + mp.len() + 4);
            // RFC 7606 §5.1: MP_REACH_NLRI first, so a receiver finds it even if a later attribute is broken.
            push_attr(&mut path, FLAG_OPTIONAL, ATTR_MP_REACH, &mp);
            path.extend_from_slice(&common);
            let mut body = vec![0, 0];
            body.extend_from_slice(&(path.len() as u16).to_be_bytes());
            body.extend_from_slice(&path);
            out.push(frame(MSG_UPDATE, &body));
        }
    }
    out
}

/// UPDATEs withdrawing `prefixes` (all of `family`).
pub fn encode_withdrawals(family: AfiSafi, prefixes: &[IpNet]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    if family == AfiSafi::IPV4_UNICAST {
        for chunk in chunks_fitting(prefixes, MAX_MESSAGE_LEN - HEADER_LEN - 4) {
            let mut w = Vec::new();
            for p in chunk {
                encode_prefix(p, &mut w);
            }
            let mut body = (w.len() as u16).to_be_bytes().to_vec();
            body.extend_from_slice(&w);
            body.extend_from_slice(&[0, 0]);
            out.push(frame(MSG_UPDATE, &body));
        }
    } else {
        for chunk in chunks_fitting(prefixes, MAX_MESSAGE_LEN - HEADER_LEN - 4 - 4 - 3) {
            let mut mp = family.afi.to_be_bytes().to_vec();
            mp.push(family.safi);
            for p in chunk {
                encode_prefix(p, &mut mp);
            }
            let mut path = Vec::new();
            push_attr(&mut path, FLAG_OPTIONAL, ATTR_MP_UNREACH, &mp);
            let mut body = vec![0, 0];
            body.extend_from_slice(&(path.len() as u16).to_be_bytes());
            body.extend_from_slice(&path);
            out.push(frame(MSG_UPDATE, &body));
        }
    }
    out
}

/// The End-of-RIB marker of a family (RFC 4724 §2).
pub fn encode_end_of_rib(family: AfiSafi) -> Vec<u8> {
    if family == AfiSafi::IPV4_UNICAST {
        frame(MSG_UPDATE, &[0, 0, 0, 0])
    } else {
        let mut mp = family.afi.to_be_bytes().to_vec();
        mp.push(family.safi);
        let mut path = Vec::new();
        push_attr(&mut path, FLAG_OPTIONAL, ATTR_MP_UNREACH, &mp);
        let mut body = vec![0, 0];
        body.extend_from_slice(&(path.len() as u16).to_be_bytes());
        body.extend_from_slice(&path);
        frame(MSG_UPDATE, &body)
    }
}

#[cfg(test)]
mod tests;
