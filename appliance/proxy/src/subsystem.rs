//! The proxy as a subsystem: every VIP port of every service in the snapshot becomes a listener that forwards
//! to that service's backends. Listeners are keyed by (address, port, protocol): a snapshot that changes only
//! backends swaps the listener's balancer (established connections are untouched, the socket is not rebound);
//! a listener whose VIP port is gone stops accepting and drains.
//!
//! Each service's `proxy` policy (algorithm, affinity, timeouts, limits, outlier detection, PROXY protocol)
//! applies to all of its VIP ports. A backend that leaves a TCP listener's set (removed, or no longer ready)
//! takes no new connections; its established ones run on until they close or the policy's `drain_timeout`
//! passes, then are reset — unless it comes back first. Health checks run here too (`health`).

use crate::balance::{Affinity, Algorithm, Backend, Balancer, Outlier};
use crate::engine::{Engine, EpollEngine};
use crate::health::HealthChecks;
use crate::listener::{ListenerConfig, TcpProxy};
use crate::proxy_protocol::{ProxyProtocol, SendProxy};
use crate::relay::RelayConfig;
use crate::status::{Counters, ListenerView, ProxyHandle};
use crate::udp::{UdpConfig, UdpProxy};
use model::config::Protocol;
use model::health::{HealthSink, NoHealthSink};
use model::proxy::{ProxyPolicy, ProxyProtocolVersion};
use model::snapshot::{ServiceEntry, Snapshot};
use model::subsystem::{ApplyError, Report, Subsystem};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

type Key = (SocketAddr, Protocol);

enum Running {
    Tcp(TcpProxy),
    Udp(UdpProxy),
}

impl Running {
    fn update(&self, balancer: Arc<Balancer>, policy: &ProxyPolicy) {
        match self {
            Running::Tcp(p) => {
                // Backends that left (or are no longer ready) drain; those back in take their connections off
                // the timer.
                // Kept: ready ones (also while failing health checks: those keep their connections), and the
                // serving ones while they are the fallback that takes new connections.
                let fallback = balancer.is_fallback();
                let ready: HashSet<SocketAddr> =
                    balancer.backends().iter().filter(|b| b.ready || (fallback && b.serving)).map(|b| b.addr).collect();
                let timeout = Duration::from_secs(u64::from(policy.drain_timeout));
                for old in p.balancer().backends().iter().filter(|b| !ready.contains(&b.addr)) {
                    p.drain_backend(old.addr, timeout);
                }
                for addr in p.draining().into_iter().filter(|a| ready.contains(a)) {
                    p.cancel_drain(addr);
                }
                p.set_balancer(balancer);
                p.set_config(listener_config(policy));
            }
            Running::Udp(p) => {
                p.set_balancer(balancer);
                p.set_config(udp_config(policy));
            }
        }
    }

    fn balancer(&self) -> Option<Arc<Balancer>> {
        match self {
            Running::Tcp(p) => Some(p.balancer()),
            Running::Udp(p) => Some(p.balancer()),
        }
    }
}

/// One listener the snapshot wants: where, and to whom.
#[derive(Debug, Clone, PartialEq)]
struct Wanted {
    service: String,
    backends: Vec<Backend>,
    policy: Arc<ProxyPolicy>,
}

fn algorithm(policy: &ProxyPolicy) -> Algorithm {
    match policy.algorithm {
        model::proxy::Algorithm::RoundRobin => Algorithm::RoundRobin,
        model::proxy::Algorithm::WeightedRoundRobin => Algorithm::WeightedRoundRobin,
        model::proxy::Algorithm::LeastConnections => Algorithm::LeastConnections,
        model::proxy::Algorithm::PowerOfTwo => Algorithm::PowerOfTwoChoices,
        model::proxy::Algorithm::Maglev => Algorithm::maglev(),
    }
}

fn affinity(policy: &ProxyPolicy) -> Affinity {
    match policy.affinity {
        model::proxy::Affinity::None => Affinity::None,
        model::proxy::Affinity::ClientIp => {
            Affinity::ClientIp { timeout: Duration::from_secs(u64::from(policy.affinity_timeout)) }
        }
    }
}

fn outlier(policy: &ProxyPolicy) -> Option<Outlier> {
    let o = &policy.outlier;
    (o.consecutive_failures > 0).then(|| Outlier {
        consecutive_failures: o.consecutive_failures,
        base_ejection: Duration::from_millis(u64::from(o.base_ejection_ms)),
        max_ejection: Duration::from_millis(u64::from(o.max_ejection_ms)),
    })
}

fn listener_config(policy: &ProxyPolicy) -> ListenerConfig {
    ListenerConfig {
        relay: RelayConfig {
            connect_timeout: Duration::from_millis(u64::from(policy.connect_timeout_ms)),
            idle_timeout: Some(Duration::from_secs(u64::from(policy.idle_timeout))),
            ..RelayConfig::default()
        },
        max_connections: policy.max_connections.map(u64::from),
        max_connections_per_backend: policy.max_connections_per_backend.map(u64::from),
        proxy_protocol: ProxyProtocol {
            send: match policy.proxy_protocol.send {
                ProxyProtocolVersion::None => SendProxy::None,
                ProxyProtocolVersion::V1 => SendProxy::V1,
                ProxyProtocolVersion::V2 => SendProxy::V2,
            },
            accept: policy.proxy_protocol.accept,
            ..ProxyProtocol::default()
        },
    }
}

fn udp_config(policy: &ProxyPolicy) -> UdpConfig {
    UdpConfig {
        idle_timeout: Duration::from_secs(u64::from(policy.udp_idle_timeout)),
        max_sessions: policy.max_udp_sessions as usize,
    }
}

/// The L4 proxy subsystem (`proxy`).
pub struct Proxy {
    /// Where listeners run (chosen once at start: `engine::select`).
    engine: Arc<dyn Engine>,
    running: BTreeMap<Key, Running>,
    wanted: BTreeMap<Key, Arc<Wanted>>,
    /// Each service's entry at the last snapshot and the listeners made from it: an entry that is the same
    /// `Arc` is not looked at again.
    services: ServiceMemo,
    /// Listeners that could not be bound, with why (retried at every snapshot).
    failed: BTreeMap<Key, String>,
    health: HealthChecks,
    engine_note: Option<String>,
    handle: ProxyHandle,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("engine", &self.engine.name())
            .field("listeners", &self.running.len())
            .field("failed", &self.failed)
            .finish()
    }
}

/// The listeners one service wants, one per (VIP, port, protocol).
type ServiceListeners = Vec<(Key, Arc<Wanted>)>;

/// Service name → its entry at the last snapshot and the listeners made from it.
type ServiceMemo = HashMap<String, (Arc<ServiceEntry>, ServiceListeners)>;

fn service_listeners(s: &ServiceEntry) -> ServiceListeners {
    let mut out = Vec::with_capacity(s.ports.len() * s.vips.len());
    for port in &s.ports {
        let backends: Vec<Backend> = s
            .backends
            .iter()
            .map(|b| Backend::from_entry(b, port.name.as_deref(), port.protocol, port.target_port))
            .collect();
        let want = Arc::new(Wanted { service: s.name.clone(), backends, policy: s.proxy.clone() });
        for vip in &s.vips {
            out.push(((SocketAddr::new(*vip, port.port), port.protocol), want.clone()));
        }
    }
    out
}

impl Default for Proxy {
    fn default() -> Proxy {
        Proxy::with_engine(Arc::new(EpollEngine))
    }
}

impl Proxy {
    /// On the epoll engine.
    pub fn new() -> Proxy {
        Proxy::default()
    }

    /// Listeners run on `engine`.
    pub fn with_engine(engine: Arc<dyn Engine>) -> Proxy {
        Proxy {
            engine,
            running: BTreeMap::new(),
            wanted: BTreeMap::new(),
            services: HashMap::new(),
            failed: BTreeMap::new(),
            health: HealthChecks::new(Arc::new(NoHealthSink)),
            engine_note: None,
            handle: ProxyHandle::default(),
        }
        .engine_note(None)
    }

    pub fn engine(&self) -> &Arc<dyn Engine> {
        &self.engine
    }

    /// Why the engine is not the one configured (shown in the subsystem's status).
    pub fn engine_note(mut self, note: Option<String>) -> Proxy {
        self.engine_note = note;
        self.handle.set_engine(self.engine.name(), self.engine_note.clone());
        self
    }

    /// A handle on the listeners' and backends' status and metrics, kept current by this subsystem.
    pub fn handle(&self) -> ProxyHandle {
        self.handle.clone()
    }

    fn publish_status(&self) {
        self.handle.set_engine(self.engine.name(), self.engine_note.clone());
        self.handle.set_health(self.health.boards());
        let views = self
            .running
            .iter()
            .map(|(key, running)| {
                let service = self.wanted.get(key).map(|w| w.service.clone()).unwrap_or_default();
                let (balancer, counters) = match running {
                    Running::Tcp(p) => (p.balancer(), Counters::Tcp(p.stats().clone(), p.connection_registry())),
                    Running::Udp(p) => (p.balancer(), Counters::Udp(p.stats().clone())),
                };
                ListenerView { addr: key.0, protocol: key.1, service, balancer, counters }
            })
            .collect();
        self.handle.set_listeners(views);
    }

    /// Health checks report to `sink` (the pipeline, which compiles them into snapshots); by default they
    /// report nowhere.
    pub fn health_sink(mut self, sink: Arc<dyn HealthSink>) -> Proxy {
        self.health = HealthChecks::new(sink);
        self
    }

    /// Every (VIP, port, protocol) of the snapshot's services with that port's backends. A VIP port claimed by
    /// two services (sharing a VIP with clashing ports is refused upstream) goes to the first by name.
    fn wanted(&self, snapshot: &Snapshot) -> (BTreeMap<Key, Arc<Wanted>>, ServiceMemo) {
        let mut wanted = BTreeMap::new();
        let mut services = HashMap::with_capacity(snapshot.services.len());
        for s in &snapshot.services {
            let listeners = match self.services.get(&s.name) {
                Some((entry, listeners)) if Arc::ptr_eq(entry, s) => listeners.clone(),
                _ => service_listeners(s),
            };
            for (key, want) in &listeners {
                wanted.entry(*key).or_insert_with(|| want.clone());
            }
            services.insert(s.name.clone(), (s.clone(), listeners));
        }
        (wanted, services)
    }

    /// The health checks and what they found.
    pub fn health_checks(&self) -> &HealthChecks {
        &self.health
    }

    /// The listeners running now, with their services.
    pub fn listeners(&self) -> Vec<(SocketAddr, Protocol, String)> {
        self.running.keys().filter_map(|k| self.wanted.get(k).map(|w| (k.0, k.1, w.service.clone()))).collect()
    }

    fn balancer_for(&self, key: &Key, want: &Wanted) -> Result<Balancer, String> {
        let (algorithm, affinity, backends) = (algorithm(&want.policy), affinity(&want.policy), want.backends.clone());
        let built = match self.running.get(key).and_then(Running::balancer) {
            // Keeps the connection counts (and affinities) of backends that stay.
            Some(old) => old.rebuild(algorithm, affinity, backends),
            None => Balancer::new(algorithm, affinity, backends),
        };
        built.map(|b| b.with_outlier(outlier(&want.policy))).map_err(|e| e.to_string())
    }

    fn start(&self, key: &Key, balancer: Arc<Balancer>, policy: &ProxyPolicy) -> std::io::Result<Running> {
        let engine = &*self.engine;
        match key.1 {
            Protocol::Tcp => Ok(Running::Tcp(TcpProxy::start(engine, key.0, balancer, listener_config(policy))?)),
            Protocol::Udp => Ok(Running::Udp(UdpProxy::start(engine, key.0, balancer, udp_config(policy))?)),
        }
    }

    fn report(&self) -> Report {
        let total = self.running.len();
        let engine = match &self.engine_note {
            Some(note) => format!("{} engine ({note})", self.engine.name()),
            None => format!("{} engine", self.engine.name()),
        };
        if self.failed.is_empty() {
            return Report::ok(format!("{total} listener(s), {engine}"));
        }
        let problems: Vec<String> =
            self.failed.iter().take(5).map(|((addr, proto), why)| format!("{addr}/{proto}: {why}")).collect();
        let more = self.failed.len().saturating_sub(problems.len());
        let tail = if more > 0 { format!(" (and {more} more)") } else { String::new() };
        Report::degraded(format!("{total} listener(s), {engine}; not listening: {}{tail}", problems.join("; ")))
    }
}

impl Subsystem for Proxy {
    fn name(&self) -> &'static str {
        "proxy"
    }

    async fn apply(&mut self, snapshot: Arc<Snapshot>) -> Result<Report, ApplyError> {
        self.health.reconcile(&snapshot);
        let (wanted, services) = self.wanted(&snapshot);
        let gone: Vec<Key> = self.running.keys().filter(|k| !wanted.contains_key(*k)).copied().collect();
        for key in gone {
            if let Some(running) = self.running.remove(&key) {
                let drain = self.wanted.get(&key).map_or(30, |w| w.policy.drain_timeout);
                tracing::info!(listener = %key.0, protocol = %key.1, drain_timeout = drain, "VIP port gone; draining its connections");
                match running {
                    Running::Tcp(p) => {
                        tokio::spawn(async move {
                            p.drain(Duration::from_secs(u64::from(drain))).await;
                        });
                    }
                    Running::Udp(p) => drop(p),
                }
            }
        }
        let mut failed = BTreeMap::new();
        for (key, want) in &wanted {
            let unchanged = self.running.contains_key(key)
                && self.wanted.get(key).is_some_and(|old| Arc::ptr_eq(old, want) || old == want);
            if unchanged {
                continue;
            }
            let balancer = match self.balancer_for(key, want) {
                Ok(b) => Arc::new(b),
                Err(why) => {
                    failed.insert(*key, why);
                    continue;
                }
            };
            match self.running.get(key) {
                Some(running) => running.update(balancer, &want.policy),
                None => match self.start(key, balancer, &want.policy) {
                    Ok(running) => {
                        tracing::info!(listener = %key.0, protocol = %key.1, service = %want.service, "listening");
                        self.running.insert(*key, running);
                    }
                    Err(e) => {
                        if !self.failed.contains_key(key) {
                            tracing::warn!(listener = %key.0, protocol = %key.1, error = %e, "cannot listen on a VIP port");
                        }
                        failed.insert(*key, e.to_string());
                    }
                },
            }
        }
        self.wanted = wanted;
        self.services = services;
        self.failed = failed;
        self.publish_status();
        Ok(self.report())
    }

    fn report(&self) -> Option<Report> {
        Some(Proxy::report(self))
    }
}
