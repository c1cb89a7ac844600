//! L2 announcement configuration (`l2_advertisements`: answer ARP and Neighbor Solicitations for VIPs on a
//! segment) and what the responder reports. The responder lives in the `l2` crate.

use crate::bgp::AnnounceWhen;
use crate::names::dns_label_problem;
use crate::validation::Collector;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use utoipa::ToSchema;

/// Which VIPs to announce on which interfaces.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct L2Advertisement {
    /// DNS label, unique among L2 advertisements.
    pub name: String,
    /// Linux interface names to answer on (`eth0`, `bond0.100`).
    pub interfaces: Vec<String>,
    /// Announce only VIPs from these pools; empty means every pool.
    #[serde(default)]
    pub pools: Vec<String>,
    /// Announce only the VIPs of these services (snapshot names); empty means every service.
    #[serde(default)]
    pub services: Vec<String>,
    /// Gratuitous ARPs / unsolicited Neighbor Advertisements sent when a VIP appears, at start and when a link
    /// comes back up (0 to 100).
    #[serde(default = "default_garp_count")]
    pub garp_count: u8,
    /// Milliseconds between those (10 to 60000).
    #[serde(default = "default_garp_interval")]
    pub garp_interval: u32,
    #[serde(default)]
    pub announce_when: AnnounceWhen,
}

fn default_garp_count() -> u8 {
    3
}
fn default_garp_interval() -> u32 {
    1000
}

/// Whether a name can be a Linux interface name (`IFNAMSIZ` is 16 with the NUL; no `/`, whitespace or `:`).
pub fn interface_name_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() || name.len() > 15 {
        Some("must be 1 to 15 characters")
    } else if name == "." || name == ".." {
        Some("cannot be . or ..")
    } else if name.chars().any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control()) {
        Some("cannot contain '/', ':', whitespace or control characters")
    } else {
        None
    }
}

impl L2Advertisement {
    pub fn validate(&self, c: &mut Collector<'_>, pools: &BTreeSet<&str>) {
        if let Some(p) = dns_label_problem(&self.name) {
            c.error("name", p);
        }
        if self.interfaces.is_empty() {
            c.error("interfaces", "must list at least one interface");
        }
        let mut seen = BTreeSet::new();
        for (i, name) in self.interfaces.iter().enumerate() {
            if let Some(p) = interface_name_problem(name) {
                c.error(&format!("interfaces[{i}]"), p);
            } else if !seen.insert(name.as_str()) {
                c.error(&format!("interfaces[{i}]"), format!("'{name}' is listed twice"));
            }
        }
        for (i, p) in self.pools.iter().enumerate() {
            if !pools.contains(p.as_str()) {
                c.error(&format!("pools[{i}]"), format!("no pool is named '{p}'"));
            }
        }
        for (i, s) in self.services.iter().enumerate() {
            if s.is_empty() {
                c.error(&format!("services[{i}]"), "must not be empty");
            }
        }
        if self.garp_count > 100 {
            c.error("garp_count", "must be 0 to 100");
        }
        if !(10..=60_000).contains(&self.garp_interval) {
            c.error("garp_interval", "must be 10 to 60000 milliseconds");
        }
    }
}

/// One VIP on one interface.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, ToSchema)]
pub struct L2VipStatus {
    pub vip: String,
    /// Answered for right now.
    pub announced: bool,
    pub requests_answered: u64,
    pub gratuitous_sent: u64,
    /// The last reply or gratuitous announcement for this VIP that could not be sent, until one is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// What `GET /api/v1/l2/status` reports per interface.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, ToSchema)]
pub struct L2InterfaceStatus {
    pub interface: String,
    /// The link is up and the responder has its socket.
    pub up: bool,
    /// The MAC address answers carry.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    pub vips: Vec<L2VipStatus>,
    pub requests_answered: u64,
    pub gratuitous_sent: u64,
    /// Frames dropped as malformed, for other addresses, or over the rate limit.
    pub frames_ignored: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validation::FieldError;

    fn errors(a: &L2Advertisement) -> Vec<FieldError> {
        let mut errs = Vec::new();
        let pools: BTreeSet<&str> = ["public"].into_iter().collect();
        a.validate(&mut Collector::new(&mut errs), &pools);
        errs
    }

    #[test]
    fn defaults_and_checks() {
        let a: L2Advertisement = serde_json::from_value(serde_json::json!({"name": "lan", "interfaces": ["eth0"]}))
            .unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!((a.garp_count, a.garp_interval, a.announce_when), (3, 1000, AnnounceWhen::Healthy));
        assert!(errors(&a).is_empty());
        let bad = L2Advertisement {
            name: "Lan".into(),
            interfaces: vec!["eth0".into(), "eth0".into(), "a/b".into(), "x".repeat(16)],
            pools: vec!["missing".into()],
            garp_count: 101,
            garp_interval: 5,
            ..a
        };
        let fields: Vec<String> = errors(&bad).into_iter().map(|e| e.field).collect();
        assert_eq!(
            fields,
            ["name", "interfaces[1]", "interfaces[2]", "interfaces[3]", "pools[0]", "garp_count", "garp_interval"]
        );
    }
}
