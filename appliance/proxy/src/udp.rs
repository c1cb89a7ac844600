//! The UDP relay: per-flow sessions. The first datagram from a client address picks a backend and opens a
//! connected upstream socket for that client; datagrams then go client → upstream and replies upstream → client
//! (sent from the listening socket, so they come from the VIP:port the client used). A session ends after
//! `idle_timeout` without a datagram either way; at `max_sessions`, datagrams of new clients are dropped and
//! counted.
//!
//! The decisions and counters are engine-neutral ([`UdpShared`]); this file also holds the epoll engine's
//! loops. The io_uring engine's are in `uring.rs` (a `SO_REUSEPORT` socket per core thread; the kernel hashes a
//! client's datagrams to one of them, so a session lives on one thread).

use crate::balance::{Balancer, ConnGuard, Pick};
use crate::engine::{AcceptGuard, Engine};
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// The largest datagram relayed (an IPv4 UDP payload can be up to 65 507 bytes).
pub(crate) const MAX_DATAGRAM: usize = 65_535;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdpConfig {
    pub idle_timeout: Duration,
    pub max_sessions: usize,
}

impl Default for UdpConfig {
    fn default() -> UdpConfig {
        UdpConfig { idle_timeout: Duration::from_secs(30), max_sessions: 65_536 }
    }
}

#[derive(Debug, Default)]
pub struct UdpStats {
    pub sessions: AtomicU64,
    pub sessions_total: AtomicU64,
    pub sessions_expired: AtomicU64,
    /// Sessions ended because their backend left the set (the client's next datagram picks again).
    pub sessions_backend_gone: AtomicU64,
    /// Datagrams of new clients dropped because of `max_sessions`.
    pub dropped_session_limit: AtomicU64,
    /// Datagrams of new clients dropped because no backend takes new flows.
    pub dropped_no_backend: AtomicU64,
    /// Datagrams that could not be sent on (either way).
    pub send_errors: AtomicU64,
    pub datagrams_to_backend: AtomicU64,
    pub datagrams_to_client: AtomicU64,
    pub bytes_to_backend: AtomicU64,
    pub bytes_to_client: AtomicU64,
}

/// The sessions of one listener (client → backend), for the cap and for listing; each engine keeps its own
/// sockets.
#[derive(Debug, Default)]
pub(crate) struct SessionTable {
    next: AtomicU64,
    map: Mutex<HashMap<SocketAddr, (u64, SocketAddr)>>,
    /// Counts balancer changes, so a session re-checks its backend only after one.
    generation: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What every receive loop of one UDP listener (one per core on io_uring) reads and updates.
#[derive(Debug, Clone)]
pub struct UdpShared {
    balancer: watch::Receiver<Arc<Balancer>>,
    config: watch::Receiver<UdpConfig>,
    table: Arc<SessionTable>,
    stats: Arc<UdpStats>,
}

impl UdpShared {
    /// A datagram from a client without a session: applies the session cap and picks a backend. `None`: drop
    /// the datagram (counted).
    pub(crate) fn new_session(&self, client: SocketAddr) -> Option<(Pick, UdpConfig)> {
        let config = self.config.borrow().clone();
        if lock(&self.table.map).len() >= config.max_sessions {
            self.stats.dropped_session_limit.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let balancer = Arc::clone(&self.balancer.borrow());
        let Some(pick) = balancer.pick(client.ip(), std::time::Instant::now()) else {
            self.stats.dropped_no_backend.fetch_add(1, Ordering::Relaxed);
            return None;
        };
        Some((pick, config))
    }

    /// A session is open; returns its id (to close it with).
    pub(crate) fn opened(&self, client: SocketAddr, backend: SocketAddr) -> u64 {
        let id = self.table.next.fetch_add(1, Ordering::Relaxed);
        lock(&self.table.map).insert(client, (id, backend));
        self.stats.sessions.fetch_add(1, Ordering::Relaxed);
        self.stats.sessions_total.fetch_add(1, Ordering::Relaxed);
        id
    }

    /// Whether `backend` (of a session last checked at balancer generation `checked`) has left the backend set
    /// since; then the session ends and the client's next datagram opens a new one, as kube-proxy flushes the
    /// UDP conntrack entries of a removed endpoint. Cheap while the balancer is unchanged (one atomic load).
    pub(crate) fn backend_gone(&self, backend: SocketAddr, checked: &AtomicU64) -> bool {
        let now = self.table.generation.load(Ordering::Acquire);
        if checked.swap(now, Ordering::Relaxed) == now {
            return false;
        }
        !self.balancer.borrow().backends().iter().any(|b| b.addr == backend)
    }

    /// A session ended because its backend left.
    pub(crate) fn ended(&self, client: SocketAddr, id: u64) {
        let mut map = lock(&self.table.map);
        if map.get(&client).is_some_and(|(i, _)| *i == id) {
            map.remove(&client);
            self.stats.sessions.fetch_sub(1, Ordering::Relaxed);
            self.stats.sessions_backend_gone.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The balancer generation now (a new session starts checked at it).
    pub(crate) fn generation(&self) -> u64 {
        self.table.generation.load(Ordering::Acquire)
    }

    /// A session idled out.
    pub(crate) fn expired(&self, client: SocketAddr, id: u64) {
        let mut map = lock(&self.table.map);
        if map.get(&client).is_some_and(|(i, _)| *i == id) {
            map.remove(&client);
            self.stats.sessions.fetch_sub(1, Ordering::Relaxed);
            self.stats.sessions_expired.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn sent_to_backend(&self, result: &io::Result<usize>, backend: SocketAddr) {
        match result {
            Ok(n) => {
                self.stats.datagrams_to_backend.fetch_add(1, Ordering::Relaxed);
                self.stats.bytes_to_backend.fetch_add(*n as u64, Ordering::Relaxed);
            }
            Err(e) => {
                self.stats.send_errors.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%backend, error = %e, "udp send to backend failed");
            }
        }
    }

    pub(crate) fn sent_to_client(&self, result: &io::Result<usize>) {
        match result {
            Ok(n) => {
                self.stats.datagrams_to_client.fetch_add(1, Ordering::Relaxed);
                self.stats.bytes_to_client.fetch_add(*n as u64, Ordering::Relaxed);
            }
            Err(_) => {
                self.stats.send_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    pub(crate) fn send_error(&self) {
        self.stats.send_errors.fetch_add(1, Ordering::Relaxed);
    }
}

/// A running UDP listener, on either engine.
#[derive(Debug)]
pub struct UdpProxy {
    local_addr: SocketAddr,
    stats: Arc<UdpStats>,
    balancer: watch::Sender<Arc<Balancer>>,
    config: watch::Sender<UdpConfig>,
    table: Arc<SessionTable>,
    /// Dropping it stops the listener and its sessions.
    _running: AcceptGuard,
}

impl UdpProxy {
    /// Binds on the epoll engine.
    pub async fn bind(addr: SocketAddr, balancer: Arc<Balancer>, config: UdpConfig) -> io::Result<UdpProxy> {
        UdpProxy::start(&crate::engine::EpollEngine, addr, balancer, config)
    }

    /// Binds on `engine`; must be called inside a tokio runtime.
    pub fn start(
        engine: &dyn Engine,
        addr: SocketAddr,
        balancer: Arc<Balancer>,
        config: UdpConfig,
    ) -> io::Result<UdpProxy> {
        let stats = Arc::new(UdpStats::default());
        let table = Arc::new(SessionTable::default());
        let (balancer, balancer_rx) = watch::channel(balancer);
        let (config, config_rx) = watch::channel(config);
        let shared = UdpShared {
            balancer: balancer_rx,
            config: config_rx,
            table: Arc::clone(&table),
            stats: Arc::clone(&stats),
        };
        let (local_addr, running) = engine.serve_udp(addr, shared)?;
        Ok(UdpProxy { local_addr, stats, balancer, config, table, _running: running })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn stats(&self) -> &Arc<UdpStats> {
        &self.stats
    }

    /// New sessions use `balancer`; existing ones keep their backend.
    pub fn set_balancer(&self, balancer: Arc<Balancer>) {
        self.balancer.send_replace(balancer);
        self.table.generation.fetch_add(1, Ordering::Release);
    }

    pub fn balancer(&self) -> Arc<Balancer> {
        Arc::clone(&self.balancer.borrow())
    }

    pub fn set_config(&self, config: UdpConfig) {
        self.config.send_replace(config);
    }

    /// The live sessions: client → backend.
    pub fn sessions(&self) -> Vec<(SocketAddr, SocketAddr)> {
        lock(&self.table.map).iter().map(|(c, (_, b))| (*c, *b)).collect()
    }
}

// The epoll engine's UDP loops.

#[derive(Debug)]
struct Session {
    id: u64,
    upstream: Arc<UdpSocket>,
    backend: SocketAddr,
    start: Instant,
    last_ms: AtomicU64,
    /// The balancer generation its backend was last found in.
    checked: AtomicU64,
    _guard: ConnGuard,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Session {
    fn touch(&self) {
        self.last_ms.fetch_max(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

/// The epoll engine's own session map: the upstream sockets to forward a client's datagrams to.
type Sessions = Arc<Mutex<HashMap<SocketAddr, Arc<Session>>>>;

/// Stops the receive loop and every session's task when dropped.
struct EpollUdp {
    task: JoinHandle<()>,
    sessions: Sessions,
}

impl Drop for EpollUdp {
    fn drop(&mut self) {
        self.task.abort();
        for (_, s) in lock(&self.sessions).drain() {
            if let Some(t) = lock(&s.task).take() {
                t.abort();
            }
        }
    }
}

/// Binds and starts a UDP listener on the epoll engine (inside a tokio runtime).
pub(crate) fn serve_epoll(addr: SocketAddr, shared: UdpShared) -> io::Result<(SocketAddr, AcceptGuard)> {
    let std = std::net::UdpSocket::bind(addr)?;
    std.set_nonblocking(true)?;
    let socket = Arc::new(UdpSocket::from_std(std)?);
    let local_addr = socket.local_addr()?;
    let sessions: Sessions = Arc::default();
    let task = tokio::spawn(recv_loop(socket, shared, Arc::clone(&sessions)));
    Ok((local_addr, Box::new(EpollUdp { task, sessions })))
}

async fn upstream_socket(backend: SocketAddr) -> io::Result<UdpSocket> {
    let any: SocketAddr = if backend.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { ([0u16; 8], 0).into() };
    let s = UdpSocket::bind(any).await?;
    s.connect(backend).await?;
    Ok(s)
}

async fn recv_loop(socket: Arc<UdpSocket>, shared: UdpShared, sessions: Sessions) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let (n, client) = match socket.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                // ICMP errors for earlier sends surface here on some kernels; the socket stays usable.
                tracing::debug!(error = %e, "udp receive failed");
                continue;
            }
        };
        let existing = lock(&sessions).get(&client).cloned();
        let existing = match existing {
            Some(s) if shared.backend_gone(s.backend, &s.checked) => {
                lock(&sessions).remove(&client);
                if let Some(t) = lock(&s.task).take() {
                    t.abort();
                }
                shared.ended(client, s.id);
                None
            }
            other => other,
        };
        let session = match existing {
            Some(s) => s,
            None => {
                let Some((pick, cfg)) = shared.new_session(client) else {
                    continue;
                };
                let upstream = match upstream_socket(pick.addr).await {
                    Ok(u) => Arc::new(u),
                    Err(e) => {
                        shared.send_error();
                        tracing::debug!(backend = %pick.addr, error = %e, "udp upstream socket failed");
                        continue;
                    }
                };
                let id = shared.opened(client, pick.addr);
                let session = Arc::new(Session {
                    id,
                    upstream,
                    backend: pick.addr,
                    start: Instant::now(),
                    last_ms: AtomicU64::new(0),
                    checked: AtomicU64::new(shared.generation()),
                    _guard: pick.guard,
                    task: Mutex::new(None),
                });
                let task = tokio::spawn(session_loop(
                    Arc::clone(&session),
                    client,
                    Arc::clone(&socket),
                    cfg.idle_timeout,
                    Arc::clone(&sessions),
                    shared.clone(),
                ));
                *lock(&session.task) = Some(task);
                lock(&sessions).insert(client, Arc::clone(&session));
                session
            }
        };
        session.touch();
        let sent = session.upstream.send(&buf[..n]).await;
        shared.sent_to_backend(&sent, session.backend);
    }
}

/// Relays replies of one session to its client until it has been idle for `idle`, then removes it.
async fn session_loop(
    session: Arc<Session>,
    client: SocketAddr,
    socket: Arc<UdpSocket>,
    idle: Duration,
    sessions: Sessions,
    shared: UdpShared,
) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let deadline = session.start + Duration::from_millis(session.last_ms.load(Ordering::Relaxed)) + idle;
        tokio::select! {
            r = session.upstream.recv(&mut buf) => match r {
                Ok(n) => {
                    session.touch();
                    let sent = socket.send_to(&buf[..n], client).await;
                    shared.sent_to_client(&sent);
                }
                // An ICMP port unreachable from the backend: keep the session until it idles out.
                Err(_) => shared.send_error(),
            },
            () = tokio::time::sleep_until(deadline) => {
                let now_deadline =
                    session.start + Duration::from_millis(session.last_ms.load(Ordering::Relaxed)) + idle;
                if Instant::now() >= now_deadline {
                    break;
                }
            }
        }
    }
    {
        let mut map = lock(&sessions);
        if map.get(&client).is_some_and(|s| Arc::ptr_eq(s, &session)) {
            map.remove(&client);
        }
    }
    shared.expired(client, session.id);
}
