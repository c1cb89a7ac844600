//! PROXY protocol on loopback, on both engines: headers sent to backends (parsed here with `ppp`), headers
//! accepted from an upstream balancer (valid v1/v2, LOCAL, garbage, missing).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::print_stdout)]

mod common;

use portico_proxy::balance::{Affinity, Algorithm, Backend, Balancer};
use portico_proxy::engine::Engine;
use portico_proxy::listener::{ListenerConfig, TcpProxy};
use portico_proxy::proxy_protocol::{ProxyProtocol, SendProxy};
use ppp::{HeaderResult, PartialResult, v1, v2};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What a backend saw in the header in front of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seen {
    V1 { source: SocketAddr, dest: SocketAddr },
    V2 { source: SocketAddr, dest: SocketAddr },
    Other(String),
}

fn addrs_v1(a: v1::Addresses) -> Option<(SocketAddr, SocketAddr)> {
    match a {
        v1::Addresses::Tcp4(a) => Some((
            SocketAddr::new(IpAddr::V4(a.source_address), a.source_port),
            SocketAddr::new(IpAddr::V4(a.destination_address), a.destination_port),
        )),
        v1::Addresses::Tcp6(a) => Some((
            SocketAddr::new(IpAddr::V6(a.source_address), a.source_port),
            SocketAddr::new(IpAddr::V6(a.destination_address), a.destination_port),
        )),
        v1::Addresses::Unknown => None,
    }
}

fn addrs_v2(a: v2::Addresses) -> Option<(SocketAddr, SocketAddr)> {
    match a {
        v2::Addresses::IPv4(a) => Some((
            SocketAddr::new(IpAddr::V4(a.source_address), a.source_port),
            SocketAddr::new(IpAddr::V4(a.destination_address), a.destination_port),
        )),
        v2::Addresses::IPv6(a) => Some((
            SocketAddr::new(IpAddr::V6(a.source_address), a.source_port),
            SocketAddr::new(IpAddr::V6(a.destination_address), a.destination_port),
        )),
        _ => None,
    }
}

/// A backend that parses the PROXY header of each connection with `ppp`, answers `<seen>\n` (Debug of `Seen`)
/// and then echoes the client's bytes.
async fn header_backend(bind: &str) -> SocketAddr {
    let l = TcpListener::bind(bind).await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 512];
                let (seen, used) = loop {
                    let n = s.read(&mut chunk).await.unwrap();
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let parsed = HeaderResult::parse(&buf);
                    if parsed.is_incomplete() {
                        continue;
                    }
                    break match parsed {
                        HeaderResult::V1(Ok(h)) => match addrs_v1(h.addresses) {
                            Some((source, dest)) => (Seen::V1 { source, dest }, h.header.len()),
                            None => (Seen::Other("v1 unknown".into()), h.header.len()),
                        },
                        HeaderResult::V2(Ok(h)) => match addrs_v2(h.addresses) {
                            Some((source, dest)) if h.command == v2::Command::Proxy => {
                                (Seen::V2 { source, dest }, h.len())
                            }
                            _ => (Seen::Other("v2 without addresses".into()), h.len()),
                        },
                        other => (Seen::Other(format!("{other:?}")), 0),
                    };
                };
                s.write_all(format!("{seen:?}\n").as_bytes()).await.unwrap();
                s.write_all(&buf[used..]).await.unwrap();
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

async fn line(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut b = [0u8; 1];
    while s.read(&mut b).await.unwrap() == 1 && b[0] != b'\n' {
        out.push(b[0]);
    }
    String::from_utf8(out).unwrap()
}

fn proxy(engine: &dyn Engine, bind: &str, backends: &[SocketAddr], alg: Algorithm, pp: ProxyProtocol) -> TcpProxy {
    let set = backends.iter().map(|&b| Backend::ready(b, 1)).collect();
    let balancer = Arc::new(Balancer::with_seed(alg, Affinity::None, set, 1).unwrap());
    let cfg = ListenerConfig { proxy_protocol: pp, ..Default::default() };
    TcpProxy::start(engine, bind.parse().unwrap(), balancer, cfg).unwrap()
}

fn send(send: SendProxy) -> ProxyProtocol {
    ProxyProtocol { send, ..Default::default() }
}

fn accept(then: SendProxy, timeout: Duration) -> ProxyProtocol {
    ProxyProtocol { send: then, accept: true, header_timeout: timeout }
}

fn have_ipv6() -> bool {
    std::net::TcpListener::bind("[::1]:0").is_ok()
}

#[tokio::test]
async fn backends_get_the_client_and_vip_addresses_in_v1_and_v2() {
    for engine in common::engines() {
        for (bind, label) in [("127.0.0.1:0", "IPv4"), ("[::1]:0", "IPv6")] {
            if label == "IPv6" && !have_ipv6() {
                println!("no IPv6 loopback here; skipped");
                continue;
            }
            let backend = header_backend(bind).await;
            for version in [SendProxy::V1, SendProxy::V2] {
                let p = proxy(&*engine, bind, &[backend], Algorithm::RoundRobin, send(version));
                let mut c = TcpStream::connect(p.local_addr()).await.unwrap();
                c.write_all(b"ping").await.unwrap();
                let (source, dest) = (c.local_addr().unwrap(), p.local_addr());
                let want = match version {
                    SendProxy::V1 => Seen::V1 { source, dest },
                    _ => Seen::V2 { source, dest },
                };
                assert_eq!(line(&mut c).await, format!("{want:?}"), "{} {label} {version:?}", engine.name());
                // The client's bytes follow the header, untouched.
                let mut b = [0u8; 4];
                c.read_exact(&mut b).await.unwrap();
                assert_eq!(&b, b"ping");
            }
        }
    }
}

/// The header a client-side balancer would send for `source` → `dest`.
fn upstream_header(version: SendProxy, source: SocketAddr, dest: SocketAddr) -> Vec<u8> {
    match version {
        SendProxy::V1 => v1::Addresses::from((source, dest)).to_string().into_bytes(),
        _ => v2::Builder::with_addresses(v2::Version::Two | v2::Command::Proxy, v2::Protocol::Stream, (source, dest))
            .build()
            .unwrap(),
    }
}

#[tokio::test]
async fn an_accepted_header_names_the_client_passed_on_to_the_backend() {
    let backend = header_backend("127.0.0.1:0").await;
    let source: SocketAddr = "192.0.2.7:40000".parse().unwrap();
    let vip: SocketAddr = "198.51.100.1:443".parse().unwrap();
    for engine in common::engines() {
        for incoming in [SendProxy::V1, SendProxy::V2] {
            for outgoing in [SendProxy::V1, SendProxy::V2] {
                let pp = accept(outgoing, Duration::from_secs(5));
                let p = proxy(&*engine, "127.0.0.1:0", &[backend], Algorithm::RoundRobin, pp);
                let mut c = TcpStream::connect(p.local_addr()).await.unwrap();
                // Header and first client bytes in one write: the bytes after the header must not be lost.
                let mut first = upstream_header(incoming, source, vip);
                first.extend_from_slice(b"hello");
                c.write_all(&first).await.unwrap();
                let want = match outgoing {
                    SendProxy::V1 => Seen::V1 { source, dest: vip },
                    _ => Seen::V2 { source, dest: vip },
                };
                let what = format!("{} {incoming:?} in, {outgoing:?} out", engine.name());
                assert_eq!(line(&mut c).await, format!("{want:?}"), "{what}");
                let mut b = [0u8; 5];
                c.read_exact(&mut b).await.unwrap();
                assert_eq!(&b, b"hello", "{what}");
                // And the header's bytes are not counted as client traffic.
                assert_eq!(p.stats().traffic.to_backend.load(Ordering::Relaxed), 5, "{what}");
                assert_eq!(p.stats().proxy_header_errors.load(Ordering::Relaxed), 0);
            }
        }
    }
}

#[tokio::test]
async fn a_local_v2_header_means_the_real_peer() {
    let backend = header_backend("127.0.0.1:0").await;
    for engine in common::engines() {
        let p = proxy(
            &*engine,
            "127.0.0.1:0",
            &[backend],
            Algorithm::RoundRobin,
            accept(SendProxy::V2, Duration::from_secs(5)),
        );
        let mut c = TcpStream::connect(p.local_addr()).await.unwrap();
        let local = v2::Builder::new(v2::Version::Two | v2::Command::Local, 0).build().unwrap();
        c.write_all(&local).await.unwrap();
        let want = Seen::V2 { source: c.local_addr().unwrap(), dest: p.local_addr() };
        assert_eq!(line(&mut c).await, format!("{want:?}"), "{}", engine.name());
    }
}

/// Whether the proxy reset the connection (possibly before our connect returned) without a byte.
async fn was_reset(addr: SocketAddr, send: &[u8]) -> bool {
    let mut c = match TcpStream::connect(addr).await {
        Ok(c) => c,
        Err(e) => return e.kind() == std::io::ErrorKind::ConnectionReset,
    };
    if !send.is_empty() {
        // The reset may already be here.
        let _ = c.write_all(send).await;
    }
    let mut b = [0u8; 64];
    matches!(
        tokio::time::timeout(Duration::from_secs(20), c.read(&mut b)).await,
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset
    )
}

#[tokio::test]
async fn garbage_slow_and_missing_headers_are_reset_and_counted() {
    let backend = header_backend("127.0.0.1:0").await;
    for engine in common::engines() {
        let pp = accept(SendProxy::None, Duration::from_millis(300));
        let p = proxy(&*engine, "127.0.0.1:0", &[backend], Algorithm::RoundRobin, pp);
        let name = engine.name();
        assert!(was_reset(p.local_addr(), b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await, "{name}: garbage");
        // Half a header, then nothing: the header timeout passes.
        assert!(was_reset(p.local_addr(), b"PROXY TCP4 192.0.2.1").await, "{name}: partial");
        // Nothing at all.
        assert!(was_reset(p.local_addr(), b"").await, "{name}: missing");
        // A v1 header over its 107-byte limit.
        let long = format!("PROXY TCP4 {}\r\n", "1".repeat(120));
        assert!(was_reset(p.local_addr(), long.as_bytes()).await, "{name}: too long");
        let st = p.stats();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while st.proxy_header_errors.load(Ordering::Relaxed) < 4 {
            assert!(std::time::Instant::now() < deadline, "{name}: counted {st:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(st.proxy_header_errors.load(Ordering::Relaxed), 4, "{name}");
        assert_eq!(st.connect_errors.load(Ordering::Relaxed), 0);
        // No backend was picked for any of them.
        assert_eq!(p.balancer().counters(0).unwrap().active.load(Ordering::Relaxed), 0);
    }
}

#[tokio::test]
async fn the_header_client_address_drives_maglev() {
    let mut backends = Vec::new();
    for _ in 0..4 {
        backends.push(header_backend("127.0.0.1:0").await);
    }
    let vip: SocketAddr = "198.51.100.1:80".parse().unwrap();
    for engine in common::engines() {
        let pp = accept(SendProxy::V1, Duration::from_secs(5));
        let p = proxy(&*engine, "127.0.0.1:0", &backends, Algorithm::maglev(), pp);
        // Which backend a connection went to: the one whose active count is up while the connection is held.
        let mut by_client = std::collections::BTreeMap::new();
        for round in 0..2u16 {
            for i in 1..=20u8 {
                let source = SocketAddr::new(IpAddr::from([192, 0, 2, i]), 1000 + round);
                let mut c = TcpStream::connect(p.local_addr()).await.unwrap();
                c.write_all(&upstream_header(SendProxy::V1, source, vip)).await.unwrap();
                assert_eq!(line(&mut c).await, format!("{:?}", Seen::V1 { source, dest: vip }));
                // The connection is held: exactly one backend's active count is up by one.
                let active: Vec<u64> =
                    (0..4).map(|b| p.balancer().counters(b).unwrap().active.load(Ordering::Relaxed)).collect();
                let chosen = active.iter().position(|&n| n == 1).unwrap();
                assert_eq!(active.iter().sum::<u64>(), 1, "{active:?}");
                let first = *by_client.entry(source.ip()).or_insert(chosen);
                assert_eq!(first, chosen, "{}: client {} moved between backends", engine.name(), source.ip());
                drop(c);
                while p.stats().active.load(Ordering::Relaxed) > 0 {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        }
        let used: std::collections::BTreeSet<_> = by_client.values().collect();
        assert!(used.len() > 1, "{}: 20 clients all on one backend: {by_client:?}", engine.name());
    }
}
