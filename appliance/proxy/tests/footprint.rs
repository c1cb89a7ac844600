//! Memory per idle proxied connection, per engine: a measurement that prints, not an assertion (RSS depends on
//! the allocator, and tests use the system one while the appliance uses mimalloc). Run one engine per process so
//! the other's freed memory does not hide the growth:
//!
//! ```text
//! cargo test -p portico-proxy --test footprint -- --ignored --nocapture --exact idle_footprint_epoll
//! cargo test -p portico-proxy --test footprint -- --ignored --nocapture --exact idle_footprint_io_uring
//! ```
//!
//! `bulk_and_udp_cpu_epoll` / `bulk_and_udp_cpu_io_uring` print the proxy threads' CPU time per GiB and per UDP
//! round trip the same way.
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

/// CPU time (user + system, clock ticks) of this process's threads whose name starts with `prefix`.
fn cpu_ticks(prefix: &str) -> u64 {
    let mut total = 0;
    for task in std::fs::read_dir("/proc/self/task").unwrap() {
        let path = task.unwrap().path();
        let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
        if !comm.trim_end().starts_with(prefix) {
            continue;
        }
        let stat = std::fs::read_to_string(path.join("stat")).unwrap_or_default();
        // The fields after the command name (which is in parentheses): utime and stime are the 12th and 13th.
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let fields: Vec<&str> = rest.split_whitespace().collect();
        total += fields.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        total += fields.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    }
    total
}

/// Moves `FOOTPRINT_BULK_MIB` (2,048 by default) through one proxied connection and prints the proxy threads'
/// CPU time per GiB (10 ms resolution; the client and backend run on other threads). `FOOTPRINT_BUFFER_KIB` sets
/// the relay buffer (64 KiB by default).
fn bulk(engine: &dyn Engine, threads: &str) {
    let mib: usize = std::env::var("FOOTPRINT_BULK_MIB").ok().and_then(|v| v.parse().ok()).unwrap_or(2048);
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let backend = l.local_addr().unwrap();
    let sink = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        let mut buf = vec![0u8; 256 * 1024];
        let mut total = 0usize;
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => return total,
                Ok(n) => total += n,
            }
        }
    });
    let balancer = Arc::new(
        Balancer::with_seed(Algorithm::RoundRobin, Affinity::None, vec![Backend::ready(backend, 1)], 1).unwrap(),
    );
    let mut config = portico_proxy::listener::ListenerConfig::default();
    if let Some(kib) = std::env::var("FOOTPRINT_BUFFER_KIB").ok().and_then(|v| v.parse::<usize>().ok()) {
        config.relay.buffer_size = kib * 1024;
    }
    let proxy = TcpProxy::start(engine, "127.0.0.1:0".parse().unwrap(), balancer, config).unwrap();
    let mut c = TcpStream::connect(proxy.local_addr()).unwrap();
    let chunk = vec![1u8; 256 * 1024];
    let before = cpu_ticks(threads);
    let start = Instant::now();
    for _ in 0..mib * 4 {
        c.write_all(&chunk).unwrap();
    }
    c.shutdown(std::net::Shutdown::Write).unwrap();
    let got = sink.join().unwrap();
    let secs = start.elapsed().as_secs_f64();
    let ticks = cpu_ticks(threads) - before;
    assert_eq!(got, mib * 1024 * 1024);
    println!(
        "{}: bulk {mib} MiB in {secs:.2} s ({:.2} Gbit/s), proxy CPU {:.0} ms per GiB",
        engine.name(),
        got as f64 * 8.0 / secs / 1e9,
        ticks as f64 * 10.0 / (mib as f64 / 1024.0)
    );
}

/// `FOOTPRINT_UDP_FLOWS` client threads (8) each do `FOOTPRINT_UDP_ROUNDS` (10,000) ping-pong round trips of 64
/// bytes through the proxy to an echo; prints the proxy threads' CPU time per round trip.
fn udp(engine: &dyn Engine, threads: &str) {
    use portico_proxy::udp::UdpProxy;
    use std::net::UdpSocket;
    let flows: usize = std::env::var("FOOTPRINT_UDP_FLOWS").ok().and_then(|v| v.parse().ok()).unwrap_or(8);
    let rounds: usize = std::env::var("FOOTPRINT_UDP_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000);
    let echo = UdpSocket::bind("127.0.0.1:0").unwrap();
    let backend = echo.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = echo.recv_from(&mut buf) {
            let _ = echo.send_to(&buf[..n], from);
        }
    });
    let balancer = Arc::new(
        Balancer::with_seed(Algorithm::RoundRobin, Affinity::None, vec![Backend::ready(backend, 1)], 1).unwrap(),
    );
    let proxy = UdpProxy::start(engine, "127.0.0.1:0".parse().unwrap(), balancer, Default::default()).unwrap();
    let addr = proxy.local_addr();
    let before = cpu_ticks(threads);
    let start = Instant::now();
    let clients: Vec<_> = (0..flows)
        .map(|_| {
            std::thread::spawn(move || {
                let s = UdpSocket::bind("127.0.0.1:0").unwrap();
                s.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
                s.connect(addr).unwrap();
                let mut buf = [0u8; 64];
                let mut done = 0;
                for _ in 0..rounds {
                    s.send(&[9u8; 64]).unwrap();
                    if s.recv(&mut buf).is_ok() {
                        done += 1;
                    }
                }
                done
            })
        })
        .collect();
    let done: usize = clients.into_iter().map(|c| c.join().unwrap()).sum();
    let secs = start.elapsed().as_secs_f64();
    let ticks = cpu_ticks(threads) - before;
    println!(
        "{}: udp {done} round trips in {secs:.2} s ({:.0}/s), proxy CPU {:.2} µs per round trip",
        engine.name(),
        done as f64 / secs,
        ticks as f64 * 10_000.0 / done.max(1) as f64
    );
}

#[test]
#[ignore = "a measurement: run alone, see the module comment"]
fn bulk_and_udp_cpu_epoll() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("proxy-epoll")
        .enable_all()
        .build()
        .unwrap();
    let _in_rt = rt.enter();
    bulk(&EpollEngine, "proxy-epoll");
    udp(&EpollEngine, "proxy-epoll");
}

#[test]
#[ignore = "a measurement: run alone, see the module comment"]
fn bulk_and_udp_cpu_io_uring() {
    let engine = UringEngine::new(1).unwrap();
    bulk(&engine, "l4-uring");
    udp(&engine, "l4-uring");
}
