//! The proxy subsystem follows snapshots: a VIP port becomes a listener forwarding to the service's backends,
//! a backend change swaps backends without rebinding, and a VIP port that goes away stops being served.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::print_stdout)]

mod common;

use common::echo_backend;

use model::config::{Announce, Protocol};
use model::proxy::{Algorithm, ProxyPolicy};
use model::snapshot::{BackendEntry, Origin, PortEntry, ServiceEntry, Snapshot};
use model::subsystem::{Health, Subsystem};
use portico_proxy::Proxy;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A backend that answers every connection with its name.
async fn named_backend(name: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else { return };
            tokio::spawn(async move {
                let _ = s.write_all(name.as_bytes()).await;
            });
        }
    });
    addr
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn snapshot(generation: u64, port: u16, backends: &[SocketAddr]) -> Arc<Snapshot> {
    snapshot_with(generation, port, backends, ProxyPolicy::default())
}

fn snapshot_with(generation: u64, port: u16, backends: &[SocketAddr], proxy: ProxyPolicy) -> Arc<Snapshot> {
    let service = ServiceEntry {
        name: "web".into(),
        origin: Origin::Static,
        vips: vec!["127.0.0.1".parse::<IpAddr>().unwrap()],
        ports: vec![PortEntry { name: None, port, protocol: Protocol::Tcp, target_port: 1 }],
        backends: backends.iter().map(|b| BackendEntry::new(b.ip(), Some(b.port()), 1)).collect(),
        announce: Announce::default(),
        proxy: Arc::new(proxy),
        allocation_error: None,
        global: None,
        warnings: vec![],
    };
    Arc::new(Snapshot { generation, services: vec![Arc::new(service)], ..Snapshot::default() })
}

async fn ask(addr: SocketAddr) -> std::io::Result<String> {
    let mut s = TcpStream::connect(addr).await?;
    let mut out = String::new();
    s.read_to_string(&mut out).await?;
    Ok(out)
}

#[tokio::test]
async fn listeners_follow_snapshots() {
    for engine in common::engines() {
        println!("engine: {}", engine.name());
        let (a, b) = (named_backend("a").await, named_backend("b").await);
        let port = free_port();
        let vip = SocketAddr::new("127.0.0.1".parse().unwrap(), port);
        let mut proxy = Proxy::with_engine(engine.clone());

        let report = proxy.apply(snapshot(1, port, &[a])).await.unwrap();
        assert_eq!(report.health, Health::Ok, "{report:?}");
        assert_eq!(proxy.listeners(), [(vip, Protocol::Tcp, "web".to_string())]);
        assert_eq!(ask(vip).await.unwrap(), "a");

        // New backends: the same listener, now balancing over both.
        proxy.apply(snapshot(2, port, &[a, b])).await.unwrap();
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..4 {
            seen.insert(ask(vip).await.unwrap());
        }
        assert_eq!(seen.into_iter().collect::<Vec<_>>(), ["a", "b"]);

        // The VIP port goes: no longer accepted.
        let empty = Arc::new(Snapshot { generation: 3, ..Snapshot::default() });
        proxy.apply(empty).await.unwrap();
        assert!(proxy.listeners().is_empty());
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        assert!(ask(vip).await.is_err(), "the listener is closed");
    }
}

#[tokio::test]
async fn a_port_that_cannot_be_bound_is_reported_and_retried() {
    for engine in common::engines() {
        println!("engine: {}", engine.name());
        let a = named_backend("a").await;
        // Taken by someone else.
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let mut proxy = Proxy::with_engine(engine.clone());
        let report = proxy.apply(snapshot(1, port, &[a])).await.unwrap();
        assert_eq!(report.health, Health::Degraded, "{report:?}");
        assert!(report.detail.contains(&format!("127.0.0.1:{port}/tcp")), "{report:?}");
        drop(taken);
        let report = proxy.apply(snapshot(2, port, &[a])).await.unwrap();
        assert_eq!(report.health, Health::Ok, "retried at the next snapshot: {report:?}");
        assert_eq!(ask(SocketAddr::new("127.0.0.1".parse().unwrap(), port)).await.unwrap(), "a");
    }
}

#[tokio::test]
async fn the_service_policy_applies() {
    for engine in common::engines() {
        println!("engine: {}", engine.name());
        let (a, b) = (named_backend("a").await, named_backend("b").await);
        let port = free_port();
        let vip = SocketAddr::new("127.0.0.1".parse().unwrap(), port);
        let mut proxy = Proxy::with_engine(engine.clone());
        // Maglev on the client address: one client, one backend, every time.
        let maglev = ProxyPolicy { algorithm: Algorithm::Maglev, ..ProxyPolicy::default() };
        proxy.apply(snapshot_with(1, port, &[a, b], maglev.clone())).await.unwrap();
        let first = ask(vip).await.unwrap();
        for _ in 0..6 {
            assert_eq!(ask(vip).await.unwrap(), first);
        }
        // Round robin again after a policy change, on the same listener.
        proxy.apply(snapshot_with(2, port, &[a, b], ProxyPolicy::default())).await.unwrap();
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..4 {
            seen.insert(ask(vip).await.unwrap());
        }
        assert_eq!(seen.len(), 2, "both backends again: {seen:?}");
    }
}

#[tokio::test]
async fn unhealthy_backends_take_nothing_and_outliers_are_ejected() {
    for engine in common::engines() {
        unhealthy_and_outliers(Proxy::with_engine(engine)).await;
    }
}

async fn unhealthy_and_outliers(mut proxy: Proxy) {
    let (a, b) = (named_backend("a").await, named_backend("b").await);
    let port = free_port();
    let vip = SocketAddr::new("127.0.0.1".parse().unwrap(), port);
    // `b` fails its health checks (as the pipeline compiles the results into the snapshot).
    let mut snap = (*snapshot(1, port, &[a, b])).clone();
    let mut service = (*snap.services[0]).clone();
    service.backends[1].health = model::health::BackendHealth::Unhealthy;
    snap.services[0] = Arc::new(service);
    proxy.apply(Arc::new(snap)).await.unwrap();
    for _ in 0..6 {
        assert_eq!(ask(vip).await.unwrap(), "a");
    }

    // A dead backend: after `consecutive_failures` failed connects it is ejected, and every client gets `a`.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let policy = ProxyPolicy {
        outlier: model::proxy::OutlierDetection {
            consecutive_failures: 2,
            base_ejection_ms: 60_000,
            max_ejection_ms: 60_000,
        },
        ..ProxyPolicy::default()
    };
    proxy.apply(snapshot_with(2, port, &[a, dead], policy)).await.unwrap();
    let mut failures = 0;
    for _ in 0..4 {
        if ask(vip).await.map(|s| s.is_empty()).unwrap_or(true) {
            failures += 1;
        }
    }
    assert_eq!(failures, 2, "two failed connects eject the dead backend");
    for _ in 0..6 {
        assert_eq!(ask(vip).await.unwrap(), "a");
    }
}

async fn echoes(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 4];
    s.write_all(b"ping").await.is_ok()
        && matches!(tokio::time::timeout(std::time::Duration::from_secs(5), s.read_exact(&mut buf)).await, Ok(Ok(_)))
        && &buf == b"ping"
}

#[tokio::test]
async fn a_removed_backend_drains_until_its_timeout_unless_it_comes_back() {
    for engine in common::engines() {
        let (a, b) = (echo_backend().await, echo_backend().await);
        let port = free_port();
        let vip = SocketAddr::new("127.0.0.1".parse().unwrap(), port);
        let mut proxy = Proxy::with_engine(engine);
        let policy = ProxyPolicy { drain_timeout: 1, ..ProxyPolicy::default() };
        proxy.apply(snapshot_with(1, port, &[a], policy.clone())).await.unwrap();
        let mut held = TcpStream::connect(vip).await.unwrap();
        assert!(echoes(&mut held).await);

        // `a` leaves: its connection runs on (no reset at the change) ...
        proxy.apply(snapshot_with(2, port, &[b], policy.clone())).await.unwrap();
        assert!(echoes(&mut held).await, "a config change never resets an established connection");
        // ... until the drain timeout passes.
        tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
        assert!(!echoes(&mut held).await, "reset after the drain timeout");

        // Removed and back before the timeout: the connection stays.
        let mut kept = TcpStream::connect(vip).await.unwrap();
        assert!(echoes(&mut kept).await);
        proxy.apply(snapshot_with(3, port, &[a], policy.clone())).await.unwrap();
        proxy.apply(snapshot_with(4, port, &[a, b], policy.clone())).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
        assert!(echoes(&mut kept).await, "a backend that came back keeps its connections");
    }
}

#[tokio::test]
async fn a_terminating_backend_serving_as_the_fallback_keeps_its_connections() {
    let a = echo_backend().await;
    let port = free_port();
    let vip = SocketAddr::new("127.0.0.1".parse().unwrap(), port);
    let mut proxy = Proxy::new();
    let terminating = |generation, idle_timeout| {
        let mut snap = (*snapshot_with(
            generation,
            port,
            &[a],
            ProxyPolicy { drain_timeout: 1, idle_timeout, ..ProxyPolicy::default() },
        ))
        .clone();
        let mut service = (*snap.services[0]).clone();
        (service.backends[0].ready, service.backends[0].terminating) = (false, true);
        snap.services[0] = Arc::new(service);
        Arc::new(snap)
    };
    proxy.apply(terminating(1, 3600)).await.unwrap();
    let mut held = TcpStream::connect(vip).await.unwrap();
    assert!(echoes(&mut held).await, "the only backend left, still serving, takes the connection");
    proxy.apply(terminating(2, 3000)).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert!(echoes(&mut held).await, "no drain timer for the fallback that takes new connections");
}
