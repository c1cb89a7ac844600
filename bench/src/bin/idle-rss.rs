//! Resident memory of a real release `portico`: idle on an empty data dir, then holding many services; and the
//! CPU it uses while it sits idle in each state (an idle appliance should use next to none).
//!
//! `cargo build --release -p portico && cargo run --release -p portico-bench --bin idle-rss`

// A benchmark is a tool that reports on standard output.
#![allow(clippy::print_stdout)]

use anyhow::Result;
use clap::Parser;
use portico_bench::server::{Api, Portico, ProcMemory};
use portico_bench::stats::{mib, table};
use portico_bench::workload;
use std::time::Duration;

/// The target for an idle appliance: 40 MB (decimal, the stricter reading).
const IDLE_TARGET_BYTES: u64 = 40_000_000;

#[derive(Debug, Parser)]
#[command(about = "Measure the resident memory of portico, idle and with many services")]
struct Args {
    /// Services stored for the second measurement.
    #[arg(long, default_value_t = 10_000)]
    services: usize,
    /// Backends per service.
    #[arg(long, default_value_t = 10)]
    backends: usize,
    /// Seconds to wait after readiness (and after seeding) before reading /proc; CPU is measured over them.
    #[arg(long, default_value_t = 10)]
    settle: u64,
}

fn row(what: &str, cpu: f64, m: &ProcMemory) -> Vec<String> {
    vec![
        what.to_string(),
        format!("{cpu:.1}"),
        mib(m.rss_kib * 1024),
        mib(m.hwm_kib * 1024),
        mib(m.rss_anon_kib * 1024),
        mib(m.rss_file_kib * 1024),
        m.threads.to_string(),
    ]
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let settle = Duration::from_secs(args.settle);
    println!("# idle-rss benchmark: portico on an empty data dir, then with {} services", args.services);
    let portico = Portico::start().await?;
    let (idle_cpu, ()) = portico.cpu_during(tokio::time::sleep(settle)).await?;
    let idle = portico.memory()?;

    let api = Api::admin(&portico.base).await?;
    let (login_cpu, ()) = portico.cpu_during(tokio::time::sleep(settle)).await?;
    let logged_in = portico.memory()?;

    let config = workload::config(args.services, args.backends);
    api.put_config(&config).await?;
    drop(config);
    // Let the write's own work (snapshot compile, subsystems) finish before measuring idle CPU.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (seeded_cpu, ()) = portico.cpu_during(tokio::time::sleep(settle)).await?;
    let seeded = portico.memory()?;

    let rows = vec![
        row("idle, empty data dir", idle_cpu, &idle),
        row("after a login and a token", login_cpu, &logged_in),
        row(&format!("holding {} services", args.services), seeded_cpu, &seeded),
    ];
    println!();
    print!(
        "{}",
        table(&["state", "idle CPU %", "VmRSS MiB", "VmHWM MiB", "RssAnon MiB", "RssFile MiB", "threads"], &rows)
    );
    let idle_bytes = idle.rss_kib * 1024;
    println!();
    println!(
        "target: idle VmRSS under 40 MB: {} MiB = {:.1} MB ({})",
        mib(idle_bytes),
        idle_bytes as f64 / 1e6,
        if idle_bytes < IDLE_TARGET_BYTES { "met" } else { "MISSED" }
    );
    portico.stop().await
}
