//! Benchmark of the REST API of a real release `portico` on a temporary data dir holding a large
//! configuration: revisions per second and latency of POST /api/v1/services (one client, then several at
//! once), and latency of GET /api/v1/services/{name}.
//!
//! `cargo build --release -p portico && cargo run --release -p portico-bench --bin rest`

// A benchmark is a tool that reports on standard output.
#![allow(clippy::print_stdout)]

use anyhow::{Context, Result};
use clap::Parser;
use portico_bench::server::{Api, Portico};
use portico_bench::stats::{Summary, mib, table};
use portico_bench::workload;
use std::time::{Duration, Instant};

#[derive(Debug, Parser)]
#[command(about = "Time REST writes and reads against a real portico holding many services")]
struct Args {
    /// Services stored before measuring (one PUT /api/v1/config).
    #[arg(long, default_value_t = 10_000)]
    services: usize,
    /// Backends per service.
    #[arg(long, default_value_t = 10)]
    backends: usize,
    /// Services created one after another by a single client.
    #[arg(long, default_value_t = 300)]
    writes: usize,
    /// Concurrent clients in the concurrent phases.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Services each concurrent client creates.
    #[arg(long, default_value_t = 40)]
    writes_per_client: usize,
    /// GET requests one client makes one after another (and each concurrent client makes).
    #[arg(long, default_value_t = 2000)]
    reads: usize,
}

/// Latencies of `count` sequential calls of `op(i)`, and the wall time of them all.
async fn sequential<F, Fut>(count: usize, mut op: F) -> Result<(Vec<Duration>, Duration)>
where
    F: FnMut(usize) -> Fut,
    Fut: Future<Output = Result<Duration>>,
{
    let mut samples = Vec::with_capacity(count);
    let started = Instant::now();
    for i in 0..count {
        samples.push(op(i).await?);
    }
    Ok((samples, started.elapsed()))
}

/// `clients` tasks, each making `per_client` sequential calls of `op(client, i)`; all latencies and the wall
/// time until the last finished.
async fn concurrent<F, Fut>(clients: usize, per_client: usize, op: F) -> Result<(Vec<Duration>, Duration)>
where
    F: Fn(usize, usize) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<Duration>> + Send,
{
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..clients {
        let op = op.clone();
        tasks.spawn(async move {
            let mut samples = Vec::with_capacity(per_client);
            for i in 0..per_client {
                samples.push(op(c, i).await?);
            }
            Ok::<_, anyhow::Error>(samples)
        });
    }
    let mut samples = Vec::with_capacity(clients * per_client);
    while let Some(joined) = tasks.join_next().await {
        samples.extend(joined.context("a client task failed")??);
    }
    Ok((samples, started.elapsed()))
}

fn row(name: &str, samples: &[Duration], wall: Duration) -> Vec<String> {
    let rate = samples.len() as f64 / wall.as_secs_f64().max(1e-9);
    let mut cells = vec![name.to_string(), format!("{rate:.1}")];
    if let Some(s) = Summary::of(samples) {
        cells.extend(s.cells());
    }
    cells
}

/// A name spread over the seeded services (a fixed multiplicative walk, the same every run).
fn spread(i: usize, services: usize) -> String {
    workload::service_name((i.wrapping_mul(7919) + 13) % services.max(1))
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let (n, b) = (args.services, args.backends);
    println!("# rest benchmark: {n} services stored ({b} backends each), then writes and reads");
    let portico = Portico::start().await?;
    let api = Api::admin(&portico.base).await?;

    let config = workload::config(n, b);
    let (seed_time, revision) = api.put_config(&config).await?;
    println!(
        "seeded {n} services with one PUT /api/v1/config ({} MiB of JSON) in {:.2} s, revision {revision}",
        mib(serde_json::to_vec(&config)?.len() as u64),
        seed_time.as_secs_f64()
    );
    drop(config);
    // Let the snapshot of the seed compile before measuring.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let mut next = n;
    let mut take = |count: usize| {
        let first = next;
        next += count;
        first
    };
    let mut rows = Vec::new();

    let first = take(5);
    for i in 0..5 {
        api.create_service(&workload::service(first + i, b)).await?;
    }

    let first = take(args.writes);
    let a = api.clone();
    let (samples, wall) = sequential(args.writes, |i| {
        let a = a.clone();
        let service = workload::service(first + i, b);
        async move { a.create_service(&service).await }
    })
    .await?;
    rows.push(row("POST /services, 1 client", &samples, wall));

    let total = args.clients * args.writes_per_client;
    let first = take(total);
    let per_client = args.writes_per_client;
    let a = api.clone();
    let (samples, wall) = concurrent(args.clients, per_client, move |c, i| {
        let a = a.clone();
        let service = workload::service(first + c * per_client + i, b);
        async move { a.create_service(&service).await }
    })
    .await?;
    rows.push(row(&format!("POST /services, {} clients", args.clients), &samples, wall));

    let stored = next;
    let a = api.clone();
    let (samples, wall) = sequential(args.reads, |i| {
        let a = a.clone();
        let path = format!("/api/v1/services/{}", spread(i, stored));
        async move { a.get(&path).await }
    })
    .await?;
    rows.push(row("GET /services/{name}, 1 client", &samples, wall));

    let a = api.clone();
    let reads = args.reads;
    let (samples, wall) = concurrent(args.clients, reads, move |c, i| {
        let a = a.clone();
        let path = format!("/api/v1/services/{}", spread(c * reads + i, stored));
        async move { a.get(&path).await }
    })
    .await?;
    rows.push(row(&format!("GET /services/{{name}}, {} clients", args.clients), &samples, wall));

    let a = api.clone();
    let (samples, wall) = sequential(args.reads, |_| {
        let a = a.clone();
        async move { a.get("/healthz").await }
    })
    .await?;
    rows.push(row("GET /healthz (baseline), 1 client", &samples, wall));

    let mut header = vec!["request", "per s"];
    header.extend(Summary::HEADER);
    println!();
    print!("{}", table(&header, &rows));
    println!();
    println!("(per s: revisions per second for POST, requests per second for GET)");

    let memory = portico.memory()?;
    println!(
        "portico after the run ({stored} services): VmRSS {} MiB, VmHWM {} MiB",
        mib(memory.rss_kib * 1024),
        mib(memory.hwm_kib * 1024)
    );
    portico.stop().await
}
