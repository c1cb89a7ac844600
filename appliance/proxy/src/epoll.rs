//! The epoll engine: tokio's readiness-based sockets on the process's runtime, one task per connection, the
//! `splice(2)` relay of [`crate::relay`], UDP sessions of [`crate::udp`].

use crate::engine::{AcceptGuard, Engine, EngineKind};
use crate::listener::{Admitted, ListenerShared};
use crate::proxy_protocol::{self, MAX_HEADER, Parsed, SendProxy};
use crate::relay::{connect, relay_counting};
use crate::udp::UdpShared;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// The epoll engine (stateless: it runs on the caller's tokio runtime).
#[derive(Debug, Clone, Copy, Default)]
pub struct EpollEngine;

impl Engine for EpollEngine {
    fn kind(&self) -> EngineKind {
        EngineKind::Epoll
    }

    fn serve_tcp(&self, addr: SocketAddr, shared: ListenerShared) -> io::Result<(SocketAddr, AcceptGuard)> {
        // Address reuse as tokio's bind, but a deep backlog (the kernel caps it at `net.core.somaxconn`): a burst
        // of connects must not overflow the queue into SYN cookies and retransmits (HAProxy sizes its backlog
        // from `maxconn` for the same reason).
        let socket = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None)?;
        socket.set_reuse_address(true)?;
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        socket.listen(crate::listener::LISTEN_BACKLOG)?;
        let listener = TcpListener::from_std(socket.into())?;
        let local = listener.local_addr()?;
        Ok((local, serve_listener(listener, shared)))
    }

    fn serve_udp(&self, addr: SocketAddr, shared: UdpShared) -> io::Result<(SocketAddr, AcceptGuard)> {
        crate::udp::serve_epoll(addr, shared)
    }
}

/// Aborts the accept task (closing the listening socket) when dropped.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

pub(crate) fn serve_listener(listener: TcpListener, shared: ListenerShared) -> AcceptGuard {
    let shared = Arc::new(shared);
    Box::new(AbortOnDrop(tokio::spawn(accept_loop(listener, shared))))
}

fn reset(stream: TcpStream) {
    let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
    drop(stream);
}

async fn accept_loop(listener: TcpListener, shared: Arc<ListenerShared>) {
    loop {
        let (client, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of descriptors or a connection gone before we took it: keep the listener, slow down.
                tokio::time::sleep(shared.accept_failed(&e)).await;
                continue;
            }
        };
        let Some(admitted) = shared.admit() else {
            reset(client);
            continue;
        };
        // One pointer per connection to what the listener shares, not a copy of it.
        tokio::spawn(connection(client, peer, Arc::clone(&shared), admitted));
    }
}

/// Reads the PROXY protocol header an upstream balancer sends first. Returns the header's addresses (`None`:
/// use the real ones) and the client bytes that came after it in the same reads.
async fn read_header(client: &TcpStream) -> Result<(Option<(SocketAddr, SocketAddr)>, Vec<u8>), String> {
    let mut buf = vec![0u8; MAX_HEADER];
    let mut len = 0;
    loop {
        client.readable().await.map_err(|e| e.to_string())?;
        match client.try_read(&mut buf[len..]) {
            Ok(0) => return Err("closed before a complete header".into()),
            Ok(n) => len += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e.to_string()),
        }
        match proxy_protocol::parse(&buf[..len]) {
            Parsed::Incomplete if len < buf.len() => continue,
            Parsed::Incomplete => return Err(format!("no complete header in {MAX_HEADER} bytes")),
            Parsed::Invalid(why) => return Err(why),
            Parsed::Header { len: header, addresses } => return Ok((addresses, buf[header..len].to_vec())),
        }
    }
}

async fn connection(client: TcpStream, peer: SocketAddr, shared: Arc<ListenerShared>, admitted: Admitted) {
    let Admitted { active: _active, config } = admitted;
    let pp = &config.proxy_protocol;
    let (from_header, early) = if pp.accept {
        match tokio::time::timeout(pp.header_timeout, read_header(&client)).await {
            Ok(Ok(got)) => got,
            Ok(Err(why)) => {
                shared.header_failed(peer, &why);
                reset(client);
                return;
            }
            Err(_) => {
                shared.header_failed(peer, "timed out");
                reset(client);
                return;
            }
        }
    } else {
        (None, Vec::new())
    };
    let source = from_header.map_or(peer, |(client, _)| client);
    let Some(pick) = shared.pick(&config, source) else {
        reset(client);
        return;
    };
    let mut backend = match connect(pick.addr, config.relay.connect_timeout).await {
        Ok(b) => {
            pick.guard.counters().connect_succeeded();
            b
        }
        Err(e) => {
            shared.connect_failed(source, &pick, &e);
            reset(client);
            return;
        }
    };
    let header = match pp.send {
        SendProxy::None => None,
        send => {
            let dest = from_header.map_or_else(|| client.local_addr().unwrap_or(peer), |(_, dest)| dest);
            proxy_protocol::header(send, source, dest)
        }
    };
    for bytes in [header.as_deref(), Some(early.as_slice())].into_iter().flatten() {
        if bytes.is_empty() {
            continue;
        }
        if let Err(e) = backend.write_all(bytes).await {
            tracing::debug!(client = %source, backend = %pick.addr, error = %e, "writing to the backend failed");
            shared.stats().relay_errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            reset(client);
            reset(backend);
            return;
        }
    }
    shared.sent_early(early.len());
    let registered = shared.register(pick.addr);
    let cancel = registered.cancel.notified();
    let per_backend = Some(&pick.guard.counters().traffic);
    let result = relay_counting(client, backend, &config.relay, &shared.stats().traffic, per_backend, cancel).await;
    shared.finished(source, pick.addr, &result);
    drop(registered);
    drop(pick);
}
