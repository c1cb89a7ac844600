//! One interface: its shared state (read by the status handle, written by `apply`) and the thread that owns
//! its socket, answers requests, sends gratuitous announcements and watches the link.

use crate::link::{self, Groups, Link, PacketSocket};
use crate::metrics::IfMetrics;
use crate::policy::VipPlan;
use crate::wire::{self, Ignored, MAX_FRAME, Mac, Request};
use model::l2::{L2InterfaceStatus, L2VipStatus};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// How long a read waits before the thread looks at its timers, the stop flag and the table again.
const READ_TIMEOUT: Duration = Duration::from_millis(20);
/// How often the link state is polled.
const LINK_POLL: Duration = Duration::from_millis(500);
/// At most one log line of each kind per interface in this time.
const LOG_EVERY: Duration = Duration::from_secs(5);
/// Receive buffer: a full-size frame (the BPF program accepts at most `filter::SNAP_LEN` bytes).
const RECV_BUF: usize = 2048;

/// Per-VIP counters, kept across tables while the VIP stays on the interface.
#[derive(Debug, Default)]
pub struct VipCounters {
    pub answered: AtomicU64,
    pub gratuitous: AtomicU64,
    /// The last send that failed for this VIP, until one succeeds. `failing` spares the lock on every answer.
    last_error: Mutex<Option<String>>,
    failing: AtomicBool,
}

impl VipCounters {
    fn sent(&self) {
        if self.failing.load(Ordering::Relaxed) {
            *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = None;
            self.failing.store(false, Ordering::Relaxed);
        }
    }

    fn failed(&self, error: &str) {
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(error.to_owned());
        self.failing.store(true, Ordering::Relaxed);
    }

    fn last_error(&self) -> Option<String> {
        self.last_error.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

#[derive(Debug, Clone)]
pub struct VipEntry {
    pub plan: VipPlan,
    pub counters: Arc<VipCounters>,
}

/// What one interface answers for; replaced as a whole by `apply`.
#[derive(Debug, Default)]
pub struct Table {
    pub all: BTreeMap<IpAddr, VipEntry>,
    v4: HashMap<Ipv4Addr, Arc<VipCounters>>,
    v6: HashMap<Ipv6Addr, Arc<VipCounters>>,
}

impl Table {
    /// Builds a table from a plan, keeping the counters of VIPs already in `previous`.
    pub fn new(plan: &BTreeMap<IpAddr, VipPlan>, previous: &Table) -> Table {
        let mut t = Table::default();
        for (&ip, &p) in plan {
            let counters = previous.all.get(&ip).map(|e| e.counters.clone()).unwrap_or_default();
            if p.announce {
                match ip {
                    IpAddr::V4(v4) => t.v4.insert(v4, counters.clone()),
                    IpAddr::V6(v6) => t.v6.insert(v6, counters.clone()),
                };
            }
            t.all.insert(ip, VipEntry { plan: p, counters });
        }
        t
    }

    fn announced(&self) -> impl Iterator<Item = (&IpAddr, &VipEntry)> {
        self.all.iter().filter(|(_, e)| e.plan.announce)
    }

    fn groups(&self) -> BTreeSet<Ipv6Addr> {
        self.v6.keys().map(|&v| wire::solicited_node(v)).collect()
    }
}

/// State shared between the interface's thread, `apply` and the status handle.
#[derive(Debug)]
pub struct IfShared {
    pub name: String,
    table: RwLock<Arc<Table>>,
    generation: AtomicU64,
    pub(crate) stop: AtomicBool,
    up: AtomicBool,
    mac: Mutex<Option<Mac>>,
    last_error: Mutex<Option<String>>,
    answered: AtomicU64,
    gratuitous: AtomicU64,
    ignored: AtomicU64,
}

impl IfShared {
    pub fn new(name: &str) -> IfShared {
        IfShared {
            name: name.to_owned(),
            table: RwLock::new(Arc::new(Table::default())),
            generation: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            up: AtomicBool::new(false),
            mac: Mutex::new(None),
            last_error: Mutex::new(None),
            answered: AtomicU64::new(0),
            gratuitous: AtomicU64::new(0),
            ignored: AtomicU64::new(0),
        }
    }

    pub fn table(&self) -> Arc<Table> {
        self.table.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Installs a new table; the thread checks the generation before every answer, so a VIP removed here is
    /// not answered for from the next frame on.
    pub fn set_table(&self, table: Arc<Table>) {
        *self.table.write().unwrap_or_else(|e| e.into_inner()) = table;
        self.generation.fetch_add(1, Ordering::Release);
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set_error(&self, e: Option<String>) {
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = e;
    }

    fn set_mac(&self, mac: Option<Mac>) {
        *self.mac.lock().unwrap_or_else(|e| e.into_inner()) = mac;
    }

    pub fn status(&self) -> L2InterfaceStatus {
        let table = self.table();
        let up = self.is_up();
        L2InterfaceStatus {
            interface: self.name.clone(),
            up,
            mac: self.mac.lock().unwrap_or_else(|e| e.into_inner()).map(wire::format_mac),
            vips: table
                .all
                .iter()
                .map(|(ip, e)| L2VipStatus {
                    vip: ip.to_string(),
                    announced: e.plan.announce && up,
                    requests_answered: e.counters.answered.load(Ordering::Relaxed),
                    gratuitous_sent: e.counters.gratuitous.load(Ordering::Relaxed),
                    last_error: e.counters.last_error(),
                })
                .collect(),
            requests_answered: self.answered.load(Ordering::Relaxed),
            gratuitous_sent: self.gratuitous.load(Ordering::Relaxed),
            frames_ignored: self.ignored.load(Ordering::Relaxed),
            last_error: self.last_error(),
        }
    }
}

struct Open {
    ifindex: u32,
    mac: Mac,
    socket: PacketSocket,
    groups: Option<Groups>,
}

struct Pending {
    remaining: u8,
    interval: Duration,
    next: Instant,
}

/// Counts things per interval and says when to log them.
struct Limiter {
    ignored: [u64; 6],
    send_errors: u64,
    last_send_error: Option<String>,
    since: Instant,
}

struct Worker {
    shared: Arc<IfShared>,
    metrics: IfMetrics,
    link: Option<Open>,
    table: Arc<Table>,
    generation: u64,
    pending: BTreeMap<IpAddr, Pending>,
    next_link_check: Instant,
    buf: Vec<u8>,
    out: [u8; MAX_FRAME],
    log: Limiter,
}

/// The interface thread's body; returns when `shared.stop` is set.
pub fn run(shared: Arc<IfShared>) {
    let now = Instant::now();
    let mut w = Worker {
        metrics: IfMetrics::new(&shared.name),
        shared,
        link: None,
        table: Arc::new(Table::default()),
        generation: u64::MAX,
        pending: BTreeMap::new(),
        next_link_check: now,
        buf: vec![0; RECV_BUF],
        out: [0; MAX_FRAME],
        log: Limiter { ignored: [0; 6], send_errors: 0, last_send_error: None, since: now },
    };
    tracing::debug!(interface = %w.shared.name, "L2 responder thread started");
    while !w.shared.stop.load(Ordering::Acquire) {
        w.tick();
    }
    w.shared.up.store(false, Ordering::Relaxed);
    w.metrics.vips.set(0.0);
    tracing::debug!(interface = %w.shared.name, "L2 responder thread stopped");
}

impl Worker {
    fn tick(&mut self) {
        let now = Instant::now();
        if now >= self.next_link_check {
            self.check_link(now);
            self.next_link_check = now + LINK_POLL;
        }
        self.sync_table(now);
        self.send_due(now);
        self.flush_logs(now);
        let Some(open) = &self.link else {
            std::thread::sleep(READ_TIMEOUT);
            return;
        };
        match open.socket.recv(&mut self.buf) {
            Ok(n) => self.handle(n),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted) => {}
            Err(e) => {
                // ENETDOWN after the link went down, ENXIO after it vanished: look at the link now.
                tracing::debug!(interface = %self.shared.name, error = %e, "packet socket read failed");
                self.next_link_check = now;
                std::thread::sleep(READ_TIMEOUT);
            }
        }
    }

    fn check_link(&mut self, now: Instant) {
        let name = self.shared.name.clone();
        let found = match link::lookup(&name) {
            Ok(found) => found,
            Err(e) => {
                self.shared.set_error(Some(e.to_string()));
                return;
            }
        };
        let Some(l) = found else {
            if self.link.take().is_some() || self.shared.last_error().is_none() {
                tracing::warn!(interface = %name, "L2 interface does not exist; waiting for it");
            }
            self.down(Some(format!("interface {name} does not exist")));
            self.shared.set_mac(None);
            return;
        };
        self.shared.set_mac(Some(l.mac));
        if !l.up {
            if self.link.take().is_some() {
                tracing::warn!(interface = %name, "L2 interface is down");
            }
            self.down(Some(format!("interface {name} is down")));
            return;
        }
        if self.link.as_ref().is_some_and(|o| o.ifindex == l.ifindex && o.mac == l.mac) {
            return;
        }
        self.link = None;
        match self.open(&l) {
            Ok(open) => {
                tracing::info!(interface = %name, mac = %wire::format_mac(l.mac), "L2 responder answering");
                self.link = Some(open);
                self.shared.up.store(true, Ordering::Relaxed);
                self.shared.set_error(None);
                self.join_groups();
                // Start, or the link came (back) up: announce everything again.
                let table = self.table.clone();
                for (ip, e) in table.announced() {
                    self.schedule(*ip, e.plan, now);
                }
            }
            Err(e) => {
                tracing::warn!(interface = %name, error = %e, "L2 responder cannot open its socket");
                self.down(Some(e.to_string()));
            }
        }
    }

    fn down(&mut self, error: Option<String>) {
        self.link = None;
        self.pending.clear();
        self.shared.up.store(false, Ordering::Relaxed);
        self.shared.set_error(error);
    }

    fn open(&self, l: &Link) -> Result<Open, link::LinkError> {
        let socket = PacketSocket::open(&self.shared.name, l, true, READ_TIMEOUT)?;
        let groups = match Groups::new(l.ifindex) {
            Ok(g) => Some(g),
            Err(e) => {
                tracing::debug!(interface = %self.shared.name, error = %e, "no IPv6 socket for multicast joins");
                None
            }
        };
        Ok(Open { ifindex: l.ifindex, mac: l.mac, socket, groups })
    }

    fn join_groups(&mut self) {
        let want = self.table.groups();
        let Some(open) = &mut self.link else { return };
        let result = match &mut open.groups {
            Some(g) => g.reconcile(&want, &self.shared.name),
            None if want.is_empty() => Ok(()),
            None => {
                self.shared.set_error(Some("IPv6 is not available: cannot join solicited-node groups".into()));
                return;
            }
        };
        if let Err(e) = result {
            tracing::warn!(interface = %self.shared.name, error = %e, "cannot join a solicited-node group");
            self.shared.set_error(Some(e.to_string()));
        }
    }

    fn schedule(&mut self, ip: IpAddr, plan: VipPlan, now: Instant) {
        if plan.garp_count == 0 || self.link.is_none() {
            return;
        }
        let interval = Duration::from_millis(u64::from(plan.garp_interval_ms));
        self.pending.insert(ip, Pending { remaining: plan.garp_count, interval, next: now });
    }

    fn sync_table(&mut self, now: Instant) {
        let generation = self.shared.generation.load(Ordering::Acquire);
        if generation == self.generation {
            return;
        }
        self.generation = generation;
        let new = self.shared.table();
        let old = std::mem::replace(&mut self.table, new.clone());
        for (ip, e) in new.announced() {
            if !old.all.get(ip).is_some_and(|o| o.plan.announce) {
                self.schedule(*ip, e.plan, now);
            }
        }
        self.pending.retain(|ip, _| new.all.get(ip).is_some_and(|e| e.plan.announce));
        self.metrics.vips.set((new.v4.len() + new.v6.len()) as f64);
        if old.groups() != new.groups() {
            self.join_groups();
        }
    }

    fn send_due(&mut self, now: Instant) {
        if self.pending.is_empty() {
            return;
        }
        let Some(open) = &self.link else { return };
        let mut sent = 0u64;
        let mut error = None;
        for (ip, p) in self.pending.iter_mut() {
            if p.next > now {
                continue;
            }
            let len = match *ip {
                IpAddr::V4(v4) => wire::gratuitous_arp(&mut self.out, open.mac, v4),
                IpAddr::V6(v6) => wire::unsolicited_na(&mut self.out, open.mac, v6),
            };
            let counters = self.table.all.get(ip).map(|e| &e.counters);
            match open.socket.send(&self.out[..len]) {
                Ok(_) => {
                    sent += 1;
                    if let Some(c) = counters {
                        c.gratuitous.fetch_add(1, Ordering::Relaxed);
                        c.sent();
                    }
                }
                Err(e) => {
                    let text = format!("gratuitous announcement: {e}");
                    if let Some(c) = counters {
                        c.failed(&text);
                    }
                    error = Some(e.to_string());
                }
            }
            p.remaining = p.remaining.saturating_sub(1);
            p.next = now + p.interval;
        }
        self.pending.retain(|_, p| p.remaining > 0);
        if sent > 0 {
            self.shared.gratuitous.fetch_add(sent, Ordering::Relaxed);
            self.metrics.gratuitous.increment(sent);
        }
        if let Some(e) = error {
            self.send_failed(e);
        }
    }

    fn send_failed(&mut self, e: String) {
        self.log.send_errors += 1;
        self.log.last_send_error = Some(e.clone());
        self.shared.set_error(Some(format!("send: {e}")));
    }

    fn ignore(&mut self, why: Ignored) {
        let i = why.index();
        self.shared.ignored.fetch_add(1, Ordering::Relaxed);
        self.metrics.ignored[i].increment(1);
        self.log.ignored[i] += 1;
    }

    fn handle(&mut self, n: usize) {
        let Some(open) = &self.link else { return };
        let Some(frame) = self.buf.get(..n) else { return };
        let request = match wire::parse(frame, open.mac) {
            Ok(r) => r,
            Err(why) => return self.ignore(why),
        };
        // A table swapped since the last look takes effect before this answer.
        if self.shared.generation.load(Ordering::Acquire) != self.generation {
            self.sync_table(Instant::now());
        }
        let Some(open) = &self.link else { return };
        let (len, counters) = match request {
            Request::Arp { sender_mac, sender_ip, target } => {
                let Some(c) = self.table.v4.get(&target) else { return self.ignore(Ignored::OtherAddress) };
                (wire::arp_reply(&mut self.out, open.mac, target, sender_mac, sender_ip), c.clone())
            }
            Request::Ns { reply_mac, source, target } => {
                let Some(c) = self.table.v6.get(&target) else { return self.ignore(Ignored::OtherAddress) };
                (wire::neighbor_advert(&mut self.out, open.mac, target, reply_mac, source), c.clone())
            }
        };
        match open.socket.send(&self.out[..len]) {
            Ok(_) => {
                counters.answered.fetch_add(1, Ordering::Relaxed);
                counters.sent();
                self.shared.answered.fetch_add(1, Ordering::Relaxed);
                self.metrics.answered.increment(1);
            }
            Err(e) => {
                counters.failed(&format!("reply: {e}"));
                self.send_failed(e.to_string());
            }
        }
    }

    fn flush_logs(&mut self, now: Instant) {
        if now.duration_since(self.log.since) < LOG_EVERY {
            return;
        }
        let c = self.log.ignored;
        if c.iter().any(|&n| n > 0) {
            tracing::debug!(
                interface = %self.shared.name,
                malformed = c[0], not_request = c[1], gratuitous = c[2], invalid_ns = c[3], own = c[4],
                other_address = c[5],
                "L2 frames ignored in the last {} s", LOG_EVERY.as_secs()
            );
        }
        if self.log.send_errors > 0 {
            tracing::warn!(
                interface = %self.shared.name,
                count = self.log.send_errors,
                error = self.log.last_send_error.as_deref().unwrap_or(""),
                "L2 responder could not send"
            );
        }
        self.log = Limiter { ignored: [0; 6], send_errors: 0, last_send_error: None, since: now };
    }
}
