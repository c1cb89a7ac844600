//! Memory per idle proxied connection, per engine: a measurement that prints, not an assertion (RSS depends on
//! the allocator, and tests use the system one while the appliance uses mimalloc). Run one engine per process so
//! the other's freed memory does not hide the growth:
//!
//! ```text
//! cargo test -p portico-proxy --test footprint -- --ignored --nocapture --exact idle_footprint_epoll
//! cargo test -p portico-proxy --test footprint -- --ignored --nocapture --exact idle_footprint_io_uring
//! ```
//!
//! Clients and the backend are plain blocking std sockets kept in `Vec`s, so nearly all the growth is the
//! proxy's. `FOOTPRINT_CONNECTIONS` sets how many (2,000 by default: four descriptors each).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::print_stdout)]

use portico_proxy::balance::{Affinity, Algorithm, Backend, Balancer};
use portico_proxy::engine::{Engine, EpollEngine, UringEngine};
use portico_proxy::listener::TcpProxy;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn rss_kib() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4
}

/// A backend that keeps every connection it accepts.
fn hold_backend() -> (SocketAddr, Arc<Mutex<Vec<TcpStream>>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let held = Arc::new(Mutex::new(Vec::new()));
    let keep = Arc::clone(&held);
    std::thread::spawn(move || {
        for s in l.incoming() {
            keep.lock().unwrap().push(s.unwrap());
        }
    });
    (addr, held)
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < Duration::from_secs(60), "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn measure(engine: &dyn Engine) {
    let n: usize = std::env::var("FOOTPRINT_CONNECTIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(2000);
    let (backend, held) = hold_backend();
    let balancer = Arc::new(
        Balancer::with_seed(Algorithm::RoundRobin, Affinity::None, vec![Backend::ready(backend, 1)], 1).unwrap(),
    );
    let proxy = TcpProxy::start(engine, "127.0.0.1:0".parse().unwrap(), balancer, Default::default()).unwrap();
    let addr = proxy.local_addr();
    let open = |count: usize| -> Vec<TcpStream> { (0..count).map(|_| TcpStream::connect(addr).unwrap()).collect() };
    // Warm up: the first connections grow pools and maps that later ones reuse.
    let warm = open(200);
    wait_for("warm-up connections", || proxy.stats().active.load(Ordering::Relaxed) == 200);
    wait_for("warm-up backend side", || held.lock().unwrap().len() == 200);
    drop(warm);
    held.lock().unwrap().clear();
    wait_for("warm-up to end", || proxy.stats().active.load(Ordering::Relaxed) == 0);
    std::thread::sleep(Duration::from_millis(200));

    let before = rss_kib();
    let mut clients = open(n);
    wait_for("connections", || proxy.stats().active.load(Ordering::Relaxed) == n as u64);
    wait_for("backend side", || held.lock().unwrap().len() == n);
    std::thread::sleep(Duration::from_millis(300));
    let idle = rss_kib();
    println!(
        "{}: {n} idle connections: {:.2} KiB per connection (RSS {before} → {idle} KiB)",
        engine.name(),
        (idle.saturating_sub(before)) as f64 / n as f64
    );

    // One byte each way, then idle again: what a connection keeps after it has moved data.
    for c in &mut clients {
        c.write_all(b"x").unwrap();
    }
    let mut backends = held.lock().unwrap();
    let mut b = [0u8; 1];
    for s in backends.iter_mut() {
        s.read_exact(&mut b).unwrap();
        s.write_all(b"y").unwrap();
    }
    for c in &mut clients {
        c.read_exact(&mut b).unwrap();
    }
    std::thread::sleep(Duration::from_millis(300));
    let after = rss_kib();
    println!(
        "{}: after one byte each way: {:.2} KiB per connection more (RSS {after} KiB)",
        engine.name(),
        (after.saturating_sub(idle)) as f64 / n as f64
    );
    // 2 KiB each way, past the small first buffer: what a connection keeps after a burst.
    let burst = vec![7u8; 2048];
    let mut got = vec![0u8; 2048];
    for c in &mut clients {
        c.write_all(&burst).unwrap();
    }
    for s in backends.iter_mut() {
        s.read_exact(&mut got).unwrap();
        s.write_all(&burst).unwrap();
    }
    for c in &mut clients {
        c.read_exact(&mut got).unwrap();
    }
    std::thread::sleep(Duration::from_millis(300));
    let burst_rss = rss_kib();
    println!(
        "{}: after 2 KiB each way: {:.2} KiB per connection more (RSS {burst_rss} KiB)",
        engine.name(),
        (burst_rss.saturating_sub(after)) as f64 / n as f64
    );
    drop(backends);
}

#[test]
#[ignore = "a measurement: run alone, see the module comment"]
fn idle_footprint_epoll() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let _in_rt = rt.enter();
    measure(&EpollEngine);
}

#[test]
#[ignore = "a measurement: run alone, see the module comment"]
fn idle_footprint_io_uring() {
    let engine = UringEngine::new(1).unwrap();
    measure(&engine);
}
