//! The UDP relay (on tokio under both engines): per-flow sessions. The first datagram from a client address picks a
//! backend and opens a connected upstream socket for that client; datagrams then go client → upstream and
//! replies upstream → client (sent from the listening socket, so they come from the VIP:port the client used).
//! A session ends after `idle_timeout` without a datagram either way; at `max_sessions`, datagrams of new
//! clients are dropped and counted.

use crate::balance::{Balancer, ConnGuard};
use crate::engine::Engine;
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
const MAX_DATAGRAM: usize = 65_535;

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

#[derive(Debug)]
struct Session {
    upstream: Arc<UdpSocket>,
    backend: SocketAddr,
    start: Instant,
    last_ms: AtomicU64,
    _guard: ConnGuard,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Session {
    fn touch(&self) {
        self.last_ms.fetch_max(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

type Sessions = Arc<Mutex<HashMap<SocketAddr, Arc<Session>>>>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A running UDP listener.
#[derive(Debug)]
pub struct UdpProxy {
    local_addr: SocketAddr,
    stats: Arc<UdpStats>,
    balancer: watch::Sender<Arc<Balancer>>,
    config: watch::Sender<UdpConfig>,
    sessions: Sessions,
    task: JoinHandle<()>,
}

impl UdpProxy {
    /// Binds on the epoll engine.
    pub async fn bind(addr: SocketAddr, balancer: Arc<Balancer>, config: UdpConfig) -> io::Result<UdpProxy> {
        UdpProxy::bind_std(addr, balancer, config)
    }

    /// Binds on `engine` (both engines run UDP on tokio: see `docs/proxy.md`).
    pub fn start(
        engine: &dyn Engine,
        addr: SocketAddr,
        balancer: Arc<Balancer>,
        config: UdpConfig,
    ) -> io::Result<UdpProxy> {
        engine.serve_udp(addr, balancer, config)
    }

    /// Binds without awaiting (the bind itself never blocks); must run inside a tokio runtime.
    pub(crate) fn bind_std(addr: SocketAddr, balancer: Arc<Balancer>, config: UdpConfig) -> io::Result<UdpProxy> {
        let std = std::net::UdpSocket::bind(addr)?;
        std.set_nonblocking(true)?;
        let socket = Arc::new(UdpSocket::from_std(std)?);
        let local_addr = socket.local_addr()?;
        let stats = Arc::new(UdpStats::default());
        let sessions: Sessions = Arc::default();
        let (balancer, balancer_rx) = watch::channel(balancer);
        let (config, config_rx) = watch::channel(config);
        let task = tokio::spawn(recv_loop(socket, balancer_rx, config_rx, Arc::clone(&sessions), Arc::clone(&stats)));
        Ok(UdpProxy { local_addr, stats, balancer, config, sessions, task })
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
    }

    pub fn set_config(&self, config: UdpConfig) {
        self.config.send_replace(config);
    }

    /// The live sessions: client → backend.
    pub fn sessions(&self) -> Vec<(SocketAddr, SocketAddr)> {
        lock(&self.sessions).iter().map(|(c, s)| (*c, s.backend)).collect()
    }
}

impl Drop for UdpProxy {
    fn drop(&mut self) {
        self.task.abort();
        for (_, s) in lock(&self.sessions).drain() {
            if let Some(t) = lock(&s.task).take() {
                t.abort();
            }
        }
    }
}

async fn upstream_socket(backend: SocketAddr) -> io::Result<UdpSocket> {
    let any: SocketAddr = if backend.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { ([0u16; 8], 0).into() };
    let s = UdpSocket::bind(any).await?;
    s.connect(backend).await?;
    Ok(s)
}

async fn recv_loop(
    socket: Arc<UdpSocket>,
    balancer: watch::Receiver<Arc<Balancer>>,
    config: watch::Receiver<UdpConfig>,
    sessions: Sessions,
    stats: Arc<UdpStats>,
) {
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
        let session = match existing {
            Some(s) => s,
            None => {
                let cfg = config.borrow().clone();
                if lock(&sessions).len() >= cfg.max_sessions {
                    stats.dropped_session_limit.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let bal = Arc::clone(&balancer.borrow());
                let Some(pick) = bal.pick(client.ip(), std::time::Instant::now()) else {
                    stats.dropped_no_backend.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                let upstream = match upstream_socket(pick.addr).await {
                    Ok(u) => Arc::new(u),
                    Err(e) => {
                        stats.send_errors.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(backend = %pick.addr, error = %e, "udp upstream socket failed");
                        continue;
                    }
                };
                let session = Arc::new(Session {
                    upstream,
                    backend: pick.addr,
                    start: Instant::now(),
                    last_ms: AtomicU64::new(0),
                    _guard: pick.guard,
                    task: Mutex::new(None),
                });
                let task = tokio::spawn(session_loop(
                    Arc::clone(&session),
                    client,
                    Arc::clone(&socket),
                    cfg.idle_timeout,
                    Arc::clone(&sessions),
                    Arc::clone(&stats),
                ));
                *lock(&session.task) = Some(task);
                lock(&sessions).insert(client, Arc::clone(&session));
                stats.sessions.fetch_add(1, Ordering::Relaxed);
                stats.sessions_total.fetch_add(1, Ordering::Relaxed);
                session
            }
        };
        session.touch();
        match session.upstream.send(&buf[..n]).await {
            Ok(_) => {
                stats.datagrams_to_backend.fetch_add(1, Ordering::Relaxed);
                stats.bytes_to_backend.fetch_add(n as u64, Ordering::Relaxed);
            }
            Err(e) => {
                stats.send_errors.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(backend = %session.backend, error = %e, "udp send to backend failed");
            }
        }
    }
}

/// Relays replies of one session to its client until it has been idle for `idle`, then removes it.
async fn session_loop(
    session: Arc<Session>,
    client: SocketAddr,
    socket: Arc<UdpSocket>,
    idle: Duration,
    sessions: Sessions,
    stats: Arc<UdpStats>,
) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let deadline = session.start + Duration::from_millis(session.last_ms.load(Ordering::Relaxed)) + idle;
        tokio::select! {
            r = session.upstream.recv(&mut buf) => match r {
                Ok(n) => {
                    session.touch();
                    match socket.send_to(&buf[..n], client).await {
                        Ok(_) => {
                            stats.datagrams_to_client.fetch_add(1, Ordering::Relaxed);
                            stats.bytes_to_client.fetch_add(n as u64, Ordering::Relaxed);
                        }
                        Err(_) => {
                            stats.send_errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                // An ICMP port unreachable from the backend: keep the session until it idles out.
                Err(_) => {
                    stats.send_errors.fetch_add(1, Ordering::Relaxed);
                }
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
    let mut map = lock(&sessions);
    if map.get(&client).is_some_and(|s| Arc::ptr_eq(s, &session)) {
        map.remove(&client);
        stats.sessions.fetch_sub(1, Ordering::Relaxed);
        stats.sessions_expired.fetch_add(1, Ordering::Relaxed);
    }
}
