//! Local VIPs: every VIP the appliance serves, announced by BGP or by ARP/NDP or not at all, is an address on a
//! dedicated `dummy` interface (`portico0`), so the kernel accepts traffic for it and listeners can use it.
//!
//! [`LocalVips`] is a [`Subsystem`]: each snapshot is reconciled by a diff against what is on the interface
//! (never a flush), with many netlink requests in flight at once. The first apply creates the interface if
//! needed, sets the sysctls (see [`sysctl`]) and removes whatever a previous run left there that the snapshot
//! does not want. Nothing outside that one interface is ever touched. [`LocalVips::shutdown`] removes every VIP
//! (and the interface, if this run created it). See docs/local-vips.md.

mod netlink;
pub mod plan;
pub mod sysctl;

use model::snapshot::Snapshot;
use model::subsystem::{ApplyError, Health, Report, Subsystem};
use netlink::Netlink;
use plan::Address;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

pub use sysctl::{SysctlOutcome, SysctlStatus};

/// The default name of the VIP interface.
pub const DEFAULT_INTERFACE: &str = "portico0";

/// At most this many per-address errors are kept in the status (the count is always exact).
const ERRORS_KEPT: usize = 5;

/// How long the remembered contents of the interface are trusted before an apply reads them again (so an
/// address removed by hand, `ip addr flush dev portico0`, comes back at the next snapshot after at most this).
const REREAD_AFTER: std::time::Duration = std::time::Duration::from_secs(30);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalVipsOptions {
    /// The dummy interface the VIPs live on, e.g. `portico0`. Dedicated: every address on it belongs to Portico.
    pub interface: String,
}

impl Default for LocalVipsOptions {
    fn default() -> Self {
        LocalVipsOptions { interface: DEFAULT_INTERFACE.to_string() }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("interface name {0:?} is not valid (1 to 15 characters; no '/', ':', '.' or whitespace)")]
    InvalidInterfaceName(String),
    #[error("cannot open a netlink socket: {0}")]
    Socket(#[source] std::io::Error),
    #[error("no permission to {action}: local VIPs need root or CAP_NET_ADMIN")]
    Permission { action: String },
    #[error("interface {name} exists and is not a dummy (or ifb) interface (kind {kind}); refusing to touch it")]
    NotDummy { name: String, kind: String },
    #[error("interface {0} disappeared while it was being set up")]
    Vanished(String),
    #[error("cannot {action}: {source}")]
    Netlink {
        action: String,
        #[source]
        source: rtnetlink::Error,
    },
}

/// What the last apply did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ApplyStats {
    pub generation: u64,
    pub added: usize,
    pub removed: usize,
    pub failed: usize,
    /// Wall-clock time of the netlink work, in microseconds.
    pub micros: u64,
}

/// Everything the status API shows about local VIPs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct LocalVipsStatus {
    pub interface: String,
    /// The interface's index, once it exists.
    pub ifindex: Option<u32>,
    /// Whether this run created the interface (then shutdown deletes it).
    pub created_interface: bool,
    /// The interface's kind: `dummy`, or `ifb` on a kernel without the dummy driver.
    pub kind: Option<String>,
    /// The VIP addresses on the interface, as last known (sorted).
    pub addresses: Vec<IpAddr>,
    /// How many VIPs the last applied snapshot wants local.
    pub wanted: usize,
    /// Released VIPs kept local while their connections drain.
    pub draining: Vec<IpAddr>,
    /// The snapshot generation last applied (even partly).
    pub generation: Option<u64>,
    pub last_apply: Option<ApplyStats>,
    /// Why the last apply was not complete (`None` when it was).
    pub last_error: Option<String>,
    /// VIPs in the snapshot that can never be local addresses, with the reason.
    pub rejected: Vec<String>,
    pub sysctls: Vec<SysctlStatus>,
    /// The last apply could not be applied at all (a foreign interface of our name, a bad name): health
    /// `failed` until one succeeds.
    pub failed: bool,
}

impl LocalVipsStatus {
    fn report(&self) -> Report {
        let failed: Vec<&str> = self.sysctls.iter().filter(|s| s.failed()).map(|s| s.key.as_str()).collect();
        let mut problems = Vec::new();
        if let Some(e) = &self.last_error {
            problems.push(e.clone());
        }
        if !failed.is_empty() {
            problems.push(format!("sysctls not set: {}", failed.join(", ")));
        }
        if !self.rejected.is_empty() {
            let shown: Vec<&str> = self.rejected.iter().take(ERRORS_KEPT).map(String::as_str).collect();
            let more = if self.rejected.len() > shown.len() { ", …" } else { "" };
            problems.push(format!("{} VIPs can not be local: {}{more}", self.rejected.len(), shown.join(", ")));
        }
        if problems.is_empty() {
            Report::ok(format!("{} VIPs local on {}", self.addresses.len(), self.interface))
        } else {
            Report {
                health: if self.failed { Health::Failed } else { Health::Degraded },
                detail: format!(
                    "{} of {} VIPs local on {}; {}",
                    self.addresses.len(),
                    self.wanted,
                    self.interface,
                    problems.join("; ")
                ),
            }
        }
    }
}

/// A cheap, shareable view of the status.
#[derive(Debug, Clone)]
pub struct LocalVipsHandle {
    status: Arc<RwLock<LocalVipsStatus>>,
}

impl LocalVipsHandle {
    pub fn status(&self) -> LocalVipsStatus {
        self.status.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The same report the subsystem gives the runner.
    pub fn report(&self) -> Report {
        self.status.read().unwrap_or_else(|e| e.into_inner()).report()
    }
}

/// The interface as this run knows it.
#[derive(Debug, Clone, Copy)]
struct LinkState {
    index: u32,
    created: bool,
}

/// The local-VIPs subsystem (name `local_vips`).
pub struct LocalVips {
    options: LocalVipsOptions,
    sysctl_root: PathBuf,
    status: Arc<RwLock<LocalVipsStatus>>,
    netlink: Option<Netlink>,
    link: Option<LinkState>,
    /// What is on the interface; `None` until read from the kernel (at start, and again after a failure).
    present: Option<BTreeSet<Address>>,
    /// When `present` was last read from the kernel.
    read_at: Option<Instant>,
    sysctls_done: bool,
    /// What the last snapshot wanted, and each VIP's drain grace (its services' longest `drain_timeout`).
    last_wanted: BTreeMap<IpAddr, Duration>,
    /// VIPs no snapshot wants any more, kept on the interface until their deadline so that the connections the
    /// proxy is draining still reach it (announcements are withdrawn at once: no new client comes).
    lingering: BTreeMap<Address, Instant>,
}

impl std::fmt::Debug for LocalVips {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalVips").field("options", &self.options).field("link", &self.link).finish_non_exhaustive()
    }
}

/// Linux interface names: 1 to 15 bytes, no '/', ':' or whitespace. Dots are refused too, so that the name can
/// be used in a sysctl key as it is.
pub fn valid_interface_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && !name.chars().any(|c| c == '/' || c == ':' || c == '.' || c.is_whitespace() || c.is_control())
}

impl LocalVips {
    pub fn new(options: LocalVipsOptions) -> LocalVips {
        let status = LocalVipsStatus { interface: options.interface.clone(), ..Default::default() };
        LocalVips {
            options,
            sysctl_root: PathBuf::from("/proc/sys"),
            status: Arc::new(RwLock::new(status)),
            netlink: None,
            link: None,
            present: None,
            read_at: None,
            sysctls_done: false,
            last_wanted: BTreeMap::new(),
            lingering: BTreeMap::new(),
        }
    }

    pub fn handle(&self) -> LocalVipsHandle {
        LocalVipsHandle { status: self.status.clone() }
    }

    fn update(&self, f: impl FnOnce(&mut LocalVipsStatus)) {
        let mut s = self.status.write().unwrap_or_else(|e| e.into_inner());
        f(&mut s);
    }

    fn name(&self) -> &str {
        &self.options.interface
    }

    /// Sets the appliance-wide sysctls once (a failure is kept in the status and not retried: it will not
    /// succeed later without a change of privileges).
    fn ensure_sysctls(&mut self) {
        if self.sysctls_done {
            return;
        }
        let results = sysctl::ensure_all(&self.sysctl_root);
        for s in &results {
            match &s.outcome {
                SysctlOutcome::Failed(e) => tracing::warn!(key = %s.key, error = %e, "sysctl not set"),
                SysctlOutcome::Written => tracing::info!(key = %s.key, value = %s.wanted, "sysctl set"),
                SysctlOutcome::AlreadySet => {}
            }
        }
        self.update(|st| st.sysctls = results);
        self.sysctls_done = true;
    }

    /// Opens the socket and makes sure the interface exists, is a dummy, and is up with ARP off.
    async fn ensure_link(&mut self) -> Result<u32, Error> {
        if !valid_interface_name(self.name()) {
            return Err(Error::InvalidInterfaceName(self.name().to_string()));
        }
        if self.netlink.is_none() {
            self.netlink = Some(Netlink::connect()?);
        }
        if let Some(link) = self.link {
            return Ok(link.index);
        }
        let name = self.options.interface.clone();
        let Some(nl) = self.netlink.as_ref() else { return Err(Error::Vanished(name)) };
        let (link, created) = match nl.link(&name).await? {
            Some(link) => (link, false),
            None => {
                let kind = nl.create_dummy(&name).await?;
                if kind != "dummy" {
                    tracing::warn!(interface = %name, kind, "the kernel has no dummy driver; VIP interface is {kind}");
                }
                let link = nl.link(&name).await?.ok_or_else(|| Error::Vanished(name.clone()))?;
                (link, true)
            }
        };
        if !link.is_usable_kind() {
            return Err(Error::NotDummy { name, kind: link.kind.unwrap_or_else(|| "none".to_string()) });
        }
        if created {
            // Before it goes up, so no link-local address is ever made.
            let settings: Vec<SysctlStatus> = sysctl::interface_settings(&name)
                .into_iter()
                .map(|(key, value, accept)| sysctl::ensure(&self.sysctl_root, &key, value, accept))
                .collect();
            self.update(|st| st.sysctls.retain(|s| !settings.iter().any(|n| n.key == s.key)));
            self.update(|st| st.sysctls.extend(settings));
        }
        if !link.is_up_noarp() {
            nl.up_noarp(link.index, &name).await?;
        }
        // A link found from an earlier run may carry a created flag from that run: it is ours to empty, not to
        // delete.
        let was_created = created || self.link.is_some_and(|l| l.created);
        self.link = Some(LinkState { index: link.index, created: was_created });
        self.update(|st| {
            st.ifindex = Some(link.index);
            st.created_interface = was_created;
            st.kind = link.kind.clone();
        });
        Ok(link.index)
    }

    /// Reconciles the interface to `wanted`; returns (added, removed, per-address errors).
    async fn reconcile(&mut self, wanted: &BTreeSet<Address>) -> Result<(usize, usize, Vec<String>), Error> {
        let index = self.ensure_link().await?;
        let name = self.options.interface.clone();
        let Some(nl) = self.netlink.as_ref() else { return Err(Error::Vanished(name)) };
        let fresh = self.read_at.is_some_and(|t| t.elapsed() < REREAD_AFTER);
        let present = match self.present.take() {
            Some(p) if fresh => p,
            _ => {
                let p = nl.addresses(index, &name).await?;
                self.read_at = Some(Instant::now());
                p
            }
        };
        let plan = plan::plan(&present, wanted);
        let mut now = present;
        let mut errors = Vec::new();
        let mut lost_link = false;
        let mut permission = false;
        let removed_failed = nl.remove(index, &plan.remove).await;
        for a in &plan.remove {
            now.remove(a);
        }
        for (a, e) in &removed_failed {
            now.insert(*a);
            lost_link |= netlink::is_no_device(e);
            permission |= netlink::is_permission(e);
            errors.push(format!("remove {a}: {e}"));
        }
        let added_failed = nl.add(index, &plan.add).await;
        now.extend(plan.add.iter().copied());
        for (a, e) in &added_failed {
            now.remove(a);
            lost_link |= netlink::is_no_device(e);
            permission |= netlink::is_permission(e);
            errors.push(format!("add {a}: {e}"));
        }
        let removed = plan.remove.len() - removed_failed.len();
        let added = plan.add.len() - added_failed.len();
        if lost_link {
            // Someone deleted the interface: start over (create it, read it) at the next apply.
            self.link = None;
            self.present = None;
        } else if errors.is_empty() {
            self.present = Some(now.clone());
        } else {
            // Read the kernel's view again next time rather than trust ours.
            self.present = None;
        }
        self.update(|st| st.addresses = now.iter().filter(|a| **a == Address::host(a.ip)).map(|a| a.ip).collect());
        if permission {
            return Err(Error::Permission { action: format!("change the addresses of {name}") });
        }
        Ok((added, removed, errors))
    }

    /// Removes every VIP this subsystem manages; deletes the interface if this run created it. Errors are
    /// logged and kept in the status (the process is stopping).
    pub async fn shutdown(mut self) {
        let Some(link) = self.link else { return };
        let name = self.options.interface.clone();
        let Some(nl) = self.netlink.take() else { return };
        let result = if link.created {
            nl.delete_link(link.index, &name).await
        } else {
            match nl.addresses(link.index, &name).await {
                Ok(present) => {
                    let all: Vec<Address> = present.into_iter().collect();
                    let failed = nl.remove(link.index, &all).await;
                    match failed.first() {
                        None => Ok(()),
                        Some((a, e)) => Err(Error::Netlink {
                            action: format!("remove {a} (and {} more) from {name}", failed.len() - 1),
                            source: e.clone(),
                        }),
                    }
                }
                Err(e) => Err(e),
            }
        };
        match result {
            Ok(()) => {
                tracing::info!(interface = %name, deleted = link.created, "local VIPs removed");
                self.update(|st| {
                    st.addresses.clear();
                    if link.created {
                        st.ifindex = None;
                    }
                });
            }
            Err(e) => {
                tracing::warn!(interface = %name, error = %e, "local VIPs not all removed at shutdown");
                self.update(|st| st.last_error = Some(e.to_string()));
            }
        }
    }
}

impl Subsystem for LocalVips {
    fn name(&self) -> &'static str {
        "local_vips"
    }

    async fn apply(&mut self, snapshot: Arc<Snapshot>) -> Result<Report, ApplyError> {
        self.ensure_sysctls();
        let wanted = plan::wanted(&snapshot);
        let rejected: Vec<String> = wanted.rejected.iter().map(|(ip, why)| format!("{ip} ({why})")).collect();
        let graces = plan::drain_graces(&snapshot);
        let now = Instant::now();
        for (ip, grace) in &self.last_wanted {
            let address = Address::host(*ip);
            if !wanted.addresses.contains(&address) && !grace.is_zero() && !self.lingering.contains_key(&address) {
                tracing::info!(vip = %ip, grace = ?grace, "VIP released; kept local while its connections drain");
                self.lingering.insert(address, now + *grace);
            }
        }
        self.lingering.retain(|a, deadline| *deadline > now && !wanted.addresses.contains(a));
        self.last_wanted = graces;
        let mut local = wanted.addresses.clone();
        local.extend(self.lingering.keys().copied());
        let started = Instant::now();
        let outcome = self.reconcile(&local).await;
        let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        let generation = snapshot.generation;
        let n_wanted = wanted.addresses.len();
        match outcome {
            Ok((added, removed, errors)) => {
                if added + removed > 0 || !errors.is_empty() {
                    tracing::info!(added, removed, failed = errors.len(), micros, "local VIPs reconciled");
                }
                let last_error = match errors.len() {
                    0 => None,
                    n => {
                        let shown: Vec<&str> = errors.iter().take(ERRORS_KEPT).map(String::as_str).collect();
                        Some(format!("{n} address changes failed: {}", shown.join("; ")))
                    }
                };
                let failed = errors.len();
                let draining: Vec<IpAddr> = self.lingering.keys().map(|a| a.ip).collect();
                self.update(|st| {
                    st.generation = Some(generation);
                    st.wanted = n_wanted;
                    st.draining = draining;
                    st.rejected = rejected;
                    st.last_error = last_error;
                    st.failed = false;
                    st.last_apply = Some(ApplyStats { generation, added, removed, failed, micros });
                });
            }
            Err(e) => {
                tracing::warn!(interface = %self.options.interface, error = %e, "local VIPs not applied");
                let message = e.to_string();
                let fatal = matches!(e, Error::NotDummy { .. } | Error::InvalidInterfaceName(_));
                self.update(|st| {
                    st.failed = fatal;
                    st.generation = Some(generation);
                    st.wanted = n_wanted;
                    st.rejected = rejected;
                    st.last_error = Some(message);
                });
                // A foreign interface of our name or a bad name is a configuration problem that retrying does
                // not solve; report it as failed. Everything else (no privileges, netlink trouble) is degraded:
                // the rest of the appliance keeps running and the next snapshot retries.
                if fatal {
                    return Err(ApplyError(e.to_string()));
                }
            }
        }
        Ok(self.handle().report())
    }

    fn report(&self) -> Option<Report> {
        Some(self.handle().report())
    }

    fn reapply_at(&self) -> Option<Instant> {
        self.lingering.values().min().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names() {
        assert!(valid_interface_name("portico0"));
        assert!(valid_interface_name("a-b_c"));
        assert!(!valid_interface_name(""));
        assert!(!valid_interface_name("abcdefghijklmnop"));
        assert!(!valid_interface_name("a/b"));
        assert!(!valid_interface_name("a.b"));
        assert!(!valid_interface_name("a b"));
        assert!(!valid_interface_name("a:1"));
    }

    #[test]
    fn report_is_ok_only_without_problems() {
        let mut st = LocalVipsStatus { interface: "portico0".into(), wanted: 1, ..Default::default() };
        st.addresses = vec![IpAddr::from([192, 0, 2, 1])];
        assert_eq!(st.report().health, Health::Ok);
        st.sysctls.push(SysctlStatus {
            key: "net.ipv4.ip_nonlocal_bind".into(),
            wanted: "1".into(),
            before: None,
            outcome: SysctlOutcome::Failed("read-only".into()),
        });
        let r = st.report();
        assert_eq!(r.health, Health::Degraded);
        assert!(r.detail.contains("net.ipv4.ip_nonlocal_bind"), "{}", r.detail);
    }

    #[test]
    fn permission_error_says_what_is_needed() {
        let e = Error::Permission { action: "create dummy interface portico0".into() };
        assert!(e.to_string().contains("CAP_NET_ADMIN"));
    }
}
