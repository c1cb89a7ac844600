//! A TCP listener of the epoll engine: accepts on one address, picks a backend with a [`Balancer`], connects and
//! relays. The balancer and the limits can be swapped while it runs ([`TcpProxy::set_balancer`],
//! [`TcpProxy::set_config`]) without touching the listening socket or established connections; dropping the
//! proxy (or [`TcpProxy::stop`]) stops accepting and lets established connections run to their end;
//! [`TcpProxy::drain`] stops accepting and resets what is still open after a timeout, and
//! [`TcpProxy::reset_connections_to`] ends the connections to one backend (its drain timeout has passed).

use crate::balance::Balancer;
use crate::relay::{RelayConfig, RelayEnd, Traffic, connect, relay_until};
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

/// Limits and timeouts of one TCP listener.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ListenerConfig {
    pub relay: RelayConfig,
    /// Connections held at once by this listener; over it new ones are reset at once and counted.
    pub max_connections: Option<u64>,
    /// Connections held at once per backend (across this balancer's listeners); over it: reset and counted.
    pub max_connections_per_backend: Option<u64>,
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
    pub traffic: Traffic,
}

struct Active(Arc<ListenerStats>);

impl Drop for Active {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The established (relaying) connections, each with a way to end it.
#[derive(Debug, Default)]
struct Connections {
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
}

struct Registered {
    connections: Arc<Connections>,
    id: u64,
    cancel: Arc<Notify>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.connections.lock().remove(&self.id);
        self.connections.ended.notify_waiters();
    }
}

/// A running TCP listener.
#[derive(Debug)]
pub struct TcpProxy {
    local_addr: SocketAddr,
    stats: Arc<ListenerStats>,
    balancer: watch::Sender<Arc<Balancer>>,
    config: watch::Sender<ListenerConfig>,
    connections: Arc<Connections>,
    accept: JoinHandle<()>,
}

impl TcpProxy {
    /// Binds `addr` and starts accepting.
    pub async fn bind(addr: SocketAddr, balancer: Arc<Balancer>, config: ListenerConfig) -> io::Result<TcpProxy> {
        let listener = TcpListener::bind(addr).await?;
        Ok(TcpProxy::serve(listener, balancer, config))
    }

    /// Starts accepting on a listener bound elsewhere (for instance with `SO_REUSEPORT`).
    pub fn serve(listener: TcpListener, balancer: Arc<Balancer>, config: ListenerConfig) -> TcpProxy {
        let local_addr = listener.local_addr().unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        let stats = Arc::new(ListenerStats::default());
        let (balancer, balancer_rx) = watch::channel(balancer);
        let (config, config_rx) = watch::channel(config);
        let connections = Arc::new(Connections::default());
        let accept =
            tokio::spawn(accept_loop(listener, balancer_rx, config_rx, Arc::clone(&stats), Arc::clone(&connections)));
        TcpProxy { local_addr, stats, balancer, config, connections, accept }
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
        self.config.send_replace(config);
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

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

fn reset(stream: TcpStream) {
    let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
    drop(stream);
}

async fn accept_loop(
    listener: TcpListener,
    balancer: watch::Receiver<Arc<Balancer>>,
    config: watch::Receiver<ListenerConfig>,
    stats: Arc<ListenerStats>,
    connections: Arc<Connections>,
) {
    loop {
        let (client, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of descriptors or a connection gone before we took it: keep the listener, slow down a bit.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        stats.accepted.fetch_add(1, Ordering::Relaxed);
        let cfg = config.borrow().clone();
        if cfg.max_connections.is_some_and(|max| stats.active.load(Ordering::Relaxed) >= max) {
            stats.refused_limit.fetch_add(1, Ordering::Relaxed);
            reset(client);
            continue;
        }
        let bal = Arc::clone(&balancer.borrow());
        let Some(pick) = bal.pick(peer.ip(), Instant::now()) else {
            stats.refused_no_backend.fetch_add(1, Ordering::Relaxed);
            reset(client);
            continue;
        };
        // The pick's guard already counts this connection.
        if cfg.max_connections_per_backend.is_some_and(|max| pick.guard.counters().active.load(Ordering::Relaxed) > max)
        {
            stats.refused_backend_limit.fetch_add(1, Ordering::Relaxed);
            reset(client);
            continue;
        }
        stats.active.fetch_add(1, Ordering::Relaxed);
        let outlier = bal.outlier().copied();
        let active = Active(Arc::clone(&stats));
        let stats = Arc::clone(&stats);
        let connections = Arc::clone(&connections);
        tokio::spawn(async move {
            let _active = active;
            let backend = match connect(pick.addr, cfg.relay.connect_timeout).await {
                Ok(b) => {
                    pick.guard.counters().connect_succeeded();
                    b
                }
                Err(e) => {
                    if let Some(length) = pick.guard.counters().connect_failed(outlier.as_ref(), Instant::now()) {
                        tracing::warn!(backend = %pick.addr, ejected_for = ?length, "backend ejected after failed connects");
                    }
                    stats.connect_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(client = %peer, backend = %pick.addr, error = %e, "backend connect failed");
                    reset(client);
                    return;
                }
            };
            let registered = connections.register(pick.addr);
            let cancel = registered.cancel.notified();
            match relay_until(client, backend, &cfg.relay, &stats.traffic, cancel).await {
                Ok(out) if out.end == RelayEnd::IdleTimeout => {
                    stats.idle_timeouts.fetch_add(1, Ordering::Relaxed);
                }
                Ok(out) if out.end == RelayEnd::Cancelled => {
                    stats.cancelled.fetch_add(1, Ordering::Relaxed);
                }
                Ok(_) => {}
                Err(e) => {
                    stats.relay_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(client = %peer, backend = %pick.addr, error = %e, "relay ended with an error");
                }
            }
            drop(registered);
            drop(pick);
        });
    }
}
