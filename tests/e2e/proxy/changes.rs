//! Configuration changes while traffic flows: a removed backend's running transfer goes on to its end while new
//! connections avoid it, and an `iperf3` transfer survives 100 changes of its service.

use super::bed::{WAIT, count, members, start_proxy_appliance, tcp_service};
use crate::harness::eventually;
use crate::netns::{Link, Netns, wait_until};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::process::Stdio;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_backend_drains_its_running_transfer() {
    let bed = start_proxy_appliance(None).await;
    let (a, b, c) = (bed.backend("a", 8080).await, bed.backend("b", 8080).await, bed.backend("c", 8080).await);
    // A drain timeout far beyond the test, so that only the stream's own end can end it.
    let policy = json!({"algorithm": "round_robin", "drain_timeout": 600});
    let vip = bed.create_service(tcp_service("drain", members(&[&a, &b]), policy.clone())).await;

    // A connection to `a` (round robin over two: one of the first two), which then streams until released.
    let mut long = bed.agent();
    let mut key = None;
    for i in 0..2 {
        let k = format!("long{i}");
        if long.open(&k, &vip, 80, None).await.backend.as_deref() == Some("a") {
            key = Some(k);
            break;
        }
        long.close(&k).await;
    }
    let key = key.expect("one of two round-robin connections goes to `a`");
    long.send(&key, "stream\n").await;
    // The reader runs on its own so the stream never waits for the test.
    let reader = tokio::spawn(async move { long.wait_end(&key, Duration::from_secs(120)).await });
    eventually(WAIT, "the stream from `a` flowing", || async { (a.streamed() > 0).then_some(()) }).await;

    // `a` leaves the service (and `c` joins): new connections avoid it…
    bed.update_service(tcp_service("drain", members(&[&b, &c]), policy)).await;
    let mut agent = bed.agent();
    let picks = agent.backends(&vip, 80, None, 12).await;
    let got: BTreeSet<&str> = picks.iter().map(String::as_str).collect();
    assert_eq!(got, BTreeSet::from(["b", "c"]), "{picks:?}");
    // …the listener still counts the drained connection…
    let l = bed.listener("drain", "tcp").await;
    assert_eq!(count(&l, &["active"]), 1, "{l:#}");
    // …while the running transfer keeps flowing after the change was applied,
    let at_change = a.streamed();
    eventually(WAIT, "the drained stream still flowing", || async {
        (a.streamed() >= at_change + 1024 * 1024).then_some(())
    })
    .await;
    // …and ends cleanly when the backend finishes it: every byte arrived, then a FIN, no reset.
    a.release();
    let (end, bytes, tail) = tokio::time::timeout(Duration::from_secs(180), reader)
        .await
        .expect("the drained transfer ends")
        .expect("reader task");
    assert_eq!(end, "eof", "the drained transfer ended with {end} after {bytes} bytes");
    assert!(tail.ends_with("END\n"), "the transfer lost its end: …{tail:?}");
    // The greeting is read by `open`; the rest is the stream and its end marker.
    assert_eq!(bytes, a.streamed() + 4, "bytes lost or added on the way");
    // The backend records its side once it has read the client's close too, a moment after the client's end.
    let backend_end = eventually(WAIT, "the backend's side of the stream ending", || async { a.stream_end() }).await;
    assert_eq!(backend_end, "done", "the backend's side of the stream");
}

/// The `i`-th of the changes made during the `iperf3` run: an extra backend comes and goes, and the algorithm,
/// weights, affinity, timeouts and limits change.
fn variant(i: u32, server: &str, extra: &str) -> Value {
    const ALGORITHMS: [&str; 5] =
        ["round_robin", "weighted_round_robin", "least_connections", "power_of_two", "maglev"];
    let mut backends = vec![json!({"address": server, "weight": 1 + i % 7})];
    if i % 2 == 1 {
        backends.push(json!({"address": extra, "weight": 1 + i % 3}));
    }
    let mut proxy = json!({
        "algorithm": ALGORITHMS[i as usize % ALGORITHMS.len()],
        "affinity": if i.is_multiple_of(3) { "client_ip" } else { "none" },
        "affinity_timeout": 60 + i,
        "connect_timeout_ms": 1000 + 10 * i,
        "idle_timeout": 60 + i,
        "udp_idle_timeout": 5 + i % 20,
        "max_udp_sessions": 1000 + i,
    });
    if i.is_multiple_of(4) {
        proxy["max_connections"] = json!(100 + i);
        proxy["max_connections_per_backend"] = json!(50 + i);
    }
    json!({"name": "bulk", "pool": "vips", "ports": [{"port": 5201}], "backends": backends, "proxy": proxy})
}

/// Established TCP connections on `port` inside `ns`.
fn established(ns: &Netns, port: u16) -> usize {
    let filter = format!("( sport = :{port} )");
    ns.exec(&["ss", "-Htn", "state", "established", &filter]).lines().filter(|l| !l.trim().is_empty()).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iperf3_survives_a_hundred_changes_of_its_service() {
    let bed = start_proxy_appliance(None).await;
    // The iperf3 server in a backend namespace of its own.
    let backend_ns = Netns::new();
    let link = Link::between(&bed.app_ns, &backend_ns);
    let server = format!("{}:5201", link.b.v4);
    // Nothing listens there: new connections would fail, but none is made once the transfer runs.
    let extra = format!("{}:5202", link.b.v4);
    let mut cmd = backend_ns.command("iperf3");
    cmd.args(["-s", "-B", &link.b.v4.to_string(), "-p", "5201"]);
    let _server = backend_ns.spawn(cmd, &bed.app.ws.path().join("iperf3-server.log"));
    wait_until(WAIT, "iperf3 -s listening", || {
        let out = backend_ns.exec(&["ss", "-Hltn", "( sport = :5201 )"]);
        if out.trim().is_empty() { Err("not yet".into()) } else { Ok(()) }
    })
    .await;

    let vip = bed.create_service(variant(0, &server, &extra)).await;
    // Paced (20 Mbit/s) to stay light next to the other tests; 20 s leave ample room for the 100 changes.
    let client = tokio::process::Command::new("ip")
        .args(["netns", "exec", bed.client_ns.name(), "iperf3", "-c", &vip, "-p", "5201", "-t", "20", "-b", "20M"])
        .args(["--connect-timeout", "10000", "--json"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn iperf3 -c");
    let mut client = client;
    // The control and the data connection are both up before anything changes (so both reach the server).
    wait_until(WAIT, "iperf3's control and data connections", || {
        let n = established(&backend_ns, 5201);
        if n >= 2 { Ok(()) } else { Err(format!("{n} established")) }
    })
    .await;

    let started = std::time::Instant::now();
    for i in 1..=100 {
        bed.put_service(variant(i, &server, &extra)).await;
        // Each change is applied on its own (not merged with the next into one snapshot).
        bed.applied().await;
    }
    let took = started.elapsed();
    eprintln!("100 changes applied in {took:?}");
    let still_running = client.try_wait().expect("try_wait").is_none();
    // While the transfer still runs after the changes, nothing was reset or cut inside the proxy. (At its end
    // iperf3's server may close a socket with unread bytes, which resets: that is not the proxy's doing.)
    let during = bed.listener("bulk", "tcp").await;
    if still_running {
        assert_eq!((count(&during, &["relay_errors"]), count(&during, &["cancelled"])), (0, 0), "{during:#}");
    }

    let output = tokio::time::timeout(Duration::from_secs(120), client.wait_with_output())
        .await
        .expect("iperf3 -c ends")
        .expect("iperf3 -c output");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "iperf3 -c failed ({}):\n{text}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("iperf3 --json output ({e}): {text}"));
    assert!(report.get("error").is_none(), "iperf3 reports an error: {}", report["error"]);
    let sent = report["end"]["sum_sent"]["bytes"].as_u64().unwrap_or(0);
    let received = report["end"]["sum_received"]["bytes"].as_u64().unwrap_or(0);
    assert!(sent > 0 && received > 0, "no data moved: sent {sent}, received {received}");
    // Only meaningful if the changes happened during the transfer, which 20 s leave ample room for.
    assert!(still_running, "iperf3 ended before the 100 changes were applied (they took {took:?})");
    let status = bed.proxy_status().await;
    assert_eq!(status["health"], "ok", "{status}");
    // Nothing was reset or cut inside the proxy either, and what the server received went through it.
    bed.listener_until("bulk", "tcp", "the transfer's bytes counted", |l| count(l, &["bytes_to_backend"]) >= received)
        .await;
    let l = bed.listener("bulk", "tcp").await;
    assert_eq!(count(&l, &["cancelled"]), 0, "no drain reset: {l:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_service_drains_its_running_transfer() {
    let bed = start_proxy_appliance(None).await;
    let a = bed.backend("a", 8080).await;
    let vip = bed.create_service(tcp_service("gone", members(&[&a]), json!({}))).await;
    let mut long = bed.agent();
    assert_eq!(long.open("long", &vip, 80, None).await.backend.as_deref(), Some("a"));
    long.send("long", "stream\n").await;
    let reader = tokio::spawn(async move { long.wait_end("long", Duration::from_secs(60)).await });
    eventually(WAIT, "the stream flowing", || async { (a.streamed() > 0).then_some(()) }).await;

    // The service goes: its VIP port stops taking connections but drains (docs/proxy.md: 30 s) — the running
    // transfer must go on to its end.
    bed.api.delete("/api/v1/services/gone").await.expect(reqwest::StatusCode::NO_CONTENT);
    bed.applied().await;
    let at_change = a.streamed();
    eventually(WAIT, "the drained stream still flowing", || async {
        (a.streamed() >= at_change + 1024 * 1024).then_some(())
    })
    .await;
    a.release();
    let (end, bytes, tail) = tokio::time::timeout(Duration::from_secs(180), reader)
        .await
        .expect("the drained transfer ends")
        .expect("reader task");
    assert_eq!(end, "eof", "the drained transfer ended with {end} after {bytes} bytes");
    assert!(tail.ends_with("END\n"), "the transfer lost its end: …{tail:?}");
    assert_eq!(bytes, a.streamed() + 4, "bytes lost or added on the way");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vip_port_that_cannot_be_bound_is_reported_and_retried() {
    let bed = start_proxy_appliance(None).await;
    let a = bed.backend("a", 8080).await;
    // Something else in the appliance's namespace holds 198.18.0.5:80 (IP_FREEBIND = 15: the address is not
    // local yet).
    let script = "import socket, time; s = socket.socket(); s.setsockopt(socket.SOL_IP, 15, 1); \
                  s.bind(('198.18.0.5', 80)); s.listen(); print('bound', flush=True); time.sleep(600)";
    let mut cmd = bed.app_ns.command("/usr/bin/python3");
    cmd.args(["-c", script]);
    let mut squatter = bed.app_ns.spawn(cmd, &bed.app.ws.path().join("squatter.log"));
    wait_until(WAIT, "the squatter listening", || {
        let out = bed.app_ns.exec(&["ss", "-Hltn", "( sport = :80 )"]);
        if out.contains("198.18.0.5:80") { Ok(()) } else { Err(out) }
    })
    .await;

    let service = |weight: u32| {
        json!({"name": "taken", "addresses": ["198.18.0.5"], "ports": [{"port": 80}],
            "backends": [{"address": a.address(), "weight": weight}]})
    };
    bed.api.post("/api/v1/services", service(1)).await.expect(reqwest::StatusCode::CREATED);
    let status = eventually(WAIT, "the proxy reporting the port it cannot bind", || async {
        let s = bed.proxy_status().await;
        (s["health"] == "degraded").then_some(s)
    })
    .await;
    let detail = status["detail"].as_str().expect("detail");
    assert!(detail.contains("198.18.0.5:80"), "{status}");

    // Once the port is free, the next snapshot binds it.
    squatter.stop("KILL", WAIT);
    bed.update_service(service(2)).await;
    let mut agent = bed.agent();
    assert_eq!(agent.backends("198.18.0.5", 80, None, 2).await, ["a", "a"]);
    let detail = bed.proxy_status().await["detail"].as_str().unwrap_or("").to_string();
    assert!(detail.starts_with("1 listener(s)"), "{detail}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_backend_shows_as_draining_in_the_status() {
    let bed = start_proxy_appliance(None).await;
    let (a, b) = (bed.backend("a", 8080).await, bed.backend("b", 8080).await);
    let policy = json!({"algorithm": "round_robin"});
    let vip = bed.create_service(tcp_service("drain", members(&[&a]), policy.clone())).await;
    let mut agent = bed.agent();
    assert_eq!(agent.open("held", &vip, 80, None).await.backend.as_deref(), Some("a"));
    bed.update_service(tcp_service("drain", members(&[&b]), policy)).await;
    let a_address = a.address();
    bed.listener_until("drain", "tcp", "`a` draining with its connection", |l| {
        l["backends"].as_array().is_some_and(|bs| {
            bs.iter().any(|b| b["address"] == a_address && b["draining"] == true && count(b, &["active"]) == 1)
        })
    })
    .await;
}
