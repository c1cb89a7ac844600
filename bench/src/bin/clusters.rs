//! Cluster sync at scale: two test Kubernetes API servers with 5,000 LoadBalancer Services and 10 endpoints
//! each, and a release `portico` syncing both. Measures the time from connecting the clusters to every status
//! written, the appliance's RSS after sync, and the latency from an EndpointSlice change to the snapshot that
//! contains it.
//!
//! There is no anchor run beside it: MetalLB (the tool this replaces) needs a real cluster, which cannot run on
//! these machines. The test API server runs in this process (on the other core than the appliance, mostly).

// A benchmark reports on standard output.
#![allow(clippy::print_stdout)]

use anyhow::{Context, Result, bail};
use clap::Parser;
use portico_bench::server::{Api, Portico};
use portico_bench::stats::{Summary, table};
use portico_test_apiserver::{TestApiServer, permissions};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

#[derive(Debug, Parser)]
struct Args {
    /// LoadBalancer Services per cluster.
    #[arg(long, default_value_t = 5000)]
    services: usize,
    /// Endpoints per Service.
    #[arg(long, default_value_t = 10)]
    endpoints: usize,
    /// EndpointSlice changes timed for the latency figures.
    #[arg(long, default_value_t = 200)]
    changes: usize,
}

const NAMESPACE: &str = "bench";

fn service(i: usize) -> Value {
    json!({
        "metadata": {"name": format!("svc-{i}")},
        "spec": {"type": "LoadBalancer", "loadBalancerClass": "portico.io/lb",
                 "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}
    })
}

fn slice(cluster: usize, i: usize, endpoints: usize, ready_first: bool) -> Value {
    let eps: Vec<Value> = (0..endpoints)
        .map(|e| {
            let n = i * endpoints + e;
            json!({"addresses": [format!("10.{}.{}.{}", 100 + cluster, (n / 250) % 250, n % 250 + 1)],
                   "conditions": {"ready": e != 0 || ready_first}})
        })
        .collect();
    json!({
        "metadata": {"name": format!("svc-{i}-1"), "labels": {"kubernetes.io/service-name": format!("svc-{i}")}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": eps
    })
}

fn written(server: &TestApiServer) -> usize {
    server
        .list("Service", Some(NAMESPACE))
        .iter()
        .filter(|s| s["status"]["loadBalancer"]["ingress"].as_array().is_some_and(|a| !a.is_empty()))
        .count()
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();

    eprintln!("seeding 2 test API servers with {} Services x {} endpoints…", args.services, args.endpoints);
    let mut servers = Vec::new();
    for c in 0..2 {
        let server = TestApiServer::builder().history_window(4 * args.services + 10_000).start().await;
        for i in 0..args.services {
            server.create("Service", Some(NAMESPACE), service(i)).map_err(|e| anyhow::anyhow!("{e:?}"))?;
            server
                .create("EndpointSlice", Some(NAMESPACE), slice(c, i, args.endpoints, true))
                .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        }
        servers.push(server);
    }

    let portico = Portico::start().await?;
    let api = Api::admin(&portico.base).await?;
    let post = |path: &'static str, body: Value| {
        let api = api.clone();
        async move {
            let r = api.http.post(format!("{}{path}", api.base)).json(&body).send().await?;
            if !r.status().is_success() {
                bail!("POST {path}: {} {}", r.status(), r.text().await.unwrap_or_default());
            }
            Ok(())
        }
    };
    post("/api/v1/pools", json!({"name": "bench", "addresses": ["10.200.0.0/16"]})).await?;

    let started = Instant::now();
    for (c, server) in servers.iter().enumerate() {
        let token = server.add_token("portico", permissions::appliance());
        post("/api/v1/clusters", json!({"name": format!("k{c}"), "kubeconfig": server.kubeconfig(&token)})).await?;
    }
    let total = 2 * args.services;
    let mut last_report = Instant::now();
    loop {
        let done: usize = servers.iter().map(written).sum();
        if done == total {
            break;
        }
        if started.elapsed() > Duration::from_secs(600) {
            bail!("only {done} of {total} statuses written after 10 minutes\n{}", portico.log_tail());
        }
        if last_report.elapsed() > Duration::from_secs(5) {
            eprintln!("  {done}/{total} statuses after {:.1} s", started.elapsed().as_secs_f64());
            last_report = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let full_sync = started.elapsed();
    // Let the write-back and event publishing settle before measuring memory; then again once the allocator
    // has had time to return the sync's peak to the system (the steady state the appliance runs in).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let memory = portico.memory()?;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let settled = portico.memory()?;

    // EndpointSlice change → the snapshot that contains it.
    let mut samples = Vec::with_capacity(args.changes);
    for n in 0..args.changes {
        let i = (n * 37) % args.services;
        let server = &servers[n % 2];
        let cluster = n % 2;
        // Each change hits another Service (37 and the count are coprime) and makes its first endpoint not ready.
        let ready_first = false;
        let name = format!("k{cluster}/{NAMESPACE}/svc-{i}");
        let path = format!("/api/v1/snapshot/services?prefix={name}&limit=1");
        let first_ip = slice(cluster, i, args.endpoints, true)["endpoints"][0]["addresses"][0].clone();
        let changed = Instant::now();
        server
            .update("EndpointSlice", Some(NAMESPACE), slice(cluster, i, args.endpoints, ready_first))
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        loop {
            let page: Value = api.http.get(format!("{}{path}", api.base)).send().await?.json().await?;
            let backends = page["items"][0]["backends"].as_array().cloned().unwrap_or_default();
            let has_first = backends.iter().any(|b| b["address"] == first_ip);
            // Not-ready endpoints are left out while others are ready.
            if has_first == ready_first && backends.len() == args.endpoints - usize::from(!ready_first) {
                break;
            }
            if changed.elapsed() > Duration::from_secs(30) {
                bail!("change {n} never reached the snapshot\n{}", portico.log_tail());
            }
            // Poll gently: a tight loop would take the CPU the appliance needs to get there.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        samples.push(changed.elapsed());
    }
    let summary = Summary::of(&samples).context("no samples")?;

    println!(
        "{}",
        table(
            &["measure", "value"],
            &[
                vec!["clusters x Services x endpoints".into(), format!("2 x {} x {}", args.services, args.endpoints)],
                vec!["connect → every status written".into(), format!("{:.2} s", full_sync.as_secs_f64())],
                vec!["RSS 2 s after sync".into(), format!("{:.1} MiB", memory.rss_kib as f64 / 1024.0)],
                vec!["RSS 12 s after sync".into(), format!("{:.1} MiB", settled.rss_kib as f64 / 1024.0)],
                vec!["peak RSS (VmHWM)".into(), format!("{:.1} MiB", memory.hwm_kib as f64 / 1024.0)],
            ]
        )
    );
    let mut header = vec!["EndpointSlice change → snapshot"];
    header.extend(Summary::HEADER);
    let mut row = vec!["latency".to_string()];
    row.extend(summary.cells());
    println!("{}", table(&header, &[row]));
    println!(
        "targets: full sync < 10 s: {}; RSS < 300 MB: {}; p99 < 100 ms: {}",
        if full_sync < Duration::from_secs(10) { "met" } else { "MISSED" },
        // The target is 300 MB (decimal), about 286 MiB.
        if memory.rss_kib.max(settled.rss_kib) * 1024 < 300_000_000 { "met" } else { "MISSED" },
        if summary.p99 < Duration::from_millis(100) { "met" } else { "MISSED" },
    );
    portico.stop().await?;
    Ok(())
}
