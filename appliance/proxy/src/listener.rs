//! A TCP listener, engine-neutral: the [`Engine`] accepts on one address (one socket, or one `SO_REUSEPORT`
//! socket per core), and every accepted connection goes through the same decisions here ([`ListenerShared`]):
//! listener limit, optional PROXY protocol header, pick, per-backend limit, counters. The balancer and the limits can be swapped while it runs ([`TcpProxy::set_balancer`],
//! [`TcpProxy::set_config`]) without touching the listening socket or established connections; dropping the
//! proxy (or [`TcpProxy::stop`]) stops accepting and lets established connections run to their end;
//! [`TcpProxy::drain`] stops accepting and resets what is still open after a timeout, and
//! [`TcpProxy::reset_connections_to`] ends the connections to one backend (its drain timeout has passed).

use crate::balance::{Balancer, Pick};
use crate::engine::{AcceptGuard, Engine};
use crate::proxy_protocol::ProxyProtocol;
use crate::relay::{RelayConfig, RelayEnd, RelayError, RelayOutcome, Traffic};
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};

/// The accept queue asked for on every listening socket; Linux caps it at `net.core.somaxconn` (4096 by
/// default).
pub(crate) const LISTEN_BACKLOG: i32 = 4096;

/// Limits and timeouts of one TCP listener.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ListenerConfig {
    pub relay: RelayConfig,
    /// Connections held at once by this listener; over it new ones are reset at once and counted.
    pub max_connections: Option<u64>,
    /// Connections held at once per backend (across this balancer's listeners); over it: reset and counted.
    pub max_connections_per_backend: Option<u64>,
    pub proxy_protocol: ProxyProtocol,
}

/// Counters of one listener (live).
#[derive(Debug, Default)]
pub struct ListenerStats {
    pub active: AtomicU64,
    /// Connections accepted (including refused ones).
    pub accepted: AtomicU64,
    /// Refused because the listener was at `max_connections`.
    pub refused_limit: AtomicU64,
    /// Refused because the chosen backend was at `max_connections_per_backend`.
    pub refused_backend_limit: AtomicU64,
    /// Refused because no backend takes new connections.
    pub refused_no_backend: AtomicU64,
    pub connect_errors: AtomicU64,
    /// Relays that ended with an error (a reset on either side).
    pub relay_errors: AtomicU64,
    pub idle_timeouts: AtomicU64,
    /// Connections reset by a drain or [`TcpProxy::reset_connections_to`].
    pub cancelled: AtomicU64,
    /// Reset because the PROXY protocol header expected from upstream was missing, malformed or too slow.
    pub proxy_header_errors: AtomicU64,
    /// `accept(2)` failures (out of descriptors, mostly).
    pub accept_errors: AtomicU64,
    /// When an accept failure was last logged (milliseconds on the balancer's clock).
    accept_error_logged: AtomicU64,
    pub traffic: Traffic,
}

/// Counts a connection as active on its listener until dropped.
pub(crate) struct Active(Arc<ListenerStats>);

impl Drop for Active {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The established (relaying) connections, each with a way to end it.
#[derive(Debug, Default)]
pub(crate) struct Connections {
    next: AtomicU64,
    map: std::sync::Mutex<HashMap<u64, (SocketAddr, Arc<Notify>)>>,
    /// Woken whenever a connection ends.
    ended: Notify,
}

impl Connections {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, (SocketAddr, Arc<Notify>)>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn register(self: &Arc<Self>, backend: SocketAddr) -> Registered {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let cancel = Arc::new(Notify::new());
        self.lock().insert(id, (backend, Arc::clone(&cancel)));
        Registered { connections: Arc::clone(self), id, cancel }
    }

    /// Ends the connections whose backend matches; returns how many.
    fn cancel(&self, matches: impl Fn(SocketAddr) -> bool) -> usize {
        let map = self.lock();
        let mut n = 0;
        for (backend, cancel) in map.values() {
            if matches(*backend) {
                // A stored permit: the relay sees it even if it is not waiting yet.
                cancel.notify_one();
                n += 1;
            }
        }
        n
    }

    fn len(&self) -> usize {
        self.lock().len()
    }

    /// Established connections per backend, for the backends not in `except` (those that left the set).
    pub(crate) fn others(&self, except: &std::collections::HashSet<SocketAddr>) -> HashMap<SocketAddr, u64> {
        let mut out = HashMap::new();
        for (backend, _) in self.lock().values() {
            if !except.contains(backend) {
                *out.entry(*backend).or_insert(0) += 1;
            }
        }
        out
    }
}

pub(crate) struct Registered {
    connections: Arc<Connections>,
    id: u64,
    pub(crate) cancel: Arc<Notify>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.connections.lock().remove(&self.id);
        self.connections.ended.notify_waiters();
    }
}

/// What every accept loop of one listener (one per core on io_uring) reads and updates: the balancer and config
/// (swapped through watch channels, so a change reaches all of a listener's sockets without rebinding), the
/// counters and the established connections. The decisions every engine makes on a connection are methods
/// here, so both engines behave the same.
#[derive(Debug, Clone)]
pub struct ListenerShared {
    balancer: watch::Receiver<Arc<Balancer>>,
    /// Shared by every connection that starts under it (one pointer each, not a copy).
    config: watch::Receiver<Arc<ListenerConfig>>,
    stats: Arc<ListenerStats>,
    connections: Arc<Connections>,
}

/// A connection past the listener limit: counted as active until dropped, with the config it runs under.
pub(crate) struct Admitted {
    pub(crate) active: Active,
    pub(crate) config: Arc<ListenerConfig>,
}

impl ListenerShared {
    pub(crate) fn stats(&self) -> &Arc<ListenerStats> {
        &self.stats
    }

    /// `accept(2)` failed: counted, logged at most once a second per listener, and how long to wait before the
    /// next try — longer when out of descriptors, where retrying at once only spins and floods the log.
    pub(crate) fn accept_failed(&self, error: &io::Error) -> Duration {
        let n = self.stats.accept_errors.fetch_add(1, Ordering::Relaxed);
        let now = crate::balance::millis_now();
        let last = self.stats.accept_error_logged.load(Ordering::Relaxed);
        if n == 0 || now.saturating_sub(last) >= 1000 {
            self.stats.accept_error_logged.store(now, Ordering::Relaxed);
            tracing::warn!(error = %error, failures = n + 1, "accept failed; raise the descriptor limit if it says so");
        }
        // EMFILE (24), ENFILE (23).
        let out_of_descriptors = matches!(error.raw_os_error(), Some(24 | 23));
        if out_of_descriptors { Duration::from_millis(100) } else { Duration::from_millis(10) }
    }

    /// A connection was accepted: counts it and applies the listener limit. `None`: reset it (counted).
    pub(crate) fn admit(&self) -> Option<Admitted> {
        let stats = &self.stats;
        stats.accepted.fetch_add(1, Ordering::Relaxed);
        let config = Arc::clone(&self.config.borrow());
        if config.max_connections.is_some_and(|max| stats.active.load(Ordering::Relaxed) >= max) {
            stats.refused_limit.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        stats.active.fetch_add(1, Ordering::Relaxed);
        Some(Admitted { active: Active(Arc::clone(stats)), config })
    }

    /// The PROXY protocol header expected from upstream was not there: counted; reset the connection.
    pub(crate) fn header_failed(&self, peer: SocketAddr, why: &str) {
        self.stats.proxy_header_errors.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(%peer, why, "no valid PROXY protocol header; resetting");
    }

    /// Picks a backend for `client` (the peer, or the client named by a PROXY header) and applies the
    /// per-backend limit. `None`: reset the connection (counted).
    pub(crate) fn pick(&self, config: &ListenerConfig, client: SocketAddr) -> Option<Pick> {
        let balancer = Arc::clone(&self.balancer.borrow());
        let Some(pick) = balancer.pick(client.ip(), Instant::now()) else {
            self.stats.refused_no_backend.fetch_add(1, Ordering::Relaxed);
            return None;
        };
        // The pick's guard already counts this connection.
        if config
            .max_connections_per_backend
            .is_some_and(|max| pick.guard.counters().active.load(Ordering::Relaxed) > max)
        {
            self.stats.refused_backend_limit.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(pick)
    }

    /// Connecting to the picked backend failed (counted on the listener and the backend); reset the client.
    pub(crate) fn connect_failed(&self, client: SocketAddr, pick: &Pick, error: &RelayError) {
        let outlier = self.balancer.borrow().outlier().copied();
        if let Some(length) = pick.guard.counters().connect_failed(outlier.as_ref(), Instant::now()) {
            tracing::warn!(backend = %pick.addr, ejected_for = ?length, "backend ejected after failed connects");
        }
        self.stats.connect_errors.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(%client, backend = %pick.addr, %error, "backend connect failed");
    }

    /// The connection is established: it can now be ended by `reset_connections_to` or a drain.
    pub(crate) fn register(&self, backend: SocketAddr) -> Registered {
        self.connections.register(backend)
    }

    /// Bytes sent to the backend outside the relay (a PROXY header's trailing client bytes).
    pub(crate) fn sent_early(&self, n: usize) {
        self.stats.traffic.to_backend.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Counts how a relay ended.
    pub(crate) fn finished(&self, client: SocketAddr, backend: SocketAddr, result: &Result<RelayOutcome, RelayError>) {
        match result {
            Ok(out) if out.end == RelayEnd::IdleTimeout => {
                self.stats.idle_timeouts.fetch_add(1, Ordering::Relaxed);
            }
            Ok(out) if out.end == RelayEnd::Cancelled => {
                self.stats.cancelled.fetch_add(1, Ordering::Relaxed);
            }
            Ok(_) => {}
            Err(e) => {
                self.stats.relay_errors.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%client, %backend, error = %e, "relay ended with an error");
            }
        }
    }
}

/// A running TCP listener, on either engine.
#[derive(Debug)]
pub struct TcpProxy {
    local_addr: SocketAddr,
    stats: Arc<ListenerStats>,
    balancer: watch::Sender<Arc<Balancer>>,
    config: watch::Sender<Arc<ListenerConfig>>,
    connections: Arc<Connections>,
    /// Drain timers of backends that left: when one fires, the connections still open to it are reset.
    drains: std::sync::Mutex<HashMap<SocketAddr, tokio::task::AbortHandle>>,
    /// Dropping it stops accepting (closes the listening socket or sockets).
    _accept: AcceptGuard,
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        // A stopped listener's connections follow `drain` (or run on), not the timers of single backends.
        for (_, timer) in self.drains.get_mut().unwrap_or_else(|e| e.into_inner()).drain() {
            timer.abort();
        }
    }
}

impl TcpProxy {
    /// Binds `addr` on `engine` and starts accepting.
    pub fn start(
        engine: &dyn Engine,
        addr: SocketAddr,
        balancer: Arc<Balancer>,
        config: ListenerConfig,
    ) -> io::Result<TcpProxy> {
        let (shared, parts) = TcpProxy::parts(balancer, config);
        let (local_addr, accept) = engine.serve_tcp(addr, shared)?;
        Ok(parts.finish(local_addr, accept))
    }

    /// Binds `addr` on the epoll engine and starts accepting.
    pub async fn bind(addr: SocketAddr, balancer: Arc<Balancer>, config: ListenerConfig) -> io::Result<TcpProxy> {
        TcpProxy::start(&crate::engine::EpollEngine, addr, balancer, config)
    }

    /// Starts accepting on a listener bound elsewhere (for instance with `SO_REUSEPORT`), on the epoll engine.
    pub fn serve(listener: TcpListener, balancer: Arc<Balancer>, config: ListenerConfig) -> TcpProxy {
        let local_addr = listener.local_addr().unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        let (shared, parts) = TcpProxy::parts(balancer, config);
        let accept = crate::epoll::serve_listener(listener, shared);
        parts.finish(local_addr, accept)
    }

    fn parts(balancer: Arc<Balancer>, config: ListenerConfig) -> (ListenerShared, Parts) {
        let stats = Arc::new(ListenerStats::default());
        let (balancer, balancer_rx) = watch::channel(balancer);
        let (config, config_rx) = watch::channel(Arc::new(config));
        let connections = Arc::new(Connections::default());
        let shared = ListenerShared {
            balancer: balancer_rx,
            config: config_rx,
            stats: Arc::clone(&stats),
            connections: Arc::clone(&connections),
        };
        (shared, Parts { stats, balancer, config, connections })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn stats(&self) -> &Arc<ListenerStats> {
        &self.stats
    }

    /// New connections use `balancer` from now on; established ones are untouched.
    pub fn set_balancer(&self, balancer: Arc<Balancer>) {
        self.balancer.send_replace(balancer);
    }

    pub fn balancer(&self) -> Arc<Balancer> {
        Arc::clone(&self.balancer.borrow())
    }

    /// New connections use `config` from now on.
    pub fn set_config(&self, config: ListenerConfig) {
        self.config.send_replace(Arc::new(config));
    }

    /// Stops accepting (the socket closes); established connections run on.
    pub fn stop(self) {}

    /// Connections currently relaying (connected to their backend).
    pub fn connections(&self) -> usize {
        self.connections.len()
    }

    /// Resets the established connections to `backend` (a removed backend whose drain timeout has passed);
    /// returns how many.
    pub fn reset_connections_to(&self, backend: SocketAddr) -> usize {
        self.connections.cancel(|b| b == backend)
    }

    /// `backend` left the set (removed, or no longer ready): its established connections may run on for
    /// `timeout`, then the rest are reset. A backend already draining keeps its first deadline.
    pub fn drain_backend(&self, backend: SocketAddr, timeout: Duration) {
        let mut drains = self.drains.lock().unwrap_or_else(|e| e.into_inner());
        if drains.get(&backend).is_some_and(|t| !t.is_finished()) {
            return;
        }
        let connections = Arc::clone(&self.connections);
        let local = self.local_addr;
        let timer = tokio::spawn(async move {
            tokio::time::sleep(timeout).await;
            let reset = connections.cancel(|b| b == backend);
            if reset > 0 {
                tracing::info!(listener = %local, %backend, reset, "drain timeout: resetting a removed backend's connections");
            }
        });
        drains.insert(backend, timer.abort_handle());
    }

    /// `backend` is back: its connections are no longer on a timer.
    pub fn cancel_drain(&self, backend: SocketAddr) {
        if let Some(timer) = self.drains.lock().unwrap_or_else(|e| e.into_inner()).remove(&backend) {
            timer.abort();
        }
    }

    /// The registry of established connections (for status: the backends that left and still drain).
    pub(crate) fn connection_registry(&self) -> Arc<Connections> {
        Arc::clone(&self.connections)
    }

    /// Backends whose connections are on a drain timer now.
    pub fn draining(&self) -> Vec<SocketAddr> {
        let drains = self.drains.lock().unwrap_or_else(|e| e.into_inner());
        drains.iter().filter(|(_, t)| !t.is_finished()).map(|(a, _)| *a).collect()
    }

    /// Stops accepting, waits up to `timeout` for established connections to end on their own, then resets
    /// the rest; returns how many were reset.
    pub async fn drain(self, timeout: Duration) -> usize {
        let connections = Arc::clone(&self.connections);
        drop(self);
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let ended = connections.ended.notified();
            if connections.len() == 0 {
                return 0;
            }
            if tokio::time::timeout_at(deadline, ended).await.is_err() {
                return connections.cancel(|_| true);
            }
        }
    }
}

struct Parts {
    stats: Arc<ListenerStats>,
    balancer: watch::Sender<Arc<Balancer>>,
    config: watch::Sender<Arc<ListenerConfig>>,
    connections: Arc<Connections>,
}

impl Parts {
    fn finish(self, local_addr: SocketAddr, accept: AcceptGuard) -> TcpProxy {
        let Parts { stats, balancer, config, connections } = self;
        TcpProxy { local_addr, stats, balancer, config, connections, drains: Default::default(), _accept: accept }
    }
}
