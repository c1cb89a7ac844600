//! A TCP listener of the epoll engine: accepts on one address, picks a backend with a [`Balancer`], connects and
//! relays. The balancer and the limits can be swapped while it runs ([`TcpProxy::set_balancer`],
//! [`TcpProxy::set_config`]) without touching the listening socket or established connections; dropping the
//! proxy (or [`TcpProxy::stop`]) stops accepting and lets established connections run to their end.

use crate::balance::Balancer;
use crate::relay::{RelayConfig, Traffic, connect, relay};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
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
    pub traffic: Traffic,
}

struct Active(Arc<ListenerStats>);

impl Drop for Active {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A running TCP listener.
#[derive(Debug)]
pub struct TcpProxy {
    local_addr: SocketAddr,
    stats: Arc<ListenerStats>,
    balancer: watch::Sender<Arc<Balancer>>,
    config: watch::Sender<ListenerConfig>,
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
        let accept = tokio::spawn(accept_loop(listener, balancer_rx, config_rx, Arc::clone(&stats)));
        TcpProxy { local_addr, stats, balancer, config, accept }
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
        let active = Active(Arc::clone(&stats));
        let stats = Arc::clone(&stats);
        tokio::spawn(async move {
            let _active = active;
            let backend = match connect(pick.addr, cfg.relay.connect_timeout).await {
                Ok(b) => b,
                Err(e) => {
                    pick.guard.counters().connect_errors.fetch_add(1, Ordering::Relaxed);
                    stats.connect_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(client = %peer, backend = %pick.addr, error = %e, "backend connect failed");
                    reset(client);
                    return;
                }
            };
            match relay(client, backend, &cfg.relay, &stats.traffic).await {
                Ok(out) if out.end == crate::relay::RelayEnd::IdleTimeout => {
                    stats.idle_timeouts.fetch_add(1, Ordering::Relaxed);
                }
                Ok(_) => {}
                Err(e) => {
                    stats.relay_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(client = %peer, backend = %pick.addr, error = %e, "relay ended with an error");
                }
            }
            drop(pick);
        });
    }
}
