//! The TCP relay on loopback: a client, the relay (accept + connect + relay) and small backends.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::print_stdout)]

use portico_proxy::relay::{CopyMode, RelayConfig, RelayEnd, RelayError, RelayOutcome, Traffic, connect, relay};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

const MODES: [CopyMode; 3] = [CopyMode::Splice, CopyMode::Buffered, CopyMode::Auto];

fn config(mode: CopyMode) -> RelayConfig {
    RelayConfig {
        connect_timeout: Duration::from_secs(2),
        idle_timeout: Some(Duration::from_secs(30)),
        buffer_size: 64 * 1024,
        mode,
    }
}

/// A backend that echoes every connection (half-close aware: after the client's FIN it finishes and closes).
async fn echo_backend() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    addr
}

/// A relay front for one connection: returns its address and the relay's result.
async fn front(
    backend: SocketAddr,
    config: RelayConfig,
    traffic: Arc<Traffic>,
) -> (SocketAddr, JoinHandle<Result<RelayOutcome, RelayError>>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let (client, _) = l.accept().await.unwrap();
        let upstream = connect(backend, config.connect_timeout).await?;
        relay(client, upstream, &config, &traffic).await
    });
    (addr, task)
}

#[tokio::test]
async fn echoes_through_the_relay_in_every_mode() {
    let backend = echo_backend().await;
    for mode in MODES {
        let traffic = Arc::new(Traffic::default());
        let (addr, task) = front(backend, config(mode), traffic.clone()).await;
        let mut c = TcpStream::connect(addr).await.unwrap();
        for i in 0..20u32 {
            let msg = format!("hello {i}");
            c.write_all(msg.as_bytes()).await.unwrap();
            let mut buf = vec![0u8; msg.len()];
            c.read_exact(&mut buf).await.unwrap();
            assert_eq!(buf, msg.as_bytes());
        }
        c.shutdown().await.unwrap();
        let mut rest = Vec::new();
        c.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
        let out = task.await.unwrap().unwrap();
        assert_eq!(out.end, RelayEnd::Closed);
        let sent: u64 = (0..20).map(|i| format!("hello {i}").len() as u64).sum();
        assert_eq!((out.to_backend, out.to_client), (sent, sent), "{mode:?}");
        assert_eq!(traffic.to_backend.load(Ordering::Relaxed), sent);
        assert_eq!(traffic.to_client.load(Ordering::Relaxed), sent);
        match mode {
            CopyMode::Buffered => assert_eq!(out.spliced, (false, false)),
            // TCP sockets on Linux always splice.
            CopyMode::Splice | CopyMode::Auto => assert_eq!(out.spliced, (true, true)),
        }
    }
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
    for mode in [CopyMode::Splice, CopyMode::Buffered] {
        let traffic = Arc::new(Traffic::default());
        let (addr, task) = front(backend, config(mode), traffic.clone()).await;
        let c = TcpStream::connect(addr).await.unwrap();
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
        assert_eq!(checksum(&got), want, "{mode:?}");
        let out = task.await.unwrap().unwrap();
        assert_eq!((out.to_backend, out.to_client), (LEN as u64, LEN as u64));
        println!("{mode:?}: 64 MiB each way through the relay and an echo backend in {took:?} (debug build)");
    }
}

#[tokio::test]
async fn half_close_keeps_the_other_direction_open() {
    for mode in MODES {
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
        let (addr, task) = front(backend, config(mode), Arc::new(Traffic::default())).await;
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(&[7u8; 1000]).await.unwrap();
        c.shutdown().await.unwrap();
        let mut answer = String::new();
        c.read_to_string(&mut answer).await.unwrap();
        let expected: String = (0..5).map(|p| format!("got 1000 bytes, part {p}\n")).collect();
        assert_eq!(answer, expected, "{mode:?}");
        let out = task.await.unwrap().unwrap();
        assert_eq!(out.end, RelayEnd::Closed);
        assert_eq!((out.to_backend, out.to_client), (1000, expected.len() as u64));
    }
}

#[tokio::test]
async fn backend_half_close_keeps_the_client_sending() {
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
    let (addr, task) = front(backend, config(CopyMode::Splice), Arc::new(Traffic::default())).await;
    let mut c = TcpStream::connect(addr).await.unwrap();
    let mut hello = Vec::new();
    c.read_to_end(&mut hello).await.unwrap();
    assert_eq!(hello, b"hello");
    // Still sending after the backend's FIN reached us.
    for _ in 0..10 {
        c.write_all(&[1u8; 4096]).await.unwrap();
    }
    c.shutdown().await.unwrap();
    assert_eq!(server.await.unwrap(), 40_960);
    let out = task.await.unwrap().unwrap();
    assert_eq!((out.to_backend, out.to_client, out.end), (40_960, 5, RelayEnd::Closed));
}

#[tokio::test]
async fn idle_connections_are_closed_and_active_ones_are_not() {
    let backend = echo_backend().await;
    for mode in [CopyMode::Splice, CopyMode::Buffered] {
        let mut cfg = config(mode);
        cfg.idle_timeout = Some(Duration::from_millis(300));
        // Active: a message every 100 ms for 1 s outlives the 300 ms timeout.
        let (addr, task) = front(backend, cfg.clone(), Arc::new(Traffic::default())).await;
        let mut c = TcpStream::connect(addr).await.unwrap();
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            c.write_all(b"ping").await.unwrap();
            let mut b = [0u8; 4];
            c.read_exact(&mut b).await.unwrap();
        }
        assert!(!task.is_finished());
        // Then silence: the relay closes both sides.
        let mut rest = Vec::new();
        let n = tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut rest)).await.unwrap().unwrap();
        assert_eq!(n, 0);
        let out = task.await.unwrap().unwrap();
        assert_eq!(out.end, RelayEnd::IdleTimeout, "{mode:?}");
        assert_eq!((out.to_backend, out.to_client), (40, 40));
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
    let (addr, task) = front(backend, config(CopyMode::Auto), Arc::new(Traffic::default())).await;
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(b"ping").await.unwrap();
    let mut rest = Vec::new();
    // The client sees the connection end (a reset, passed on, or an error).
    let _ = tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut rest)).await.unwrap();
    let res = task.await.unwrap();
    assert!(matches!(res, Err(RelayError::Io { .. })), "{res:?}");
}
