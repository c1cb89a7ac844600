//! Which VIPs each interface answers for: a pure function of the snapshot.

use model::bgp::AnnounceWhen;
use model::snapshot::Snapshot;
use std::collections::BTreeMap;
use std::net::IpAddr;

/// One VIP on one interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VipPlan {
    /// Answer for it now. `false`: an advertisement selects it, but (with `announce_when: healthy`) its
    /// services have no ready backend.
    pub announce: bool,
    /// Gratuitous announcements when it appears (the most any advertisement selecting it asks for).
    pub garp_count: u8,
    /// Milliseconds between them (the shortest asked for).
    pub garp_interval_ms: u32,
}

/// Interface name → VIP → plan.
pub type Plan = BTreeMap<String, BTreeMap<IpAddr, VipPlan>>;

/// For every interface named by an L2 advertisement, the VIPs it selects:
/// - VIPs of services that want L2 (`announce.l2`);
/// - of the advertisement's `services` and inside one of its `pools`' ranges, when those lists are set;
/// - announced when `announce_when` is `always`, or when the service has at least one ready backend;
/// - the union over every advertisement naming the interface (a VIP is announced if any of them announces it;
///   a VIP shared by several services, as global services are, if any of them qualifies).
///
/// Interfaces of advertisements that select nothing are still present (with no VIPs): the responder watches
/// them and reports their state.
pub fn plan(snapshot: &Snapshot) -> Plan {
    let mut out = Plan::new();
    for adv in &snapshot.l2_advertisements {
        for name in &adv.interfaces {
            out.entry(name.clone()).or_default();
        }
        for s in &snapshot.services {
            if !s.announce.l2 || s.vips.is_empty() {
                continue;
            }
            if !adv.services.is_empty() && !adv.services.iter().any(|n| *n == s.name) {
                continue;
            }
            let announce = adv.announce_when == AnnounceWhen::Always || s.backends.iter().any(|b| b.usable());
            for &vip in &s.vips {
                if !adv.pools.is_empty()
                    && !snapshot
                        .pools
                        .iter()
                        .any(|p| adv.pools.contains(&p.name) && p.ranges.iter().any(|r| r.contains(vip)))
                {
                    continue;
                }
                for name in &adv.interfaces {
                    let entry = out.entry(name.clone()).or_default().entry(vip).or_insert(VipPlan {
                        announce: false,
                        garp_count: 0,
                        garp_interval_ms: u32::MAX,
                    });
                    entry.announce |= announce;
                    entry.garp_count = entry.garp_count.max(adv.garp_count);
                    entry.garp_interval_ms = entry.garp_interval_ms.min(adv.garp_interval.max(1));
                }
            }
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::testutil::*;
    use model::config::Announce;
    use model::l2::L2Advertisement;
    use std::sync::Arc;

    fn vips(plan: &Plan, iface: &str) -> Vec<(String, bool)> {
        plan.get(iface).map(|m| m.iter().map(|(ip, p)| (ip.to_string(), p.announce)).collect()).unwrap_or_default()
    }

    #[test]
    fn healthy_always_and_announce_l2() {
        let mut no_l2 = (*service("c", &["192.0.2.3"], true)).clone();
        no_l2.announce = Announce { bgp: true, l2: false };
        let services = vec![
            service("a", &["192.0.2.1", "2001:db8::1"], true),
            service("b", &["192.0.2.2"], false),
            Arc::new(no_l2),
        ];
        let adv = advertisement("lan", &["eth0"]);
        let plan = plan(&snapshot(1, vec![], services.clone(), vec![adv.clone()]));
        assert_eq!(
            vips(&plan, "eth0"),
            [("192.0.2.1".into(), true), ("192.0.2.2".into(), false), ("2001:db8::1".into(), true)]
        );
        let always = L2Advertisement { announce_when: AnnounceWhen::Always, ..adv };
        let plan = super::plan(&snapshot(1, vec![], services, vec![always]));
        assert!(vips(&plan, "eth0").iter().all(|(_, a)| *a));
        assert_eq!(vips(&plan, "eth0").len(), 3);
    }

    #[test]
    fn pools_and_services_filter() {
        let pools = vec![pool("public", &["192.0.2.0/28"]), pool("private", &["198.51.100.0/24", "2001:db8::/64"])];
        let services = vec![service("a", &["192.0.2.1", "2001:db8::1"], true), service("b", &["198.51.100.7"], true)];
        let by_pool = L2Advertisement { pools: vec!["private".into()], ..advertisement("p", &["eth0"]) };
        let plan = plan(&snapshot(1, pools.clone(), services.clone(), vec![by_pool]));
        assert_eq!(vips(&plan, "eth0"), [("198.51.100.7".into(), true), ("2001:db8::1".into(), true)]);
        let by_service = L2Advertisement { services: vec!["a".into()], ..advertisement("s", &["eth1"]) };
        let plan = super::plan(&snapshot(1, pools, services, vec![by_service]));
        assert_eq!(vips(&plan, "eth1"), [("192.0.2.1".into(), true), ("2001:db8::1".into(), true)]);
    }

    #[test]
    fn union_over_advertisements_and_services() {
        // The same VIP in two services (a global service and its member): announced if either qualifies.
        let services = vec![service("global/x", &["192.0.2.9"], false), service("k/ns/x", &["192.0.2.9"], true)];
        let quiet = L2Advertisement { garp_count: 1, garp_interval: 500, ..advertisement("a", &["eth0"]) };
        let loud = L2Advertisement {
            garp_count: 5,
            garp_interval: 2000,
            services: vec!["global/x".into()],
            ..advertisement("b", &["eth0", "eth1"])
        };
        let nothing = L2Advertisement { services: vec!["none".into()], ..advertisement("none", &["eth2"]) };
        let plan = plan(&snapshot(1, vec![], services, vec![quiet, loud, nothing]));
        let p = plan["eth0"][&"192.0.2.9".parse().unwrap()];
        assert_eq!(p, VipPlan { announce: true, garp_count: 5, garp_interval_ms: 500 });
        // eth1 only has the advertisement selecting the global service, which has no ready backend.
        assert_eq!(vips(&plan, "eth1"), [("192.0.2.9".into(), false)]);
        // An interface with nothing to announce is still watched.
        assert!(plan["eth2"].is_empty());
        assert_eq!(plan.len(), 3);
    }

    #[test]
    fn no_advertisements_no_interfaces() {
        let plan = plan(&snapshot(1, vec![], vec![service("a", &["192.0.2.1"], true)], vec![]));
        assert!(plan.is_empty());
    }
}
