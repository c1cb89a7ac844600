//! A network namespace per test, made with `ip netns` and always deleted (also when the test panics), and a
//! way to run async code on a thread that has entered it. The root namespace is never touched.

#![allow(dead_code)]

use model::snapshot::{Origin, ServiceEntry, Snapshot};
use std::future::Future;
use std::net::IpAddr;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

static COUNTER: AtomicU32 = AtomicU32::new(0);

pub struct NetNs {
    pub name: String,
}

impl NetNs {
    /// `None` when namespaces can not be made here (not root): the test is then skipped with a note.
    pub fn new(tag: &str) -> Option<NetNs> {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("plv-{}-{n}-{tag}", std::process::id());
        let ok = Command::new("ip").args(["netns", "add", &name]).status().map(|s| s.success()).unwrap_or(false);
        if !ok {
            eprintln!("skipped: cannot create network namespace {name} (needs root and iproute2)");
            return None;
        }
        let ns = NetNs { name };
        ns.ip(&["link", "set", "lo", "up"]);
        Some(ns)
    }

    /// `ip -n NS ARGS…`, panicking on failure; returns stdout.
    pub fn ip(&self, args: &[&str]) -> String {
        let out = Command::new("ip").arg("-n").arg(&self.name).args(args).output().unwrap();
        assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `ip netns exec NS CMD…`; returns (success, stdout).
    pub fn exec(&self, args: &[&str]) -> (bool, String) {
        let out = Command::new("ip").args(["netns", "exec", &self.name]).args(args).output().unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
    }

    pub fn sysctl(&self, key: &str) -> String {
        self.exec(&["sysctl", "-n", key]).1.trim().to_string()
    }

    /// The addresses on a device, as `ip -o addr show dev DEV` lines.
    pub fn addr_lines(&self, dev: &str) -> Vec<String> {
        self.ip(&["-o", "addr", "show", "dev", dev]).lines().map(str::to_string).collect()
    }

    /// The addresses on a device, as `ADDR/LEN` strings, sorted.
    pub fn addrs(&self, dev: &str) -> Vec<String> {
        let mut v: Vec<String> = self
            .addr_lines(dev)
            .iter()
            .filter_map(|l| {
                let mut it = l.split_whitespace();
                it.find(|w| *w == "inet" || *w == "inet6")?;
                it.next().map(str::to_string)
            })
            .collect();
        v.sort();
        v
    }

    /// A dummy interface, or an ifb one where the kernel has no dummy driver.
    pub fn add_dummy(&self, dev: &str) {
        let dummy = Command::new("ip").args(["-n", &self.name, "link", "add", dev, "type", "dummy"]).output();
        if !dummy.map(|o| o.status.success()).unwrap_or(false) {
            self.ip(&["link", "add", dev, "type", "ifb"]);
        }
    }

    /// [`NetNs::addrs`] without IPv6 link-local addresses.
    pub fn global_addrs(&self, dev: &str) -> Vec<String> {
        self.addrs(dev).into_iter().filter(|a| !a.starts_with("fe80:")).collect()
    }

    pub fn has_link(&self, dev: &str) -> bool {
        Command::new("ip")
            .args(["-n", &self.name, "link", "show", "dev", dev])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    }

    /// Runs `f` on a new thread inside the namespace, on its own current-thread tokio runtime.
    pub fn run<F, Fut, T>(&self, f: F) -> T
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = T>,
        T: Send + 'static,
    {
        let path = format!("/run/netns/{}", self.name);
        let thread = std::thread::spawn(move || {
            let file = std::fs::File::open(&path).unwrap();
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            // A stuck test fails instead of hanging (and its namespace is still deleted).
            rt.block_on(async { tokio::time::timeout(std::time::Duration::from_secs(60), f()).await })
                .expect("timed out inside the namespace")
        });
        match thread.join() {
            Ok(v) => v,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A service whose released VIPs go at once (`drain_timeout: 0`).
pub fn service(name: &str, vips: &[IpAddr]) -> Arc<ServiceEntry> {
    service_draining(name, vips, 0)
}

/// A service whose released VIPs stay local for `drain_timeout` seconds.
pub fn service_draining(name: &str, vips: &[IpAddr], drain_timeout: u32) -> Arc<ServiceEntry> {
    Arc::new(ServiceEntry {
        name: name.into(),
        origin: Origin::Static,
        vips: vips.to_vec(),
        ports: vec![],
        backends: vec![],
        announce: Default::default(),
        proxy: Arc::new(model::proxy::ProxyPolicy { drain_timeout, ..Default::default() }),
        allocation_error: None,
        global: None,
        warnings: vec![],
    })
}

/// A snapshot with one service per VIP.
pub fn snapshot(generation: u64, vips: &[&str]) -> Arc<Snapshot> {
    snapshot_of(generation, vips.iter().map(|v| ip(v)).collect())
}

pub fn snapshot_of(generation: u64, vips: Vec<IpAddr>) -> Arc<Snapshot> {
    let services = vips.iter().enumerate().map(|(i, v)| service(&format!("s{i:06}"), &[*v])).collect();
    Arc::new(Snapshot { generation, services, ..Default::default() })
}
