//! Benchmark of the pure model steps behind every snapshot and every configuration write, on a large
//! configuration: `compile`, `ipam::plan`, `Config::validate`, `diff_configs`, and the whole in-memory part
//! of a write as `Control::change` does it. Also the heap memory of one `Snapshot`, counted by a wrapping
//! global allocator.
//!
//! `cargo run --release -p portico-bench --bin compile -- [--services 10000] [--backends 10]`

// A benchmark is a tool that reports on standard output.
#![allow(clippy::print_stdout)]

use anyhow::{Result, bail};
use clap::Parser;
use model::config::{Config, Kind};
use model::ipam::{self, Allocation};
use model::{Observed, compile, diff::diff_configs};
use portico_bench::stats::{Summary, mib, table};
use portico_bench::workload;
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use std::alloc::System;
use std::collections::HashMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

/// Counts every allocation (a few atomic additions each). Built with `--features uncounted` it is not the
/// global allocator: timings are then free of that cost, and no memory is measured.
#[cfg_attr(not(feature = "uncounted"), global_allocator)]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const COUNTED: bool = cfg!(not(feature = "uncounted"));

/// The target for compiling 10,000 services.
const COMPILE_TARGET: Duration = Duration::from_millis(20);

#[derive(Debug, Parser)]
#[command(about = "Time compile, IPAM, validation and diff on a large configuration")]
struct Args {
    /// Static services in the configuration.
    #[arg(long, default_value_t = 10_000)]
    services: usize,
    /// Backends per service.
    #[arg(long, default_value_t = 10)]
    backends: usize,
    /// Timed runs of `compile` (after 5 untimed ones).
    #[arg(long, default_value_t = 300)]
    iterations: usize,
    /// Timed runs of each of the other steps.
    #[arg(long, default_value_t = 50)]
    step_iterations: usize,
}

/// Runs `f` `iterations` times after `warmup` untimed runs; each result is dropped outside the timing.
fn time<T>(warmup: usize, iterations: usize, mut f: impl FnMut() -> T) -> Vec<Duration> {
    for _ in 0..warmup {
        drop(black_box(f()));
    }
    let mut samples = Vec::with_capacity(iterations);
    for _ in 0..iterations {
        let started = Instant::now();
        let value = black_box(f());
        samples.push(started.elapsed());
        drop(value);
    }
    samples
}

/// Heap bytes allocated, and still live, by `f`, with its result (kept alive).
fn heap<T>(f: impl FnOnce() -> T) -> (T, stats_alloc::Stats) {
    let region = Region::new(GLOBAL);
    let value = f();
    (value, region.change())
}

fn live(s: &stats_alloc::Stats) -> u64 {
    (s.bytes_allocated as u64).saturating_sub(s.bytes_deallocated as u64)
}

fn main() -> Result<()> {
    let args = Args::parse();
    let (n, b) = (args.services, args.backends);
    println!("# compile benchmark: {n} static services, {b} backends each");
    if COUNTED {
        println!("(allocations counted: timings include the counting allocator; `--features uncounted` leaves it out)");
    } else {
        println!("(built with --features uncounted: the system allocator alone; no memory figures)");
    }

    let ((config, requests, allocations), built) = heap(|| {
        let config = workload::config(n, b);
        let requests = ipam::static_requests(&config);
        let allocations = ipam::plan(&config.pools, &requests, &[]);
        (config, requests, allocations)
    });
    if let Err(e) = config.validate() {
        bail!("the generated configuration is invalid: {e}");
    }
    let allocations = match allocations {
        Ok(a) => a,
        Err(e) => bail!("the generated configuration cannot get its VIPs: {e}"),
    };
    if COUNTED {
        println!("configuration, requests and allocations: {} MiB live on the heap", mib(live(&built)));
    }
    println!("{} VIPs allocated", allocations.len());

    // A one-object change, as a REST write makes it: one service added, one modified.
    let new_service = workload::service(n, b);
    let mut added = config.clone();
    added.services.push(new_service.clone());
    added.normalize();
    let mut modified = config.clone();
    if let Some(s) = modified.services.get_mut(n / 2) {
        s.backends.truncate(b.saturating_sub(1));
    }
    let added_requests = ipam::static_requests(&added);
    let versions: HashMap<(Kind, String), u64> = config
        .services
        .iter()
        .map(|s| ((Kind::Service, s.name.clone()), 1))
        .chain(config.pools.iter().map(|p| ((Kind::Pool, p.name.clone()), 1)))
        .collect();

    let observed = Observed::default();
    let compile_samples = time(5, args.iterations, || compile(1, 1, &config, &observed, &allocations));
    let k = args.step_iterations;
    let mut rows: Vec<(String, Vec<Duration>)> = vec![
        ("model::compile".into(), compile_samples.clone()),
        ("ipam::plan, from scratch".into(), time(2, k, || ipam::plan(&config.pools, &requests, &[]))),
        (
            "ipam::plan, keeping existing (+1 service)".into(),
            time(2, k, || ipam::plan(&added.pools, &added_requests, &allocations)),
        ),
        ("ipam::static_requests".into(), time(2, k, || ipam::static_requests(&added))),
        ("ipam::orphaned".into(), time(2, k, || ipam::orphaned(&added.pools, &added_requests, &allocations))),
        ("Config::validate".into(), time(2, k, || config.validate())),
        ("diff_configs, 1 service added".into(), time(2, k, || diff_configs(&config, &added))),
        ("diff_configs, 1 service modified".into(), time(2, k, || diff_configs(&config, &modified))),
        ("Config::clone".into(), time(2, k, || config.clone())),
        (
            format!("diff_configs, whole document (0 -> {n})"),
            time(1, k.min(10), || diff_configs(&Config::default(), &config)),
        ),
    ];
    // The in-memory part of one REST write, step by step as Control::change_with does it (the SQLite
    // commit, the audit entry and HTTP are not in it; the `rest` benchmark measures the whole).
    let write_path = time(2, k, || -> Result<bool> {
        let mut next = config.clone();
        next.services.push(new_service.clone());
        next.normalize();
        if next.validate().is_err() {
            bail!("invalid");
        }
        let changes = diff_configs(&config, &next)?;
        let requests = ipam::static_requests(&next);
        let orphans = ipam::orphaned(&next.pools, &requests, &allocations);
        let existing: Vec<Allocation> = allocations.to_vec();
        let planned = match ipam::plan(&next.pools, &requests, &existing) {
            Ok(p) => p,
            Err(e) => bail!("{e}"),
        };
        let mut versions = versions.clone();
        for c in &changes {
            versions.insert((c.kind, c.name.clone()), 2);
        }
        Ok(orphans.is_empty() && planned != allocations && !versions.is_empty())
    });
    rows.push(("one write in memory (Control::change steps)".into(), write_path));

    let mut header = vec!["step"];
    header.extend(Summary::HEADER);
    let cells: Vec<Vec<String>> = rows
        .iter()
        .filter_map(|(name, samples)| {
            let mut row = vec![name.clone()];
            row.extend(Summary::of(samples)?.cells());
            Some(row)
        })
        .collect();
    println!();
    print!("{}", table(&header, &cells));

    if COUNTED {
        memory(&config, &observed, &allocations);
    }
    if let Some(s) = Summary::of(&compile_samples) {
        let verdict = |d: Duration| if d < COMPILE_TARGET { "met" } else { "MISSED" };
        println!();
        println!(
            "target: compile of {n} services under {} ms: p50 {:.3} ms ({}), p99 {:.3} ms ({})",
            COMPILE_TARGET.as_millis(),
            s.p50.as_secs_f64() * 1e3,
            verdict(s.p50),
            s.p99.as_secs_f64() * 1e3,
            verdict(s.p99)
        );
    }
    Ok(())
}

/// The heap of one snapshot, and of the changes a whole-document PUT makes.
fn memory(config: &Config, observed: &Observed, allocations: &[Allocation]) {
    let n = config.services.len();
    let (snapshot, counted) = heap(|| compile(1, 1, config, observed, allocations));
    let snapshot_bytes = live(&counted);
    println!();
    println!(
        "one Snapshot ({} services): {} allocations, {} MiB allocated during compile, {} MiB ({} bytes) live after it \
         = {} bytes per service",
        snapshot.services.len(),
        counted.allocations + counted.reallocations,
        mib(counted.bytes_allocated as u64),
        mib(snapshot_bytes),
        snapshot_bytes,
        snapshot_bytes / n.max(1) as u64
    );
    drop(snapshot);
    let (changes, counted) = heap(|| diff_configs(&Config::default(), config));
    println!(
        "diff_configs of the whole document (what PUT /api/v1/config of {n} new services makes): {} changes, \
         {} MiB live",
        changes.as_ref().map(Vec::len).unwrap_or(0),
        mib(live(&counted))
    );
    drop(changes);
}
