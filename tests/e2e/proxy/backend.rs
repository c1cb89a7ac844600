//! Backends of the proxy tests: small servers in the test process. Each has its own veth pair into the
//! appliance's namespace and listens on the root end's address (10.201.x.y, unique to the test), so the address
//! that answered names the backend, and stopping one is dropping it (the listener closes, its connections end,
//! the veth goes).
//!
//! TCP: every connection is greeted with the backend's name and a newline, then whatever the client sends is
//! echoed, and the client's half-close is answered with `BYE <bytes received>\n` and a close; a connection whose first bytes are `stream`
//! instead gets an endless stream of data until [`Backend::release`] (then `END\n` and a clean close), for
//! transfers that must outlive a configuration change. UDP (when asked for): every datagram is answered with
//! `<name> <datagram>`.

use crate::netns::{Link, Netns};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// What a backend has seen.
#[derive(Debug, Default)]
pub struct Stats {
    /// TCP connections accepted.
    pub accepted: AtomicUsize,
    /// TCP connections open now.
    pub active: AtomicUsize,
    /// Bytes written by streams so far (grows while a stream flows).
    pub streamed: AtomicU64,
    /// How the last stream ended: `done` (released and closed cleanly) or the write error.
    pub stream_end: Mutex<Option<String>>,
    pub datagrams: AtomicUsize,
}

/// One backend server; stopped (listener closed, connections dropped, veth deleted) when dropped.
#[derive(Debug)]
pub struct Backend {
    /// Where it listens (TCP, and UDP if asked for).
    pub addr: SocketAddr,
    pub stats: Arc<Stats>,
    release: watch::Sender<bool>,
    cancel: CancellationToken,
    _link: Link,
}

struct ActiveGuard(Arc<Stats>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Backend {
    /// Starts a backend named `name` on `port` of a new veth into `appliance_ns` (its IPv6 address if `v6`), for
    /// TCP and, if `udp`, UDP too.
    pub async fn start(appliance_ns: &Netns, name: &str, port: u16, udp: bool, v6: bool) -> Backend {
        let link = Link::to_root(appliance_ns);
        let addr = SocketAddr::new(link.a.addr(v6), port);
        let stats = Arc::new(Stats::default());
        let (release, release_rx) = watch::channel(false);
        let cancel = CancellationToken::new();
        let listener = TcpListener::bind(addr).await.unwrap_or_else(|e| panic!("backend {name} binds {addr}: {e}"));
        tokio::spawn(accept_loop(listener, name.to_string(), Arc::clone(&stats), release_rx, cancel.clone()));
        if udp {
            let socket = UdpSocket::bind(addr).await.unwrap_or_else(|e| panic!("backend {name} binds udp {addr}: {e}"));
            tokio::spawn(udp_loop(socket, name.to_string(), Arc::clone(&stats), cancel.clone()));
        }
        Backend { addr, stats, release, cancel, _link: link }
    }

    /// `ip:port` as a service's `backends[].address`.
    pub fn address(&self) -> String {
        self.addr.to_string()
    }

    pub fn active(&self) -> usize {
        self.stats.active.load(Ordering::Relaxed)
    }

    pub fn accepted(&self) -> usize {
        self.stats.accepted.load(Ordering::Relaxed)
    }

    pub fn streamed(&self) -> u64 {
        self.stats.streamed.load(Ordering::Relaxed)
    }

    pub fn stream_end(&self) -> Option<String> {
        self.stats.stream_end.lock().expect("stream_end").clone()
    }

    /// Lets running streams finish: each writes `END\n` and closes.
    pub fn release(&self) {
        self.release.send_replace(true);
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

async fn accept_loop(
    listener: TcpListener,
    name: String,
    stats: Arc<Stats>,
    release: watch::Receiver<bool>,
    cancel: CancellationToken,
) {
    loop {
        let stream = tokio::select! {
            () = cancel.cancelled() => return,
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(_) => continue,
            },
        };
        stats.accepted.fetch_add(1, Ordering::Relaxed);
        stats.active.fetch_add(1, Ordering::Relaxed);
        let guard = ActiveGuard(Arc::clone(&stats));
        let (name, stats, release, cancel) = (name.clone(), Arc::clone(&stats), release.clone(), cancel.clone());
        tokio::spawn(async move {
            let _guard = guard;
            tokio::select! {
                () = cancel.cancelled() => {}
                () = serve(stream, &name, &stats, release) => {}
            }
        });
    }
}

async fn serve(mut s: TcpStream, name: &str, stats: &Stats, release: watch::Receiver<bool>) {
    if s.write_all(format!("{name}\n").as_bytes()).await.is_err() {
        return;
    }
    let mut buf = vec![0u8; 16 * 1024];
    let mut received = 0;
    loop {
        let n = match s.read(&mut buf).await {
            Ok(0) => {
                // Written after the client's half-close: it must still reach the client.
                let _ = s.write_all(format!("BYE {received}\n").as_bytes()).await;
                let _ = s.shutdown().await;
                return;
            }
            Ok(n) => n,
            Err(_) => return,
        };
        received += n;
        if buf[..n].starts_with(b"stream") {
            let end = stream(&mut s, stats, release).await;
            *stats.stream_end.lock().expect("stream_end") = Some(end);
            return;
        }
        if s.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// Writes chunks until released, then `END\n` and a clean close; returns `done` or the write error.
async fn stream(s: &mut TcpStream, stats: &Stats, mut release: watch::Receiver<bool>) -> String {
    let chunk = vec![b'x'; 16 * 1024];
    loop {
        if *release.borrow_and_update() {
            if let Err(e) = s.write_all(b"END\n").await {
                return format!("error: {e}");
            }
            let _ = s.shutdown().await;
            // Reads to the client's own close, so nothing is left unread (which would make the close a reset).
            let mut sink = [0u8; 1024];
            while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(60), s.read(&mut sink)).await {
                if n == 0 {
                    break;
                }
            }
            return "done".into();
        }
        match s.write_all(&chunk).await {
            Ok(()) => {
                stats.streamed.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            }
            Err(e) => return format!("error: {e}"),
        }
        // Paced, so a long transfer costs little CPU next to the other tests.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn udp_loop(socket: UdpSocket, name: String, stats: Arc<Stats>, cancel: CancellationToken) {
    let mut buf = vec![0u8; 65_536];
    loop {
        let (n, from) = tokio::select! {
            () = cancel.cancelled() => return,
            r = socket.recv_from(&mut buf) => match r {
                Ok(r) => r,
                Err(_) => continue,
            },
        };
        stats.datagrams.fetch_add(1, Ordering::Relaxed);
        let mut reply = format!("{name} ").into_bytes();
        reply.extend_from_slice(&buf[..n]);
        let _ = socket.send_to(&reply, from).await;
    }
}
