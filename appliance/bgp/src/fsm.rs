//! The session state machine of RFC 4271 §8 from OpenSent on, without I/O: what to do with each message in
//! each state, OPEN negotiation, collision resolution and timer jitter. The driver in `peer` owns sockets
//! and clocks and feeds this module what arrives.

use crate::wire::{
    AS_TRANS, AfiSafi, BGP_VERSION, Capability, GracefulRestartCap, Message, Notification, Open, Update, code, subcode,
};
use std::net::Ipv4Addr;
use std::time::Duration;

/// Hold time while waiting for the peer's OPEN (RFC 4271 §8.2.2 suggests 4 minutes).
pub const LARGE_HOLD_TIME: Duration = Duration::from_secs(240);

/// What we say about ourselves in an OPEN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalParams {
    pub asn: u32,
    pub router_id: Ipv4Addr,
    /// Graceful restart: our restart time, if enabled.
    pub graceful_restart: Option<u16>,
    /// This process is a restart: set the R bit, and ask peers to keep our routes (F bit).
    pub restarting: bool,
}

/// What one session asks for (from the peer's configuration).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionParams {
    pub peer_asn: u32,
    pub hold_time: u16,
    pub keepalive: Option<u16>,
    pub families: Vec<AfiSafi>,
}

/// What both sides agreed on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    pub peer_asn: u32,
    pub peer_router_id: Ipv4Addr,
    pub hold_time: u16,
    pub keepalive: u16,
    pub families: Vec<AfiSafi>,
    pub four_octet_as: bool,
    pub route_refresh: bool,
    pub enhanced_route_refresh: bool,
    /// The peer's graceful restart capability, when both sides announced one.
    pub peer_graceful_restart: Option<GracefulRestartCap>,
}

impl Negotiated {
    pub fn to_model(&self) -> model::bgp::Negotiated {
        model::bgp::Negotiated {
            peer_asn: self.peer_asn,
            peer_router_id: self.peer_router_id.to_string(),
            hold_time: self.hold_time,
            keepalive: self.keepalive,
            families: self.families.iter().filter_map(|f| f.family()).collect(),
            four_octet_as: self.four_octet_as,
            route_refresh: self.route_refresh,
            enhanced_route_refresh: self.enhanced_route_refresh,
            graceful_restart: self.peer_graceful_restart.is_some(),
            peer_restart_time: self.peer_graceful_restart.as_ref().map(|g| g.restart_time),
        }
    }
}

/// Our OPEN for one session.
pub fn build_open(local: &LocalParams, session: &SessionParams) -> Open {
    let mut capabilities: Vec<Capability> = session.families.iter().map(|f| Capability::Multiprotocol(*f)).collect();
    capabilities.push(Capability::RouteRefresh);
    capabilities.push(Capability::FourOctetAs(local.asn));
    if let Some(restart_time) = local.graceful_restart {
        capabilities.push(Capability::GracefulRestart(GracefulRestartCap {
            restarting: local.restarting,
            restart_time: restart_time.min(4095),
            // After a restart we ask peers to keep our routes until End-of-RIB; otherwise the F bit says
            // nothing useful (we install no routes), so it follows the restart flag.
            families: session.families.iter().map(|f| (*f, local.restarting)).collect(),
        }));
    }
    Open {
        version: BGP_VERSION,
        my_as: u16::try_from(local.asn).unwrap_or(AS_TRANS as u16),
        hold_time: session.hold_time,
        router_id: local.router_id,
        capabilities,
    }
}

fn open_error(sub: u8, data: Vec<u8>) -> Notification {
    Notification::new(code::OPEN, sub, data)
}

/// Checks the peer's OPEN against what we expect (RFC 4271 §6.2, RFC 6793, RFC 4760) and agrees the session.
pub fn negotiate(local: &LocalParams, session: &SessionParams, open: &Open) -> Result<Negotiated, Notification> {
    if open.version != BGP_VERSION {
        return Err(open_error(subcode::UNSUPPORTED_VERSION, u16::from(BGP_VERSION).to_be_bytes().to_vec()));
    }
    let four = open.four_octet_as();
    let peer_asn = open.asn();
    // A four-octet speaker with a two-octet AS must put the same number in My AS (RFC 6793 §3); one with a
    // four-octet AS must put AS_TRANS there.
    let my_as_consistent = match four {
        Some(a) if a > 0xffff => u32::from(open.my_as) == AS_TRANS,
        Some(a) => u32::from(open.my_as) == a,
        None => true,
    };
    if peer_asn != session.peer_asn || !my_as_consistent || peer_asn == 0 {
        return Err(open_error(subcode::BAD_PEER_AS, Vec::new()));
    }
    if matches!(open.hold_time, 1 | 2) {
        return Err(open_error(subcode::UNACCEPTABLE_HOLD_TIME, Vec::new()));
    }
    let id = open.router_id;
    // RFC 6286 lets eBGP peers share an identifier, but a peer with ours (or none) is most likely a loop or a
    // misconfiguration, and collision resolution cannot work with equal identifiers.
    if id.is_unspecified() || id == local.router_id || id.is_multicast() || id.is_broadcast() {
        return Err(open_error(subcode::BAD_BGP_IDENTIFIER, Vec::new()));
    }
    let peer_families = open.families();
    let families: Vec<AfiSafi> = session.families.iter().copied().filter(|f| peer_families.contains(f)).collect();
    if families.is_empty() {
        // RFC 5492 §3: say which of our capabilities the session could not do without.
        let mut data = Vec::new();
        for f in &session.families {
            data.extend_from_slice(&[crate::wire::CAP_MULTIPROTOCOL, 4]);
            data.extend_from_slice(&f.afi.to_be_bytes());
            data.extend_from_slice(&[0, f.safi]);
        }
        return Err(open_error(subcode::UNSUPPORTED_CAPABILITY, data));
    }
    let hold_time = session.hold_time.min(open.hold_time);
    let keepalive = match session.keepalive {
        Some(k) if hold_time > 0 => k.min(hold_time / 3).max(1),
        _ => hold_time / 3,
    };
    Ok(Negotiated {
        peer_asn,
        peer_router_id: id,
        hold_time,
        keepalive,
        families,
        four_octet_as: four.is_some(),
        route_refresh: open.has(|c| matches!(c, Capability::RouteRefresh)),
        enhanced_route_refresh: open.has(|c| matches!(c, Capability::EnhancedRouteRefresh)),
        peer_graceful_restart: if local.graceful_restart.is_some() { open.graceful_restart().cloned() } else { None },
    })
}

/// Which end opened a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Outbound,
    Inbound,
}

/// RFC 4271 §6.8: of two connections to one peer, keep the one opened by the speaker with the higher BGP
/// identifier.
pub fn collision_survivor(local_id: Ipv4Addr, peer_id: Ipv4Addr) -> Direction {
    if u32::from(local_id) < u32::from(peer_id) { Direction::Inbound } else { Direction::Outbound }
}

/// A connection's state from the moment our OPEN is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    OpenSent,
    OpenConfirm,
    Established,
}

/// What the driver must do after a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Nothing but restarting the hold timer.
    Continue,
    /// The peer's OPEN is acceptable: send KEEPALIVE, use the negotiated timers, resolve collisions.
    OpenAccepted(Box<Negotiated>),
    /// The session is up.
    Established,
    Update(Box<Update>),
    RouteRefresh(AfiSafi),
}

/// Why a connection ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Close {
    /// We send this NOTIFICATION and close.
    Send(Notification),
    /// The peer sent a NOTIFICATION.
    Received(Notification),
}

/// One connection's protocol state.
#[derive(Debug, Clone)]
pub struct Fsm {
    pub state: State,
    local: LocalParams,
    session: SessionParams,
    pub negotiated: Option<Negotiated>,
}

impl Fsm {
    /// A connection on which our OPEN has just been sent.
    pub fn new(local: LocalParams, session: SessionParams) -> Fsm {
        Fsm { state: State::OpenSent, local, session, negotiated: None }
    }

    fn unexpected(&self) -> Close {
        let sub = match self.state {
            State::OpenSent => subcode::UNEXPECTED_IN_OPENSENT,
            State::OpenConfirm => subcode::UNEXPECTED_IN_OPENCONFIRM,
            State::Established => subcode::UNEXPECTED_IN_ESTABLISHED,
        };
        Close::Send(Notification::new(code::FSM, sub, Vec::new()))
    }

    pub fn on_message(&mut self, msg: Message) -> Result<Step, Close> {
        match (self.state, msg) {
            (_, Message::Notification(n)) => Err(Close::Received(n)),
            (State::OpenSent, Message::Open(open)) => {
                let n = negotiate(&self.local, &self.session, &open).map_err(Close::Send)?;
                self.negotiated = Some(n.clone());
                self.state = State::OpenConfirm;
                Ok(Step::OpenAccepted(Box::new(n)))
            }
            (State::OpenConfirm, Message::Keepalive) => {
                self.state = State::Established;
                Ok(Step::Established)
            }
            (State::Established, Message::Keepalive) => Ok(Step::Continue),
            (State::Established, Message::Update(u)) => Ok(Step::Update(Box::new(u))),
            (State::Established, Message::RouteRefresh(f)) => {
                let negotiated = self.negotiated.as_ref().is_some_and(|n| n.route_refresh);
                // A refresh that was never negotiated, or for a family we do not carry, is ignored (RFC 2918 §4).
                if negotiated && self.negotiated.as_ref().is_some_and(|n| n.families.contains(&f)) {
                    Ok(Step::RouteRefresh(f))
                } else {
                    Ok(Step::Continue)
                }
            }
            _ => Err(self.unexpected()),
        }
    }

    /// The hold timer ran out.
    pub fn on_hold_timer_expired(&self) -> Notification {
        Notification::new(code::HOLD_TIMER, 0, Vec::new())
    }
}

/// RFC 4271 §10: timers are jittered by a random factor between 0.75 and 1 so that peers do not synchronize.
pub fn jittered(base: Duration) -> Duration {
    base.mul_f64(rand::random_range(0.75..=1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local() -> LocalParams {
        LocalParams { asn: 64_512, router_id: Ipv4Addr::new(192, 0, 2, 1), graceful_restart: None, restarting: false }
    }

    fn session() -> SessionParams {
        SessionParams {
            peer_asn: 64_513,
            hold_time: 90,
            keepalive: None,
            families: vec![AfiSafi::IPV4_UNICAST, AfiSafi::IPV6_UNICAST],
        }
    }

    fn peer_open() -> Open {
        Open {
            version: 4,
            my_as: 64_513,
            hold_time: 30,
            router_id: Ipv4Addr::new(192, 0, 2, 2),
            capabilities: vec![
                Capability::Multiprotocol(AfiSafi::IPV4_UNICAST),
                Capability::FourOctetAs(64_513),
                Capability::RouteRefresh,
            ],
        }
    }

    fn open_sub(r: Result<Negotiated, Notification>) -> (u8, u8) {
        let n = r.unwrap_err();
        (n.code, n.subcode)
    }

    #[test]
    fn negotiation_takes_the_smaller_hold_time_and_common_families() {
        let n = negotiate(&local(), &session(), &peer_open()).unwrap();
        assert_eq!((n.hold_time, n.keepalive), (30, 10));
        assert_eq!(n.families, [AfiSafi::IPV4_UNICAST]);
        assert!(n.four_octet_as && n.route_refresh && !n.enhanced_route_refresh);
        assert_eq!(n.peer_graceful_restart, None);
    }

    #[test]
    fn hold_time_zero_means_no_keepalives() {
        let mut o = peer_open();
        o.hold_time = 0;
        let mut s = session();
        s.keepalive = Some(5);
        let n = negotiate(&local(), &s, &o).unwrap();
        assert_eq!((n.hold_time, n.keepalive), (0, 0));
    }

    #[test]
    fn bad_opens_get_the_right_subcode() {
        let mut o = peer_open();
        o.capabilities.retain(|c| !matches!(c, Capability::FourOctetAs(_)));
        o.my_as = 64_999;
        assert_eq!(open_sub(negotiate(&local(), &session(), &o)), (2, 2));
        let mut o = peer_open();
        o.hold_time = 2;
        assert_eq!(open_sub(negotiate(&local(), &session(), &o)), (2, 6));
        let mut o = peer_open();
        o.router_id = local().router_id;
        assert_eq!(open_sub(negotiate(&local(), &session(), &o)), (2, 3));
        let mut o = peer_open();
        o.router_id = Ipv4Addr::UNSPECIFIED;
        assert_eq!(open_sub(negotiate(&local(), &session(), &o)), (2, 3));
        let mut o = peer_open();
        o.capabilities[0] = Capability::Multiprotocol(AfiSafi { afi: 1, safi: 128 });
        let n = negotiate(&local(), &session(), &o).unwrap_err();
        assert_eq!((n.code, n.subcode), (2, 7));
        assert_eq!(n.data.len(), 12, "both of our families are named");
    }

    #[test]
    fn four_octet_asns_travel_as_as_trans() {
        let mut l = local();
        l.asn = 4_200_000_000;
        let o = build_open(&l, &session());
        assert_eq!(o.my_as, 23_456);
        assert_eq!(o.asn(), 4_200_000_000);
        let mut s = session();
        s.peer_asn = 4_200_000_001;
        let mut p = peer_open();
        p.capabilities[1] = Capability::FourOctetAs(4_200_000_001);
        assert_eq!(open_sub(negotiate(&l, &s, &p)), (2, 2), "My AS must be AS_TRANS");
        p.my_as = 23_456;
        assert_eq!(negotiate(&l, &s, &p).unwrap().peer_asn, 4_200_000_001);
    }

    #[test]
    fn a_peer_without_capabilities_speaks_ipv4_unicast() {
        let mut o = peer_open();
        o.capabilities.clear();
        let n = negotiate(&local(), &session(), &o).unwrap();
        assert_eq!(n.families, [AfiSafi::IPV4_UNICAST]);
        assert!(!n.four_octet_as);
    }

    #[test]
    fn graceful_restart_flags_follow_the_restart() {
        let mut l = local();
        l.graceful_restart = Some(120);
        let o = build_open(&l, &session());
        let gr = o.graceful_restart().unwrap();
        assert!(!gr.restarting && gr.families.iter().all(|(_, f)| !f));
        l.restarting = true;
        let o = build_open(&l, &session());
        let gr = o.graceful_restart().unwrap();
        assert!(gr.restarting && gr.restart_time == 120 && gr.families.iter().all(|(_, f)| *f));
    }

    #[test]
    fn the_fsm_walks_to_established_and_rejects_out_of_order_messages() {
        let mut f = Fsm::new(local(), session());
        assert_eq!(f.on_message(Message::Keepalive), Err(Close::Send(Notification::new(5, 1, vec![]))));
        let mut f = Fsm::new(local(), session());
        assert!(matches!(f.on_message(Message::Open(peer_open())), Ok(Step::OpenAccepted(_))));
        assert_eq!(f.state, State::OpenConfirm);
        let mut g = f.clone();
        assert_eq!(g.on_message(Message::Update(Update::default())), Err(Close::Send(Notification::new(5, 2, vec![]))));
        assert_eq!(f.on_message(Message::Keepalive), Ok(Step::Established));
        assert_eq!(f.state, State::Established);
        assert!(matches!(f.on_message(Message::Update(Update::default())), Ok(Step::Update(_))));
        assert_eq!(
            f.on_message(Message::RouteRefresh(AfiSafi::IPV4_UNICAST)),
            Ok(Step::RouteRefresh(AfiSafi::IPV4_UNICAST))
        );
        assert_eq!(f.on_message(Message::RouteRefresh(AfiSafi::IPV6_UNICAST)), Ok(Step::Continue));
        assert_eq!(f.on_message(Message::Open(peer_open())), Err(Close::Send(Notification::new(5, 3, vec![]))));
        let cease = Notification::new(6, 2, vec![]);
        assert_eq!(f.on_message(Message::Notification(cease.clone())), Err(Close::Received(cease)));
        assert_eq!(f.on_hold_timer_expired(), Notification::new(4, 0, vec![]));
    }

    #[test]
    fn a_bad_open_in_opensent_closes_with_its_notification() {
        let mut f = Fsm::new(local(), session());
        let mut o = peer_open();
        o.my_as = 1;
        o.capabilities.clear();
        assert_eq!(f.on_message(Message::Open(o)), Err(Close::Send(Notification::new(2, 2, vec![]))));
    }

    #[test]
    fn collisions_keep_the_higher_identifiers_connection() {
        let low = Ipv4Addr::new(10, 0, 0, 1);
        let high = Ipv4Addr::new(10, 0, 0, 2);
        assert_eq!(collision_survivor(low, high), Direction::Inbound);
        assert_eq!(collision_survivor(high, low), Direction::Outbound);
        // Compared as numbers, not as text.
        assert_eq!(collision_survivor(Ipv4Addr::new(9, 0, 0, 0), Ipv4Addr::new(10, 0, 0, 0)), Direction::Inbound);
    }

    #[test]
    fn jitter_stays_between_three_quarters_and_all() {
        for _ in 0..1000 {
            let d = jittered(Duration::from_secs(40));
            assert!(d >= Duration::from_secs(30) && d <= Duration::from_secs(40), "{d:?}");
        }
    }
}
