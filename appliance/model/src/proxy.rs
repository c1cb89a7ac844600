//! How the L4 proxy serves a service: the balancing algorithm, session affinity, timeouts and limits. Static
//! services set it in their `proxy` field; cluster Services get the defaults.

use crate::validation::Collector;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// How a new connection (or UDP flow) picks its backend.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    /// Each backend in turn, ignoring weights.
    RoundRobin,
    /// In proportion to the weights, interleaved (nginx's smooth weighted round robin).
    #[default]
    WeightedRoundRobin,
    /// The backend with the fewest active connections for its weight.
    LeastConnections,
    /// Two backends drawn at random (by weight); the less loaded one.
    PowerOfTwo,
    /// Maglev consistent hashing on the client address: appliances behind ECMP pick the same backend for a
    /// client, and a backend change moves as few clients as possible.
    Maglev,
}

/// Whether a client keeps its backend.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Affinity {
    #[default]
    None,
    /// The same client address goes to the same backend (Kubernetes' `sessionAffinity: ClientIP`).
    ClientIp,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProxyPolicy {
    #[serde(default)]
    pub algorithm: Algorithm,
    #[serde(default)]
    pub affinity: Affinity,
    /// Seconds a client keeps its backend after its last new connection (1 to 86400).
    #[serde(default = "default_affinity_timeout")]
    pub affinity_timeout: u32,
    /// Milliseconds to connect to a backend (1 to 600000).
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_ms: u32,
    /// Seconds a TCP connection may stay silent both ways before it is closed (1 to 604800).
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: u32,
    /// Seconds a UDP flow may stay silent before it is forgotten (1 to 3600).
    #[serde(default = "default_udp_idle_timeout")]
    pub udp_idle_timeout: u32,
    /// Connections held at once per VIP port; over it new ones are refused at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    /// Connections held at once per backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections_per_backend: Option<u32>,
    /// UDP flows held at once per VIP port (default 65536).
    #[serde(default = "default_udp_sessions")]
    pub max_udp_sessions: u32,
}

impl Default for ProxyPolicy {
    fn default() -> Self {
        ProxyPolicy {
            algorithm: Algorithm::default(),
            affinity: Affinity::default(),
            affinity_timeout: default_affinity_timeout(),
            connect_timeout_ms: default_connect_timeout(),
            idle_timeout: default_idle_timeout(),
            udp_idle_timeout: default_udp_idle_timeout(),
            max_connections: None,
            max_connections_per_backend: None,
            max_udp_sessions: default_udp_sessions(),
        }
    }
}

fn default_affinity_timeout() -> u32 {
    10_800
}
fn default_connect_timeout() -> u32 {
    5_000
}
fn default_idle_timeout() -> u32 {
    3_600
}
fn default_udp_idle_timeout() -> u32 {
    30
}
fn default_udp_sessions() -> u32 {
    65_536
}

impl ProxyPolicy {
    pub fn validate(&self, c: &mut Collector<'_>) {
        if !(1..=86_400).contains(&self.affinity_timeout) {
            c.error("affinity_timeout", "must be 1 to 86400 seconds");
        }
        if !(1..=600_000).contains(&self.connect_timeout_ms) {
            c.error("connect_timeout_ms", "must be 1 to 600000 milliseconds");
        }
        if !(1..=604_800).contains(&self.idle_timeout) {
            c.error("idle_timeout", "must be 1 to 604800 seconds");
        }
        if !(1..=3_600).contains(&self.udp_idle_timeout) {
            c.error("udp_idle_timeout", "must be 1 to 3600 seconds");
        }
        if self.max_connections == Some(0) {
            c.error("max_connections", "must be at least 1; leave it out for no limit");
        }
        if self.max_connections_per_backend == Some(0) {
            c.error("max_connections_per_backend", "must be at least 1; leave it out for no limit");
        }
        if self.max_udp_sessions == 0 {
            c.error("max_udp_sessions", "must be at least 1");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_bad_values() {
        let p: ProxyPolicy =
            serde_json::from_value(serde_json::json!({"algorithm": "maglev"})).unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!(p, ProxyPolicy { algorithm: Algorithm::Maglev, ..ProxyPolicy::default() });
        let bad = ProxyPolicy {
            affinity_timeout: 0,
            connect_timeout_ms: 0,
            idle_timeout: 0,
            udp_idle_timeout: 4_000,
            max_connections: Some(0),
            max_connections_per_backend: Some(0),
            max_udp_sessions: 0,
            ..ProxyPolicy::default()
        };
        let mut errs = Vec::new();
        bad.validate(&mut Collector::new(&mut errs));
        assert_eq!(errs.len(), 7, "{errs:?}");
    }
}
