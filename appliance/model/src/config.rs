//! The configuration people own: pools, static services and appliance settings. Every object kind is stored
//! and versioned the same way (see [`Kind`]); later kinds are added to [`Config`] and [`Kind`] alike.

use crate::addr::{AddrKey, Family, IpRange};
pub use crate::bgp::{BgpPeer, BgpSettings};
pub use crate::cluster::{Cluster, GlobalMember, GlobalService, Secret};
pub use crate::l2::L2Advertisement;
use crate::names::{dns_label_problem, hostname_problem};
use crate::validation::{Collector, FieldError, ValidationErrors};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use utoipa::ToSchema;

/// The whole configuration document (`GET/PUT /api/v1/config`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub pools: Vec<Pool>,
    #[serde(default)]
    pub services: Vec<Service>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub clusters: Vec<Cluster>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub global_services: Vec<GlobalService>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bgp_peers: Vec<BgpPeer>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub l2_advertisements: Vec<L2Advertisement>,
    #[serde(default)]
    pub settings: Settings,
}

/// The kinds of configuration objects. Each is stored as its own rows in the history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Pool,
    Service,
    Settings,
    Cluster,
    GlobalService,
    BgpPeer,
    L2Advertisement,
}

impl Kind {
    pub const ALL: [Kind; 7] = [
        Kind::Pool,
        Kind::Service,
        Kind::Settings,
        Kind::Cluster,
        Kind::GlobalService,
        Kind::BgpPeer,
        Kind::L2Advertisement,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Pool => "pool",
            Kind::Service => "service",
            Kind::Settings => "settings",
            Kind::Cluster => "cluster",
            Kind::GlobalService => "global_service",
            Kind::BgpPeer => "bgp_peer",
            Kind::L2Advertisement => "l2_advertisement",
        }
    }

    /// Top-level fields of this kind that hold credentials: sealed at rest, never shown, never exported
    /// unless asked for.
    pub fn secret_fields(self) -> &'static [&'static str] {
        match self {
            Kind::Cluster => &["kubeconfig", "token"],
            Kind::BgpPeer => &["password"],
            _ => &[],
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The one name under which the settings singleton is stored.
pub const SETTINGS_NAME: &str = "settings";

/// A pool of addresses that VIPs are allocated from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Pool {
    /// DNS label, unique among pools.
    pub name: String,
    /// CIDRs (`10.0.0.0/24`), ranges (`10.0.0.10-10.0.0.20`) or single addresses; IPv4 and IPv6.
    pub addresses: Vec<String>,
    /// Whether services that name no pool may get addresses from this pool.
    #[serde(default = "yes")]
    pub auto_assign: bool,
    /// Never hand out IPv4 addresses ending in .0 or .255.
    #[serde(default)]
    pub avoid_buggy_ips: bool,
    /// Which cluster services may use this pool (used by cluster sync). Empty lists match everything.
    #[serde(default)]
    pub selectors: PoolSelectors,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PoolSelectors {
    #[serde(default)]
    pub clusters: Vec<String>,
    #[serde(default)]
    pub namespaces: Vec<String>,
    /// Labels a Service must carry (all of them) to use this pool.
    #[serde(default)]
    pub service_labels: BTreeMap<String, String>,
}

fn yes() -> bool {
    true
}

/// A static service: a VIP with ports, in front of backends that are not in Kubernetes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Service {
    /// DNS label, unique among services.
    pub name: String,
    /// Allocate the VIP from this pool (which may have `auto_assign: false`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    /// Use exactly these VIPs; each must lie in a pool and be free.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<String>,
    pub ports: Vec<ServicePort>,
    #[serde(default)]
    pub backends: Vec<Backend>,
    #[serde(default)]
    pub announce: Announce,
    /// How the L4 proxy serves it (algorithm, affinity, timeouts, limits).
    #[serde(default)]
    pub proxy: crate::proxy::ProxyPolicy,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ServicePort {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub port: u16,
    #[serde(default)]
    pub protocol: Protocol,
    /// Port on the backends; defaults to `port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_port: Option<u16>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Backend {
    /// An IP address (the service's `target_port` applies) or `ip:port` / `[ipv6]:port`.
    pub address: String,
    /// Relative weight, 1 to 256; defaults to 1. 0 drains the backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
}

pub const MAX_WEIGHT: u32 = 256;

/// A parsed backend address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BackendAddress {
    pub ip: IpAddr,
    pub port: Option<u16>,
}

impl Backend {
    pub fn parse_address(&self) -> Option<BackendAddress> {
        parse_backend_address(&self.address)
    }
}

pub fn parse_backend_address(s: &str) -> Option<BackendAddress> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(BackendAddress { ip, port: None });
    }
    let sa: SocketAddr = s.parse().ok()?;
    Some(BackendAddress { ip: sa.ip(), port: Some(sa.port()) })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Announce {
    #[serde(default = "yes")]
    pub bgp: bool,
    #[serde(default = "yes")]
    pub l2: bool,
}

impl Default for Announce {
    fn default() -> Self {
        Announce { bgp: true, l2: true }
    }
}

/// Appliance-wide settings (a singleton).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    #[serde(default = "default_hostname")]
    pub hostname: String,
    #[serde(default)]
    pub log_level: LogLevel,
    #[serde(default)]
    pub admin: AdminSettings,
    /// The BGP speaker; `null` (the default) means BGP is off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bgp: Option<BgpSettings>,
    /// The proxy as a whole (its I/O engine).
    #[serde(default)]
    pub proxy: crate::proxy::ProxySettings,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            hostname: default_hostname(),
            log_level: LogLevel::default(),
            admin: AdminSettings::default(),
            bgp: None,
            proxy: Default::default(),
        }
    }
}

fn default_hostname() -> String {
    "portico".into()
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Error,
    Warn,
    #[default]
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }
}

/// The admin API/UI listeners and session policy. Listener addresses take effect at the next start;
/// command-line flags and environment variables override them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AdminSettings {
    /// Plain-HTTP listener (keep it on loopback); `null` disables it.
    #[serde(default = "default_admin_http")]
    pub http: Option<String>,
    /// HTTPS listener; `null` disables it.
    #[serde(default = "default_admin_https")]
    pub https: Option<String>,
    /// How long a login session lasts, in minutes (5 to 43200).
    #[serde(default = "default_session_minutes")]
    pub session_minutes: u32,
    /// Failed logins per user or per client, within `login_window_seconds`, before logins are refused with 429.
    #[serde(default = "default_login_failures")]
    pub max_login_failures: u32,
    #[serde(default = "default_login_window")]
    pub login_window_seconds: u32,
}

impl Default for AdminSettings {
    fn default() -> Self {
        AdminSettings {
            http: default_admin_http(),
            https: default_admin_https(),
            session_minutes: default_session_minutes(),
            max_login_failures: default_login_failures(),
            login_window_seconds: default_login_window(),
        }
    }
}

fn default_admin_http() -> Option<String> {
    Some("127.0.0.1:8080".into())
}
fn default_admin_https() -> Option<String> {
    Some("0.0.0.0:8443".into())
}
fn default_session_minutes() -> u32 {
    720
}
fn default_login_failures() -> u32 {
    5
}
fn default_login_window() -> u32 {
    300
}

impl Pool {
    /// A pool with the defaults of the API (auto-assign, no selectors), for code that builds configurations.
    pub fn new(name: &str, addresses: &[&str]) -> Pool {
        Pool {
            name: name.into(),
            addresses: addresses.iter().map(|a| a.to_string()).collect(),
            auto_assign: true,
            avoid_buggy_ips: false,
            selectors: PoolSelectors::default(),
        }
    }

    /// The parsed ranges; call after validation (bad entries are skipped).
    pub fn ranges(&self) -> Vec<IpRange> {
        self.addresses.iter().filter_map(|a| IpRange::parse(a).ok()).collect()
    }

    pub fn validate(&self, c: &mut Collector<'_>) {
        if let Some(p) = dns_label_problem(&self.name) {
            c.error("name", p);
        }
        if self.addresses.is_empty() {
            c.error("addresses", "must list at least one CIDR, range or address");
        }
        let mut parsed: Vec<(usize, IpRange)> = Vec::new();
        for (i, a) in self.addresses.iter().enumerate() {
            match IpRange::parse(a) {
                Ok(r) => parsed.push((i, r)),
                Err(e) => c.error(&format!("addresses[{i}]"), e.to_string()),
            }
        }
        for (x, (i, a)) in parsed.iter().enumerate() {
            for (j, b) in parsed.iter().skip(x + 1) {
                if a.overlaps(b) {
                    c.error(&format!("addresses[{j}]"), format!("overlaps addresses[{i}] ({a}) of the same pool"));
                }
            }
        }
        for (i, ns) in self.selectors.namespaces.iter().enumerate() {
            if let Some(p) = dns_label_problem(ns) {
                c.error(&format!("selectors.namespaces[{i}]"), p);
            }
        }
        for (i, cl) in self.selectors.clusters.iter().enumerate() {
            if let Some(p) = dns_label_problem(cl) {
                c.error(&format!("selectors.clusters[{i}]"), p);
            }
        }
        for key in self.selectors.service_labels.keys() {
            if key.is_empty() || key.len() > 317 {
                c.error("selectors.service_labels", format!("label key '{key}' must be 1 to 317 characters"));
            }
        }
    }
}

impl Service {
    pub fn validate(&self, c: &mut Collector<'_>) {
        if let Some(p) = dns_label_problem(&self.name) {
            c.error("name", p);
        }
        if let Some(pool) = &self.pool {
            if let Some(p) = dns_label_problem(pool) {
                c.error("pool", p);
            }
            if !self.addresses.is_empty() {
                c.error("addresses", "give either `pool` or explicit `addresses`, not both");
            }
        }
        let mut seen_vips = BTreeSet::new();
        for (i, a) in self.addresses.iter().enumerate() {
            match a.parse::<IpAddr>() {
                Ok(ip) => {
                    if !seen_vips.insert(ip) {
                        c.error(&format!("addresses[{i}]"), format!("{ip} is listed twice"));
                    }
                }
                Err(_) => c.error(&format!("addresses[{i}]"), format!("'{a}' is not an IP address")),
            }
        }
        if self.ports.is_empty() {
            c.error("ports", "must list at least one port");
        }
        let mut seen_ports = HashMap::new();
        let mut seen_names = HashMap::new();
        for (i, p) in self.ports.iter().enumerate() {
            // Field paths are only formatted for an error: validation runs on every object at every write.
            let f = |field: &str| format!("ports[{i}].{field}");
            if p.port == 0 {
                c.error(&f("port"), "must be 1 to 65535");
            } else if let Some(j) = seen_ports.insert((p.port, p.protocol), i) {
                c.error(&f("port"), format!("{}/{} is already used by ports[{j}]", p.port, p.protocol));
            }
            if p.target_port == Some(0) {
                c.error(&f("target_port"), "must be 1 to 65535");
            }
            if let Some(name) = &p.name {
                if let Some(problem) = dns_label_problem(name) {
                    c.error(&f("name"), problem);
                } else if let Some(j) = seen_names.insert(name.as_str(), i) {
                    c.error(&f("name"), format!("'{name}' is already used by ports[{j}]"));
                }
            }
        }
        if self.ports.len() > 1 && self.ports.iter().any(|p| p.name.is_none()) {
            c.error("ports", "every port needs a `name` when a service has more than one");
        }
        let mut seen_backends = HashMap::with_capacity(self.backends.len());
        for (i, b) in self.backends.iter().enumerate() {
            let f = |field: &str| format!("backends[{i}].{field}");
            match b.parse_address() {
                None => c.error(&f("address"), format!("'{}' is not an IP address or ip:port", b.address)),
                Some(addr) => {
                    if addr.port == Some(0) {
                        c.error(&f("address"), "port must be 1 to 65535");
                    }
                    if addr.ip.is_unspecified() || addr.ip.is_multicast() {
                        c.error(&f("address"), format!("{} cannot be a backend", addr.ip));
                    }
                    if let Some(j) = seen_backends.insert(addr, i) {
                        c.error(&f("address"), format!("same backend as backends[{j}]"));
                    }
                }
            }
            if let Some(w) = b.weight
                && w > MAX_WEIGHT
            {
                c.error(&f("weight"), format!("must be 0 to {MAX_WEIGHT}"));
            }
        }
        self.proxy.validate(&mut c.at("proxy"));
        if let Some(check) = &self.proxy.health_check
            && check.port.is_none()
            && self.ports.first().is_some_and(|p| p.protocol == Protocol::Udp)
        {
            // Checks connect over TCP; by default they would go to the first port, which is UDP here.
            c.error("proxy.health_check.port", "required when the service's first port is UDP (checks use TCP)");
        }
    }
}

impl Settings {
    pub fn validate(&self, c: &mut Collector<'_>) {
        if let Some(p) = hostname_problem(&self.hostname) {
            c.error("hostname", p);
        }
        for (field, value) in [("admin.http", &self.admin.http), ("admin.https", &self.admin.https)] {
            if let Some(v) = value
                && v.parse::<SocketAddr>().is_err()
            {
                c.error(field, format!("'{v}' is not an address:port like 127.0.0.1:8080 or [::]:8443"));
            }
        }
        if self.admin.http.is_some() && self.admin.http == self.admin.https {
            c.error("admin.https", "must differ from admin.http");
        }
        if !(5..=43_200).contains(&self.admin.session_minutes) {
            c.error("admin.session_minutes", "must be 5 to 43200");
        }
        if !(1..=1000).contains(&self.admin.max_login_failures) {
            c.error("admin.max_login_failures", "must be 1 to 1000");
        }
        if !(1..=86_400).contains(&self.admin.login_window_seconds) {
            c.error("admin.login_window_seconds", "must be 1 to 86400");
        }
        if let Some(bgp) = &self.bgp {
            bgp.validate(&mut c.at("bgp"));
        }
    }
}

impl Config {
    /// Checks every object and every rule between objects; reports every problem at once.
    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut errors: Vec<FieldError> = Vec::new();
        let mut c = Collector::new(&mut errors);
        for (i, p) in self.pools.iter().enumerate() {
            p.validate(&mut c.at(&format!("pools[{i}]")));
        }
        for (i, s) in self.services.iter().enumerate() {
            s.validate(&mut c.at(&format!("services[{i}]")));
        }
        self.settings.validate(&mut c.at("settings"));
        check_unique_names(self.pools.iter().map(|p| p.name.as_str()), "pools", &mut c);
        check_unique_names(self.services.iter().map(|s| s.name.as_str()), "services", &mut c);
        for (i, cl) in self.clusters.iter().enumerate() {
            cl.validate(&mut c.at(&format!("clusters[{i}]")));
        }
        check_unique_names(self.clusters.iter().map(|s| s.name.as_str()), "clusters", &mut c);
        let cluster_names: std::collections::HashSet<&str> = self.clusters.iter().map(|c| c.name.as_str()).collect();
        for (i, g) in self.global_services.iter().enumerate() {
            g.validate(&mut c.at(&format!("global_services[{i}]")), &cluster_names);
        }
        check_unique_names(self.global_services.iter().map(|s| s.name.as_str()), "global_services", &mut c);
        let mut member_of: HashMap<(&str, &str, &str), usize> = HashMap::new();
        for (i, g) in self.global_services.iter().enumerate() {
            for (j, m) in g.members.iter().enumerate() {
                if let Some(other) = member_of.insert((&m.cluster, &m.namespace, &m.service), i)
                    && other != i
                {
                    c.error(
                        &format!("global_services[{i}].members[{j}]"),
                        format!(
                            "is already a member of global_services[{other}]; a Service can be in one global service"
                        ),
                    );
                }
            }
        }
        check_pool_overlaps(&self.pools, &mut c);
        let pool_names: BTreeSet<&str> = self.pools.iter().map(|p| p.name.as_str()).collect();
        for (i, s) in self.services.iter().enumerate() {
            if let Some(pool) = &s.pool
                && !pool_names.contains(pool.as_str())
            {
                c.error(&format!("services[{i}].pool"), format!("no pool is named '{pool}'"));
            }
        }
        for (i, g) in self.global_services.iter().enumerate() {
            if let Some(pool) = &g.pool
                && !pool_names.contains(pool.as_str())
            {
                c.error(&format!("global_services[{i}].pool"), format!("no pool is named '{pool}'"));
            }
        }
        for (i, p) in self.bgp_peers.iter().enumerate() {
            p.validate(&mut c.at(&format!("bgp_peers[{i}]")), self.settings.bgp.as_ref(), &pool_names);
        }
        check_unique_names(self.bgp_peers.iter().map(|p| p.name.as_str()), "bgp_peers", &mut c);
        for (i, a) in self.l2_advertisements.iter().enumerate() {
            a.validate(&mut c.at(&format!("l2_advertisements[{i}]")), &pool_names);
        }
        check_unique_names(self.l2_advertisements.iter().map(|a| a.name.as_str()), "l2_advertisements", &mut c);
        let mut peer_addresses: HashMap<IpAddr, usize> = HashMap::new();
        for (i, p) in self.bgp_peers.iter().enumerate() {
            if let Ok(ip) = p.address.parse::<IpAddr>()
                && let Some(j) = peer_addresses.insert(ip, i)
            {
                c.error(&format!("bgp_peers[{i}].address"), format!("{ip} is already the address of bgp_peers[{j}]"));
            }
        }
        ValidationErrors(errors).into_result()
    }

    /// Sorts objects by name, so equal configurations serialize equally.
    pub fn normalize(&mut self) {
        self.pools.sort_by(|a, b| a.name.cmp(&b.name));
        self.services.sort_by(|a, b| a.name.cmp(&b.name));
        self.clusters.sort_by(|a, b| a.name.cmp(&b.name));
        self.global_services.sort_by(|a, b| a.name.cmp(&b.name));
        self.bgp_peers.sort_by(|a, b| a.name.cmp(&b.name));
        self.l2_advertisements.sort_by(|a, b| a.name.cmp(&b.name));
    }

    /// The configuration as stored objects: (kind, name) → JSON body.
    pub fn to_objects(&self) -> Result<ObjectMap, serde_json::Error> {
        let mut m = ObjectMap::new();
        for p in &self.pools {
            m.insert((Kind::Pool, p.name.clone()), serde_json::to_value(p)?);
        }
        for s in &self.services {
            m.insert((Kind::Service, s.name.clone()), serde_json::to_value(s)?);
        }
        for c in &self.clusters {
            m.insert((Kind::Cluster, c.name.clone()), serde_json::to_value(c)?);
        }
        for g in &self.global_services {
            m.insert((Kind::GlobalService, g.name.clone()), serde_json::to_value(g)?);
        }
        for p in &self.bgp_peers {
            m.insert((Kind::BgpPeer, p.name.clone()), serde_json::to_value(p)?);
        }
        for a in &self.l2_advertisements {
            m.insert((Kind::L2Advertisement, a.name.clone()), serde_json::to_value(a)?);
        }
        m.insert((Kind::Settings, SETTINGS_NAME.into()), serde_json::to_value(&self.settings)?);
        Ok(m)
    }

    /// Rebuilds a configuration from stored objects.
    pub fn from_objects(objects: &ObjectMap) -> Result<Config, ObjectError> {
        let mut config = Config::default();
        for ((kind, name), body) in objects {
            let bad = |e: serde_json::Error| ObjectError { kind: *kind, name: name.clone(), reason: e.to_string() };
            match kind {
                Kind::Pool => config.pools.push(serde_json::from_value(body.clone()).map_err(bad)?),
                Kind::Service => config.services.push(serde_json::from_value(body.clone()).map_err(bad)?),
                Kind::Settings => config.settings = serde_json::from_value(body.clone()).map_err(bad)?,
                Kind::Cluster => config.clusters.push(serde_json::from_value(body.clone()).map_err(bad)?),
                Kind::GlobalService => config.global_services.push(serde_json::from_value(body.clone()).map_err(bad)?),
                Kind::BgpPeer => config.bgp_peers.push(serde_json::from_value(body.clone()).map_err(bad)?),
                Kind::L2Advertisement => {
                    config.l2_advertisements.push(serde_json::from_value(body.clone()).map_err(bad)?)
                }
            }
        }
        config.normalize();
        Ok(config)
    }

    pub fn pool(&self, name: &str) -> Option<&Pool> {
        self.pools.iter().find(|p| p.name == name)
    }

    pub fn service(&self, name: &str) -> Option<&Service> {
        self.services.iter().find(|s| s.name == name)
    }

    /// The configuration without credentials (for GET responses and exports without secrets).
    pub fn redacted(&self) -> Config {
        Config { clusters: self.clusters.iter().map(Cluster::redacted).collect(), ..self.clone() }
    }
}

/// Stored configuration objects keyed by kind and name, in a stable order.
pub type ObjectMap = BTreeMap<(Kind, String), serde_json::Value>;

#[derive(Debug, Clone, thiserror::Error)]
#[error("stored {kind} '{name}' does not match this version's schema: {reason}")]
pub struct ObjectError {
    pub kind: Kind,
    pub name: String,
    pub reason: String,
}

fn check_unique_names<'a>(names: impl Iterator<Item = &'a str>, list: &str, c: &mut Collector<'_>) {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (i, n) in names.enumerate() {
        if let Some(j) = seen.insert(n, i) {
            c.error(&format!("{list}[{i}].name"), format!("'{n}' is already used by {list}[{j}]"));
        }
    }
}

/// Pools must not share addresses: an address belongs to exactly one pool. Sorting the ranges makes this
/// O(n log n) in the number of ranges.
fn check_pool_overlaps(pools: &[Pool], c: &mut Collector<'_>) {
    let mut all: Vec<(AddrKey, AddrKey, usize, usize)> = Vec::new();
    for (pi, p) in pools.iter().enumerate() {
        for (ai, a) in p.addresses.iter().enumerate() {
            if let Ok(r) = IpRange::parse(a) {
                all.push((
                    AddrKey { family: r.family, value: r.first },
                    AddrKey { family: r.family, value: r.last },
                    pi,
                    ai,
                ));
            }
        }
    }
    all.sort();
    // The range reaching furthest so far, to catch a range that overlaps one earlier than its neighbour.
    let mut furthest: Option<(AddrKey, usize, usize)> = None;
    for &(first, last, pi, ai) in &all {
        if let Some((end, fpi, fai)) = furthest {
            if first.family == end.family && first <= end && fpi != pi {
                // Reported on both sides, so that whichever pool is being edited sees the clash.
                c.error(
                    &format!("pools[{pi}].addresses[{ai}]"),
                    format!(
                        "overlaps pool '{}' ({}); an address can belong to only one pool",
                        pools[fpi].name, pools[fpi].addresses[fai]
                    ),
                );
                c.error(
                    &format!("pools[{fpi}].addresses[{fai}]"),
                    format!(
                        "overlaps pool '{}' ({}); an address can belong to only one pool",
                        pools[pi].name, pools[pi].addresses[ai]
                    ),
                );
            }
            if end.family != first.family || last > end {
                furthest = Some((last, pi, ai));
            }
        } else {
            furthest = Some((last, pi, ai));
        }
    }
}

/// The address family of a parsed VIP.
pub fn family_of(ip: IpAddr) -> Family {
    Family::of(ip)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(name: &str, addrs: &[&str]) -> Pool {
        Pool::new(name, addrs)
    }

    fn service(name: &str) -> Service {
        Service {
            name: name.into(),
            pool: None,
            addresses: vec![],
            ports: vec![ServicePort { name: None, port: 80, protocol: Protocol::Tcp, target_port: None }],
            backends: vec![Backend { address: "10.1.0.1".into(), weight: None }],
            announce: Announce::default(),
            proxy: Default::default(),
        }
    }

    #[test]
    fn reports_every_bad_field_at_once() {
        let mut bad = service("Web");
        bad.ports.push(ServicePort { name: None, port: 0, protocol: Protocol::Tcp, target_port: Some(0) });
        bad.backends.push(Backend { address: "nope".into(), weight: Some(1000) });
        bad.pool = Some("missing".into());
        let config = Config {
            pools: vec![pool("a", &["10.0.0.0/24", "bogus"]), pool("b", &["10.0.0.128-10.0.1.5"])],
            services: vec![bad],
            settings: Settings { hostname: "bad host".into(), ..Settings::default() },
            ..Config::default()
        };
        let errs = config.validate().unwrap_err();
        let fields: Vec<&str> = errs.0.iter().map(|e| e.field.as_str()).collect();
        for f in [
            "pools[0].addresses[1]",
            "pools[1].addresses[0]",
            "services[0].name",
            "services[0].ports[1].port",
            "services[0].ports[1].target_port",
            "services[0].ports",
            "services[0].backends[1].address",
            "services[0].backends[1].weight",
            "services[0].pool",
            "settings.hostname",
        ] {
            assert!(fields.contains(&f), "missing {f} in {fields:?}");
        }
    }

    #[test]
    fn a_health_check_on_a_udp_first_port_needs_its_own_port() {
        let mut dns = service("dns");
        dns.ports[0].protocol = Protocol::Udp;
        dns.proxy.health_check = Some(crate::proxy::HealthCheck::default());
        let config = Config { services: vec![dns.clone()], ..Config::default() };
        let errs = config.validate().unwrap_err();
        assert!(errs.0.iter().any(|e| e.field == "services[0].proxy.health_check.port"), "{errs}");
        dns.proxy.health_check = Some(crate::proxy::HealthCheck { port: Some(53), ..Default::default() });
        assert!(Config { services: vec![dns], ..Config::default() }.validate().is_ok());
    }

    #[test]
    fn overlap_detected_even_when_not_adjacent() {
        let config = Config {
            pools: vec![pool("big", &["10.0.0.0/16"]), pool("x", &["10.0.5.0/24"]), pool("y", &["10.0.9.0/24"])],
            ..Config::default()
        };
        let errs = config.validate().unwrap_err();
        assert_eq!(errs.0.len(), 4, "{errs}");
        assert_eq!(errs.0.iter().filter(|e| e.message.contains("'big'")).count(), 2);
        assert_eq!(errs.0.iter().filter(|e| e.field == "pools[0].addresses[0]").count(), 2);
        let ok =
            Config { pools: vec![pool("v4", &["10.0.0.0/24"]), pool("v6", &["::a00:0/120"])], ..Config::default() };
        assert!(ok.validate().is_ok());
    }

    #[test]
    fn duplicate_names_and_round_trip_through_objects() {
        let config =
            Config { pools: vec![pool("a", &["10.0.0.0/24"]), pool("a", &["10.0.1.0/24"])], ..Config::default() };
        assert!(config.validate().unwrap_err().0.iter().any(|e| e.field == "pools[1].name"));
        let mut good =
            Config { pools: vec![pool("b", &["10.0.1.0/24"]), pool("a", &["10.0.0.0/24"])], ..Config::default() };
        good.services.push(service("web"));
        good.normalize();
        let back = Config::from_objects(&good.to_objects().unwrap()).unwrap();
        assert_eq!(back, good);
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let r: Result<Pool, _> = serde_json::from_str(r#"{"name":"a","addresses":[],"colour":"red"}"#);
        assert!(r.unwrap_err().to_string().contains("colour"));
    }
}
