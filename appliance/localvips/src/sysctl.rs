//! The kernel settings local VIPs need, written to `/proc/sys` once at start, only where the current value does
//! not already do the job. A failure is reported in the status, never fatal. See docs/local-vips.md for why each
//! one is needed.

use serde::Serialize;
use std::path::{Path, PathBuf};

/// One setting: its `sysctl` key, the value written when needed, and the values that already do the job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wanted {
    pub key: &'static str,
    pub value: &'static str,
    pub accept: &'static [&'static str],
}

/// The appliance-wide settings (the per-interface ones are in [`interface_settings`]).
pub const SETTINGS: &[Wanted] = &[
    // Listeners may bind a VIP before it is on the interface (or while it is being moved).
    Wanted { key: "net.ipv4.ip_nonlocal_bind", value: "1", accept: &["1"] },
    Wanted { key: "net.ipv6.ip_nonlocal_bind", value: "1", accept: &["1"] },
    // Answer ARP only for addresses configured on the interface the request came in on: the VIPs live on the
    // dummy interface, so the kernel never answers for them; the userspace responder decides. 2 (also check the
    // sender's subnet) and 8 (never answer) are stricter and are left as they are. The kernel uses the maximum of
    // `all` and the interface's own value, so `all` covers every interface, present and future.
    Wanted { key: "net.ipv4.conf.all.arp_ignore", value: "1", accept: &["1", "2", "8"] },
    // Never use a VIP as the sender address of the kernel's own ARP requests: use an address of the outgoing
    // interface, so neighbours never learn a VIP from the kernel.
    Wanted { key: "net.ipv4.conf.all.arp_announce", value: "2", accept: &["2"] },
];

/// Settings for the dummy interface itself, written after it is created and before it is brought up.
pub fn interface_settings(interface: &str) -> Vec<(String, &'static str, &'static [&'static str])> {
    vec![
        // No kernel-made IPv6 link-local address on the VIP interface: nothing but VIPs lives there.
        (format!("net.ipv6.conf.{interface}.addr_gen_mode"), "1", &["1"]),
        // If someone adds a non-host address by hand, deleting it must not take other addresses with it.
        (format!("net.ipv4.conf.{interface}.promote_secondaries"), "1", &["1"]),
    ]
}

/// What happened to one setting.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SysctlStatus {
    pub key: String,
    pub wanted: String,
    /// The value before (`None` if it could not be read).
    pub before: Option<String>,
    pub outcome: SysctlOutcome,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "state", content = "error")]
pub enum SysctlOutcome {
    /// The current value already does the job; nothing written.
    AlreadySet,
    Written,
    Failed(String),
}

impl SysctlStatus {
    pub fn failed(&self) -> bool {
        matches!(self.outcome, SysctlOutcome::Failed(_))
    }
}

/// `net.ipv4.conf.all.arp_ignore` → `<root>/net/ipv4/conf/all/arp_ignore`. Interface names may contain dots,
/// which `sysctl` writes as slashes; ours are validated to have none, so a plain replacement is right.
pub fn path_of(root: &Path, key: &str) -> PathBuf {
    root.join(key.replace('.', "/"))
}

/// Brings one setting to a value it accepts; `root` is `/proc/sys` (a temporary folder in tests).
pub fn ensure(root: &Path, key: &str, value: &str, accept: &[&str]) -> SysctlStatus {
    let path = path_of(root, key);
    let before = std::fs::read_to_string(&path).ok().map(|s| s.trim().to_string());
    let outcome = match &before {
        Some(v) if accept.contains(&v.as_str()) => SysctlOutcome::AlreadySet,
        _ => match std::fs::write(&path, value) {
            Ok(()) => SysctlOutcome::Written,
            Err(e) => SysctlOutcome::Failed(format!("cannot write {}: {e}", path.display())),
        },
    };
    SysctlStatus { key: key.to_string(), wanted: value.to_string(), before, outcome }
}

/// Brings every appliance-wide setting to a value it accepts.
pub fn ensure_all(root: &Path) -> Vec<SysctlStatus> {
    SETTINGS.iter().map(|w| ensure(root, w.key, w.value, w.accept)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_root() -> Option<tempfile::TempDir> {
        let dir = tempfile::tempdir().ok()?;
        for w in SETTINGS {
            let p = path_of(dir.path(), w.key);
            std::fs::create_dir_all(p.parent()?).ok()?;
            std::fs::write(&p, "0\n").ok()?;
        }
        Some(dir)
    }

    #[test]
    fn writes_what_is_needed_and_only_that() {
        let Some(dir) = fake_root() else { return };
        std::fs::write(path_of(dir.path(), "net.ipv4.conf.all.arp_ignore"), "2\n").ok();
        let first = ensure_all(dir.path());
        let states: Vec<_> = first.iter().map(|s| (s.key.as_str(), s.outcome.clone())).collect();
        assert_eq!(
            states,
            vec![
                ("net.ipv4.ip_nonlocal_bind", SysctlOutcome::Written),
                ("net.ipv6.ip_nonlocal_bind", SysctlOutcome::Written),
                // 2 is stricter than 1 and does the job: left alone.
                ("net.ipv4.conf.all.arp_ignore", SysctlOutcome::AlreadySet),
                ("net.ipv4.conf.all.arp_announce", SysctlOutcome::Written),
            ]
        );
        assert_eq!(first[0].before.as_deref(), Some("0"));
        let value = std::fs::read_to_string(path_of(dir.path(), "net.ipv4.conf.all.arp_announce")).ok();
        assert_eq!(value.as_deref(), Some("2"));
        // Idempotent: a second run writes nothing.
        assert!(ensure_all(dir.path()).iter().all(|s| s.outcome == SysctlOutcome::AlreadySet));
    }

    #[test]
    fn a_failure_is_reported_not_fatal() {
        let Some(dir) = tempfile::tempdir().ok() else { return };
        let s = ensure(dir.path(), "net.ipv6.ip_nonlocal_bind", "1", &["1"]);
        assert!(s.failed());
        assert_eq!(s.before, None);
        let json = serde_json::to_value(&s).ok();
        assert_eq!(json.as_ref().and_then(|j| j["outcome"]["state"].as_str()), Some("failed"));
    }
}
