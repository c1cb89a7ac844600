//! A real `portico run` process on a temporary data dir, and a bearer-token API client for it.

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use model::config::{Config, Service};
use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderValue};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// The initial `admin` password the benchmarks start portico with.
pub const ADMIN_PASSWORD: &str = "bench-password-0123";

/// The release `portico` binary next to the running benchmark binary (both live in `target/release/`).
pub fn locate_portico() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot find the benchmark's own executable")?;
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    // `cargo bench`-style runs put binaries in target/<profile>/deps/.
    if dir.ends_with("deps") {
        dir.pop();
    }
    let portico = dir.join("portico");
    if !portico.is_file() {
        bail!(
            "{} does not exist; build it first with `cargo build --release -p portico` (or run bench/run.sh)",
            portico.display()
        );
    }
    if !dir.ends_with("release") {
        eprintln!("warning: {} is not a release build; numbers will be meaningless", portico.display());
    }
    Ok(portico)
}

/// Memory figures of a process, from `/proc/PID/status`, in KiB.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcMemory {
    pub rss_kib: u64,
    pub hwm_kib: u64,
    pub rss_anon_kib: u64,
    pub rss_file_kib: u64,
    pub threads: u64,
}

impl ProcMemory {
    pub fn of(pid: u32) -> Result<ProcMemory> {
        let path = format!("/proc/{pid}/status");
        let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
        let mut m = ProcMemory::default();
        for line in text.lines() {
            let Some((key, value)) = line.split_once(':') else { continue };
            let number = value.split_whitespace().next().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            match key {
                "VmRSS" => m.rss_kib = number,
                "VmHWM" => m.hwm_kib = number,
                "RssAnon" => m.rss_anon_kib = number,
                "RssFile" => m.rss_file_kib = number,
                "Threads" => m.threads = number,
                _ => {}
            }
        }
        if m.rss_kib == 0 {
            bail!("{path} has no VmRSS line");
        }
        Ok(m)
    }
}

/// CPU time (user + system) a process has used so far, from `/proc/PID/stat`, in seconds. The kernel reports
/// it in USER_HZ ticks, which are 1/100 s on every Linux this runs on.
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    // The command name may hold spaces and parentheses; the fields after its closing parenthesis start with
    // the state (field 3), so utime (field 14) and stime (field 15) are the 12th and 13th of them.
    let after = text.rsplit_once(')').map(|(_, rest)| rest).context("no command name in /proc/PID/stat")?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let tick = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).context("short /proc/PID/stat");
    Ok((tick(11)? + tick(12)?) as f64 / 100.0)
}

/// How to start `portico run`, beyond what [`Portico::start`] does.
#[derive(Debug, Clone, Default)]
pub struct StartOptions {
    /// A command put in front of the binary, which must exec it (so the pid stays the appliance's):
    /// `["taskset", "-c", "1"]` pins the process to CPU 1.
    pub wrapper: Vec<String>,
}

/// A running `portico run`; killed when dropped.
#[derive(Debug)]
pub struct Portico {
    child: Child,
    pub pid: u32,
    /// `http://127.0.0.1:PORT`
    pub base: String,
    pub log: PathBuf,
    pub data_dir: PathBuf,
    options: StartOptions,
    port: u16,
    // Removed (with the database) when the handle goes.
    _tmp: TempDir,
}

fn spawn(options: &StartOptions, port: u16, data_dir: &Path, log: &Path) -> Result<Child> {
    let binary = locate_portico()?;
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("cannot open {}", log.display()))?;
    let mut command = match options.wrapper.split_first() {
        Some((program, args)) => {
            let mut c = Command::new(program);
            c.args(args).arg(&binary);
            c
        }
        None => Command::new(&binary),
    };
    command
        .arg("run")
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--admin-http")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--admin-https")
        .arg("off")
        // The benchmarks' VIPs are made-up addresses: they must not become addresses of this machine.
        .arg("--vip-interface")
        .arg("off")
        .env("PORTICO_ADMIN_PASSWORD", ADMIN_PASSWORD)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(log_file.try_clone()?)
        .stderr(log_file)
        .spawn()
        .with_context(|| format!("cannot start {} (wrapper {:?})", binary.display(), options.wrapper))
}

impl Portico {
    /// Starts the release binary on an empty data dir, with the admin API on a free loopback port and HTTPS
    /// off, and waits until `/readyz` answers 200. `RUST_LOG` is removed so the default log level applies.
    pub async fn start() -> Result<Portico> {
        Portico::start_with(StartOptions::default()).await
    }

    /// [`Portico::start`] with options.
    pub async fn start_with(options: StartOptions) -> Result<Portico> {
        let tmp = tempfile::Builder::new().prefix("portico-bench-").tempdir().context("cannot make a temp dir")?;
        let data_dir = tmp.path().join("data");
        let log = tmp.path().join("portico.log");
        let port = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").context("cannot find a free port")?;
            probe.local_addr()?.port()
        };
        let child = spawn(&options, port, &data_dir, &log)?;
        let pid = child.id();
        let base = format!("http://127.0.0.1:{port}");
        let mut portico = Portico { child, pid, base, log, data_dir, options, port, _tmp: tmp };
        portico.wait_ready(Duration::from_secs(30)).await?;
        Ok(portico)
    }

    /// Stops the process (as [`Portico::stop`] does) and starts it again with the same options, data dir and
    /// admin port, then waits until it is ready: for settings that take effect at start.
    pub async fn restart(&mut self) -> Result<()> {
        self.terminate().await?;
        self.child = spawn(&self.options, self.port, &self.data_dir, &self.log)?;
        self.pid = self.child.id();
        self.wait_ready(Duration::from_secs(30)).await
    }

    async fn wait_ready(&mut self, limit: Duration) -> Result<()> {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(2)).build()?;
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("portico exited with {status} before it was ready:\n{}", self.log_tail());
            }
            if let Ok(r) = http.get(format!("{}/readyz", self.base)).send().await
                && r.status() == StatusCode::OK
            {
                return Ok(());
            }
            if started.elapsed() > limit {
                bail!("portico was not ready within {limit:?}:\n{}", self.log_tail());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The last lines of the process's log, for error messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    pub fn memory(&self) -> Result<ProcMemory> {
        ProcMemory::of(self.pid)
    }

    /// The share of one core the process used while `f` ran, in percent, with `f`'s result.
    pub async fn cpu_during<T>(&self, f: impl Future<Output = T>) -> Result<(f64, T)> {
        let (cpu, started) = (cpu_seconds(self.pid)?, Instant::now());
        let value = f.await;
        let used = cpu_seconds(self.pid)? - cpu;
        Ok((100.0 * used / started.elapsed().as_secs_f64().max(1e-9), value))
    }

    /// Stops the process with SIGTERM (SIGKILL after 10 s) and checks that it exited cleanly.
    pub async fn stop(mut self) -> Result<()> {
        self.terminate().await
    }

    async fn terminate(&mut self) -> Result<()> {
        let sent = Command::new("kill").arg("-TERM").arg(self.pid.to_string()).status();
        if sent.map(|s| s.success()).unwrap_or(false) {
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(10) {
                if let Some(status) = self.child.try_wait()? {
                    if !status.success() {
                        bail!("portico exited with {status}:\n{}", self.log_tail());
                    }
                    return Ok(());
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        self.child.kill()?;
        self.child.wait()?;
        bail!("portico did not stop on SIGTERM within 10 s; killed it")
    }
}

impl Drop for Portico {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// An API client authenticated with an admin bearer token. Cheap to clone (one connection pool).
#[derive(Debug, Clone)]
pub struct Api {
    pub http: reqwest::Client,
    pub base: String,
}

async fn expect(response: reqwest::Response, want: StatusCode, what: &str) -> Result<Bytes> {
    let status = response.status();
    let body = response.bytes().await.with_context(|| format!("{what}: cannot read the response"))?;
    if status != want {
        let text = String::from_utf8_lossy(&body[..body.len().min(2000)]).into_owned();
        bail!("{what}: expected {want}, got {status}: {text}");
    }
    Ok(body)
}

impl Api {
    /// Logs in as `admin` and creates an admin token named `bench`; later requests carry only the token.
    pub async fn admin(base: &str) -> Result<Api> {
        let login = reqwest::Client::builder().cookie_store(true).build()?;
        let r = login
            .post(format!("{base}/api/v1/auth/login"))
            .json(&serde_json::json!({"username": "admin", "password": ADMIN_PASSWORD}))
            .send()
            .await?;
        expect(r, StatusCode::OK, "POST /api/v1/auth/login").await?;
        let r = login
            .post(format!("{base}/api/v1/tokens"))
            .header("x-requested-with", "portico-bench")
            .json(&serde_json::json!({"name": "bench", "role": "admin"}))
            .send()
            .await?;
        let body = expect(r, StatusCode::CREATED, "POST /api/v1/tokens").await?;
        let created: serde_json::Value = serde_json::from_slice(&body)?;
        let secret = created["secret"].as_str().context("POST /api/v1/tokens: no `secret` in the answer")?;
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, HeaderValue::from_str(&format!("Bearer {secret}"))?);
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .timeout(Duration::from_secs(300))
            .pool_max_idle_per_host(64)
            .build()?;
        Ok(Api { http, base: base.to_string() })
    }

    /// PUT /api/v1/config; returns how long it took and the revision written.
    pub async fn put_config(&self, config: &Config) -> Result<(Duration, u64)> {
        let body = serde_json::to_vec(config)?;
        let started = Instant::now();
        let r = self
            .http
            .put(format!("{}/api/v1/config", self.base))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await?;
        let body = expect(r, StatusCode::OK, "PUT /api/v1/config").await?;
        let took = started.elapsed();
        let result: serde_json::Value = serde_json::from_slice(&body)?;
        let revision = result["revision"]["number"].as_u64().context("PUT /api/v1/config wrote no revision")?;
        Ok((took, revision))
    }

    /// POST /api/v1/services (expects 201); the request's latency.
    pub async fn create_service(&self, service: &Service) -> Result<Duration> {
        let body = serde_json::to_vec(service)?;
        let started = Instant::now();
        let r = self
            .http
            .post(format!("{}/api/v1/services", self.base))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await?;
        expect(r, StatusCode::CREATED, "POST /api/v1/services").await?;
        Ok(started.elapsed())
    }

    /// GET `path` (expects 200); the request's latency.
    pub async fn get(&self, path: &str) -> Result<Duration> {
        let started = Instant::now();
        let r = self.http.get(format!("{}{path}", self.base)).send().await?;
        expect(r, StatusCode::OK, &format!("GET {path}")).await?;
        Ok(started.elapsed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_cpu_time_and_memory() {
        let before = cpu_seconds(std::process::id()).unwrap();
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = std::hint::black_box(x.wrapping_add(i));
        }
        assert!(cpu_seconds(std::process::id()).unwrap() >= before);
        let m = ProcMemory::of(std::process::id()).unwrap();
        assert!(m.rss_kib > 0 && m.hwm_kib >= m.rss_kib && m.threads >= 1);
    }
}
