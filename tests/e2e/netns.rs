//! Network namespaces and veth pairs made by a test, and removed when it ends (also when it panics).
//!
//! ```ignore
//! let peer = Netns::new();                  // `ip netns add ptc-<pid>-<n>`, `lo` up
//! let link = Link::to_root(&peer);          // veth root ↔ peer, IPv4 /30 and IPv6 /64 on both ends, up
//! // the appliance (in the root namespace) binds link.a.v4 / link.a.v6; the peer lives at link.b.v4 / link.b.v6
//! peer.exec(&["ip", "route", "add", "192.0.2.0/24", "via", &link.a.v4.to_string()]);
//! let child = peer.spawn(peer.command("some-daemon"), &log_path); // killed when `child` or `peer` drops
//! link.set_up(false);                       // cut the link (root side down); `set_up(true)` mends it
//! ```
//!
//! Names hold the test process's pid and a counter, so parallel tests and parallel test processes never clash;
//! namespaces and veths left behind by a test process that was killed are removed the first time a namespace is
//! made.
//! Root-side addresses come from 10.201.0.0/16 (one /30 per link) and fd50:7274:c0::/48 (one /64 per link),
//! chosen under a lock file against what the root namespace already uses. Links between two namespaces use
//! 10.202.0.0/16 and fd50:7274:c1::/48 with a per-process counter (nothing in the root namespace sees them).
//! Dropping a [`Netns`] (the last clone) kills every process still inside and deletes it; dropping a [`Link`]
//! deletes the veth pair. Every `ip` failure panics with its stderr.

#![allow(dead_code)] // shared by the BGP (and later L2, tunnel) end-to-end tests; not all of it is used yet

use std::collections::BTreeSet;
use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

/// The prefix of every namespace the harness makes: `ptc-<pid>-<n>`.
const NS_PREFIX: &str = "ptc-";
/// How long a new link may take until both ends are up with usable addresses.
const LINK_TIMEOUT: Duration = Duration::from_secs(10);

static COUNTER: AtomicU32 = AtomicU32::new(0);

fn next_id() -> u32 {
    COUNTER.fetch_add(1, Ordering::Relaxed)
}

/// Runs a command to completion; panics with its stderr unless it succeeds.
#[track_caller]
pub fn run(cmd: &mut Command) -> Output {
    let out = try_run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs a command to completion and returns its output whatever its exit status.
#[track_caller]
pub fn try_run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// `ip ARGS` in the root namespace; panics with stderr on failure.
#[track_caller]
pub fn ip(args: &[&str]) -> String {
    String::from_utf8_lossy(&run(Command::new("ip").args(args)).stdout).into_owned()
}

/// Polls `check` until it returns `Ok`, up to `bound`; panics naming `what` (and the last `Err` text) after.
/// Blocking; meant for the short waits inside the harness. Tests use the async `wait_for`s.
#[track_caller]
pub fn poll<T>(bound: Duration, what: &str, mut check: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + bound;
    loop {
        match check() {
            Ok(v) => return v,
            Err(last) => assert!(Instant::now() < deadline, "{what} did not happen within {bound:?}; last: {last}"),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Polls `check` until it returns `Ok`, up to `bound`, without blocking the test's runtime; the panic message
/// names `what` and the last `Err` text.
pub async fn wait_until<T>(bound: Duration, what: &str, mut check: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + bound;
    loop {
        match check() {
            Ok(v) => return v,
            Err(last) => assert!(Instant::now() < deadline, "{what} did not happen within {bound:?}; last: {last}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Deletes namespaces and root-side veths named by this harness whose test process is gone (a run that was
/// killed), once per process.
fn clean_stale() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        for name in ip(&["netns", "list"]).lines().filter_map(|l| l.split_whitespace().next()) {
            let Some(pid) = name.strip_prefix(NS_PREFIX).and_then(|r| r.split('-').next()) else { continue };
            let Ok(pid) = pid.parse::<u32>() else { continue };
            if !Path::new(&format!("/proc/{pid}")).exists() {
                delete_namespace(name);
            }
        }
        // Root ends of veth pairs (`pt<pid>r<n>`) whose namespace end never got moved, or whose namespace is
        // still held by a process.
        for line in ip(&["-o", "link", "show"]).lines() {
            let Some(name) = line.split(": ").nth(1).and_then(|n| n.split('@').next()) else { continue };
            let Some(rest) = name.strip_prefix("pt") else { continue };
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            let Ok(pid) = digits.parse::<u32>() else { continue };
            if rest[digits.len()..].starts_with(['r', 'n']) && !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = try_run(Command::new("ip").args(["link", "del", "dev", name]));
            }
        }
    });
}

/// Kills every process in a namespace and deletes it; errors are ignored (it may be gone already).
fn delete_namespace(name: &str) {
    for _ in 0..50 {
        let pids = try_run(Command::new("ip").args(["netns", "pids", name]));
        let pids: Vec<String> = String::from_utf8_lossy(&pids.stdout).split_whitespace().map(str::to_string).collect();
        if pids.is_empty() {
            break;
        }
        let _ = try_run(Command::new("kill").arg("-KILL").args(&pids));
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = try_run(Command::new("ip").args(["netns", "del", name]));
}

#[derive(Debug)]
struct NetnsInner {
    name: String,
}

impl Drop for NetnsInner {
    fn drop(&mut self) {
        delete_namespace(&self.name);
    }
}

/// A network namespace; clones share it, and the last one to drop kills what runs inside and deletes it.
#[derive(Debug, Clone)]
pub struct Netns {
    inner: Arc<NetnsInner>,
}

impl Default for Netns {
    fn default() -> Self {
        Netns::new()
    }
}

impl Netns {
    /// `ip netns add ptc-<pid>-<n>` and `lo` up.
    pub fn new() -> Netns {
        clean_stale();
        let name = format!("{NS_PREFIX}{}-{}", std::process::id(), next_id());
        let out = try_run(Command::new("ip").args(["netns", "add", &name]));
        if !out.status.success() {
            // Our pid and a counter we never repeat: an existing namespace of that name is a leftover of an
            // earlier process that had our pid.
            delete_namespace(&name);
            ip(&["netns", "add", &name]);
        }
        let ns = Netns { inner: Arc::new(NetnsInner { name }) };
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// A command that runs `program` inside the namespace (`ip netns exec NAME program`); add arguments.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", self.name(), program]);
        cmd
    }

    /// Runs `args` inside the namespace to completion; panics with stderr unless it succeeds. Returns stdout.
    #[track_caller]
    pub fn exec(&self, args: &[&str]) -> String {
        let (program, rest) = args.split_first().expect("a command");
        String::from_utf8_lossy(&run(self.command(program).args(rest)).stdout).into_owned()
    }

    /// Runs `args` inside the namespace to completion, whatever its exit status.
    pub fn try_exec(&self, args: &[&str]) -> Output {
        let (program, rest) = args.split_first().expect("a command");
        try_run(self.command(program).args(rest))
    }

    /// Spawns a long-running process made with [`Netns::command`], its stdout and stderr appended to `log`.
    /// `ip netns exec` replaces itself with the program, so the child's pid is the program's. The child is
    /// killed when the returned [`NsChild`] drops (and anything left inside when the namespace is deleted).
    pub fn spawn(&self, mut cmd: Command, log: &Path) -> NsChild {
        let file = File::options().create(true).append(true).open(log).expect("open the log file");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("clone log handle"))
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn {cmd:?}: {e}"));
        NsChild { child: Some(child), _ns: self.clone() }
    }

    /// Sets a sysctl inside the namespace (`net.ipv6.conf.eth0.keep_addr_on_down`, `1`).
    pub fn sysctl(&self, key: &str, value: &str) {
        self.exec(&["sysctl", "-qw", &format!("{key}={value}")]);
    }
}

/// A process running inside a namespace; killed (SIGKILL) and reaped on drop.
#[derive(Debug)]
pub struct NsChild {
    child: Option<Child>,
    _ns: Netns,
}

impl NsChild {
    pub fn id(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Sends a signal by name (`TERM`, `KILL`, `HUP`) with kill(1).
    pub fn signal(&self, name: &str) {
        let _ = try_run(Command::new("kill").arg(format!("-{name}")).arg(self.id().to_string()));
    }

    /// Whether the process has exited (reaping it if so).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().expect("try_wait"))
    }

    /// Sends `signal`, waits up to `bound` for the exit, then SIGKILLs. Returns whether it exited by itself.
    pub fn stop(&mut self, signal: &str, bound: Duration) -> bool {
        let Some(mut child) = self.child.take() else { return true };
        if child.try_wait().expect("try_wait").is_some() {
            return true;
        }
        let _ = try_run(Command::new("kill").arg(format!("-{signal}")).arg(child.id().to_string()));
        let deadline = Instant::now() + bound;
        while Instant::now() < deadline {
            if child.try_wait().expect("try_wait").is_some() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }
}

impl Drop for NsChild {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// One end of a veth pair.
#[derive(Debug, Clone)]
pub struct LinkEnd {
    /// `None` in the root namespace.
    pub netns: Option<Netns>,
    pub ifname: String,
    pub v4: Ipv4Addr,
    pub v6: Ipv6Addr,
}

impl LinkEnd {
    /// The address of this end in `ip`'s family.
    pub fn addr(&self, v6: bool) -> IpAddr {
        if v6 { IpAddr::V6(self.v6) } else { IpAddr::V4(self.v4) }
    }

    fn ip(&self, args: &[&str]) -> String {
        match &self.netns {
            Some(ns) => {
                let mut all = vec!["ip"];
                all.extend_from_slice(args);
                ns.exec(&all)
            }
            None => ip(args),
        }
    }

    fn sysctl(&self, key: &str, value: &str) {
        match &self.netns {
            Some(ns) => ns.sysctl(key, value),
            None => {
                let path = format!("/proc/sys/{}", key.replace('.', "/"));
                std::fs::write(&path, value).unwrap_or_else(|e| panic!("write {path}: {e}"));
            }
        }
    }

    /// Up with carrier, and neither address tentative.
    fn usable(&self) -> Result<(), String> {
        let link = self.ip(&["-br", "link", "show", "dev", &self.ifname]);
        if link.split_whitespace().nth(1) != Some("UP") {
            return Err(format!("{}: {link}", self.ifname));
        }
        let addrs = self.ip(&["-o", "addr", "show", "dev", &self.ifname]);
        let ok = addrs.contains(&format!("inet {}/", self.v4))
            && addrs.contains(&format!("inet6 {}/", self.v6))
            && !addrs.contains("tentative");
        if ok { Ok(()) } else { Err(format!("{}: {addrs}", self.ifname)) }
    }
}

/// A veth pair: `a` in the root namespace (for [`Link::to_root`]) or in the first namespace (for
/// [`Link::between`]), `b` in the (second) namespace; each end with an IPv4 (/30) and an IPv6 (/64) address.
/// Deleted on drop.
#[derive(Debug)]
pub struct Link {
    pub a: LinkEnd,
    pub b: LinkEnd,
    pub prefix_v4: u8,
    pub prefix_v6: u8,
    /// The root namespace's allocation (released on drop), for links with a root end.
    slot: Option<u32>,
}

/// The lock file that serialises choosing root-namespace subnets between test processes.
const LOCK_PATH: &str = "/tmp/portico-e2e-netns.lock";

/// Root subnets handed out by this process and not yet released (the root namespace may not show them yet).
static TAKEN: Mutex<BTreeSet<u32>> = Mutex::new(BTreeSet::new());

fn root_v4(slot: u32) -> (Ipv4Addr, Ipv4Addr) {
    let base = u32::from(Ipv4Addr::new(10, 201, 0, 0)) + slot * 4;
    (Ipv4Addr::from(base + 1), Ipv4Addr::from(base + 2))
}

fn root_v6(slot: u32) -> (Ipv6Addr, Ipv6Addr) {
    let net = |host| Ipv6Addr::new(0xfd50, 0x7274, 0xc0, slot as u16, 0, 0, 0, host);
    (net(1), net(2))
}

impl Link {
    /// A veth pair from the root namespace (`a`) into `ns` (`b`), addressed and up. The root end's addresses
    /// are the ones the appliance binds and peers connect to.
    pub fn to_root(ns: &Netns) -> Link {
        let id = next_id();
        let pid = std::process::id();
        let (a_if, b_if) = (format!("pt{pid}r{id}"), format!("pt{pid}n{id}"));
        assert!(a_if.len() <= 15, "interface name {a_if} is too long");
        // Create the pair first (no addresses yet), so the names are taken before the lock is.
        ip(&["link", "add", &a_if, "type", "veth", "peer", "name", &b_if]);
        ip(&["link", "set", &b_if, "netns", ns.name()]);
        let slot = {
            let lock = File::options().create(true).truncate(false).write(true).open(LOCK_PATH).expect("lock file");
            lock.lock().expect("lock the netns lock file");
            let used = used_root_slots();
            let mut taken = TAKEN.lock().expect("taken");
            let slot =
                (0..16384u32).find(|s| !used.contains(s) && !taken.contains(s)).expect("a free 10.201.0.0/16 subnet");
            taken.insert(slot);
            let (v4, _) = root_v4(slot);
            let (v6, _) = root_v6(slot);
            ip(&["addr", "add", &format!("{v4}/30"), "dev", &a_if]);
            ip(&["addr", "add", &format!("{v6}/64"), "dev", &a_if, "nodad"]);
            slot
        };
        let (a4, b4) = root_v4(slot);
        let (a6, b6) = root_v6(slot);
        let link = Link {
            a: LinkEnd { netns: None, ifname: a_if, v4: a4, v6: a6 },
            b: LinkEnd { netns: Some(ns.clone()), ifname: b_if, v4: b4, v6: b6 },
            prefix_v4: 30,
            prefix_v6: 64,
            slot: Some(slot),
        };
        link.b.ip(&["addr", "add", &format!("{b4}/30"), "dev", &link.b.ifname]);
        link.b.ip(&["addr", "add", &format!("{b6}/64"), "dev", &link.b.ifname, "nodad"]);
        link.bring_up();
        link
    }

    /// A veth pair between two namespaces, `a` in `a`, `b` in `b`, addressed and up.
    pub fn between(a: &Netns, b: &Netns) -> Link {
        let id = next_id();
        let pid = std::process::id();
        let (a_if, b_if) = (format!("pt{pid}a{id}"), format!("pt{pid}b{id}"));
        assert!(a_if.len() <= 15, "interface name {a_if} is too long");
        ip(&["link", "add", &a_if, "netns", a.name(), "type", "veth", "peer", "name", &b_if, "netns", b.name()]);
        let base = u32::from(Ipv4Addr::new(10, 202, 0, 0)) + (id % 16384) * 4;
        let net6 = |host| Ipv6Addr::new(0xfd50, 0x7274, 0xc1, (id % 16384) as u16, 0, 0, 0, host);
        let link = Link {
            a: LinkEnd { netns: Some(a.clone()), ifname: a_if, v4: Ipv4Addr::from(base + 1), v6: net6(1) },
            b: LinkEnd { netns: Some(b.clone()), ifname: b_if, v4: Ipv4Addr::from(base + 2), v6: net6(2) },
            prefix_v4: 30,
            prefix_v6: 64,
            slot: None,
        };
        for end in [&link.a, &link.b] {
            end.ip(&["addr", "add", &format!("{}/30", end.v4), "dev", &end.ifname]);
            end.ip(&["addr", "add", &format!("{}/64", end.v6), "dev", &end.ifname, "nodad"]);
        }
        link.bring_up();
        link
    }

    /// Keeps IPv6 addresses across a link cut, brings both ends up and waits until both are usable.
    fn bring_up(&self) {
        for end in [&self.a, &self.b] {
            end.sysctl(&format!("net.ipv6.conf.{}.keep_addr_on_down", end.ifname), "1");
            end.ip(&["link", "set", "dev", &end.ifname, "up"]);
        }
        self.wait_usable();
    }

    /// Waits until both ends are up with carrier and their addresses are usable.
    pub fn wait_usable(&self) {
        poll(LINK_TIMEOUT, "link up with usable addresses", || {
            self.a.usable()?;
            self.b.usable()
        });
    }

    /// Brings the `a` end (the root side of [`Link::to_root`]) down or up: down cuts the link (the `b` end loses
    /// carrier, packets are dropped), up mends it and waits until both ends are usable again.
    pub fn set_up(&self, up: bool) {
        self.a.ip(&["link", "set", "dev", &self.a.ifname, if up { "up" } else { "down" }]);
        if up {
            self.wait_usable();
        }
    }

    /// Adds `cidr` as a further address on one end (`a` or `b`), e.g. a loopback-like address for multihop.
    pub fn add_address(&self, on_b: bool, cidr: &str) {
        let end = if on_b { &self.b } else { &self.a };
        let mut args = vec!["addr", "add", cidr, "dev", &end.ifname];
        if cidr.contains(':') {
            args.push("nodad");
        }
        end.ip(&args);
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        // Deleting one end deletes the pair; the end may be gone with its namespace already.
        let _ = match &self.a.netns {
            Some(ns) => ns.try_exec(&["ip", "link", "del", "dev", &self.a.ifname]),
            None => try_run(Command::new("ip").args(["link", "del", "dev", &self.a.ifname])),
        };
        if let Some(slot) = self.slot {
            TAKEN.lock().expect("taken").remove(&slot);
        }
    }
}

/// The slots of 10.201.0.0/16 (as /30s) and fd50:7274:c0::/48 (as /64s) in use in the root namespace.
fn used_root_slots() -> BTreeSet<u32> {
    let mut used = BTreeSet::new();
    for line in ip(&["-o", "addr", "show"]).lines() {
        let mut words = line.split_whitespace();
        while let Some(w) = words.next() {
            if w != "inet" && w != "inet6" {
                continue;
            }
            let Some(addr) = words.next().and_then(|a| a.split('/').next()) else { break };
            match addr.parse::<IpAddr>() {
                Ok(IpAddr::V4(v4)) if v4.octets()[..2] == [10, 201] => {
                    used.insert((u32::from(v4) - u32::from(Ipv4Addr::new(10, 201, 0, 0))) / 4);
                }
                Ok(IpAddr::V6(v6)) if v6.segments()[..3] == [0xfd50, 0x7274, 0xc0] => {
                    used.insert(u32::from(v6.segments()[3]));
                }
                _ => {}
            }
        }
    }
    used
}
