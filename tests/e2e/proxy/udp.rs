//! UDP through a VIP: per-client sessions whose replies come from the VIP, session expiry, and a service with a
//! TCP and a UDP port on one VIP.

use super::bed::{WAIT, client, count, members, start_proxy_appliance, until};
use serde_json::json;
use std::time::{Duration, Instant};

/// How long one datagram's reply is waited for; a lost datagram is sent again (UDP promises nothing).
const REPLY: Duration = Duration::from_secs(3);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_sessions_echo_from_the_vip_and_expire() {
    let bed = start_proxy_appliance(None).await;
    let (a, b) = (bed.udp_backend("a", 5353).await, bed.udp_backend("b", 5353).await);
    let service = json!({"name": "dns", "pool": "vips", "ports": [{"port": 53, "protocol": "udp", "target_port": 5353}],
        "backends": members(&[&a, &b]), "proxy": {"algorithm": "round_robin", "udp_idle_timeout": 2}});
    let vip = bed.create_service(service).await;
    let mut agent = bed.agent();

    // Several clients (distinct addresses), each with a few datagrams: every reply carries that client's own
    // datagram back, comes from VIP:53, and a client's datagrams stay on one backend (its session).
    let mut backend_of = Vec::new();
    for n in 1..=4 {
        let (key, src) = (format!("c{n}"), client(n));
        let mut seen = Vec::new();
        for k in 0..3 {
            let data = format!("hello-{n}-{k}");
            let (reply, from) =
                until(WAIT, "a UDP reply", async || agent.udp(&key, Some(&src), &vip, 53, &data, REPLY).await).await;
            assert_eq!(from, format!("{vip}:53"), "the reply to {src} came from elsewhere");
            let (backend, echoed) = reply.split_once(' ').expect("`<backend> <datagram>`");
            assert_eq!(echoed, data);
            seen.push(backend.to_string());
        }
        assert!(seen.iter().all(|s| s == &seen[0]), "client {src}'s session moved: {seen:?}");
        backend_of.push(seen[0].clone());
    }
    // Round robin over sessions: four new clients, alternating backends.
    assert_eq!(backend_of.iter().filter(|b| *b == "a").count(), 2, "{backend_of:?}");

    // Session expiry: the last new client falls silent for longer than the 2 s idle timeout; its next datagram
    // opens a new session, and as nobody else picks meanwhile, round robin gives it the other backend. (A
    // datagram that finds the session still alive on a slow machine refreshes it; then the client idles again.)
    let before = backend_of[3].clone();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut history = Vec::new();
    for attempt in 0.. {
        tokio::time::sleep(Duration::from_secs(4)).await;
        let data = format!("again-{attempt}");
        let got = agent.udp("c4", Some(&client(4)), &vip, 53, &data, REPLY).await;
        let backend = got.and_then(|(reply, _)| Some(reply.split_once(' ')?.0.to_string()));
        history.push(backend.clone());
        if backend.as_ref().is_some_and(|b| b != &before) {
            break;
        }
        assert!(Instant::now() < deadline, "client 4's session never expired (it was on {before}): {history:?}");
    }
    // The status counts what happened: sessions opened (4 clients, then client 4 again) and expired, and every
    // datagram each way.
    bed.listener_until("dns", "udp", "the sessions and datagrams counted", |l| {
        count(l, &["total"]) >= 5
            && count(l, &["idle_timeouts"]) >= 1
            && count(l, &["datagrams", "to_backend"]) >= 13
            && count(l, &["datagrams", "to_client"]) >= 13
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_vip_serves_tcp_and_udp() {
    let bed = start_proxy_appliance(None).await;
    let backend = bed.udp_backend("both", 7000).await;
    let service = json!({"name": "mixed", "pool": "vips",
        "ports": [{"name": "t", "port": 7000, "protocol": "tcp"}, {"name": "u", "port": 7000, "protocol": "udp"}],
        "backends": [{"address": backend.addr.ip().to_string()}]});
    let vip = bed.create_service(service).await;
    // Two listeners: one per protocol.
    let status = bed.proxy_status().await;
    assert!(status["detail"].as_str().is_some_and(|d| d.starts_with("2 listener(s)")), "{status}");
    let mut agent = bed.agent();
    assert_eq!(agent.backends(&vip, 7000, None, 3).await, vec!["both"; 3]);
    let (reply, from) =
        until(WAIT, "a UDP reply", async || agent.udp("u", None, &vip, 7000, "ping", REPLY).await).await;
    assert_eq!(reply, "both ping");
    assert_eq!(from, format!("{vip}:7000"));
    assert_eq!(backend.accepted(), 3);
    assert!(backend.stats.datagrams.load(std::sync::atomic::Ordering::Relaxed) >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_session_limit_drops_new_clients() {
    let bed = start_proxy_appliance(None).await;
    let a = bed.udp_backend("a", 5353).await;
    let service = json!({"name": "dns", "pool": "vips", "ports": [{"port": 53, "protocol": "udp", "target_port": 5353}],
        "backends": members(&[&a]), "proxy": {"max_udp_sessions": 2, "udp_idle_timeout": 5}});
    let vip = bed.create_service(service).await;
    let mut agent = bed.agent();
    for n in 1..=2 {
        let (key, src) = (format!("c{n}"), client(n));
        until(WAIT, "a UDP reply", async || agent.udp(&key, Some(&src), &vip, 53, "in", REPLY).await).await;
    }
    // A third client is over the limit while the other two stay active: its datagrams are dropped.
    for k in 0..3 {
        for n in 1..=2 {
            let (key, src) = (format!("c{n}"), client(n));
            until(WAIT, "a UDP reply", async || agent.udp(&key, Some(&src), &vip, 53, "still", REPLY).await).await;
        }
        let got = agent.udp("c3", Some(&client(3)), &vip, 53, &format!("over-{k}"), Duration::from_secs(1)).await;
        assert_eq!(got, None, "a third session was opened");
    }
    bed.listener_until("dns", "udp", "3 datagrams dropped for the limit", |l| count(l, &["refused", "limit"]) >= 3)
        .await;
    // Sessions that idle out make room.
    until(WAIT, "a place for the third client", async || {
        tokio::time::sleep(Duration::from_secs(1)).await;
        agent.udp("c3", Some(&client(3)), &vip, 53, "later", REPLY).await
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_affinity_survives_a_change_of_the_service() {
    let bed = start_proxy_appliance(None).await;
    let (w, x, y) =
        (bed.udp_backend("w", 5353).await, bed.udp_backend("x", 5353).await, bed.udp_backend("y", 5353).await);
    let service = |backends| {
        json!({"name": "dns", "pool": "vips", "ports": [{"port": 53, "protocol": "udp", "target_port": 5353}],
            "backends": backends, "proxy": {"algorithm": "round_robin", "affinity": "client_ip", "udp_idle_timeout": 2}})
    };
    let vip = bed.create_service(service(members(&[&x, &y]))).await;
    let mut agent = bed.agent();
    let mut before = Vec::new();
    for n in 1..=6 {
        let (key, src) = (format!("c{n}"), client(n));
        let (reply, _) =
            until(WAIT, "a UDP reply", async || agent.udp(&key, Some(&src), &vip, 53, "1", REPLY).await).await;
        before.push(reply);
    }
    // A third backend joins; then every client's session idles out (2 s), so their next datagrams open new
    // sessions — which client-IP affinity must send to the backends they had.
    bed.update_service(service(members(&[&w, &x, &y]))).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let mut after = Vec::new();
    for n in 1..=6 {
        let (key, src) = (format!("c{n}"), client(n));
        let (reply, _) =
            until(WAIT, "a UDP reply", async || agent.udp(&key, Some(&src), &vip, 53, "1", REPLY).await).await;
        after.push(reply);
    }
    assert_eq!(after, before, "clients lost their backends across a change");
}
