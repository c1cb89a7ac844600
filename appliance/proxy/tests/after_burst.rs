//! Connections that moved more than a small read buffer's worth and then go quiet: on io_uring such a direction
//! waits for data by readiness with no read pending in the ring, so the idle timeout, a reset from the balancer
//! side and a half-close must still end it as they do for a fresh connection. Both engines run every case.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::print_stdout)]

mod common;

use common::echo_backend;

use portico_proxy::balance::{Affinity, Algorithm, Backend, Balancer};
use portico_proxy::listener::{ListenerConfig, TcpProxy};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn balancer(backend: SocketAddr) -> Arc<Balancer> {
    Arc::new(Balancer::with_seed(Algorithm::RoundRobin, Affinity::None, vec![Backend::ready(backend, 1)], 1).unwrap())
}

/// Sends and reads back `len` bytes (past the 512-byte first buffer, both ways), then returns the stream.
async fn burst(addr: SocketAddr, len: usize) -> TcpStream {
    let mut c = TcpStream::connect(addr).await.unwrap();
    let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
    c.write_all(&data).await.unwrap();
    let mut back = vec![0u8; len];
    c.read_exact(&mut back).await.unwrap();
    assert_eq!(back, data);
    c
}

#[tokio::test]
async fn idle_timeout_ends_a_connection_quiet_after_a_burst() {
    let backend = echo_backend().await;
    for engine in common::engines() {
        let mut config = ListenerConfig::default();
        config.relay.idle_timeout = Some(Duration::from_millis(300));
        let proxy = TcpProxy::start(&*engine, "127.0.0.1:0".parse().unwrap(), balancer(backend), config).unwrap();
        let mut c = burst(proxy.local_addr(), 20_000).await;
        let mut rest = Vec::new();
        let n = tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut rest)).await.unwrap().unwrap();
        assert_eq!(n, 0, "{}", engine.name());
        let stats = proxy.stats();
        tokio::time::timeout(Duration::from_secs(5), async {
            while stats.active.load(Ordering::Relaxed) != 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .unwrap();
        assert_eq!(stats.idle_timeouts.load(Ordering::Relaxed), 1, "{}", engine.name());
        assert_eq!(stats.traffic.to_backend.load(Ordering::Relaxed), 20_000, "{}", engine.name());
        assert_eq!(stats.traffic.to_client.load(Ordering::Relaxed), 20_000, "{}", engine.name());
    }
}

#[tokio::test]
async fn a_reset_ends_a_connection_quiet_after_a_burst() {
    let backend = echo_backend().await;
    for engine in common::engines() {
        let proxy =
            TcpProxy::start(&*engine, "127.0.0.1:0".parse().unwrap(), balancer(backend), Default::default()).unwrap();
        let mut c = burst(proxy.local_addr(), 20_000).await;
        assert_eq!(proxy.reset_connections_to(backend), 1, "{}", engine.name());
        let mut b = [0u8; 16];
        let got = tokio::time::timeout(Duration::from_secs(10), c.read(&mut b)).await.unwrap();
        assert!(matches!(got, Ok(0) | Err(_)), "{}: {got:?}", engine.name());
    }
}

#[tokio::test]
async fn half_close_after_a_burst_finishes_the_other_direction() {
    let backend = echo_backend().await;
    for engine in common::engines() {
        let proxy =
            TcpProxy::start(&*engine, "127.0.0.1:0".parse().unwrap(), balancer(backend), Default::default()).unwrap();
        let mut c = burst(proxy.local_addr(), 20_000).await;
        // More after the quiet spell, then FIN: the echo of it still comes back, then EOF.
        tokio::time::sleep(Duration::from_millis(100)).await;
        c.write_all(&[7u8; 3000]).await.unwrap();
        c.shutdown().await.unwrap();
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), c.read_to_end(&mut rest)).await.unwrap().unwrap();
        assert_eq!(rest, vec![7u8; 3000], "{}", engine.name());
    }
}
