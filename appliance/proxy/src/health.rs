//! Active health checks: every backend of a service with a `health_check` policy is probed on its own timer
//! (TCP connect, or an HTTP/1.1 GET whose status must fall in a range). `fall` failures in a row make a backend
//! unhealthy, `rise` passes in a row make it healthy again. Results go to a [`HealthSink`] (the control
//! plane's pipeline), which compiles them into the next snapshot: the proxy's balancers, BGP/L2
//! `announce_when: healthy` and DNS then all act on the same state. A backend without a result yet counts as
//! healthy (`Unchecked`), so a new endpoint takes traffic at once; the first pass marks it `Healthy`.

use model::health::{BackendHealth, BackendKey, HealthSink, ServiceHealth};
use model::proxy::{CheckKind, HealthCheck};
use model::snapshot::{ServiceEntry, Snapshot};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

/// The most of an HTTP response read to find its status line.
const MAX_STATUS_LINE: usize = 4096;

/// What the checks of one backend have seen (for status and metrics).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckState {
    pub addr: Option<SocketAddr>,
    pub health: BackendHealth,
    /// Passes or failures in a row (the other is 0).
    pub passes: u32,
    pub failures: u32,
    /// Why the last check failed, while it is the latest result.
    pub last_error: Option<String>,
    pub checks: u64,
    pub failed_checks: u64,
}

/// The checks of one service and their results.
struct Board {
    service: String,
    sink: Arc<dyn HealthSink>,
    states: Mutex<BTreeMap<BackendKey, CheckState>>,
    checks: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Board {
    /// The results to publish: only backends with a result (others stay `Unchecked` in the snapshot).
    fn published(states: &BTreeMap<BackendKey, CheckState>) -> ServiceHealth {
        Arc::new(
            states
                .iter()
                .filter(|(_, s)| s.health != BackendHealth::Unchecked)
                .map(|(key, s)| (*key, s.health))
                .collect(),
        )
    }

    fn record(&self, key: BackendKey, check: &HealthCheck, result: Result<(), String>) {
        self.checks.fetch_add(1, Ordering::Relaxed);
        let mut states = lock(&self.states);
        let Some(state) = states.get_mut(&key) else { return };
        state.checks += 1;
        let before = state.health;
        match &result {
            Ok(()) => {
                state.passes = state.passes.saturating_add(1);
                state.failures = 0;
                state.last_error = None;
                if before != BackendHealth::Unhealthy || state.passes >= check.rise {
                    state.health = BackendHealth::Healthy;
                }
            }
            Err(why) => {
                state.failed_checks += 1;
                state.failures = state.failures.saturating_add(1);
                state.passes = 0;
                state.last_error = Some(why.clone());
                if state.failures >= check.fall {
                    state.health = BackendHealth::Unhealthy;
                }
            }
        }
        let after = state.health;
        if after == before {
            return;
        }
        match (&result, after) {
            (Err(why), BackendHealth::Unhealthy) => tracing::warn!(
                service = %self.service, backend = %key.0, port = ?key.1, failures = state.failures, reason = %why,
                "backend is unhealthy"
            ),
            _ => {
                tracing::info!(service = %self.service, backend = %key.0, port = ?key.1, health = ?after, "backend health changed")
            }
        }
        let published = Board::published(&states);
        drop(states);
        self.sink.set_health(&self.service, Some(published));
    }
}

/// A running check: aborted when dropped.
struct Target {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for Target {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Checked {
    check: HealthCheck,
    /// The entry the targets were made from: an unchanged entry is skipped by pointer.
    entry: Arc<ServiceEntry>,
    board: Arc<Board>,
    targets: HashMap<BackendKey, Target>,
}

/// The health checks of every service that asks for them.
pub struct HealthChecks {
    sink: Arc<dyn HealthSink>,
    services: HashMap<String, Checked>,
    boards: Boards,
}

/// The live results of every checked service, for status pages (shared with [`crate::status`]).
#[derive(Clone, Default)]
pub(crate) struct Boards(Arc<Mutex<HashMap<String, Arc<Board>>>>);

impl std::fmt::Debug for Boards {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Boards")
    }
}

impl Boards {
    /// What the checks of `service` found, per backend.
    pub(crate) fn states_of(&self, service: &str) -> Option<BTreeMap<BackendKey, CheckState>> {
        let board = lock(&self.0).get(service).cloned()?;
        let states = lock(&board.states).clone();
        Some(states)
    }
}

impl std::fmt::Debug for HealthChecks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HealthChecks").field("services", &self.services.len()).finish()
    }
}

/// The address checked on backend `b` of `service`: the check's port, else the backend's port for the
/// service's first port.
fn check_addr(service: &ServiceEntry, b: &model::snapshot::BackendEntry, check: &HealthCheck) -> Option<SocketAddr> {
    if let Some(port) = check.port {
        return Some(SocketAddr::new(b.ip, port));
    }
    let first = service.ports.first()?;
    let backend = crate::balance::Backend::from_entry(b, first.name.as_deref(), first.protocol, first.target_port);
    Some(backend.addr)
}

impl HealthChecks {
    pub fn new(sink: Arc<dyn HealthSink>) -> HealthChecks {
        HealthChecks { sink, services: HashMap::new(), boards: Boards::default() }
    }

    /// Starts, keeps or stops checks so that every backend of every service with a `health_check` has one.
    pub fn reconcile(&mut self, snapshot: &Snapshot) {
        let mut seen: HashSet<&str> = HashSet::new();
        for entry in &snapshot.services {
            let Some(check) = entry.proxy.health_check.as_ref() else { continue };
            seen.insert(entry.name.as_str());
            let keep = self.services.get(&entry.name).is_some_and(|c| &c.check == check);
            if !keep {
                if self.services.remove(&entry.name).is_some() {
                    // A new check starts from no result.
                    self.sink.set_health(&entry.name, None);
                }
                let board = Arc::new(Board {
                    service: entry.name.clone(),
                    sink: self.sink.clone(),
                    states: Mutex::new(BTreeMap::new()),
                    checks: AtomicU64::new(0),
                });
                self.services.insert(
                    entry.name.clone(),
                    Checked { check: check.clone(), entry: entry.clone(), board, targets: HashMap::new() },
                );
            }
            let Some(checked) = self.services.get_mut(&entry.name) else { continue };
            if keep && Arc::ptr_eq(&checked.entry, entry) {
                continue;
            }
            checked.entry = entry.clone();
            update_targets(checked, entry);
        }
        let gone: Vec<String> = self.services.keys().filter(|n| !seen.contains(n.as_str())).cloned().collect();
        for name in gone {
            self.services.remove(&name);
            self.sink.set_health(&name, None);
        }
        *lock(&self.boards.0) = self.services.iter().map(|(name, c)| (name.clone(), c.board.clone())).collect();
    }

    pub(crate) fn boards(&self) -> Boards {
        self.boards.clone()
    }

    /// The checked backends of every checked service, by service name.
    pub fn states(&self) -> BTreeMap<String, BTreeMap<BackendKey, CheckState>> {
        self.services.iter().map(|(name, c)| (name.clone(), lock(&c.board.states).clone())).collect()
    }

    /// Checks run so far, over all services.
    pub fn checks_run(&self) -> u64 {
        self.services.values().map(|c| c.board.checks.load(Ordering::Relaxed)).sum()
    }
}

fn update_targets(checked: &mut Checked, entry: &ServiceEntry) {
    let wanted: HashMap<BackendKey, SocketAddr> = entry
        .backends
        .iter()
        .filter_map(|b| check_addr(entry, b, &checked.check).map(|addr| (b.key(), addr)))
        .collect();
    let mut removed = false;
    checked.targets.retain(|key, t| {
        let keep = wanted.get(key) == Some(&t.addr);
        removed |= !keep;
        keep
    });
    {
        let mut states = lock(&checked.board.states);
        states.retain(|key, _| checked.targets.contains_key(key));
        for (key, addr) in &wanted {
            if checked.targets.contains_key(key) {
                continue;
            }
            states.insert(*key, CheckState { addr: Some(*addr), ..CheckState::default() });
            let task = tokio::spawn(run(checked.board.clone(), *key, *addr, checked.check.clone()));
            checked.targets.insert(*key, Target { addr: *addr, task });
        }
    }
    if removed {
        let published = Board::published(&lock(&checked.board.states));
        checked.board.sink.set_health(&checked.board.service, Some(published));
    }
}

/// Checks one backend forever (until aborted). The first check waits a pseudo-random part of the interval,
/// so that the backends of a large service are not all probed in the same instant.
async fn run(board: Arc<Board>, key: BackendKey, addr: SocketAddr, check: HealthCheck) {
    let interval = Duration::from_millis(u64::from(check.interval_ms));
    let timeout = Duration::from_millis(u64::from(check.timeout_ms));
    let spread = crate::balance::stable_hash(0x6865_616c_7468, addr.to_string().as_bytes());
    let first = Duration::from_millis(spread % u64::from(check.interval_ms.max(1)).min(1_000));
    tokio::time::sleep(first).await;
    loop {
        let result = match tokio::time::timeout(timeout, probe(addr, &check)).await {
            Ok(r) => r,
            Err(_) => Err(format!("no answer within {} ms", check.timeout_ms)),
        };
        board.record(key, &check, result);
        tokio::time::sleep(interval).await;
    }
}

/// One check of `addr`.
pub async fn probe(addr: SocketAddr, check: &HealthCheck) -> Result<(), String> {
    let mut stream = TcpStream::connect(addr).await.map_err(|e| format!("connect: {e}"))?;
    if check.kind == CheckKind::Tcp {
        return Ok(());
    }
    let host = check.host.clone().unwrap_or_else(|| match addr {
        SocketAddr::V4(a) => a.ip().to_string(),
        SocketAddr::V6(a) => format!("[{}]", a.ip()),
    });
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: portico-health-check\r\nAccept: */*\r\nConnection: close\r\n\r\n",
        check.path
    );
    stream.write_all(request.as_bytes()).await.map_err(|e| format!("send: {e}"))?;
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 512];
    let line = loop {
        if let Some(end) = buf.iter().position(|&b| b == b'\n') {
            break String::from_utf8_lossy(&buf[..end]).trim_end().to_string();
        }
        if buf.len() >= MAX_STATUS_LINE {
            return Err("no HTTP status line in the first 4 KiB".into());
        }
        let n = stream.read(&mut chunk).await.map_err(|e| format!("receive: {e}"))?;
        if n == 0 {
            return Err("closed before a status line".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let status = parse_status(&line).ok_or_else(|| format!("not an HTTP status line: {:.60}", line))?;
    let (lo, hi) = check.expected_range().unwrap_or((200, 399));
    if (lo..=hi).contains(&status) { Ok(()) } else { Err(format!("HTTP status {status}, expected {lo}-{hi}")) }
}

/// The status code of `HTTP/1.x NNN reason`.
fn parse_status(line: &str) -> Option<u16> {
    let mut parts = line.splitn(3, ' ');
    let version = parts.next()?;
    if !version.starts_with("HTTP/") {
        return None;
    }
    let code = parts.next()?;
    if code.len() != 3 {
        return None;
    }
    code.parse().ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn status_lines() {
        assert_eq!(parse_status("HTTP/1.1 204 No Content"), Some(204));
        assert_eq!(parse_status("HTTP/1.0 503"), Some(503));
        assert_eq!(parse_status("SSH-2.0-OpenSSH"), None);
        assert_eq!(parse_status("HTTP/1.1 20 x"), None);
    }

    struct Recorder(Mutex<Vec<(String, Option<ServiceHealth>)>>);
    impl HealthSink for Recorder {
        fn set_health(&self, service: &str, health: Option<ServiceHealth>) {
            lock(&self.0).push((service.to_string(), health));
        }
    }

    #[test]
    fn rise_and_fall_thresholds() {
        let sink = Arc::new(Recorder(Mutex::new(Vec::new())));
        let board = Board {
            service: "s".into(),
            sink: sink.clone(),
            states: Mutex::new(BTreeMap::new()),
            checks: AtomicU64::new(0),
        };
        let ip: BackendKey = ("10.0.0.1".parse().unwrap(), None);
        lock(&board.states).insert(ip, CheckState::default());
        let check = HealthCheck { rise: 2, fall: 3, ..HealthCheck::default() };
        let health = || lock(&board.states)[&ip].health;
        board.record(ip, &check, Ok(()));
        assert_eq!(health(), BackendHealth::Healthy, "the first pass confirms an unchecked backend");
        for _ in 0..2 {
            board.record(ip, &check, Err("x".into()));
        }
        assert_eq!(health(), BackendHealth::Healthy, "two failures of three");
        board.record(ip, &check, Err("refused".into()));
        assert_eq!(health(), BackendHealth::Unhealthy);
        assert_eq!(lock(&board.states)[&ip].last_error.as_deref(), Some("refused"));
        board.record(ip, &check, Ok(()));
        assert_eq!(health(), BackendHealth::Unhealthy, "one pass of two");
        board.record(ip, &check, Ok(()));
        assert_eq!(health(), BackendHealth::Healthy);
        let published: Vec<Option<BackendHealth>> =
            lock(&sink.0).iter().map(|(_, h)| h.as_ref().and_then(|h| h.get(&ip).copied())).collect();
        assert_eq!(
            published,
            vec![Some(BackendHealth::Healthy), Some(BackendHealth::Unhealthy), Some(BackendHealth::Healthy)],
            "published on changes only"
        );
    }
}
