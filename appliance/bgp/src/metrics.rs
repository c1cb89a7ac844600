//! The speaker's Prometheus metrics (`portico_bgp_*`), through the `metrics` facade.

use model::bgp::SessionState;

pub const SESSIONS: &str = "portico_bgp_sessions";
pub const MESSAGES_SENT: &str = "portico_bgp_messages_sent_total";
pub const MESSAGES_RECEIVED: &str = "portico_bgp_messages_received_total";
pub const PREFIXES_ADVERTISED: &str = "portico_bgp_prefixes_advertised";
pub const PREFIXES_RECEIVED: &str = "portico_bgp_prefixes_received";
pub const FLAPS: &str = "portico_bgp_session_flaps_total";

pub fn state_label(s: SessionState) -> &'static str {
    match s {
        SessionState::Idle => "idle",
        SessionState::Connect => "connect",
        SessionState::Active => "active",
        SessionState::OpenSent => "opensent",
        SessionState::OpenConfirm => "openconfirm",
        SessionState::Established => "established",
        SessionState::Disabled => "disabled",
    }
}

pub const ALL_STATES: [SessionState; 7] = [
    SessionState::Idle,
    SessionState::Connect,
    SessionState::Active,
    SessionState::OpenSent,
    SessionState::OpenConfirm,
    SessionState::Established,
    SessionState::Disabled,
];

/// Sessions by state, recomputed from every peer's state whenever one changes.
pub fn publish_sessions(states: impl Iterator<Item = SessionState>) {
    let mut counts = [0u32; 7];
    for s in states {
        if let Some(i) = ALL_STATES.iter().position(|x| *x == s) {
            counts[i] += 1;
        }
    }
    for (s, n) in ALL_STATES.iter().zip(counts) {
        metrics::gauge!(SESSIONS, "state" => state_label(*s)).set(f64::from(n));
    }
}

pub fn message_sent(peer: &str, kind: &'static str) {
    metrics::counter!(MESSAGES_SENT, "peer" => peer.to_owned(), "type" => kind).increment(1);
}

pub fn message_received(peer: &str, kind: &'static str) {
    metrics::counter!(MESSAGES_RECEIVED, "peer" => peer.to_owned(), "type" => kind).increment(1);
}

pub fn prefixes(peer: &str, advertised: usize, received: usize) {
    metrics::gauge!(PREFIXES_ADVERTISED, "peer" => peer.to_owned()).set(advertised as f64);
    metrics::gauge!(PREFIXES_RECEIVED, "peer" => peer.to_owned()).set(received as f64);
}

pub fn flap(peer: &str) {
    metrics::counter!(FLAPS, "peer" => peer.to_owned()).increment(1);
}
