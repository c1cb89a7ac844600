//! What the proxy reports: per listener and per backend, connections, bytes each way, refusals, connect
//! errors, health and ejections — as [`ProxyStatus`] for the REST API and as Prometheus text for `/metrics`.
//!
//! The subsystem refreshes a [`ProxyHandle`]'s view of its listeners (their counters and current balancers)
//! after each snapshot; the counters themselves are the live atomics, read when asked, so nothing is counted
//! twice and the data path never waits for a reader.

use crate::balance::{Algorithm, Balancer};
use crate::health::{Boards, CheckState};
use crate::listener::{Connections, ListenerStats};
use crate::udp::UdpStats;
use model::config::Protocol;
use model::health::BackendKey;
use model::proxy::{BackendStatus, DatagramCounts, ListenerStatus, ProxyStatus};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// The live counters of one listener.
#[derive(Debug, Clone)]
pub(crate) enum Counters {
    /// With the registry of established connections (to list backends that left but still drain).
    Tcp(Arc<ListenerStats>, Arc<Connections>),
    Udp(Arc<UdpStats>),
}

#[derive(Debug, Clone)]
pub(crate) struct ListenerView {
    pub(crate) addr: SocketAddr,
    pub(crate) protocol: Protocol,
    pub(crate) service: String,
    pub(crate) balancer: Arc<Balancer>,
    pub(crate) counters: Counters,
}

#[derive(Debug, Default)]
struct View {
    engine: &'static str,
    engine_note: Option<String>,
    listeners: Vec<ListenerView>,
    /// What the health checks found, per service.
    health: Boards,
}

/// A cheap handle on the proxy's state for the API and metrics; the subsystem keeps it current.
#[derive(Debug, Clone, Default)]
pub struct ProxyHandle {
    view: Arc<Mutex<View>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn algorithm(a: Algorithm) -> model::proxy::Algorithm {
    match a {
        Algorithm::RoundRobin => model::proxy::Algorithm::RoundRobin,
        Algorithm::WeightedRoundRobin => model::proxy::Algorithm::WeightedRoundRobin,
        Algorithm::LeastConnections => model::proxy::Algorithm::LeastConnections,
        Algorithm::PowerOfTwoChoices => model::proxy::Algorithm::PowerOfTwo,
        Algorithm::Maglev { .. } => model::proxy::Algorithm::Maglev,
    }
}

impl ProxyHandle {
    pub(crate) fn set_engine(&self, engine: &'static str, note: Option<String>) {
        let mut view = lock(&self.view);
        view.engine = engine;
        view.engine_note = note;
    }

    pub(crate) fn set_listeners(&self, listeners: Vec<ListenerView>) {
        lock(&self.view).listeners = listeners;
    }

    pub(crate) fn set_health(&self, health: Boards) {
        lock(&self.view).health = health;
    }

    /// Every listener with its backends, sorted by address and protocol.
    pub fn status(&self) -> ProxyStatus {
        let view = lock(&self.view);
        let now = Instant::now();
        let mut listeners: Vec<ListenerStatus> = view.listeners.iter().map(|l| listener(l, &view, now)).collect();
        listeners.sort_by(|a, b| (&a.address, a.protocol).cmp(&(&b.address, b.protocol)));
        ProxyStatus { engine: view.engine.to_string(), engine_note: view.engine_note.clone(), listeners }
    }

    /// The Prometheus exposition of the proxy's metrics (`portico_proxy_*`).
    pub fn prometheus(&self) -> String {
        render(&self.status())
    }
}

fn listener(l: &ListenerView, view: &View, now: Instant) -> ListenerStatus {
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let mut out = ListenerStatus {
        address: l.addr.to_string(),
        protocol: l.protocol,
        service: l.service.clone(),
        algorithm: algorithm(l.balancer.algorithm()),
        fallback: l.balancer.is_fallback(),
        ..ListenerStatus::default()
    };
    match &l.counters {
        Counters::Tcp(s, _) => {
            out.active = load(&s.active);
            out.total = load(&s.accepted);
            out.bytes_to_backend = load(&s.traffic.to_backend);
            out.bytes_to_client = load(&s.traffic.to_client);
            out.refused = [
                ("limit", load(&s.refused_limit)),
                ("backend_limit", load(&s.refused_backend_limit)),
                ("no_backend", load(&s.refused_no_backend)),
                ("proxy_header", load(&s.proxy_header_errors)),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
            out.connect_errors = load(&s.connect_errors);
            out.accept_errors = load(&s.accept_errors);
            out.relay_errors = load(&s.relay_errors);
            out.idle_timeouts = load(&s.idle_timeouts);
            out.cancelled = load(&s.cancelled);
        }
        Counters::Udp(s) => {
            out.active = load(&s.sessions);
            out.total = load(&s.sessions_total);
            out.bytes_to_backend = load(&s.bytes_to_backend);
            out.bytes_to_client = load(&s.bytes_to_client);
            out.cancelled = load(&s.sessions_backend_gone);
            out.refused = [("limit", load(&s.dropped_session_limit)), ("no_backend", load(&s.dropped_no_backend))]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect();
            out.idle_timeouts = load(&s.sessions_expired);
            out.datagrams = Some(DatagramCounts {
                to_backend: load(&s.datagrams_to_backend),
                to_client: load(&s.datagrams_to_client),
                send_errors: load(&s.send_errors),
            });
        }
    }
    let health: Option<BTreeMap<BackendKey, CheckState>> = view.health.states_of(&l.service);
    let health = health.as_ref();
    let eligible: std::collections::HashSet<usize> = l.balancer.eligible().iter().copied().collect();
    for (i, b) in l.balancer.backends().iter().enumerate() {
        let Some(c) = l.balancer.counters(i) else { continue };
        // Checks are keyed by the backend's own identity; a cluster endpoint has no port of its own.
        let check =
            health.and_then(|h| h.get(&(b.addr.ip(), Some(b.addr.port()))).or_else(|| h.get(&(b.addr.ip(), None))));
        let ejected = l.balancer.outlier().is_some() && c.is_ejected(now);
        let active = load(&c.active);
        out.backends.push(BackendStatus {
            address: b.addr.to_string(),
            weight: b.weight,
            ready: b.ready,
            serving: b.serving,
            terminating: b.terminating,
            taking_new: eligible.contains(&i) && !ejected,
            health: check.map(|c| c.health).unwrap_or_default(),
            health_detail: check.and_then(|c| c.last_error.clone()),
            ejected,
            ejections: load(&c.ejections),
            draining: !b.ready && active > 0,
            active,
            total: load(&c.total),
            connect_errors: load(&c.connect_errors),
            bytes_to_backend: load(&c.traffic.to_backend),
            bytes_to_client: load(&c.traffic.to_client),
        });
    }
    // Backends that left the set but still have connections draining: only what the registry knows.
    if let Counters::Tcp(_, connections) = &l.counters {
        let present: std::collections::HashSet<SocketAddr> = l.balancer.backends().iter().map(|b| b.addr).collect();
        let mut gone: Vec<(SocketAddr, u64)> = connections.others(&present).into_iter().collect();
        gone.sort();
        for (addr, active) in gone {
            out.backends.push(BackendStatus {
                address: addr.to_string(),
                draining: true,
                active,
                ..BackendStatus::default()
            });
        }
    }
    out
}

/// A label value with `\`, `"` and newlines escaped.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

struct Family {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    samples: Vec<(String, u64)>,
}

fn render(status: &ProxyStatus) -> String {
    let mut families: Vec<Family> = Vec::new();
    let mut family = |name: &'static str, kind: &'static str, help: &'static str| -> usize {
        families.push(Family { name, kind, help, samples: Vec::new() });
        families.len() - 1
    };
    let active = family("portico_proxy_listener_active", "gauge", "TCP connections or UDP sessions held now.");
    let total = family("portico_proxy_listener_total", "counter", "TCP connections accepted or UDP sessions opened.");
    let bytes = family("portico_proxy_listener_bytes_total", "counter", "Bytes relayed, by direction.");
    let refused = family("portico_proxy_listener_refused_total", "counter", "New flows refused or dropped, by reason.");
    let connect_errors =
        family("portico_proxy_listener_connect_errors_total", "counter", "Failed connects to backends.");
    let accept_errors =
        family("portico_proxy_listener_accept_errors_total", "counter", "Failed accepts (out of descriptors).");
    let relay_errors =
        family("portico_proxy_listener_relay_errors_total", "counter", "TCP relays ended by a reset or an error.");
    let idle = family(
        "portico_proxy_listener_idle_timeouts_total",
        "counter",
        "TCP connections closed by the idle timeout, or UDP sessions expired.",
    );
    let cancelled =
        family("portico_proxy_listener_drain_resets_total", "counter", "TCP connections reset by a drain timeout.");
    let datagrams = family("portico_proxy_udp_datagrams_total", "counter", "UDP datagrams relayed, by direction.");
    let b_active = family("portico_proxy_backend_active", "gauge", "Connections or sessions held now per backend.");
    let b_total = family("portico_proxy_backend_total", "counter", "Connections or sessions given to the backend.");
    let b_bytes =
        family("portico_proxy_backend_bytes_total", "counter", "TCP bytes relayed per backend, by direction.");
    let b_errors = family("portico_proxy_backend_connect_errors_total", "counter", "Failed connects per backend.");
    let b_ejections =
        family("portico_proxy_backend_ejections_total", "counter", "Ejections by passive outlier detection.");
    let b_ejected = family("portico_proxy_backend_ejected", "gauge", "1 while outlier detection keeps it out.");
    let b_health = family(
        "portico_proxy_backend_health",
        "gauge",
        "1 for the backend's health-check state (unchecked, healthy, unhealthy).",
    );
    let b_taking = family("portico_proxy_backend_taking_new", "gauge", "1 while the backend takes new flows.");
    for l in &status.listeners {
        let labels = format!(
            "listener=\"{}\",protocol=\"{}\",service=\"{}\"",
            escape(&l.address),
            l.protocol,
            escape(&l.service)
        );
        let mut push = |i: usize, extra: &str, v: u64| {
            let sep = if extra.is_empty() { "" } else { "," };
            families[i].samples.push((format!("{{{labels}{sep}{extra}}}"), v));
        };
        push(active, "", l.active);
        push(total, "", l.total);
        push(bytes, "direction=\"to_backend\"", l.bytes_to_backend);
        push(bytes, "direction=\"to_client\"", l.bytes_to_client);
        for (reason, n) in &l.refused {
            push(refused, &format!("reason=\"{}\"", escape(reason)), *n);
        }
        if l.protocol == Protocol::Tcp {
            push(connect_errors, "", l.connect_errors);
            push(accept_errors, "", l.accept_errors);
            push(relay_errors, "", l.relay_errors);
            push(cancelled, "", l.cancelled);
        }
        push(idle, "", l.idle_timeouts);
        if let Some(d) = &l.datagrams {
            push(datagrams, "direction=\"to_backend\"", d.to_backend);
            push(datagrams, "direction=\"to_client\"", d.to_client);
        }
        for b in &l.backends {
            let backend = format!("backend=\"{}\"", escape(&b.address));
            push(b_active, &backend, b.active);
            push(b_total, &backend, b.total);
            if l.protocol == Protocol::Tcp {
                push(b_bytes, &format!("{backend},direction=\"to_backend\""), b.bytes_to_backend);
                push(b_bytes, &format!("{backend},direction=\"to_client\""), b.bytes_to_client);
                push(b_errors, &backend, b.connect_errors);
                push(b_ejections, &backend, b.ejections);
                push(b_ejected, &backend, u64::from(b.ejected));
            }
            let state = match b.health {
                model::health::BackendHealth::Unchecked => "unchecked",
                model::health::BackendHealth::Healthy => "healthy",
                model::health::BackendHealth::Unhealthy => "unhealthy",
            };
            push(b_health, &format!("{backend},state=\"{state}\""), 1);
            push(b_taking, &backend, u64::from(b.taking_new));
        }
    }
    let mut out = String::new();
    for f in families.iter().filter(|f| !f.samples.is_empty()) {
        let _ = writeln!(out, "# HELP {} {}", f.name, f.help);
        let _ = writeln!(out, "# TYPE {} {}", f.name, f.kind);
        for (labels, v) in &f.samples {
            let _ = writeln!(out, "{}{labels} {v}", f.name);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::balance::{Affinity, Backend};

    #[test]
    fn status_and_exposition() {
        let handle = ProxyHandle::default();
        handle.set_engine("epoll", None);
        let a: SocketAddr = "10.0.0.1:80".parse().unwrap();
        let balancer =
            Arc::new(Balancer::new(Algorithm::RoundRobin, Affinity::None, vec![Backend::ready(a, 2)]).unwrap());
        let stats = Arc::new(ListenerStats::default());
        stats.accepted.fetch_add(3, Ordering::Relaxed);
        stats.refused_no_backend.fetch_add(1, Ordering::Relaxed);
        balancer.counters(0).unwrap().traffic.to_client.fetch_add(1000, Ordering::Relaxed);
        handle.set_listeners(vec![ListenerView {
            addr: "192.0.2.1:80".parse().unwrap(),
            protocol: Protocol::Tcp,
            service: "we\"b".into(),
            balancer,
            counters: Counters::Tcp(stats, Arc::default()),
        }]);
        let status = handle.status();
        assert_eq!(status.listeners[0].total, 3);
        assert_eq!(status.listeners[0].refused["no_backend"], 1);
        let b = &status.listeners[0].backends[0];
        assert!(b.taking_new && !b.ejected);
        assert_eq!((b.weight, b.bytes_to_client), (2, 1000));
        let text = handle.prometheus();
        assert!(text.contains(
            "portico_proxy_listener_total{listener=\"192.0.2.1:80\",protocol=\"tcp\",service=\"we\\\"b\"} 3\n"
        ));
        assert!(text.contains("portico_proxy_backend_bytes_total{listener=\"192.0.2.1:80\",protocol=\"tcp\",service=\"we\\\"b\",backend=\"10.0.0.1:80\",direction=\"to_client\"} 1000\n"), "{text}");
        assert!(text.contains("# TYPE portico_proxy_backend_health gauge\n"));
        assert!(!text.contains("portico_proxy_udp_datagrams_total"), "no UDP listener, no UDP family");
    }
}
