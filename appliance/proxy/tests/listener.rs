//! TCP listeners on loopback: balancing, limits, swapping the balancer under live connections.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::print_stdout)]

mod common;

use portico_proxy::balance::{Affinity, Algorithm, Backend, Balancer};
use portico_proxy::listener::{ListenerConfig, TcpProxy};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A backend that greets every connection with its name, then echoes.
async fn named_backend(name: &'static str) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            tokio::spawn(async move {
                s.write_all(format!("{name}\n").as_bytes()).await.unwrap();
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

async fn greeting(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut b = [0u8; 1];
    loop {
        match s.read(&mut b).await {
            Ok(1) if b[0] != b'\n' => out.push(b[0]),
            _ => break,
        }
    }
    String::from_utf8(out).unwrap()
}

fn balancer(alg: Algorithm, backends: &[(SocketAddr, u32)]) -> Arc<Balancer> {
    let set = backends.iter().map(|&(a, w)| Backend::ready(a, w)).collect();
    Arc::new(Balancer::with_seed(alg, Affinity::None, set, 1).unwrap())
}

fn any() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

#[tokio::test]
async fn spreads_connections_by_weight() {
    for engine in common::engines() {
        println!("engine: {}", engine.name());
        let a = named_backend("a").await;
        let b = named_backend("b").await;
        let c = named_backend("c").await;
        let proxy = TcpProxy::start(
            &*engine,
            any(),
            balancer(Algorithm::WeightedRoundRobin, &[(a, 1), (b, 2), (c, 3)]),
            Default::default(),
        )
        .unwrap();
        let mut counts = std::collections::BTreeMap::new();
        for _ in 0..60 {
            let mut s = TcpStream::connect(proxy.local_addr()).await.unwrap();
            *counts.entry(greeting(&mut s).await).or_insert(0) += 1;
        }
        println!("weighted 1:2:3 over 60 connections: {counts:?}");
        assert_eq!(counts.into_iter().collect::<Vec<_>>(), vec![("a".into(), 10), ("b".into(), 20), ("c".into(), 30)]);
        assert_eq!(proxy.stats().accepted.load(Ordering::Relaxed), 60);
    }
}

async fn closed_at_once(addr: SocketAddr) -> bool {
    // On the io_uring engine the reset can come before the connect has returned here.
    let mut s = match TcpStream::connect(addr).await {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
        Err(e) => panic!("{e}"),
    };
    let mut b = [0u8; 16];
    // Reset (an error) or EOF, without a greeting.
    matches!(tokio::time::timeout(Duration::from_secs(5), s.read(&mut b)).await, Ok(Ok(0) | Err(_)))
}

#[tokio::test]
async fn refuses_over_the_connection_limits_and_counts() {
    for engine in common::engines() {
        println!("engine: {}", engine.name());
        let a = named_backend("a").await;
        let cfg = ListenerConfig { max_connections: Some(2), ..Default::default() };
        let proxy = TcpProxy::start(&*engine, any(), balancer(Algorithm::RoundRobin, &[(a, 1)]), cfg).unwrap();
        let mut held = Vec::new();
        for _ in 0..2 {
            let mut s = TcpStream::connect(proxy.local_addr()).await.unwrap();
            assert_eq!(greeting(&mut s).await, "a");
            held.push(s);
        }
        assert!(closed_at_once(proxy.local_addr()).await);
        assert_eq!(proxy.stats().refused_limit.load(Ordering::Relaxed), 1);
        assert_eq!(proxy.stats().active.load(Ordering::Relaxed), 2);
        // Freed: accepted again.
        drop(held.pop());
        let mut tries = 0;
        loop {
            // Refused connections may be reset before the connect returns here (io_uring): try again.
            if let Ok(mut s) = TcpStream::connect(proxy.local_addr()).await
                && greeting(&mut s).await == "a"
            {
                break;
            }
            tries += 1;
            assert!(tries < 50, "never accepted again");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Per backend.
        let cfg = ListenerConfig { max_connections_per_backend: Some(1), ..Default::default() };
        proxy.set_config(cfg);
        while proxy.stats().active.load(Ordering::Relaxed) > 1 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(closed_at_once(proxy.local_addr()).await);
        assert_eq!(proxy.stats().refused_backend_limit.load(Ordering::Relaxed), 1);
    }
}

#[tokio::test]
async fn counts_connect_errors_and_missing_backends() {
    for engine in common::engines() {
        println!("engine: {}", engine.name());
        let l = TcpListener::bind(any()).await.unwrap();
        let dead = l.local_addr().unwrap();
        drop(l);
        let proxy = TcpProxy::start(&*engine, any(), balancer(Algorithm::RoundRobin, &[(dead, 1)]), Default::default())
            .unwrap();
        assert!(closed_at_once(proxy.local_addr()).await);
        assert_eq!(proxy.stats().connect_errors.load(Ordering::Relaxed), 1);
        assert_eq!(proxy.balancer().counters(0).unwrap().connect_errors.load(Ordering::Relaxed), 1);
        proxy.set_balancer(balancer(Algorithm::RoundRobin, &[]));
        assert!(closed_at_once(proxy.local_addr()).await);
        assert_eq!(proxy.stats().refused_no_backend.load(Ordering::Relaxed), 1);
    }
}

#[tokio::test]
async fn a_new_balancer_moves_new_connections_and_leaves_established_ones() {
    for engine in common::engines() {
        println!("engine: {}", engine.name());
        let a = named_backend("a").await;
        let b = named_backend("b").await;
        let proxy =
            TcpProxy::start(&*engine, any(), balancer(Algorithm::RoundRobin, &[(a, 1)]), Default::default()).unwrap();
        let addr = proxy.local_addr();
        let mut old = TcpStream::connect(addr).await.unwrap();
        assert_eq!(greeting(&mut old).await, "a");
        proxy.set_balancer(balancer(Algorithm::RoundRobin, &[(b, 1)]));
        let mut new = TcpStream::connect(addr).await.unwrap();
        assert_eq!(greeting(&mut new).await, "b");
        assert_eq!(proxy.local_addr(), addr);
        // The established connection still works, through the same listener.
        old.write_all(b"still here").await.unwrap();
        let mut buf = [0u8; 10];
        old.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"still here");
        // Stopping the listener leaves it running too.
        proxy.stop();
        assert!(TcpStream::connect(addr).await.is_err());
        old.write_all(b"and now").await.unwrap();
        let mut buf = [0u8; 7];
        old.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"and now");
    }
}

async fn connection_ended(s: &mut TcpStream) -> bool {
    let mut b = [0u8; 64];
    loop {
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut b)).await {
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

#[tokio::test]
async fn connections_to_a_removed_backend_can_be_reset_and_others_stay() {
    for engine in common::engines() {
        println!("engine: {}", engine.name());
        let a = named_backend("a").await;
        let b = named_backend("b").await;
        let proxy =
            TcpProxy::start(&*engine, any(), balancer(Algorithm::RoundRobin, &[(a, 1), (b, 1)]), Default::default())
                .unwrap();
        let mut on_a = TcpStream::connect(proxy.local_addr()).await.unwrap();
        assert_eq!(greeting(&mut on_a).await, "a");
        let mut on_b = TcpStream::connect(proxy.local_addr()).await.unwrap();
        assert_eq!(greeting(&mut on_b).await, "b");
        assert_eq!(proxy.connections(), 2);
        // Backend a leaves the set; its drain timeout passes.
        proxy.set_balancer(balancer(Algorithm::RoundRobin, &[(b, 1)]));
        assert_eq!(proxy.reset_connections_to(a), 1);
        assert!(connection_ended(&mut on_a).await);
        on_b.write_all(b"ok").await.unwrap();
        let mut buf = [0u8; 2];
        on_b.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ok");
        while proxy.connections() != 1 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(proxy.stats().cancelled.load(Ordering::Relaxed), 1);
    }
}

#[tokio::test]
async fn drain_waits_for_connections_then_resets_the_rest() {
    for engine in common::engines() {
        println!("engine: {}", engine.name());
        let a = named_backend("a").await;
        // Connections that end on their own within the timeout: nothing reset.
        let proxy =
            TcpProxy::start(&*engine, any(), balancer(Algorithm::RoundRobin, &[(a, 1)]), Default::default()).unwrap();
        let mut c = TcpStream::connect(proxy.local_addr()).await.unwrap();
        assert_eq!(greeting(&mut c).await, "a");
        let closer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            drop(c);
        });
        assert_eq!(proxy.drain(Duration::from_secs(10)).await, 0);
        closer.await.unwrap();
        // A connection that stays: reset when the timeout passes.
        let proxy =
            TcpProxy::start(&*engine, any(), balancer(Algorithm::RoundRobin, &[(a, 1)]), Default::default()).unwrap();
        let addr = proxy.local_addr();
        let mut c = TcpStream::connect(addr).await.unwrap();
        assert_eq!(greeting(&mut c).await, "a");
        assert_eq!(proxy.drain(Duration::from_millis(200)).await, 1);
        assert!(connection_ended(&mut c).await);
        assert!(TcpStream::connect(addr).await.is_err());
    }
}

#[tokio::test]
async fn ipv6_listener_with_maglev_keeps_a_client_on_one_backend() {
    for engine in common::engines() {
        println!("engine: {}", engine.name());
        let names = ["a", "b", "c", "d"];
        let mut set = Vec::new();
        for n in names {
            set.push((named_backend(n).await, 1));
        }
        let bind: SocketAddr = "[::1]:0".parse().unwrap();
        let Ok(proxy) = TcpProxy::start(&*engine, bind, balancer(Algorithm::maglev(), &set), Default::default()) else {
            println!("no IPv6 loopback here; skipped");
            continue;
        };
        // Every connection from ::1 hashes to the same backend.
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..10 {
            let mut s = TcpStream::connect(proxy.local_addr()).await.unwrap();
            seen.insert(greeting(&mut s).await);
        }
        assert_eq!(seen.len(), 1, "{seen:?}");
    }
}

#[tokio::test]
async fn dropping_the_io_uring_engine_stops_its_threads_and_their_connections() {
    if let Err(e) = portico_proxy::engine::probe_io_uring() {
        println!("io_uring unavailable, skipped: {e}");
        return;
    }
    let a = named_backend("a").await;
    let engine = Arc::new(portico_proxy::engine::UringEngine::new(2).unwrap());
    let proxy =
        TcpProxy::start(&*engine, any(), balancer(Algorithm::RoundRobin, &[(a, 1)]), Default::default()).unwrap();
    let mut c = TcpStream::connect(proxy.local_addr()).await.unwrap();
    assert_eq!(greeting(&mut c).await, "a");
    // The listener first (connections run on), then the engine: dropping it joins its threads.
    drop(proxy);
    c.write_all(b"still").await.unwrap();
    let mut buf = [0u8; 5];
    c.read_exact(&mut buf).await.unwrap();
    let joined = tokio::task::spawn_blocking(move || drop(engine));
    tokio::time::timeout(Duration::from_secs(20), joined).await.expect("threads stop").unwrap();
    assert!(connection_ended(&mut c).await);
}
