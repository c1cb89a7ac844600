//! UDP sessions on loopback against small echo servers.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::print_stdout)]
//! Both engines run UDP on tokio (see docs/proxy.md); the cases still go through each engine.

mod common;

use portico_proxy::balance::{Affinity, Algorithm, Backend, Balancer};
use portico_proxy::udp::{UdpConfig, UdpProxy};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::net::UdpSocket;

/// A UDP server answering `<name>:<datagram>`.
async fn echo(name: &'static str) -> SocketAddr {
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = s.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65_535];
        loop {
            let (n, from) = s.recv_from(&mut buf).await.unwrap();
            let mut out = format!("{name}:").into_bytes();
            out.extend_from_slice(&buf[..n]);
            s.send_to(&out, from).await.unwrap();
        }
    });
    addr
}

fn balancer(backends: &[SocketAddr]) -> Arc<Balancer> {
    let set = backends.iter().map(|&a| Backend::ready(a, 1)).collect();
    Arc::new(Balancer::with_seed(Algorithm::RoundRobin, Affinity::None, set, 1).unwrap())
}

async fn ask(c: &UdpSocket, msg: &[u8]) -> Option<String> {
    ask_within(c, msg, Duration::from_millis(500)).await
}

async fn ask_within(c: &UdpSocket, msg: &[u8], wait: Duration) -> Option<String> {
    c.send(msg).await.unwrap();
    let mut buf = vec![0u8; 65_535];
    match tokio::time::timeout(wait, c.recv(&mut buf)).await {
        Ok(Ok(n)) => Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
        _ => None,
    }
}

async fn client(proxy: SocketAddr) -> UdpSocket {
    let c = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    c.connect(proxy).await.unwrap();
    c
}

#[tokio::test]
async fn sessions_stick_to_their_backend_and_replies_come_from_the_listener() {
    for engine in common::engines() {
        println!("engine: {}", engine.name());
        let a = echo("a").await;
        let b = echo("b").await;
        let cfg = UdpConfig { idle_timeout: Duration::from_secs(10), max_sessions: 100 };
        let proxy = UdpProxy::start(&*engine, "127.0.0.1:0".parse().unwrap(), balancer(&[a, b]), cfg).unwrap();
        let c1 = client(proxy.local_addr()).await;
        let c2 = client(proxy.local_addr()).await;
        // A connected client socket only accepts datagrams from the proxy's address: the reply proves its source.
        let first = ask(&c1, b"x").await.unwrap();
        let second = ask(&c2, b"y").await.unwrap();
        assert_ne!(first[..1], second[..1]);
        for i in 0..10 {
            let msg = format!("m{i}");
            assert_eq!(ask(&c1, msg.as_bytes()).await.unwrap(), format!("{}:{msg}", &first[..1]));
        }
        // A large datagram passes whole.
        let big = vec![b'z'; 60_000];
        assert_eq!(ask(&c2, &big).await.unwrap().len(), 60_002);
        let st = proxy.stats();
        assert_eq!(st.sessions.load(Ordering::Relaxed), 2);
        // On io_uring a count follows the send's completion, which the client may beat: wait a little.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while (st.datagrams_to_client.load(Ordering::Relaxed) < 13
            || st.datagrams_to_backend.load(Ordering::Relaxed) < 13)
            && std::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert_eq!(st.datagrams_to_backend.load(Ordering::Relaxed), 13);
        assert_eq!(st.datagrams_to_client.load(Ordering::Relaxed), 13);
        assert_eq!(proxy.sessions().len(), 2);
    }
}

#[tokio::test]
async fn idle_sessions_expire_and_the_cap_drops_new_clients() {
    for engine in common::engines() {
        println!("engine: {}", engine.name());
        let a = echo("a").await;
        let cfg = UdpConfig { idle_timeout: Duration::from_millis(600), max_sessions: 2 };
        let proxy = UdpProxy::start(&*engine, "127.0.0.1:0".parse().unwrap(), balancer(&[a]), cfg).unwrap();
        let c1 = client(proxy.local_addr()).await;
        let c2 = client(proxy.local_addr()).await;
        let c3 = client(proxy.local_addr()).await;
        assert!(ask(&c1, b"1").await.is_some());
        assert!(ask(&c2, b"2").await.is_some());
        assert!(ask_within(&c3, b"3", Duration::from_millis(100)).await.is_none());
        assert_eq!(proxy.stats().dropped_session_limit.load(Ordering::Relaxed), 1);
        // Keep c1 alive while c2 idles out.
        for _ in 0..12 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            assert!(ask(&c1, b"1").await.is_some());
        }
        let st = proxy.stats();
        assert_eq!(st.sessions.load(Ordering::Relaxed), 1);
        assert_eq!(st.sessions_expired.load(Ordering::Relaxed), 1);
        // Room again for c3.
        assert_eq!(ask(&c3, b"3").await.unwrap(), "a:3");
        // Two sessions again, then none once both idle out.
        assert_eq!(st.sessions.load(Ordering::Relaxed), 2);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(st.sessions.load(Ordering::Relaxed), 0);
        assert_eq!(st.sessions_total.load(Ordering::Relaxed), 3);
    }
}

#[tokio::test]
async fn a_stopped_listener_answers_no_more() {
    for engine in common::engines() {
        println!("engine: {}", engine.name());
        let a = echo("a").await;
        let cfg = UdpConfig { idle_timeout: Duration::from_secs(10), max_sessions: 100 };
        let proxy = UdpProxy::start(&*engine, "127.0.0.1:0".parse().unwrap(), balancer(&[a]), cfg).unwrap();
        let c = client(proxy.local_addr()).await;
        assert_eq!(ask(&c, b"1").await.unwrap(), "a:1");
        drop(proxy);
        assert!(ask_within(&c, b"2", Duration::from_millis(300)).await.is_none());
    }
}

#[tokio::test]
async fn a_session_whose_backend_left_picks_again() {
    for engine in common::engines() {
        println!("engine: {}", engine.name());
        let a = echo("a").await;
        let b = echo("b").await;
        let cfg = UdpConfig { idle_timeout: Duration::from_secs(60), max_sessions: 100 };
        let proxy = UdpProxy::start(&*engine, "127.0.0.1:0".parse().unwrap(), balancer(&[a]), cfg).unwrap();
        let c = client(proxy.local_addr()).await;
        assert_eq!(ask(&c, b"1").await.unwrap(), "a:1");
        // Another backend joins: the session stays where it is.
        proxy.set_balancer(balancer(&[a, b]));
        for _ in 0..3 {
            assert_eq!(ask(&c, b"2").await.unwrap(), "a:2");
        }
        // Its backend leaves: the next datagram opens a session on one still there.
        proxy.set_balancer(balancer(&[b]));
        assert_eq!(ask(&c, b"3").await.unwrap(), "b:3");
        assert_eq!(ask(&c, b"4").await.unwrap(), "b:4");
        let st = proxy.stats();
        assert_eq!(st.sessions_backend_gone.load(Ordering::Relaxed), 1);
        assert_eq!(st.sessions.load(Ordering::Relaxed), 1);
        assert_eq!(proxy.sessions().len(), 1);
    }
}
