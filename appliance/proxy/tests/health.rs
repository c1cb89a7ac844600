//! Active health checks against real sockets: TCP connects and HTTP statuses, rise/fall, and the results
//! reported to the sink for the services and backends that have them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use model::config::{Announce, Protocol};
use model::health::{BackendHealth, BackendKey, HealthSink, ServiceHealth};
use model::proxy::{CheckKind, HealthCheck, ProxyPolicy};
use model::snapshot::{BackendEntry, Origin, PortEntry, ServiceEntry, Snapshot};
use portico_proxy::health::{HealthChecks, probe};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// An HTTP server answering every request with the status held in `status`.
async fn http_server(status: Arc<AtomicU16>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else { return };
            let status = status.load(Ordering::Relaxed);
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let request = String::from_utf8_lossy(&seen).to_string();
                let body = if request.starts_with("GET /healthz HTTP/1.1\r\n") { "ok" } else { "wrong request" };
                let status = if body == "ok" { status } else { 400 };
                let _ = s
                    .write_all(
                        format!("HTTP/1.1 {status} X\r\nContent-Length: {}\r\n\r\n{body}", body.len()).as_bytes(),
                    )
                    .await;
            });
        }
    });
    addr
}

/// A port nobody listens on (bound, then closed).
fn closed_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

#[tokio::test]
async fn probes_tcp_and_http() {
    let status = Arc::new(AtomicU16::new(200));
    let server = http_server(status.clone()).await;
    let tcp = HealthCheck::default();
    let http = HealthCheck { kind: CheckKind::Http, path: "/healthz".into(), ..HealthCheck::default() };
    assert_eq!(probe(server, &tcp).await, Ok(()));
    assert_eq!(probe(server, &http).await, Ok(()));
    status.store(503, Ordering::Relaxed);
    let err = probe(server, &http).await.unwrap_err();
    assert!(err.contains("503"), "{err}");
    let err = probe(closed_port(), &tcp).await.unwrap_err();
    assert!(err.starts_with("connect"), "{err}");
    // A non-HTTP answer.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let ssh = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let _ = s.write_all(b"SSH-2.0-test\r\n").await;
    });
    let err = probe(ssh, &http).await.unwrap_err();
    assert!(err.contains("not an HTTP status line"), "{err}");
}

#[derive(Default)]
struct Recorder(Mutex<BTreeMap<String, ServiceHealth>>);

impl HealthSink for Recorder {
    fn set_health(&self, service: &str, health: Option<ServiceHealth>) {
        let mut map = self.0.lock().unwrap();
        match health {
            Some(h) => map.insert(service.to_string(), h),
            None => map.remove(service),
        };
    }
}

impl Recorder {
    fn get(&self, service: &str, key: BackendKey) -> BackendHealth {
        self.0.lock().unwrap().get(service).and_then(|h| h.get(&key).copied()).unwrap_or_default()
    }
}

fn entry(name: &str, backends: &[SocketAddr], check: Option<HealthCheck>) -> Arc<ServiceEntry> {
    Arc::new(ServiceEntry {
        name: name.into(),
        origin: Origin::Static,
        vips: vec![],
        ports: vec![PortEntry { name: None, port: 80, protocol: Protocol::Tcp, target_port: 80 }],
        backends: backends.iter().map(|b| BackendEntry::new(b.ip(), Some(b.port()), 1)).collect(),
        announce: Announce::default(),
        proxy: Arc::new(ProxyPolicy { health_check: check, ..ProxyPolicy::default() }),
        allocation_error: None,
        global: None,
        warnings: vec![],
    })
}

async fn until(what: &str, check: impl Fn() -> bool) {
    for _ in 0..400 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test]
async fn checks_follow_the_snapshot_and_report_changes() {
    let status = Arc::new(AtomicU16::new(200));
    let up = http_server(status.clone()).await;
    let down = closed_port();
    let check = HealthCheck {
        kind: CheckKind::Http,
        path: "/healthz".into(),
        interval_ms: 100,
        timeout_ms: 100,
        rise: 2,
        fall: 2,
        ..HealthCheck::default()
    };
    let sink = Arc::new(Recorder::default());
    let mut checks = HealthChecks::new(sink.clone());
    let key = |a: SocketAddr| (a.ip(), Some(a.port()));
    let snapshot = |services: Vec<Arc<ServiceEntry>>| Snapshot { services, ..Snapshot::default() };
    checks.reconcile(&snapshot(vec![
        entry("checked", &[up, down], Some(check.clone())),
        entry("unchecked", &[up], None),
    ]));
    until("the first results", || {
        sink.get("checked", key(up)) == BackendHealth::Healthy
            && sink.get("checked", key(down)) == BackendHealth::Unhealthy
    })
    .await;
    assert!(!sink.0.lock().unwrap().contains_key("unchecked"));
    let states = checks.states();
    assert!(states["checked"][&key(down)].last_error.as_deref().is_some_and(|e| e.starts_with("connect")));

    // The server starts failing: unhealthy after `fall` checks; recovers after `rise`.
    status.store(500, Ordering::Relaxed);
    until("unhealthy", || sink.get("checked", key(up)) == BackendHealth::Unhealthy).await;
    status.store(204, Ordering::Relaxed);
    until("healthy again", || sink.get("checked", key(up)) == BackendHealth::Healthy).await;

    // A removed backend's result goes; a service no longer checked is withdrawn.
    checks.reconcile(&snapshot(vec![entry("checked", &[up], Some(check.clone()))]));
    until("the removed backend gone", || {
        sink.0.lock().unwrap().get("checked").is_some_and(|h| !h.contains_key(&key(down)))
    })
    .await;
    checks.reconcile(&snapshot(vec![entry("checked", &[up], None)]));
    assert!(!sink.0.lock().unwrap().contains_key("checked"));
    assert!(checks.states().is_empty());
}
