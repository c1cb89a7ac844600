//! Active health checks end to end: a backend whose check fails is taken out of rotation (and shown so in
//! `/api/v1/proxy/status` and `/metrics`), and comes back when its check passes again; a dead backend is
//! ejected by passive outlier detection without any check configured.

use super::bed::*;
use crate::harness::eventually;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// A small HTTP health endpoint on `addr` answering every request with the status held in `status`; stops
/// when `stop` is cancelled.
async fn health_endpoint(addr: SocketAddr, status: Arc<AtomicU16>, stop: CancellationToken) {
    let listener = TcpListener::bind(addr).await.expect("bind the health endpoint");
    tokio::spawn(async move {
        loop {
            let (mut s, _) = tokio::select! {
                r = listener.accept() => match r { Ok(c) => c, Err(_) => return },
                () = stop.cancelled() => return,
            };
            let code = status.load(Ordering::Relaxed);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 2048];
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let ok = seen.starts_with(b"GET /healthz HTTP/1.1\r\n");
                let code = if ok { code } else { 404 };
                let _ = s.write_all(format!("HTTP/1.1 {code} X\r\nContent-Length: 0\r\n\r\n").as_bytes()).await;
            });
        }
    });
}

fn backend_status<'a>(status: &'a Value, address: &str) -> Option<&'a Value> {
    status["listeners"]
        .as_array()?
        .iter()
        .flat_map(|l| l["backends"].as_array().into_iter().flatten())
        .find(|b| b["address"].as_str() == Some(address))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_health_check_takes_a_backend_out_and_a_passing_one_brings_it_back() {
    let bed = start_proxy_appliance(None).await;
    let (a, b) = (bed.backend("a", 8080).await, bed.backend("b", 8080).await);
    // Each backend's health endpoint listens beside it, on port 9000 of its address.
    let status_a = Arc::new(AtomicU16::new(200));
    let status_b = Arc::new(AtomicU16::new(200));
    let stop = CancellationToken::new();
    let _stop = stop.clone().drop_guard();
    health_endpoint(SocketAddr::new(a.addr.ip(), 9000), status_a.clone(), stop.clone()).await;
    health_endpoint(SocketAddr::new(b.addr.ip(), 9000), status_b.clone(), stop.clone()).await;
    let check = json!({"health_check": {"kind": "http", "port": 9000, "path": "/healthz", "expected_status": "200",
        "interval_ms": 200, "timeout_ms": 200, "rise": 2, "fall": 2}, "algorithm": "round_robin"});
    let vip = bed.create_service(tcp_service("checked", members(&[&a, &b]), check)).await;
    let api = &bed.api;
    eventually(WAIT, "both backends healthy", || async {
        let s = api.json("/api/v1/proxy/status").await;
        let healthy = |addr: &str| backend_status(&s, addr).is_some_and(|b| b["health"] == "healthy");
        (healthy(&a.address()) && healthy(&b.address())).then_some(())
    })
    .await;
    let mut agent = bed.agent();
    let mut served = agent.backends(&vip, 80, None, 4).await;
    served.sort();
    assert_eq!(served, ["a", "a", "b", "b"]);

    // `b` starts answering 503: after `fall` checks it is unhealthy and takes nothing new.
    status_b.store(503, Ordering::Relaxed);
    let status = eventually(WAIT, "b unhealthy", || async {
        let s = api.json("/api/v1/proxy/status").await;
        backend_status(&s, &b.address())
            .is_some_and(|b| b["health"] == "unhealthy" && b["taking_new"] == false)
            .then_some(s)
    })
    .await;
    let detail = backend_status(&status, &b.address()).map(|b| b["health_detail"].to_string()).unwrap_or_default();
    assert!(detail.contains("503"), "the reason is shown: {status}");
    assert_eq!(agent.backends(&vip, 80, None, 6).await, ["a"; 6]);
    let metrics = bed.api.request(reqwest::Method::GET, "/metrics").send().await.expect("metrics");
    let metrics = metrics.text().await.expect("metrics text");
    let line = format!("backend=\"{}\",state=\"unhealthy\"}} 1", b.address());
    assert!(metrics.contains(&line), "no {line} in the metrics");

    // It recovers after `rise` passing checks.
    status_b.store(200, Ordering::Relaxed);
    eventually(WAIT, "b healthy again", || async {
        let s = api.json("/api/v1/proxy/status").await;
        backend_status(&s, &b.address())
            .is_some_and(|b| b["health"] == "healthy" && b["taking_new"] == true)
            .then_some(())
    })
    .await;
    let mut served = agent.backends(&vip, 80, None, 4).await;
    served.sort();
    assert_eq!(served, ["a", "a", "b", "b"]);

    // Both failing: nothing is taken (no backend passes), and the VIP is no longer announced as healthy.
    status_a.store(500, Ordering::Relaxed);
    status_b.store(500, Ordering::Relaxed);
    eventually(WAIT, "both unhealthy", || async {
        let s = api.json("/api/v1/proxy/status").await;
        let down = |addr: &str| {
            backend_status(&s, addr).is_some_and(|b| b["health"] == "unhealthy" && b["taking_new"] == false)
        };
        (down(&a.address()) && down(&b.address())).then_some(())
    })
    .await;
    let outcomes = agent.conns(&vip, 80, &[None]).await;
    assert!(outcomes[0].backend.is_none(), "no backend should serve: {:?}", outcomes[0]);
    let snapshot = api.json("/api/v1/snapshot/services").await;
    let text = snapshot.to_string();
    assert!(text.contains("\"health\":\"unhealthy\""), "the snapshot carries the health: {text:.400}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_backend_is_ejected_by_outlier_detection_and_counted() {
    let bed = start_proxy_appliance(None).await;
    let a = bed.backend("a", 8080).await;
    let dead = bed.backend("dead", 8080).await;
    let dead_address = dead.address();
    let proxy = json!({"algorithm": "round_robin", "connect_timeout_ms": 2000,
        "outlier": {"consecutive_failures": 2, "base_ejection_ms": 600000, "max_ejection_ms": 600000}});
    let vip = bed.create_service(tcp_service("outlier", members(&[&a, &dead]), proxy)).await;
    // The backend goes away (its listener and link with it): connects to it fail.
    drop(dead);
    let mut agent = bed.agent();
    let mut failed = 0;
    for _ in 0..10 {
        let outcome = agent.conns(&vip, 80, &[None]).await.remove(0);
        match outcome.backend.as_deref() {
            Some("a") => {}
            _ => failed += 1,
        }
    }
    assert_eq!(failed, 2, "two failed connects eject the dead backend; then every connection goes to a");
    let s = bed.api.json("/api/v1/proxy/status").await;
    let b = backend_status(&s, &dead_address).expect("the dead backend is listed");
    assert_eq!((b["ejected"].as_bool(), b["ejections"].as_u64()), (Some(true), Some(1)), "{s}");
    assert!(b["connect_errors"].as_u64() >= Some(2), "{s}");
    let listener = &s["listeners"][0];
    assert!(listener["connect_errors"].as_u64() >= Some(2), "{s}");
    assert!(listener["total"].as_u64() >= Some(10), "{s}");
    let a_status = backend_status(&s, &a.address()).expect("a listed");
    assert!(a_status["bytes_to_client"].as_u64() > Some(0), "per-backend bytes: {s}");
}
