//! The L4 proxy (issue 6) against HAProxy and nginx: bulk TCP throughput, new connections per second, memory per
//! idle proxied connection and UDP packets per second, all over loopback. See `bench/README.md` (`l4`).
//!
//! The proxies run pinned to one CPU (`--proxy-cpu`); this process (load generators and backends) and iperf3 to
//! another (`--load-cpu`). Every child is started through `setpriv --pdeathsig KILL`, so it dies with the
//! benchmark even when the benchmark is killed, and is stopped when its handle drops (error, panic, Ctrl-C,
//! SIGTERM).

// A benchmark prints its results.
#![allow(clippy::print_stdout)]

use anyhow::{Context, Result, bail};
use clap::{Parser, ValueEnum};
use portico_bench::server::{Api, Portico, ProcMemory, StartOptions, cpu_seconds};
use portico_bench::stats::{Summary, table};
use serde_json::{Value, json};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::JoinSet;

/// All addresses are on `lo` (127.0.0.0/8 is local): the VIPs of the three proxies and the backends' address.
const POOL: &str = "127.77.0.0/24";
const VIP_PORTICO: Ipv4Addr = Ipv4Addr::new(127, 77, 0, 10);
const VIP_HAPROXY: Ipv4Addr = Ipv4Addr::new(127, 77, 0, 20);
const VIP_NGINX: Ipv4Addr = Ipv4Addr::new(127, 77, 0, 30);
const BACKEND: Ipv4Addr = Ipv4Addr::new(127, 77, 1, 1);
/// Front ports, the same on every VIP.
const PORT_BULK: u16 = 5201;
const PORT_CPS: u16 = 8000;
const PORT_HOLD: u16 = 8001;
const PORT_UDP: u16 = 5300;

/// What a new-connection client sends, and what the backend answers before it closes.
const REQUEST: &[u8] = b"GET / HTTP/1.0\r\nHost: bench\r\n\r\n";
const RESPONSE: &[u8] =
    b"HTTP/1.0 200 OK\r\nContent-Length: 64\r\n\r\n0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
const UDP_PAYLOAD: usize = 64;
/// The descriptor limit this process sets for itself and its children (proxies included).
const NOFILE: u64 = 262_144;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Test {
    Bulk,
    Cps,
    Idle,
    Udp,
}

#[derive(Debug, Parser)]
#[command(about = "Portico's L4 proxy against HAProxy (TCP) and nginx (UDP) on loopback; run as root")]
struct Args {
    /// Portico runs once per engine: `default` sets nothing; any other name is written to
    /// `settings.proxy.l4_engine` (then Portico is restarted).
    #[arg(long, value_delimiter = ',', default_value = "default")]
    engines: Vec<String>,
    /// Rounds; each runs every contender once, in turn.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Which measurements to run.
    #[arg(long, value_delimiter = ',', default_value = "bulk,cps,idle,udp")]
    tests: Vec<Test>,
    /// Seconds per throughput measurement (after one second of warm-up).
    #[arg(long, default_value_t = 4)]
    seconds: u64,
    /// Concurrent client loops of the new-connection test.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Connections held open for the memory test; by default 10,000 or as many as the descriptor limit allows
    /// (four descriptors each in Portico).
    #[arg(long)]
    idle_connections: Option<usize>,
    /// UDP client sockets (flows).
    #[arg(long, default_value_t = 64)]
    udp_flows: usize,
    /// Datagrams each UDP flow keeps in flight (64 × 4 stays within the default 208 KiB socket receive buffers
    /// here; at 64 × 8 a quarter of the flows' time went to loss recovery).
    #[arg(long, default_value_t = 4)]
    udp_window: usize,
    /// The CPU the proxies are pinned to.
    #[arg(long, default_value_t = 1)]
    proxy_cpu: usize,
    /// The CPU of this process (load generators and backends) and of iperf3.
    #[arg(long, default_value_t = 0)]
    load_cpu: usize,
    /// Internal: run as the hold-and-echo backend (a child of the benchmark).
    #[arg(long, hide = true)]
    hold_backend: bool,
    /// Set from the descriptor limit.
    #[arg(skip)]
    fd_limit: u64,
}

impl Args {
    /// Connections held for the memory test: 10,000 or what fits the descriptor limit. An idle connection
    /// through Portico takes four descriptors (its two sockets and a splice pipe it makes before any byte has
    /// moved), through HAProxy two.
    fn idle_n(&self) -> usize {
        self.idle_connections
            .unwrap_or_else(|| 10_000.min((self.fd_limit.saturating_sub(400) / 4 / 100 * 100) as usize))
    }

    /// Of those, how many get one byte each way (the others are closed first): after its first byte, a
    /// connection through Portico holds two splice pipes too, six descriptors in all.
    fn used_n(&self) -> usize {
        self.idle_n().min((self.fd_limit.saturating_sub(400) / 6 / 100 * 100) as usize)
    }
}

fn main() -> Result<()> {
    let mut args = Args::parse();
    if args.hold_backend {
        return hold_backend();
    }
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    if cores < 2 || args.proxy_cpu == args.load_cpu {
        eprintln!("warning: the proxy and the load share a CPU ({cores} available); figures mean little");
    }
    for tool in ["setpriv", "taskset", "iperf3", "haproxy", "nginx"] {
        if find_in_path(tool).is_none() {
            bail!(
                "`{tool}` is not installed (or not in PATH); the l4 benchmark needs setpriv, taskset, iperf3, haproxy and nginx"
            );
        }
    }
    if !Path::new(NGINX_STREAM_MODULE).is_file() {
        bail!("{NGINX_STREAM_MODULE} is missing: install libnginx-mod-stream");
    }
    // Pin before any thread exists: every thread (and child) inherits the mask.
    let mut set = nix::sched::CpuSet::new();
    set.set(args.load_cpu).context("bad --load-cpu")?;
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
        .with_context(|| format!("cannot pin this process to CPU {}", args.load_cpu))?;
    args.fd_limit = raise_nofile();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        // Returning drops the run: its children are stopped and its temporary files removed.
        tokio::select! {
            r = run(args) => r,
            _ = tokio::signal::ctrl_c() => bail!("interrupted"),
            _ = term.recv() => bail!("terminated"),
        }
    })
}

const NGINX_STREAM_MODULE: &str = "/usr/lib/nginx/modules/ngx_stream_module.so";

fn find_in_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(program)).find(|p| p.is_file())
}

/// Raises RLIMIT_NOFILE (soft and hard) to [`NOFILE`] — raising the hard limit needs CAP_SYS_RESOURCE — or
/// else the soft limit to the hard one; returns the soft limit. Children (the proxies too) inherit it: 10,000
/// proxied connections take 20,000 descriptors in the proxy.
fn raise_nofile() -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, NOFILE, NOFILE) {
        let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap_or((1024, 1024));
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
        eprintln!("note: cannot raise RLIMIT_NOFILE to {NOFILE} ({e}); using the hard limit, {hard}");
    }
    getrlimit(Resource::RLIMIT_NOFILE).map(|l| l.0).unwrap_or(1024)
}

// ---------------------------------------------------------------------------------------------------------
// Children

/// A child process, stopped (SIGTERM, then SIGKILL after 3 s) when dropped.
struct Spawned {
    name: String,
    child: Child,
}

impl Spawned {
    /// Runs `program args` through `setpriv --pdeathsig KILL taskset -c CPU`, output to `log`.
    fn start(name: &str, cpu: usize, program: &str, args: &[String], log: &Path) -> Result<Spawned> {
        let out = std::fs::File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
        let child = Command::new("setpriv")
            .args(["--pdeathsig", "KILL", "taskset", "-c", &cpu.to_string(), program])
            .args(args)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("cannot start {program}"))?;
        Ok(Spawned { name: name.to_string(), child })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn check_alive(&mut self, log: &Path) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            bail!("{} exited with {status}:\n{text}", self.name);
        }
        Ok(())
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            // SIGTERM first: nginx's master then stops its worker.
            let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(3) {
                if !matches!(self.child.try_wait(), Ok(None)) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `root` and its descendants (nginx's master and worker).
fn process_tree(root: u32) -> Vec<u32> {
    let mut parents = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
            let Some((_, rest)) = stat.rsplit_once(')') else { continue };
            if let Some(ppid) = rest.split_whitespace().nth(1).and_then(|p| p.parse::<u32>().ok()) {
                parents.push((pid, ppid));
            }
        }
    }
    let mut tree = vec![root];
    let mut i = 0;
    while let Some(&p) = tree.get(i) {
        for &(child, parent) in &parents {
            if parent == p && !tree.contains(&child) {
                tree.push(child);
            }
        }
        i += 1;
    }
    tree
}

/// What a contender's processes hold: resident memory (KiB) and open descriptors, summed.
#[derive(Debug, Clone, Copy, Default)]
struct Footprint {
    rss_kib: u64,
    fds: u64,
    /// The whole machine's kernel slab (`Slab:` in /proc/meminfo), KiB: socket and pipe structures are kernel
    /// memory, which RSS does not show.
    slab_kib: u64,
}

fn footprint(root: u32) -> Footprint {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let slab_kib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("Slab:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut f = Footprint { slab_kib, ..Footprint::default() };
    for pid in process_tree(root) {
        f.rss_kib += ProcMemory::of(pid).map(|m| m.rss_kib).unwrap_or(0);
        f.fds += std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count() as u64).unwrap_or(0);
    }
    f
}

fn tree_cpu_seconds(root: u32) -> f64 {
    process_tree(root).into_iter().filter_map(|p| cpu_seconds(p).ok()).sum()
}

/// Busy and total jiffies of each CPU, from `/proc/stat` (softirq included: on loopback most of TCP's receive
/// work runs there, on the sender's CPU).
fn cpu_jiffies() -> Vec<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .map(|l| {
            let v: Vec<u64> = l.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
            let total: u64 = v.iter().take(8).sum();
            let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
            (total - idle.min(total), total)
        })
        .collect()
}

/// The kernel's count of connections dropped because a listen queue was full (`TcpExt: ListenOverflows`).
fn listen_overflows() -> u64 {
    let text = std::fs::read_to_string("/proc/net/netstat").unwrap_or_default();
    let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else { return 0 };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "ListenOverflows")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

/// The kernel's count of UDP datagrams dropped because a socket's receive buffer was full (`Udp:
/// RcvbufErrors` in /proc/net/snmp), machine-wide.
fn udp_rcvbuf_errors() -> u64 {
    let text = std::fs::read_to_string("/proc/net/snmp").unwrap_or_default();
    let mut lines = text.lines().filter(|l| l.starts_with("Udp:"));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else { return 0 };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "RcvbufErrors")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

/// CPU use while a measurement ran: the proxy's processes (% of one core) and each CPU's busy share.
#[derive(Debug, Clone, Copy, Default)]
struct Usage {
    proxy: f64,
    proxy_core: f64,
    load_core: f64,
}

struct Meter {
    root: u32,
    proxy_cpu: f64,
    jiffies: Vec<(u64, u64)>,
    started: Instant,
}

impl Meter {
    fn start(root: u32) -> Meter {
        Meter { root, proxy_cpu: tree_cpu_seconds(root), jiffies: cpu_jiffies(), started: Instant::now() }
    }

    fn stop(&self, proxy_core: usize, load_core: usize) -> Usage {
        let elapsed = self.started.elapsed().as_secs_f64().max(1e-9);
        let now = cpu_jiffies();
        let share = |cpu: usize| match (self.jiffies.get(cpu), now.get(cpu)) {
            (Some(a), Some(b)) if b.1 > a.1 => 100.0 * (b.0 - a.0) as f64 / (b.1 - a.1) as f64,
            _ => f64::NAN,
        };
        Usage {
            proxy: 100.0 * (tree_cpu_seconds(self.root) - self.proxy_cpu) / elapsed,
            proxy_core: share(proxy_core),
            load_core: share(load_core),
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// Backends (in this process, on the load CPU)

#[derive(Debug, Default)]
struct HoldStats {
    open: AtomicU64,
}

struct Backends {
    cps: SocketAddr,
    hold: SocketAddr,
    udp: SocketAddr,
    hold_stats: Arc<HoldStats>,
    /// The hold-and-echo backend runs in a child process (this same binary, `--hold-backend`): with the
    /// descriptor limit at 20,000 this process can hold the client ends of ~10,000 connections, not both ends.
    _hold_child: tokio::process::Child,
}

/// A TCP listener with a backlog of 4096 (std's `bind` asks for 128: bursts of connects would overflow it and
/// wait for SYN retransmits).
fn listen(addr: SocketAddr) -> Result<std::net::TcpListener> {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    s.set_reuse_address(true)?;
    s.bind(&addr.into()).with_context(|| format!("cannot bind {addr}"))?;
    s.listen(4096)?;
    s.set_nonblocking(true)?;
    Ok(s.into())
}

/// Starts the answer-and-close backend (`cps`) on a thread with its own runtime, the UDP echo on a thread of
/// its own, and the hold-and-echo backend as a child process.
async fn start_backends() -> Result<Backends> {
    let any = SocketAddr::new(IpAddr::V4(BACKEND), 0);
    let cps = listen(any).context("the cps backend")?;
    let udp = std::net::UdpSocket::bind(any).context("cannot bind the UDP echo backend")?;
    let (cps_addr, udp_addr) = (cps.local_addr()?, udp.local_addr()?);
    std::thread::Builder::new().name("cps-backend".into()).spawn(move || {
        let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(r) => r,
            Err(e) => return eprintln!("backend runtime: {e}"),
        };
        runtime.block_on(async move {
            match TcpListener::from_std(cps) {
                Ok(cps) => serve_cps(cps).await,
                Err(e) => eprintln!("cannot register the cps backend: {e}"),
            }
        });
    })?;
    std::thread::Builder::new().name("udp-echo".into()).spawn(move || {
        let mut buf = [0u8; 2048];
        loop {
            match udp.recv_from(&mut buf) {
                Ok((n, from)) => {
                    let _ = udp.send_to(&buf[..n], from);
                }
                Err(e) => {
                    eprintln!("udp echo: {e}");
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
    })?;
    let exe = std::env::current_exe().context("cannot find this benchmark's executable")?;
    let mut child = tokio::process::Command::new("setpriv")
        .args(["--pdeathsig", "KILL"])
        .arg(exe)
        .arg("--hold-backend")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("cannot start the hold backend")?;
    let stdout = child.stdout.take().context("no stdout of the hold backend")?;
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let first = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .context("the hold backend did not start")??
        .context("the hold backend exited")?;
    let hold: SocketAddr = first.strip_prefix("listening ").unwrap_or("").parse().context("hold backend's address")?;
    let hold_stats = Arc::new(HoldStats::default());
    let stats = Arc::clone(&hold_stats);
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(n) = line.strip_prefix("open ").and_then(|n| n.parse().ok()) {
                stats.open.store(n, Ordering::Relaxed);
            }
        }
    });
    Ok(Backends { cps: cps_addr, hold, udp: udp_addr, hold_stats, _hold_child: child })
}

/// The `--hold-backend` process: holds every connection open and echoes what it receives; prints its address,
/// then the number of open connections whenever it changes (at most every 10 ms).
fn hold_backend() -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let listener = TcpListener::from_std(listen(SocketAddr::new(IpAddr::V4(BACKEND), 0))?)?;
        println!("listening {}", listener.local_addr()?);
        let open = Arc::new(AtomicU64::new(0));
        let reported = Arc::clone(&open);
        tokio::spawn(async move {
            let mut last = u64::MAX;
            loop {
                let now = reported.load(Ordering::Relaxed);
                if now != last {
                    println!("open {now}");
                    last = now;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            };
            let open = Arc::clone(&open);
            open.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                let mut buf = [0u8; 64];
                loop {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if stream.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    }
                }
                open.fetch_sub(1, Ordering::Relaxed);
            });
        }
    })
}

/// Reads the request, answers [`RESPONSE`] and closes (the server closes first, as HTTP/1.0 does: the TIME_WAIT
/// stays on the server side of each hop and no client port is tied up).
async fn serve_cps(listener: TcpListener) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        };
        tokio::spawn(async move {
            let _ = stream.set_nodelay(true);
            let mut buf = [0u8; 256];
            let mut got = 0;
            let answered = tokio::time::timeout(Duration::from_secs(10), async {
                while got < REQUEST.len() {
                    match stream.read(&mut buf[got..]).await {
                        Ok(0) | Err(_) => return false,
                        Ok(n) => got += n,
                    }
                }
                stream.write_all(RESPONSE).await.is_ok()
            })
            .await;
            drop(answered);
        });
    }
}

// ---------------------------------------------------------------------------------------------------------
// Contenders

struct Contender {
    name: String,
    vip: Ipv4Addr,
    /// The pid whose process tree is measured.
    root: u32,
    kind: Kind,
}

enum Kind {
    Portico(Box<Portico>),
    Anchor(Spawned, PathBuf),
}

impl Contender {
    fn addr(&self, port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(self.vip), port)
    }

    fn check_alive(&mut self) -> Result<()> {
        match &mut self.kind {
            Kind::Portico(p) => {
                if footprint(p.pid).rss_kib == 0 {
                    bail!("portico is gone:\n{}", p.log_tail());
                }
                Ok(())
            }
            Kind::Anchor(s, log) => s.check_alive(log),
        }
    }

    async fn stop(self) -> Result<()> {
        match self.kind {
            Kind::Portico(p) => p.stop().await,
            Kind::Anchor(s, _) => {
                drop(s);
                Ok(())
            }
        }
    }
}

async fn start_portico(args: &Args, engine: &str, backends: &Backends, iperf: SocketAddr) -> Result<Contender> {
    let wrapper =
        ["setpriv", "--pdeathsig", "KILL", "taskset", "-c", &args.proxy_cpu.to_string()].map(String::from).to_vec();
    check_free(VIP_PORTICO)?;
    let mut portico = Portico::start_with(StartOptions { wrapper }).await?;
    let api = Api::admin(&portico.base).await?;
    if engine != "default" {
        // Read-modify-write, so this binary needs no knowledge of the settings' other fields.
        let mut settings = api_json(&api, reqwest::Method::GET, "/api/v1/settings", None).await?;
        let Some(object) = settings.as_object_mut() else { bail!("GET /api/v1/settings is not an object") };
        let proxy = object.entry("proxy").or_insert_with(|| json!({}));
        let Some(proxy) = proxy.as_object_mut() else { bail!("settings.proxy is not an object") };
        proxy.insert("l4_engine".into(), json!(engine));
        api_json(&api, reqwest::Method::PUT, "/api/v1/settings", Some(settings)).await.with_context(|| {
            format!("cannot set settings.proxy.l4_engine = {engine:?} (does this build know the setting?)")
        })?;
        // Whether the engine applies live or at start, a restart makes sure it does.
        portico.restart().await?;
        let api = Api::admin(&portico.base).await?;
        let now = api_json(&api, reqwest::Method::GET, "/api/v1/settings", None).await?;
        if now["proxy"]["l4_engine"] != json!(engine) {
            bail!("settings.proxy.l4_engine is {} after the restart, not {engine:?}", now["proxy"]["l4_engine"]);
        }
    }
    let api = Api::admin(&portico.base).await?;
    api_json(&api, reqwest::Method::POST, "/api/v1/pools", Some(json!({"name": "bench", "addresses": [POOL]}))).await?;
    let service = json!({
        "name": "l4",
        "addresses": [VIP_PORTICO.to_string()],
        "ports": [
            {"name": "bulk", "port": PORT_BULK, "target_port": iperf.port()},
            {"name": "cps", "port": PORT_CPS, "target_port": backends.cps.port()},
            {"name": "hold", "port": PORT_HOLD, "target_port": backends.hold.port()},
            {"name": "udp", "port": PORT_UDP, "protocol": "udp", "target_port": backends.udp.port()},
        ],
        "backends": [{"address": BACKEND.to_string()}],
    });
    api_json(&api, reqwest::Method::POST, "/api/v1/services", Some(service)).await?;
    let name = if engine == "default" { "portico".to_string() } else { format!("portico ({engine})") };
    let root = portico.pid;
    // Which engine runs, as the proxy subsystem reports it (once its listeners are up).
    let started = Instant::now();
    loop {
        let status = api_json(&api, reqwest::Method::GET, "/api/v1/status", None).await?;
        let detail = status["subsystems"]["proxy"]["detail"].as_str().unwrap_or("").to_string();
        if detail.contains("4 listener") || started.elapsed() > Duration::from_secs(10) {
            let threads = ProcMemory::of(root).map(|m| m.threads).unwrap_or(0);
            println!("# {name}: proxy status \"{detail}\", {threads} threads");
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let contender = Contender { name, vip: VIP_PORTICO, root, kind: Kind::Portico(Box::new(portico)) };
    wait_serving(&contender, true).await?;
    Ok(contender)
}

async fn api_json(api: &Api, method: reqwest::Method, path: &str, body: Option<Value>) -> Result<Value> {
    let mut request = api.http.request(method.clone(), format!("{}{path}", api.base));
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.with_context(|| format!("{method} {path}"))?;
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    if !status.is_success() {
        bail!("{method} {path}: {status}: {text}");
    }
    Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// HAProxy with one thread. The bulk frontend always splices (`splice-request`/`splice-response`, as Portico
/// does: with `splice-auto` alone HAProxy 2.6 copied through its buffers in this test); the others use
/// `splice-auto`, which leaves small messages to recv/send — HAProxy's best setting for each test.
fn haproxy_config(cps: SocketAddr, hold: SocketAddr, iperf: SocketAddr, maxconn: usize) -> String {
    let mut c = format!(
        "global\n    nbthread 1\n    maxconn {maxconn}\n\ndefaults\n    mode tcp\n    maxconn {maxconn}\n    \
         timeout connect 5s\n    timeout client 1h\n    timeout server 1h\n",
    );
    let always = "    option splice-request\n    option splice-response\n";
    let auto = "    option splice-auto\n";
    for (name, port, backend, splice) in
        [("bulk", PORT_BULK, iperf, always), ("cps", PORT_CPS, cps, auto), ("hold", PORT_HOLD, hold, auto)]
    {
        c.push_str(&format!(
            "\nfrontend {name}\n    bind {VIP_HAPROXY}:{port}\n{splice}    default_backend {name}\n\nbackend {name}\n\
             {splice}    server b1 {backend}\n"
        ));
    }
    c
}

fn nginx_config(dir: &Path, udp: SocketAddr) -> String {
    let d = dir.display();
    format!(
        "load_module {NGINX_STREAM_MODULE};\nworker_processes 1;\ndaemon off;\n\
         pid {d}/nginx.pid;\nerror_log {d}/nginx-error.log warn;\nevents {{ worker_connections 8192; }}\n\
         stream {{\n    server {{\n        listen {VIP_NGINX}:{PORT_UDP} udp;\n        proxy_pass {};\n        \
         proxy_responses 1;\n        proxy_timeout 30s;\n    }}\n}}\n",
        udp
    )
}

async fn start_anchor(
    args: &Args,
    dir: &Path,
    name: &str,
    vip: Ipv4Addr,
    program: &str,
    config: String,
    tcp: bool,
) -> Result<Contender> {
    check_free(vip)?;
    let path = dir.join(format!("{name}.cfg"));
    std::fs::write(&path, config)?;
    let conf = path.display().to_string();
    let (check, run): (Vec<String>, Vec<String>) = match program {
        "haproxy" => (vec!["-c".into(), "-f".into(), conf.clone()], vec!["-db".into(), "-f".into(), conf]),
        _ => (
            vec!["-t".into(), "-p".into(), dir.display().to_string(), "-c".into(), conf.clone()],
            vec!["-p".into(), dir.display().to_string(), "-c".into(), conf],
        ),
    };
    let out = Command::new(program).args(&check).output().with_context(|| format!("cannot run {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} rejects its generated config {}:\n{}{}",
            path.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let log = dir.join(format!("{name}.log"));
    let spawned = Spawned::start(name, args.proxy_cpu, program, &run, &log)?;
    let root = spawned.pid();
    let contender = Contender { name: name.to_string(), vip, root, kind: Kind::Anchor(spawned, log) };
    wait_serving(&contender, tcp).await?;
    Ok(contender)
}

/// Fails if something already listens on a VIP's ports (another run of this benchmark?): the contender would
/// fail to bind and the other process would be measured.
fn check_free(vip: Ipv4Addr) -> Result<()> {
    for port in [PORT_BULK, PORT_CPS, PORT_HOLD] {
        std::net::TcpListener::bind((vip, port))
            .with_context(|| format!("{vip}:{port}/tcp is in use: is another l4 benchmark running?"))?;
    }
    std::net::UdpSocket::bind((vip, PORT_UDP))
        .with_context(|| format!("{vip}:{PORT_UDP}/udp is in use: is another l4 benchmark running?"))?;
    Ok(())
}

/// Waits until the contender answers: one new-connection exchange (TCP) or one echoed datagram (UDP).
async fn wait_serving(c: &Contender, tcp: bool) -> Result<()> {
    let started = Instant::now();
    loop {
        let ok = if tcp { one_exchange(c.addr(PORT_CPS)).await.is_ok() } else { one_udp_echo(c.addr(PORT_UDP)).await };
        if ok {
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(20) {
            bail!("{} does not serve {} within 20 s", c.name, if tcp { c.addr(PORT_CPS) } else { c.addr(PORT_UDP) });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn one_udp_echo(to: SocketAddr) -> bool {
    let Ok(s) = UdpSocket::bind("127.0.0.1:0").await else { return false };
    if s.connect(to).await.is_err() || s.send(b"probe").await.is_err() {
        return false;
    }
    let mut buf = [0u8; 64];
    matches!(tokio::time::timeout(Duration::from_millis(200), s.recv(&mut buf)).await, Ok(Ok(5)))
}

// ---------------------------------------------------------------------------------------------------------
// Measurements

/// One figure of one contender, with the CPU it took.
#[derive(Debug, Clone)]
struct Figure {
    metric: &'static str,
    value: f64,
    usage: Option<Usage>,
    note: String,
}

/// The proxy's own CPU time per unit of work, from its share of a core and the rate: `scale` / rate of the
/// proxy's CPU seconds (1e3 per GB at a rate in GB/s gives ms per GB; 1e6 per connection gives µs).
fn cost(metric: &'static str, usage: Usage, rate: f64, scale: f64) -> Figure {
    Figure { metric, value: usage.proxy / 100.0 / rate.max(1e-9) * scale, usage: None, note: String::new() }
}

async fn iperf(c: &Contender, args: &Args, reverse: bool) -> Result<Vec<Figure>> {
    let seconds = args.seconds.to_string();
    let target = c.vip.to_string();
    let mut a = vec!["-c", &target, "-p", "5201", "-t", &seconds, "-O", "1", "-J"];
    if reverse {
        a.push("-R");
    }
    let cpu = args.load_cpu.to_string();
    let mut attempt = 0;
    let (report, usage) = loop {
        attempt += 1;
        let mut command = tokio::process::Command::new("setpriv");
        command.args(["--pdeathsig", "KILL", "taskset", "-c", &cpu, "iperf3"]).args(&a).kill_on_drop(true);
        command.stdout(Stdio::piped()).stderr(Stdio::piped());
        let child = command.spawn().context("cannot start iperf3")?;
        // CPU is measured in the steady state: from 1.2 s (after iperf3's omitted first second) to 0.2 s
        // before the end.
        let limit = Duration::from_secs(args.seconds + 20);
        let output = tokio::spawn(tokio::time::timeout(limit, child.wait_with_output()));
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let meter = Meter::start(c.root);
        tokio::time::sleep(Duration::from_secs(args.seconds).saturating_sub(Duration::from_millis(400))).await;
        let usage = meter.stop(args.proxy_cpu, args.load_cpu);
        let out =
            output.await?.with_context(|| format!("iperf3 through {} did not finish within {limit:?}", c.name))??;
        let report: Value = serde_json::from_slice(&out.stdout)
            .with_context(|| format!("iperf3 printed no JSON: {}", String::from_utf8_lossy(&out.stderr)))?;
        match report["error"].as_str() {
            // The server may still be closing the previous test.
            Some(e) if e.contains("busy") && attempt < 5 => tokio::time::sleep(Duration::from_secs(1)).await,
            Some(e) => bail!("iperf3 through {}: {e}", c.name),
            None => break (report, usage),
        }
    };
    let bps = report["end"]["sum_received"]["bits_per_second"].as_f64().context("iperf3 JSON without a result")?;
    let retransmits = report["end"]["sum_sent"]["retransmits"].as_u64().unwrap_or(0);
    Ok(vec![
        Figure {
            metric: if reverse { "bulk TCP reverse (-R), Gbit/s" } else { "bulk TCP forward, Gbit/s" },
            value: bps / 1e9,
            usage: Some(usage),
            note: format!("{retransmits} retransmits"),
        },
        cost(
            if reverse { "  proxy CPU ms per GB, reverse" } else { "  proxy CPU ms per GB, forward" },
            usage,
            bps / 8e9,
            1e3,
        ),
    ])
}

/// connect, send [`REQUEST`], read the response to EOF, close.
async fn one_exchange(to: SocketAddr) -> Result<()> {
    let mut s = TcpStream::connect(to).await?;
    s.set_nodelay(true)?;
    s.write_all(REQUEST).await?;
    let mut buf = [0u8; 256];
    let mut got = 0;
    loop {
        let n = s.read(&mut buf[got..]).await?;
        if n == 0 {
            break;
        }
        got += n;
        if got == buf.len() {
            bail!("response too long");
        }
    }
    if &buf[..got] != RESPONSE {
        bail!("unexpected response of {got} bytes");
    }
    Ok(())
}

/// `concurrency` loops of [`one_exchange`] for `duration`; completed exchanges, errors and latencies.
async fn exchange_loops(to: SocketAddr, concurrency: usize, duration: Duration) -> (u64, u64, Vec<Duration>) {
    let deadline = Instant::now() + duration;
    let mut set = JoinSet::new();
    for _ in 0..concurrency {
        set.spawn(async move {
            let (mut errors, mut times) = (0u64, Vec::new());
            while Instant::now() < deadline {
                let started = Instant::now();
                match tokio::time::timeout(Duration::from_secs(5), one_exchange(to)).await {
                    Ok(Ok(())) => times.push(started.elapsed()),
                    _ => errors += 1,
                }
            }
            (errors, times)
        });
    }
    let (mut ok, mut errors, mut all) = (0, 0, Vec::new());
    while let Some(r) = set.join_next().await {
        if let Ok((e, t)) = r {
            ok += t.len() as u64;
            errors += e;
            all.extend(t);
        }
    }
    (ok, errors, all)
}

async fn cps(c: &Contender, args: &Args) -> Result<Vec<Figure>> {
    let to = c.addr(PORT_CPS);
    exchange_loops(to, args.concurrency, Duration::from_secs(1)).await;
    let overflows = listen_overflows();
    let meter = Meter::start(c.root);
    let started = Instant::now();
    let (ok, errors, times) = exchange_loops(to, args.concurrency, Duration::from_secs(args.seconds)).await;
    let elapsed = started.elapsed().as_secs_f64();
    let usage = meter.stop(args.proxy_cpu, args.load_cpu);
    if ok == 0 {
        bail!("no connection through {} succeeded ({errors} errors)", c.name);
    }
    let s = Summary::of(&times).context("no samples")?;
    let note = format!(
        "{ok} ok, {errors} errors, {} loops, {} listen queue overflows",
        args.concurrency,
        listen_overflows() - overflows
    );
    Ok(vec![
        Figure { metric: "new connections/s", value: ok as f64 / elapsed, usage: Some(usage), note },
        cost("  proxy CPU µs per connection", usage, ok as f64 / elapsed, 1e6),
        Figure { metric: "  connection p50, ms", value: s.p50.as_secs_f64() * 1e3, usage: None, note: String::new() },
        Figure {
            metric: "  connection p99, ms",
            value: s.p99.as_secs_f64() * 1e3,
            usage: None,
            note: format!("max {:.1} ms", s.max.as_secs_f64() * 1e3),
        },
    ])
}

async fn wait_open(stats: &HoldStats, want: u64, what: &str) -> Result<()> {
    let started = Instant::now();
    while stats.open.load(Ordering::Relaxed) != want {
        if started.elapsed() > Duration::from_secs(20) {
            bail!(
                "{what}: the backend holds {} connections, not {want}, after 20 s",
                stats.open.load(Ordering::Relaxed)
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Opens `idle_n` connections through the proxy to the hold backend and measures the proxy's RSS and
/// descriptors before, with them open, and — after closing all but `used_n` and sending one byte each way on
/// those — again; then after closing everything.
async fn idle(c: &Contender, args: &Args, stats: &HoldStats) -> Result<Vec<Figure>> {
    let (n, k) = (args.idle_n(), args.used_n());
    let to = c.addr(PORT_HOLD);
    wait_open(stats, 0, "before").await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = footprint(c.root);
    let overflows = listen_overflows();
    let opening = Instant::now();
    let mut streams: Vec<TcpStream> = Vec::with_capacity(n);
    // Batches of 50 connects, each after the backend has the previous one. A connect returns when the kernel has
    // completed the handshake, before the proxy accepts: unpaced bursts overflowed the accept queue of Portico's
    // listeners while their backlog was tokio's 128 (before 957ea4f), and those connections waited for the
    // SYN-ACK retransmit (1 s, 3 s, …).
    while streams.len() < n {
        wait_open(stats, streams.len() as u64, &c.name).await?;
        let mut set = JoinSet::new();
        for _ in 0..(n - streams.len()).min(50) {
            set.spawn(async move { tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(to)).await });
        }
        while let Some(r) = set.join_next().await {
            match r {
                Ok(Ok(Ok(s))) => streams.push(s),
                Ok(Ok(Err(e))) => bail!("connect to {to} ({}) after {} connections: {e}", c.name, streams.len()),
                _ => bail!("connect to {to} ({}) timed out after {} connections", c.name, streams.len()),
            }
        }
    }
    wait_open(stats, n as u64, &c.name).await?;
    let (opened_in, overflows) = (opening.elapsed(), listen_overflows() - overflows);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let connected = footprint(c.root);
    streams.truncate(k);
    wait_open(stats, k as u64, &c.name).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let fewer = footprint(c.root);
    // One byte each way on every remaining connection: buffers, pipes and whatever a first read allocates.
    for chunk in streams.chunks_mut(500) {
        for s in chunk.iter_mut() {
            s.write_all(b"x").await?;
        }
        for s in chunk.iter_mut() {
            let mut b = [0u8; 1];
            tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut b))
                .await
                .context("echo through the proxy timed out")??;
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let used = footprint(c.root);
    drop(streams);
    wait_open(stats, 0, "after closing").await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let closed = footprint(c.root);
    let per = |a: Footprint, b: Footprint, count: usize| (a.rss_kib as f64 - b.rss_kib as f64) / count as f64;
    let fds = |a: Footprint, b: Footprint, count: usize| (a.fds as f64 - b.fds as f64) / count as f64;
    Ok(vec![
        Figure {
            metric: "idle conns: KiB per connection",
            value: per(connected, before, n),
            usage: None,
            note: format!(
                "{n} connections (open at the backend in {:.1} s, {overflows} listen queue overflows): RSS {} → {} \
                 KiB, {:.1} fds/conn",
                opened_in.as_secs_f64(),
                before.rss_kib,
                connected.rss_kib,
                fds(connected, before, n)
            ),
        },
        Figure {
            metric: "  kernel slab, whole machine, KiB/conn",
            value: (connected.slab_kib as f64 - before.slab_kib as f64) / n as f64,
            usage: None,
            note: format!(
                "Slab {} → {} KiB; includes the client's and the backend's sockets, and whatever else runs",
                before.slab_kib, connected.slab_kib
            ),
        },
        Figure {
            metric: "  + after 1 byte each way, KiB/conn",
            value: per(used, fewer, k),
            usage: None,
            note: format!(
                "{k} connections kept: RSS {} → {} KiB, +{:.1} fds/conn, Slab +{:.2} KiB/conn",
                fewer.rss_kib,
                used.rss_kib,
                fds(used, fewer, k),
                (used.slab_kib as f64 - fewer.slab_kib as f64) / k as f64
            ),
        },
        Figure {
            metric: "  RSS left after closing all, KiB",
            value: closed.rss_kib as f64 - before.rss_kib as f64,
            usage: None,
            note: format!("RSS {} KiB, {} fds", closed.rss_kib, closed.fds),
        },
    ])
}

/// `flows` connected UDP sockets, each keeping `window` datagrams in flight: a reply sends the next one; 50 ms
/// without a reply counts as a loss and sends a fresh window. Replies after the first second are counted.
async fn udp(c: &Contender, args: &Args) -> Result<Vec<Figure>> {
    let to = c.addr(PORT_UDP);
    let warm = Duration::from_secs(1);
    let started = Instant::now();
    let counted_from = started + warm;
    let deadline = counted_from + Duration::from_secs(args.seconds);
    let replies = Arc::new(AtomicU64::new(0));
    let stalls = Arc::new(AtomicU64::new(0));
    let mut set = JoinSet::new();
    for _ in 0..args.udp_flows {
        let socket = UdpSocket::bind("127.0.0.1:0").await?;
        socket.connect(to).await?;
        let (replies, stalls, window) = (Arc::clone(&replies), Arc::clone(&stalls), args.udp_window);
        set.spawn(async move {
            let payload = [7u8; UDP_PAYLOAD];
            let mut buf = [0u8; 2048];
            for _ in 0..window {
                let _ = socket.send(&payload).await;
            }
            while Instant::now() < deadline {
                match tokio::time::timeout(Duration::from_millis(50), socket.recv(&mut buf)).await {
                    Ok(Ok(_)) => {
                        if Instant::now() >= counted_from {
                            replies.fetch_add(1, Ordering::Relaxed);
                        }
                        let _ = socket.send(&payload).await;
                    }
                    _ => {
                        if Instant::now() >= counted_from {
                            stalls.fetch_add(1, Ordering::Relaxed);
                        }
                        for _ in 0..window {
                            let _ = socket.send(&payload).await;
                        }
                    }
                }
            }
        });
    }
    tokio::time::sleep_until(counted_from.into()).await;
    let drops = udp_rcvbuf_errors();
    let meter = Meter::start(c.root);
    let t0 = Instant::now();
    replies.store(0, Ordering::Relaxed);
    while set.join_next().await.is_some() {}
    let elapsed = t0.elapsed().as_secs_f64();
    let usage = meter.stop(args.proxy_cpu, args.load_cpu);
    let got = replies.load(Ordering::Relaxed);
    if got == 0 {
        bail!("no UDP reply through {}", c.name);
    }
    Ok(vec![
        Figure {
            metric: "UDP echo round trips/s",
            value: got as f64 / elapsed,
            usage: Some(usage),
            note: format!(
                "{} flows × {} in flight, {} stalls (50 ms without a reply), {} datagrams dropped on full \
                 receive buffers (machine-wide)",
                args.udp_flows,
                args.udp_window,
                stalls.load(Ordering::Relaxed),
                udp_rcvbuf_errors() - drops
            ),
        },
        cost("  proxy CPU µs per round trip", usage, got as f64 / elapsed, 1e6),
    ])
}

async fn tcp_tests(c: &mut Contender, args: &Args, backends: &Backends) -> Result<Vec<Figure>> {
    let mut out = Vec::new();
    if args.tests.contains(&Test::Bulk) {
        eprintln!("  {}: bulk TCP forward and reverse ({} s each)", c.name, args.seconds);
        out.extend(iperf(c, args, false).await?);
        out.extend(iperf(c, args, true).await?);
        c.check_alive()?;
    }
    if args.tests.contains(&Test::Cps) {
        eprintln!("  {}: new connections ({} loops, {} s)", c.name, args.concurrency, args.seconds);
        out.extend(cps(c, args).await?);
        c.check_alive()?;
    }
    if args.tests.contains(&Test::Idle) {
        eprintln!("  {}: {} idle connections, {} of them used", c.name, args.idle_n(), args.used_n());
        out.extend(idle(c, args, &backends.hold_stats).await?);
        c.check_alive()?;
    }
    Ok(out)
}

async fn udp_tests(c: &mut Contender, args: &Args) -> Result<Vec<Figure>> {
    let mut out = Vec::new();
    if args.tests.contains(&Test::Udp) {
        eprintln!("  {}: UDP ({} flows × {}, {} s)", c.name, args.udp_flows, args.udp_window, args.seconds);
        out.extend(udp(c, args).await?);
        c.check_alive()?;
    }
    Ok(out)
}

fn shell(command: &str) -> String {
    Command::new("sh")
        .args(["-c", command])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

async fn run(args: Args) -> Result<()> {
    let dir = tempfile::Builder::new().prefix("portico-l4-").tempdir()?;
    println!(
        "# {} | {} cores, {} | proxy on CPU {}, load on CPU {} | load average {}",
        shell("date -u +%Y-%m-%dT%H:%M:%SZ"),
        shell("nproc --all"),
        shell("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'"),
        args.proxy_cpu,
        args.load_cpu,
        shell("cut -d' ' -f1-3 /proc/loadavg"),
    );
    println!(
        "# {} | {} | {}",
        shell("haproxy -v | head -1"),
        shell("nginx -v 2>&1"),
        shell("iperf3 --version | head -1")
    );
    let backends = start_backends().await?;
    let iperf_port = std::net::TcpListener::bind((BACKEND, 0))?.local_addr()?.port();
    let iperf_addr = SocketAddr::new(IpAddr::V4(BACKEND), iperf_port);
    let iperf_log = dir.path().join("iperf3-server.log");
    let iperf_args = ["-s", "-B", &BACKEND.to_string(), "-p", &iperf_port.to_string()].map(String::from);
    let mut iperf_server = Spawned::start("iperf3 -s", args.load_cpu, "iperf3", &iperf_args, &iperf_log)?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    iperf_server.check_alive(&iperf_log)?;

    // Rounds alternate the contenders, so a burst of other work on the machine hits all of them alike; the
    // tables show the median of the rounds.
    let mut portico_rounds: Vec<(String, Vec<Vec<Figure>>)> = Vec::new();
    let mut anchor_rounds: Vec<Vec<Figure>> = Vec::new();
    for round in 1..=args.rounds {
        for (i, engine) in args.engines.iter().enumerate() {
            eprintln!("round {round}/{}: portico, engine {engine}", args.rounds);
            let mut p = start_portico(&args, engine, &backends, iperf_addr).await?;
            eprintln!("  portico pid {}", p.root);
            let measured = async {
                let mut figures = tcp_tests(&mut p, &args, &backends).await?;
                figures.extend(udp_tests(&mut p, &args).await?);
                anyhow::Ok(figures)
            }
            .await;
            let figures = match (measured, &p.kind) {
                (Ok(f), _) => f,
                (Err(e), Kind::Portico(portico)) => {
                    return Err(e.context(format!("portico's log ends:\n{}", portico.log_tail())));
                }
                (Err(e), _) => return Err(e),
            };
            if portico_rounds.len() <= i {
                portico_rounds.push((p.name.clone(), Vec::new()));
            }
            if let Some((_, rounds)) = portico_rounds.get_mut(i) {
                rounds.push(figures);
            }
            p.stop().await?;
        }
        eprintln!("round {round}/{}: haproxy", args.rounds);
        let config = haproxy_config(backends.cps, backends.hold, iperf_addr, args.idle_n() + 50);
        let mut h = start_anchor(&args, dir.path(), "haproxy", VIP_HAPROXY, "haproxy", config, true).await?;
        let mut anchor = tcp_tests(&mut h, &args, &backends).await?;
        h.stop().await?;
        eprintln!("round {round}/{}: nginx", args.rounds);
        let config = nginx_config(dir.path(), backends.udp);
        let mut n = start_anchor(&args, dir.path(), "nginx", VIP_NGINX, "nginx", config, false).await?;
        anchor.extend(udp_tests(&mut n, &args).await?);
        n.stop().await?;
        anchor_rounds.push(anchor);
    }
    drop(iperf_server);

    let anchor = median_of(&anchor_rounds);
    for (name, rounds) in &portico_rounds {
        println!();
        println!("{name} against the anchors, median of {} rounds", rounds.len());
        print_table(name, &median_of(rounds), &anchor);
    }
    println!("# load average at the end {}", shell("cut -d' ' -f1-3 /proc/loadavg"));
    Ok(())
}

/// Per metric, the median over rounds (value and CPU shares); the note says every round's value.
fn median_of(rounds: &[Vec<Figure>]) -> Vec<Figure> {
    fn median(mut v: Vec<f64>) -> f64 {
        v.sort_by(f64::total_cmp);
        match v.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => v[n / 2],
            n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        }
    }
    let Some(first) = rounds.first() else { return Vec::new() };
    first
        .iter()
        .map(|f| {
            let same: Vec<&Figure> = rounds.iter().filter_map(|r| r.iter().find(|g| g.metric == f.metric)).collect();
            let values: Vec<f64> = same.iter().map(|g| g.value).collect();
            let usages: Vec<Usage> = same.iter().filter_map(|g| g.usage).collect();
            let usage = (!usages.is_empty()).then(|| Usage {
                proxy: median(usages.iter().map(|u| u.proxy).collect()),
                proxy_core: median(usages.iter().map(|u| u.proxy_core).collect()),
                load_core: median(usages.iter().map(|u| u.load_core).collect()),
            });
            let each: Vec<String> = values.iter().map(|v| format!("{v:.2}")).collect();
            let note = if rounds.len() > 1 && f.note.is_empty() {
                format!("rounds {}", each.join(", "))
            } else if rounds.len() > 1 {
                format!("rounds {}; first round: {}", each.join(", "), f.note)
            } else {
                f.note.clone()
            };
            Figure { metric: f.metric, value: median(values), usage, note }
        })
        .collect()
}

fn print_table(name: &str, figures: &[Figure], anchor: &[Figure]) {
    let header = ["metric", name, "anchor", "", "ratio", "proxy CPU % (p/a)", "core p/l % (p)", "core p/l % (a)"];
    let cpu = |u: Option<Usage>| u.map(|u| format!("{:.0}", u.proxy)).unwrap_or_default();
    let cores = |u: Option<Usage>| u.map(|u| format!("{:.0}/{:.0}", u.proxy_core, u.load_core)).unwrap_or_default();
    let mut rows = Vec::new();
    let mut notes = Vec::new();
    for f in figures {
        let a = anchor.iter().find(|a| a.metric == f.metric);
        let anchor_name = if f.metric.contains("UDP") || f.metric.contains("round trip") { "nginx" } else { "haproxy" };
        rows.push(vec![
            f.metric.to_string(),
            format!("{:.2}", f.value),
            a.map(|a| format!("{:.2}", a.value)).unwrap_or_else(|| "-".into()),
            anchor_name.to_string(),
            a.filter(|a| a.value != 0.0).map(|a| format!("{:.2}", f.value / a.value)).unwrap_or_default(),
            match (f.usage, a.and_then(|a| a.usage)) {
                (None, None) => String::new(),
                (p, q) => format!("{}/{}", cpu(p), cpu(q)),
            },
            cores(f.usage),
            cores(a.and_then(|a| a.usage)),
        ]);
        if !f.note.is_empty() {
            notes.push(format!("{name}, {}: {}", f.metric.trim(), f.note));
        }
        if let Some(a) = a
            && !a.note.is_empty()
        {
            notes.push(format!("{anchor_name}, {}: {}", a.metric.trim(), a.note));
        }
    }
    print!("{}", table(&header, &rows));
    for n in notes {
        println!("  {n}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn figure(metric: &'static str, value: f64) -> Figure {
        Figure { metric, value, usage: None, note: String::new() }
    }

    #[test]
    fn medians_per_metric_over_rounds() {
        let rounds = vec![
            vec![figure("a", 3.0), figure("b", 10.0)],
            vec![figure("a", 1.0), figure("b", 30.0)],
            vec![figure("a", 2.0), figure("b", 20.0)],
        ];
        let m = median_of(&rounds);
        assert_eq!(m.iter().map(|f| (f.metric, f.value)).collect::<Vec<_>>(), vec![("a", 2.0), ("b", 20.0)]);
        assert_eq!(m[0].note, "rounds 3.00, 1.00, 2.00");
        let two = median_of(&rounds[..2]);
        assert_eq!(two[1].value, 20.0);
        assert!(median_of(&[]).is_empty());
    }

    #[test]
    fn descriptor_budget() {
        let args = |limit: u64, n: Option<usize>| {
            let mut a = Args::parse_from(["l4"]);
            a.fd_limit = limit;
            a.idle_connections = n;
            a
        };
        assert_eq!((args(20_000, None).idle_n(), args(20_000, None).used_n()), (4_900, 3_200));
        assert_eq!((args(262_144, None).idle_n(), args(262_144, None).used_n()), (10_000, 10_000));
        assert_eq!(args(20_000, Some(1_000)).used_n(), 1_000);
    }

    #[test]
    fn own_process_tree_and_footprint() {
        let me = std::process::id();
        assert_eq!(process_tree(me).first(), Some(&me));
        let f = footprint(me);
        assert!(f.rss_kib > 0 && f.fds > 0 && f.slab_kib > 0);
        assert!(listen_overflows() < u64::MAX && udp_rcvbuf_errors() < u64::MAX);
    }

    /// The generated configurations are accepted by the programs themselves, where they are installed.
    #[test]
    fn anchor_configs_parse() {
        let dir = tempfile::tempdir().expect("temp dir");
        let addr = |port| SocketAddr::new(IpAddr::V4(BACKEND), port);
        if find_in_path("haproxy").is_some() {
            let path = dir.path().join("haproxy.cfg");
            std::fs::write(&path, haproxy_config(addr(1), addr(2), addr(4), 100)).expect("write");
            let out = Command::new("haproxy").arg("-c").arg("-f").arg(&path).output().expect("haproxy -c");
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        }
        if find_in_path("nginx").is_some() && Path::new(NGINX_STREAM_MODULE).is_file() {
            let path = dir.path().join("nginx.conf");
            std::fs::write(&path, nginx_config(dir.path(), addr(3))).expect("write");
            let out = Command::new("nginx").arg("-t").arg("-p").arg(dir.path()).arg("-c").arg(&path).output();
            let out = out.expect("nginx -t");
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        }
    }
}
