//! Limits and timeouts: `max_connections`, `max_connections_per_backend`, `connect_timeout_ms` against a
//! backend whose packets vanish, and `idle_timeout`.

use super::agent::{Agent, Outcome};
use super::bed::{WAIT, count, members, start_proxy_appliance, tcp_service, until};
use crate::harness::eventually;
use serde_json::json;
use std::time::Duration;

/// A connection that was refused: no greeting, closed or reset by the proxy (not left hanging).
#[track_caller]
fn assert_refused(o: &Outcome) {
    assert_eq!(o.backend, None, "the connection was served: {o:?}");
    assert!(matches!(o.end.as_deref(), Some("reset" | "eof")), "the connection was not refused at once: {o:?}");
}

/// Opens connections under `key` until one is served; returns its backend (closing the refused attempts).
async fn open_when_served(agent: &mut Agent, key: &str, vip: &str) -> String {
    until(WAIT, "a connection served again", async || agent.open(key, vip, 80, None).await.backend).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_refuses_the_third_while_two_work() {
    let bed = start_proxy_appliance(None).await;
    let (a, b) = (bed.backend("a", 8080).await, bed.backend("b", 8080).await);
    let policy = json!({"algorithm": "round_robin", "max_connections": 2});
    let vip = bed.create_service(tcp_service("cap", members(&[&a, &b]), policy)).await;
    let mut agent = bed.agent();
    for key in ["h1", "h2"] {
        assert!(agent.open(key, &vip, 80, None).await.backend.is_some());
    }
    for attempt in 0..3 {
        assert_refused(&agent.open(&format!("x{attempt}"), &vip, 80, None).await);
    }
    // The two held connections are unharmed.
    for key in ["h1", "h2"] {
        assert_eq!(agent.echo(key, "still here\n").await.as_deref(), Ok("still here\n"));
    }
    // A freed place is taken again (once the proxy has seen the close).
    agent.close("h1").await;
    open_when_served(&mut agent, "h3", &vip).await;
    assert_refused(&agent.open("x9", &vip, 80, None).await);
    bed.listener_until("cap", "tcp", "4 refusals for the limit", |l| count(l, &["refused", "limit"]) >= 4).await;
    let l = bed.listener("cap", "tcp").await;
    assert_eq!(count(&l, &["active"]), 2, "{l:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_per_backend_refuses_over_the_backends_limit() {
    let bed = start_proxy_appliance(None).await;
    let (a, b) = (bed.backend("a", 8080).await, bed.backend("b", 8080).await);
    let policy = json!({"algorithm": "round_robin", "max_connections_per_backend": 1});
    let vip = bed.create_service(tcp_service("cap", members(&[&a, &b]), policy)).await;
    let mut agent = bed.agent();
    let first = agent.open("h1", &vip, 80, None).await.backend.expect("served");
    let second = agent.open("h2", &vip, 80, None).await.backend.expect("served");
    assert_ne!(first, second, "round robin puts the two on different backends");
    // Both backends are at their limit: whichever the rotation picks, the connection is refused.
    for attempt in 0..4 {
        assert_refused(&agent.open(&format!("x{attempt}"), &vip, 80, None).await);
    }
    assert_eq!((a.accepted(), b.accepted()), (1, 1), "a refused connection reached a backend");
    // Freeing the first backend lets connections through to it, and only to it.
    agent.close("h1").await;
    assert_eq!(open_when_served(&mut agent, "h3", &vip).await, first);
    bed.listener_until("cap", "tcp", "4 refusals for the backend limit", |l| {
        count(l, &["refused", "backend_limit"]) >= 4
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_timeout_closes_the_client_of_an_unreachable_backend() {
    let bed = start_proxy_appliance(None).await;
    // 10.77.0.9 is routed from the appliance into the client namespace, which neither has it nor forwards: the
    // SYNs vanish without an answer, so only the proxy's connect timeout can end the attempt (the kernel's own
    // SYN retries would take about two minutes).
    bed.app_ns.exec(&["ip", "route", "add", "10.77.0.9/32", "via", &bed.lan.b.v4.to_string()]);
    bed.client_ns.exec(&["ip", "route", "add", "blackhole", "10.77.0.9/32"]);
    let backends = json!([{"address": "10.77.0.9:8080"}]);
    let vip = bed.create_service(tcp_service("void", backends.clone(), json!({"connect_timeout_ms": 600_000}))).await;
    let mut agent = bed.agent();
    // With a ten-minute connect timeout the client waits (nothing answers, nothing closes)…
    let o = agent.open_within("slow", &vip, 80, None, Duration::from_secs(3)).await;
    assert_eq!(o, Outcome { backend: None, end: Some("timeout".into()) }, "with a long connect timeout");
    // …with half a second it is closed, well before the generous bound of the agent's read.
    bed.update_service(tcp_service("void", backends, json!({"connect_timeout_ms": 500}))).await;
    assert_refused(&agent.open("fast", &vip, 80, None).await);
    bed.listener_until("void", "tcp", "a connect error", |l| count(l, &["connect_errors"]) >= 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_timeout_closes_a_silent_connection_only() {
    let bed = start_proxy_appliance(None).await;
    let a = bed.backend("a", 8080).await;
    let vip = bed.create_service(tcp_service("idle", members(&[&a]), json!({"idle_timeout": 3}))).await;
    let mut agent = bed.agent();
    // A silent connection is closed by the proxy (the agent's own bound is a minute).
    assert!(agent.open("silent", &vip, 80, None).await.backend.is_some());
    let (end, bytes, _) = agent.wait_end("silent", WAIT).await;
    assert!(end == "eof" || end == "reset", "a silent connection was not closed: {end}");
    assert_eq!(bytes, 0);
    eventually(WAIT, "the backend's side closed too", || async { (a.active() == 0).then_some(()) }).await;
    // A connection with traffic every 300 ms outlives the timeout several times over.
    assert!(agent.open("busy", &vip, 80, None).await.backend.is_some());
    for i in 0..30 {
        let line = format!("ping {i}\n");
        assert_eq!(agent.echo("busy", &line).await, Ok(line), "an active connection was closed");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Then silent: closed as well.
    let (end, _, _) = agent.wait_end("busy", WAIT).await;
    assert!(end == "eof" || end == "reset", "{end}");
    bed.listener_until("idle", "tcp", "2 idle timeouts", |l| count(l, &["idle_timeouts"]) == 2).await;
}

/// Holds `n` connections open at once through the VIP, each greeted by a backend; returns how many were served
/// before the first that was not (and how that one ended).
async fn hold_many(agent: &mut Agent, vip: &str, n: usize) -> (usize, Option<Outcome>) {
    for i in 0..n {
        let o = agent.open_within(&format!("m{i}"), vip, 80, None, Duration::from_secs(10)).await;
        if o.backend.is_none() {
            return (i, Some(o));
        }
    }
    (n, None)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_hundred_connections_at_once() {
    let bed = start_proxy_appliance(None).await;
    let (a, b) = (bed.backend("a", 8080).await, bed.backend("b", 8080).await);
    let vip = bed.create_service(tcp_service("many", members(&[&a, &b]), json!({"algorithm": "round_robin"}))).await;
    let mut agent = bed.agent();
    let (served, failed) = hold_many(&mut agent, &vip, 400).await;
    assert_eq!(served, 400, "connection {served} failed: {failed:?}");
    assert_eq!((a.active(), b.active()), (200, 200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_appliance_raises_its_descriptor_limit() {
    // A service manager's default soft limit (systemd: 1024) is far below what a proxy needs (a relayed
    // connection takes two sockets and, while bulk data flows on epoll, a pipe); the appliance raises its soft
    // limit to the hard one at start. (Where the test runner's soft limit already equals its hard one this holds
    // trivially.)
    let bed = start_proxy_appliance(None).await;
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", bed.app.pid())).expect("the appliance's limits");
    let line = limits.lines().find(|l| l.starts_with("Max open files")).expect("Max open files");
    let numbers: Vec<&str> = line.split_whitespace().skip(3).take(2).collect();
    assert_eq!(numbers.len(), 2, "{line}");
    assert_eq!(numbers[0], numbers[1], "the soft descriptor limit is not raised to the hard one: {line}");
}
