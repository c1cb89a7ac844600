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
            let announce = adv.announce_when == AnnounceWhen::Always || s.backends.iter().any(|b| b.ready);
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
