//! How the L4 proxy serves a service: the balancing algorithm, session affinity, timeouts, limits, health checks,
//! outlier detection and the PROXY protocol. Static services set it in their `proxy` field; cluster Services
//! take `sessionAffinity` from their spec and the rest from the `portico.io/proxy` annotation (the same JSON).

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
    /// Seconds the established connections of a removed backend (or VIP port) may run on before they are
    /// reset (0 to 86400; 0 resets them at once).
    #[serde(default = "default_drain_timeout")]
    pub drain_timeout: u32,
    /// Active health checks; without them a backend counts as healthy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
    /// Passive outlier detection: consecutive connect failures eject a backend for a while.
    #[serde(default)]
    pub outlier: OutlierDetection,
    /// PROXY protocol towards the backends and on the listeners (TCP ports only).
    #[serde(default)]
    pub proxy_protocol: ProxyProtocol,
}

/// How a backend is checked.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CheckKind {
    /// A TCP connect that succeeds.
    #[default]
    Tcp,
    /// An HTTP/1.1 GET of `path` answered with a status in `expected_status`.
    Http,
}

/// Active health checks of every backend of a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    #[serde(default)]
    pub kind: CheckKind,
    /// The port checked on every backend; by default the backend's port for the service's first port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// HTTP: the path requested (starts with `/`).
    #[serde(default = "default_check_path")]
    pub path: String,
    /// HTTP: the `Host` header; by default the backend's address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// HTTP: the statuses that pass, `"200"` or a range `"200-399"` (the default).
    #[serde(default = "default_expected_status")]
    pub expected_status: String,
    /// Milliseconds between checks of one backend (100 to 3600000).
    #[serde(default = "default_check_interval")]
    pub interval_ms: u32,
    /// Milliseconds a check may take (at most `interval_ms`).
    #[serde(default = "default_check_timeout")]
    pub timeout_ms: u32,
    /// Consecutive passes that make an unhealthy backend healthy (1 to 100).
    #[serde(default = "default_rise")]
    pub rise: u32,
    /// Consecutive failures that make a healthy backend unhealthy (1 to 100).
    #[serde(default = "default_fall")]
    pub fall: u32,
}

impl Default for HealthCheck {
    fn default() -> Self {
        HealthCheck {
            kind: CheckKind::default(),
            port: None,
            path: default_check_path(),
            host: None,
            expected_status: default_expected_status(),
            interval_ms: default_check_interval(),
            timeout_ms: default_check_timeout(),
            rise: default_rise(),
            fall: default_fall(),
        }
    }
}

impl HealthCheck {
    /// The statuses that pass, as an inclusive range; `None` if `expected_status` does not parse.
    pub fn expected_range(&self) -> Option<(u16, u16)> {
        let parse = |t: &str| t.trim().parse::<u16>().ok().filter(|s| (100..=599).contains(s));
        match self.expected_status.split_once('-') {
            Some((lo, hi)) => Some((parse(lo)?, parse(hi)?)).filter(|(lo, hi)| lo <= hi),
            None => parse(&self.expected_status).map(|s| (s, s)),
        }
    }

    fn validate(&self, c: &mut Collector<'_>) {
        if self.port == Some(0) {
            c.error("port", "must be 1 to 65535");
        }
        if !self.path.starts_with('/') || self.path.chars().any(|ch| ch.is_ascii_control() || ch == ' ') {
            c.error("path", "must start with '/' and hold no spaces or control characters");
        }
        if let Some(host) = &self.host
            && (host.is_empty() || host.chars().any(|ch| ch.is_ascii_control() || ch == ' '))
        {
            c.error("host", "must be a host name without spaces or control characters");
        }
        if self.expected_range().is_none() {
            c.error("expected_status", "must be a status like \"200\" or a range like \"200-399\" (100 to 599)");
        }
        if !(100..=3_600_000).contains(&self.interval_ms) {
            c.error("interval_ms", "must be 100 to 3600000 milliseconds");
        }
        if self.timeout_ms == 0 || self.timeout_ms > self.interval_ms {
            c.error("timeout_ms", "must be at least 1 and at most interval_ms");
        }
        if !(1..=100).contains(&self.rise) {
            c.error("rise", "must be 1 to 100");
        }
        if !(1..=100).contains(&self.fall) {
            c.error("fall", "must be 1 to 100");
        }
    }
}

/// Passive outlier detection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OutlierDetection {
    /// Consecutive failed connects that eject a backend (0 turns detection off; default 5).
    #[serde(default = "default_outlier_failures")]
    pub consecutive_failures: u32,
    /// Milliseconds of the first ejection; each ejection in a row doubles it (1 to 3600000).
    #[serde(default = "default_base_ejection")]
    pub base_ejection_ms: u32,
    /// Milliseconds an ejection lasts at most (at least `base_ejection_ms`).
    #[serde(default = "default_max_ejection")]
    pub max_ejection_ms: u32,
}

impl Default for OutlierDetection {
    fn default() -> Self {
        OutlierDetection {
            consecutive_failures: default_outlier_failures(),
            base_ejection_ms: default_base_ejection(),
            max_ejection_ms: default_max_ejection(),
        }
    }
}

impl OutlierDetection {
    fn validate(&self, c: &mut Collector<'_>) {
        if !(1..=3_600_000).contains(&self.base_ejection_ms) {
            c.error("base_ejection_ms", "must be 1 to 3600000 milliseconds");
        }
        if self.max_ejection_ms < self.base_ejection_ms || self.max_ejection_ms > 86_400_000 {
            c.error("max_ejection_ms", "must be at least base_ejection_ms and at most 86400000 milliseconds");
        }
    }
}

/// A PROXY protocol version.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ProxyProtocolVersion {
    #[default]
    None,
    /// The text header.
    V1,
    /// The binary header.
    V2,
}

/// PROXY protocol on a service's TCP ports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProxyProtocol {
    /// Sent to every backend before the client's bytes, carrying the client's address.
    #[serde(default)]
    pub send: ProxyProtocolVersion,
    /// The listener expects a header (v1 or v2) from a balancer in front; connections without one are reset.
    #[serde(default)]
    pub accept: bool,
}

/// Settings of the proxy as a whole.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProxySettings {
    /// The L4 I/O engine; read at start (a change applies at the next start, as listeners would be rebound).
    #[serde(default)]
    pub l4_engine: L4Engine,
}

/// Which I/O engine moves the L4 proxy's bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum L4Engine {
    /// The engine the benchmark measured better (epoll today: see docs/proxy.md).
    #[default]
    Auto,
    IoUring,
    Epoll,
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
            drain_timeout: default_drain_timeout(),
            health_check: None,
            outlier: OutlierDetection::default(),
            proxy_protocol: ProxyProtocol::default(),
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
fn default_drain_timeout() -> u32 {
    30
}
fn default_check_path() -> String {
    "/".into()
}
fn default_expected_status() -> String {
    "200-399".into()
}
fn default_check_interval() -> u32 {
    5_000
}
fn default_check_timeout() -> u32 {
    2_000
}
fn default_rise() -> u32 {
    2
}
fn default_fall() -> u32 {
    3
}
fn default_outlier_failures() -> u32 {
    5
}
fn default_base_ejection() -> u32 {
    30_000
}
fn default_max_ejection() -> u32 {
    300_000
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
        if self.drain_timeout > 86_400 {
            c.error("drain_timeout", "must be 0 to 86400 seconds");
        }
        if let Some(check) = &self.health_check {
            check.validate(&mut c.at("health_check"));
        }
        self.outlier.validate(&mut c.at("outlier"));
    }
}

/// What `GET /api/v1/proxy/status` reports: the engine and every listener with its backends.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, ToSchema)]
pub struct ProxyStatus {
    /// `io_uring` or `epoll`.
    pub engine: String,
    /// Why the engine is not the configured one, if it is not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub engine_note: Option<String>,
    pub listeners: Vec<ListenerStatus>,
}

/// One VIP port.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, ToSchema)]
pub struct ListenerStatus {
    /// `VIP:port`
    pub address: String,
    pub protocol: crate::config::Protocol,
    pub service: String,
    pub algorithm: Algorithm,
    /// Only terminating (still serving) backends are left to take new flows.
    pub fallback: bool,
    /// TCP: connections held now; UDP: sessions held now.
    pub active: u64,
    /// TCP: connections accepted; UDP: sessions opened.
    pub total: u64,
    pub bytes_to_backend: u64,
    pub bytes_to_client: u64,
    /// New connections (or datagrams) refused or dropped, by reason: `limit` (max_connections or
    /// max_udp_sessions), `backend_limit`, `no_backend`, `proxy_header` (PROXY protocol expected, none came).
    pub refused: std::collections::BTreeMap<String, u64>,
    /// TCP: failed connects to backends.
    pub connect_errors: u64,
    /// TCP: failed accepts (out of descriptors, mostly).
    pub accept_errors: u64,
    /// TCP: relays ended by a reset or an I/O error.
    pub relay_errors: u64,
    /// TCP: connections closed by the idle timeout; UDP: sessions expired.
    pub idle_timeouts: u64,
    /// TCP: connections reset by a drain timeout; UDP: sessions ended because their backend left the set.
    pub cancelled: u64,
    /// UDP: datagrams relayed each way.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub datagrams: Option<DatagramCounts>,
    pub backends: Vec<BackendStatus>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, ToSchema)]
pub struct DatagramCounts {
    pub to_backend: u64,
    pub to_client: u64,
    pub send_errors: u64,
}

/// One backend of a listener.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, ToSchema)]
pub struct BackendStatus {
    /// `IP:port`
    pub address: String,
    pub weight: u32,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    /// Takes new connections now (eligible and not ejected).
    pub taking_new: bool,
    pub health: crate::health::BackendHealth,
    /// Why the last health check failed, while it is the latest result.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health_detail: Option<String>,
    /// Ejected by outlier detection now.
    pub ejected: bool,
    pub ejections: u64,
    /// Left the set (listed while it still has connections), or no longer ready: its connections run until
    /// they close or the drain timeout passes.
    pub draining: bool,
    pub active: u64,
    pub total: u64,
    pub connect_errors: u64,
    pub bytes_to_backend: u64,
    pub bytes_to_client: u64,
}

impl ProxyPolicy {
    /// The defaults, shared by every service that has them (most cluster Services).
    pub fn shared_default() -> std::sync::Arc<ProxyPolicy> {
        static DEFAULT: std::sync::LazyLock<std::sync::Arc<ProxyPolicy>> =
            std::sync::LazyLock::new(|| std::sync::Arc::new(ProxyPolicy::default()));
        DEFAULT.clone()
    }

    /// Reads the `portico.io/proxy` annotation of a cluster Service: the same JSON object as a static service's
    /// `proxy` field, checked the same way. The error names every bad field.
    pub fn from_json(text: &str) -> Result<ProxyPolicy, String> {
        let policy: ProxyPolicy = serde_json::from_str(text).map_err(|e| e.to_string())?;
        let mut errors = Vec::new();
        policy.validate(&mut Collector::new(&mut errors));
        if errors.is_empty() { Ok(policy) } else { Err(crate::validation::ValidationErrors(errors).to_string()) }
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

    #[test]
    fn health_checks_outliers_and_proxy_protocol() {
        let p = ProxyPolicy::from_json(
            r#"{"health_check": {"kind": "http", "path": "/healthz", "expected_status": "204"},
                "proxy_protocol": {"send": "v2", "accept": true}, "drain_timeout": 0}"#,
        )
        .unwrap_or_else(|e| unreachable!("{e}"));
        let check = p.health_check.clone().unwrap_or_default();
        assert_eq!(
            (check.kind, check.expected_range(), check.rise, check.fall),
            (CheckKind::Http, Some((204, 204)), 2, 3)
        );
        assert_eq!(p.proxy_protocol, ProxyProtocol { send: ProxyProtocolVersion::V2, accept: true });
        assert_eq!(p.outlier, OutlierDetection::default());
        assert_eq!(HealthCheck::default().expected_range(), Some((200, 399)));

        let err = ProxyPolicy::from_json(
            r#"{"health_check": {"path": "x", "expected_status": "399-200", "interval_ms": 50, "timeout_ms": 60,
                "rise": 0, "fall": 101, "port": 0},
                "outlier": {"base_ejection_ms": 10, "max_ejection_ms": 5}, "drain_timeout": 90000}"#,
        )
        .err()
        .unwrap_or_default();
        for field in [
            "health_check.path",
            "health_check.expected_status",
            "health_check.interval_ms",
            "health_check.timeout_ms",
            "health_check.rise",
            "health_check.fall",
            "health_check.port",
            "outlier.max_ejection_ms",
            "drain_timeout",
        ] {
            assert!(err.contains(&format!("{field}: ")), "{field} missing in {err}");
        }
        assert!(ProxyPolicy::from_json(r#"{"algoritm": "maglev"}"#).is_err_and(|e| e.contains("algoritm")));
        assert!(ProxyPolicy::from_json("not json").is_err());
    }
}
