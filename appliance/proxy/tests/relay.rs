//! The TCP relay on loopback: a client, the relay (accept + connect + relay) and small backends. Every case runs
//! against the epoll relay in its copy modes and through a listener of each engine.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::print_stdout)]

mod common;

use common::echo_backend;

use portico_proxy::balance::{Affinity, Algorithm, Backend, Balancer};
use portico_proxy::engine::Engine;
use portico_proxy::listener::{ListenerConfig, TcpProxy};
use portico_proxy::relay::{CopyMode, RelayConfig, RelayEnd, RelayError, RelayOutcome, Traffic, connect, relay};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

const MODES: [CopyMode; 3] = [CopyMode::Splice, CopyMode::Buffered, CopyMode::Auto];

fn config() -> RelayConfig {
    RelayConfig {
        connect_timeout: Duration::from_secs(2),
        idle_timeout: Some(Duration::from_secs(30)),
        buffer_size: 64 * 1024,
        mode: CopyMode::Auto,
    }
}

/// How a case reaches its backend: the epoll relay called directly in one copy mode, or a listener of an
/// engine (the io_uring engine has no relay function of its own to call).
#[derive(Clone)]
enum Way {
    Relay(CopyMode),
    Engine(Arc<dyn Engine>),
}

impl std::fmt::Debug for Way {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Way::Relay(mode) => write!(f, "relay {mode:?}"),
            Way::Engine(engine) => write!(f, "{} engine", engine.name()),
        }
    }
}

/// Every copy mode of the epoll relay, then every engine.
fn ways(modes: &[CopyMode]) -> Vec<Way> {
    let mut out: Vec<Way> = modes.iter().map(|m| Way::Relay(*m)).collect();
    out.extend(common::engines().into_iter().map(Way::Engine));
    out
}

enum FrontKind {
    Relay(JoinHandle<Result<RelayOutcome, RelayError>>, Arc<Traffic>),
    Listener(TcpProxy),
}

/// The proxying side of one case: its address, and how its (single) connection ended.
struct Front {
    addr: SocketAddr,
    kind: FrontKind,
}

/// What a relay did, from the relay's own result or from a listener's counters.
#[derive(Debug, PartialEq, Eq)]
struct Ended {
    to_backend: u64,
    to_client: u64,
    end: RelayEnd,
}

impl Front {
    fn finished(&self) -> bool {
        match &self.kind {
            FrontKind::Relay(task, _) => task.is_finished(),
            FrontKind::Listener(p) => {
                let st = p.stats();
                st.accepted.load(Ordering::Relaxed) > 0 && st.active.load(Ordering::Relaxed) == 0
            }
        }
    }

    fn traffic(&self) -> (u64, u64) {
        let t = match &self.kind {
            FrontKind::Relay(_, t) => t,
            FrontKind::Listener(p) => &p.stats().traffic,
        };
        (t.to_backend.load(Ordering::Relaxed), t.to_client.load(Ordering::Relaxed))
    }

    /// Waits for the connection to end (generously: only to avoid hanging).
    async fn ended(self) -> Result<Ended, String> {
        match self.kind {
            FrontKind::Relay(task, _) => {
                let out = task.await.unwrap().map_err(|e| e.to_string())?;
                Ok(Ended { to_backend: out.to_backend, to_client: out.to_client, end: out.end })
            }
            FrontKind::Listener(p) => {
                let st = p.stats();
                let deadline = std::time::Instant::now() + Duration::from_secs(30);
                while st.accepted.load(Ordering::Relaxed) == 0 || st.active.load(Ordering::Relaxed) > 0 {
                    assert!(std::time::Instant::now() < deadline, "the connection never ended");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                for (counter, what) in [(&st.relay_errors, "relay error"), (&st.connect_errors, "connect error")] {
                    if counter.load(Ordering::Relaxed) > 0 {
                        return Err(what.into());
                    }
                }
                let end = if st.idle_timeouts.load(Ordering::Relaxed) > 0 {
                    RelayEnd::IdleTimeout
                } else if st.cancelled.load(Ordering::Relaxed) > 0 {
                    RelayEnd::Cancelled
                } else {
                    RelayEnd::Closed
                };
                let (to_backend, to_client) =
                    (st.traffic.to_backend.load(Ordering::Relaxed), st.traffic.to_client.load(Ordering::Relaxed));
                Ok(Ended { to_backend, to_client, end })
            }
        }
    }
}

/// A front for one connection to `backend`, the relay's or an engine's.
async fn front(way: &Way, backend: SocketAddr, config: RelayConfig) -> Front {
    match way {
        Way::Relay(mode) => {
            let config = RelayConfig { mode: *mode, ..config };
            let traffic = Arc::new(Traffic::default());
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = l.local_addr().unwrap();
            let t = traffic.clone();
            let task = tokio::spawn(async move {
                let (client, _) = l.accept().await.unwrap();
                let upstream = connect(backend, config.connect_timeout).await?;
                relay(client, upstream, &config, &t).await
            });
            Front { addr, kind: FrontKind::Relay(task, traffic) }
        }
        Way::Engine(engine) => {
            let set = vec![Backend::ready(backend, 1)];
            let balancer = Arc::new(Balancer::with_seed(Algorithm::RoundRobin, Affinity::None, set, 1).unwrap());
            let cfg = ListenerConfig { relay: config, ..Default::default() };
            let proxy = TcpProxy::start(&**engine, "127.0.0.1:0".parse().unwrap(), balancer, cfg).unwrap();
            Front { addr: proxy.local_addr(), kind: FrontKind::Listener(proxy) }
        }
    }
}

#[tokio::test]
async fn echoes_through_the_relay_in_every_mode_and_engine() {
    let backend = echo_backend().await;
    for way in ways(&MODES) {
        let front = front(&way, backend, config()).await;
        let mut c = TcpStream::connect(front.addr).await.unwrap();
        let mut sent = 0u64;
        for i in 0..20u32 {
            let msg = format!("hello {i}");
            c.write_all(msg.as_bytes()).await.unwrap();
            let mut buf = vec![0u8; msg.len()];
            c.read_exact(&mut buf).await.unwrap();
            assert_eq!(buf, msg.as_bytes());
            sent += msg.len() as u64;
            // Live counters: the bytes show before the connection ends (on io_uring the count follows the write's
            // completion, which the client may beat: wait a little).
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while front.traffic() != (sent, sent) {
                assert!(std::time::Instant::now() < deadline, "{way:?}: {:?}", front.traffic());
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        c.shutdown().await.unwrap();
        let mut rest = Vec::new();
        c.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
        let out = front.ended().await.unwrap();
        assert_eq!(out, Ended { to_backend: sent, to_client: sent, end: RelayEnd::Closed }, "{way:?}");
    }
}

#[tokio::test]
async fn the_relay_splices_unless_told_to_copy() {
    let backend = echo_backend().await;
    for mode in MODES {
        let traffic = Arc::new(Traffic::default());
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let cfg = RelayConfig { mode, ..config() };
        let task = tokio::spawn(async move {
            let (client, _) = l.accept().await.unwrap();
            let upstream = connect(backend, cfg.connect_timeout).await.unwrap();
            relay(client, upstream, &cfg, &traffic).await.unwrap()
        });
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(b"hello").await.unwrap();
        let mut buf = [0u8; 5];
        c.read_exact(&mut buf).await.unwrap();
        c.shutdown().await.unwrap();
        let mut rest = Vec::new();
        c.read_to_end(&mut rest).await.unwrap();
        let out = task.await.unwrap();
        match mode {
            // Auto copies small exchanges (no pipe for a five-byte message).
            CopyMode::Buffered | CopyMode::Auto => assert_eq!(out.spliced, (false, false)),
            // TCP sockets on Linux always splice.
            CopyMode::Splice => assert_eq!(out.spliced, (true, true)),
        }
    }
}

#[tokio::test]
async fn auto_splices_once_bulk_flows() {
    let backend = echo_backend().await;
    let traffic = Arc::new(Traffic::default());
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let cfg = RelayConfig { mode: CopyMode::Auto, ..config() };
    let task = tokio::spawn(async move {
        let (client, _) = l.accept().await.unwrap();
        let upstream = connect(backend, cfg.connect_timeout).await.unwrap();
        relay(client, upstream, &cfg, &traffic).await.unwrap()
    });
    let c = TcpStream::connect(addr).await.unwrap();
    let (mut r, mut w) = c.into_split();
    let data = pattern(8 << 20, 3);
    let sent = data.clone();
    let writer = tokio::spawn(async move {
        w.write_all(&sent).await.unwrap();
        w.shutdown().await.unwrap();
    });
    let mut back = Vec::new();
    r.read_to_end(&mut back).await.unwrap();
    writer.await.unwrap();
    assert!(back == data, "every byte back, in order");
    let out = task.await.unwrap();
    assert_eq!(out.spliced, (true, true), "8 MiB each way is bulk");
    assert_eq!((out.to_backend, out.to_client), (8 << 20, 8 << 20));
}

/// A deterministic byte stream and its checksum (FNV-1a over all bytes).
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn checksum(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3))
}

#[tokio::test]
async fn moves_64_mib_each_way_intact() {
    const LEN: usize = 64 << 20;
    let backend = echo_backend().await;
    let data = Arc::new(pattern(LEN, 0x5eed));
    let want = checksum(&data);
    for way in ways(&[CopyMode::Splice, CopyMode::Buffered]) {
        let front = front(&way, backend, config()).await;
        let c = TcpStream::connect(front.addr).await.unwrap();
        let (mut r, mut w) = c.into_split();
        let d = data.clone();
        let writer = tokio::spawn(async move {
            for chunk in d.chunks(1 << 20) {
                w.write_all(chunk).await.unwrap();
            }
            w.shutdown().await.unwrap();
        });
        let start = std::time::Instant::now();
        let mut got = Vec::with_capacity(LEN);
        r.read_to_end(&mut got).await.unwrap();
        let took = start.elapsed();
        writer.await.unwrap();
        assert_eq!(got.len(), LEN);
        assert_eq!(checksum(&got), want, "{way:?}");
        let out = front.ended().await.unwrap();
        assert_eq!((out.to_backend, out.to_client), (LEN as u64, LEN as u64));
        println!("{way:?}: 64 MiB each way through the relay and an echo backend in {took:?} (debug build)");
    }
}

#[tokio::test]
async fn half_close_keeps_the_other_direction_open() {
    for way in ways(&MODES) {
        // The backend reads until the client's FIN, then answers with how much it got, slowly, and closes.
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let backend = l.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut req = Vec::new();
            s.read_to_end(&mut req).await.unwrap();
            for part in 0..5 {
                tokio::time::sleep(Duration::from_millis(20)).await;
                s.write_all(format!("got {} bytes, part {part}\n", req.len()).as_bytes()).await.unwrap();
            }
            s.shutdown().await.unwrap();
        });
        let front = front(&way, backend, config()).await;
        let mut c = TcpStream::connect(front.addr).await.unwrap();
        c.write_all(&[7u8; 1000]).await.unwrap();
        c.shutdown().await.unwrap();
        let mut answer = String::new();
        c.read_to_string(&mut answer).await.unwrap();
        let expected: String = (0..5).map(|p| format!("got 1000 bytes, part {p}\n")).collect();
        assert_eq!(answer, expected, "{way:?}");
        let out = front.ended().await.unwrap();
        assert_eq!(out, Ended { to_backend: 1000, to_client: expected.len() as u64, end: RelayEnd::Closed });
    }
}

#[tokio::test]
async fn backend_half_close_keeps_the_client_sending() {
    for way in ways(&[CopyMode::Splice]) {
        // The backend says hello and shuts its write side, then reads everything the client sends.
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let backend = l.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            s.write_all(b"hello").await.unwrap();
            s.shutdown().await.unwrap();
            let mut got = Vec::new();
            s.read_to_end(&mut got).await.unwrap();
            got.len()
        });
        let front = front(&way, backend, config()).await;
        let mut c = TcpStream::connect(front.addr).await.unwrap();
        let mut hello = Vec::new();
        c.read_to_end(&mut hello).await.unwrap();
        assert_eq!(hello, b"hello");
        // Still sending after the backend's FIN reached us.
        for _ in 0..10 {
            c.write_all(&[1u8; 4096]).await.unwrap();
        }
        c.shutdown().await.unwrap();
        assert_eq!(server.await.unwrap(), 40_960, "{way:?}");
        let out = front.ended().await.unwrap();
        assert_eq!(out, Ended { to_backend: 40_960, to_client: 5, end: RelayEnd::Closed }, "{way:?}");
    }
}

#[tokio::test]
async fn idle_connections_are_closed_and_active_ones_are_not() {
    let backend = echo_backend().await;
    for way in ways(&[CopyMode::Splice, CopyMode::Buffered]) {
        let cfg = RelayConfig { idle_timeout: Some(Duration::from_millis(300)), ..config() };
        // Active: a message every 100 ms for 1 s outlives the 300 ms timeout.
        let front = front(&way, backend, cfg).await;
        let mut c = TcpStream::connect(front.addr).await.unwrap();
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            c.write_all(b"ping").await.unwrap();
            let mut b = [0u8; 4];
            c.read_exact(&mut b).await.unwrap();
        }
        assert!(!front.finished(), "{way:?}");
        // Then silence: the relay closes both sides.
        let mut rest = Vec::new();
        let n = tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut rest)).await.unwrap().unwrap();
        assert_eq!(n, 0);
        let out = front.ended().await.unwrap();
        assert_eq!(out, Ended { to_backend: 40, to_client: 40, end: RelayEnd::IdleTimeout }, "{way:?}");
    }
}
#[tokio::test]
async fn refused_connects_are_reported() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gone = l.local_addr().unwrap();
    drop(l);
    let err = connect(gone, Duration::from_secs(2)).await.unwrap_err();
    assert!(err.is_connect());
    match err {
        RelayError::Connect { addr, source } => {
            assert_eq!(addr, gone);
            assert_eq!(source.kind(), std::io::ErrorKind::ConnectionRefused);
        }
        other => panic!("{other}"),
    }
}

#[tokio::test]
async fn connects_that_hang_time_out() {
    // A listener with a backlog of 0 that never accepts: once its queue holds one connection, further SYNs
    // are dropped and the connect hangs.
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into()).unwrap();
    sock.listen(0).unwrap();
    let addr = sock.local_addr().unwrap().as_socket().unwrap();
    let mut held = Vec::new();
    let mut timed_out = None;
    for _ in 0..8 {
        match connect(addr, Duration::from_millis(300)).await {
            Ok(s) => held.push(s),
            Err(e) => {
                timed_out = Some(e);
                break;
            }
        }
    }
    let err = timed_out.expect("a connect to a full backlog should hang");
    assert!(err.is_connect());
    assert!(matches!(err, RelayError::ConnectTimeout { addr: a, .. } if a == addr), "{err}");
}

#[tokio::test]
async fn a_backend_reset_ends_the_relay_with_an_error() {
    for way in ways(&[CopyMode::Auto]) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let backend = l.local_addr().unwrap();
        tokio::spawn(async move {
            let (s, _) = l.accept().await.unwrap();
            let mut b = [0u8; 4];
            let mut s = s;
            s.read_exact(&mut b).await.unwrap();
            socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO)).unwrap();
            drop(s); // RST
        });
        let front = front(&way, backend, config()).await;
        let mut c = TcpStream::connect(front.addr).await.unwrap();
        c.write_all(b"ping").await.unwrap();
        let mut rest = Vec::new();
        // The client sees the connection end with a reset, passed on.
        let res = tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut rest)).await.unwrap();
        assert_eq!(res.map_err(|e| e.kind()).err(), Some(std::io::ErrorKind::ConnectionReset), "{way:?}");
        let res = front.ended().await;
        assert!(res.is_err(), "{way:?}: {res:?}");
    }
}

/// Through a listener of each engine: a backend that refuses or never answers is a counted connect error and
/// the client is reset.
#[tokio::test]
async fn engines_count_refused_and_hanging_connects() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let refused = l.local_addr().unwrap();
    drop(l);
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into()).unwrap();
    sock.listen(0).unwrap();
    let hanging = sock.local_addr().unwrap().as_socket().unwrap();
    // Fill its queue: further SYNs are dropped and connects hang.
    let mut held = Vec::new();
    while let Ok(s) = connect(hanging, Duration::from_millis(300)).await {
        held.push(s);
        assert!(held.len() < 16, "a backlog of 0 should fill");
    }
    for way in ways(&[]) {
        for backend in [refused, hanging] {
            let cfg = RelayConfig { connect_timeout: Duration::from_millis(300), ..config() };
            let front = front(&way, backend, cfg).await;
            // On the io_uring engine the reset can come before the connect has returned here.
            let res = match TcpStream::connect(front.addr).await {
                Ok(mut c) => {
                    let mut rest = Vec::new();
                    tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut rest)).await.unwrap().map(|_| ())
                }
                Err(e) => Err(e),
            };
            assert_eq!(res.map_err(|e| e.kind()).err(), Some(std::io::ErrorKind::ConnectionReset), "{way:?}");
            assert_eq!(front.ended().await, Err("connect error".to_string()), "{way:?} {backend}");
        }
    }
}
