//! What should be on the interface, and the steps from what is there to that. Pure: no I/O.

use model::snapshot::Snapshot;
use std::collections::BTreeSet;
use std::net::IpAddr;

/// One address on the interface: the VIP and its prefix length (a VIP is always a host address, /32 or /128,
/// but a leftover may have another length and must be deleted with the length it has).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Address {
    pub ip: IpAddr,
    pub prefix_len: u8,
}

impl Address {
    /// The host address of a VIP: /32 for IPv4, /128 for IPv6.
    pub fn host(ip: IpAddr) -> Address {
        let prefix_len = if ip.is_ipv4() { 32 } else { 128 };
        Address { ip, prefix_len }
    }
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.ip, self.prefix_len)
    }
}

/// The VIPs a snapshot wants local, and the ones it names that can never be (with the reason).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Wanted {
    pub addresses: BTreeSet<Address>,
    pub rejected: Vec<(IpAddr, &'static str)>,
}

/// Why an address can not be a VIP on the interface (`None`: it can).
pub fn unusable(ip: IpAddr) -> Option<&'static str> {
    if ip.is_unspecified() {
        return Some("unspecified address");
    }
    if ip.is_loopback() {
        return Some("loopback address");
    }
    if ip.is_multicast() {
        return Some("multicast address");
    }
    match ip {
        IpAddr::V4(v4) if v4.is_broadcast() => Some("broadcast address"),
        IpAddr::V6(v6) if v6.is_unicast_link_local() => Some("IPv6 link-local address"),
        IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some() => Some("IPv4-mapped IPv6 address"),
        _ => None,
    }
}

/// How long each VIP of the snapshot stays local after it is released: the longest `drain_timeout` of the
/// services using it (Ingress VIPs: the default 30 s).
pub fn drain_graces(snapshot: &Snapshot) -> std::collections::BTreeMap<IpAddr, std::time::Duration> {
    let mut out = std::collections::BTreeMap::new();
    for s in &snapshot.services {
        let grace = std::time::Duration::from_secs(u64::from(s.proxy.drain_timeout));
        for &ip in &s.vips {
            let g = out.entry(ip).or_insert(grace);
            *g = (*g).max(grace);
        }
    }
    for &ip in snapshot.ingress_vips.values().flatten() {
        out.entry(ip).or_insert(std::time::Duration::from_secs(30));
    }
    out
}

/// Every VIP the snapshot allocates, announced or not: each service's VIPs and each cluster's Ingress VIPs.
pub fn wanted(snapshot: &Snapshot) -> Wanted {
    let mut out = Wanted::default();
    let services = snapshot.services.iter().flat_map(|s| s.vips.iter());
    let ingresses = snapshot.ingress_vips.values().flatten();
    for &ip in services.chain(ingresses) {
        match unusable(ip) {
            None => {
                out.addresses.insert(Address::host(ip));
            }
            Some(reason) => {
                if !out.rejected.iter().any(|(r, _)| *r == ip) {
                    out.rejected.push((ip, reason));
                }
            }
        }
    }
    out
}

/// Whether an address found on the interface is one this crate manages. The kernel's own IPv6 link-local
/// address (if the interface has one) is left alone; everything else on the dedicated interface is ours.
pub fn managed(address: &Address) -> bool {
    match address.ip {
        IpAddr::V6(v6) => !v6.is_unicast_link_local(),
        IpAddr::V4(_) => true,
    }
}

/// The steps from `present` to `wanted`: delete first (a leftover with the wrong prefix length must go before
/// the host address of the same IP is added), then add.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub remove: Vec<Address>,
    pub add: Vec<Address>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.add.is_empty()
    }
}

/// A merge walk over two sorted sets: O(n), no hashing, the order of the output is the sorted order.
pub fn plan(present: &BTreeSet<Address>, wanted: &BTreeSet<Address>) -> Plan {
    let mut plan = Plan::default();
    let mut p = present.iter().peekable();
    let mut w = wanted.iter().peekable();
    loop {
        match (p.peek(), w.peek()) {
            (Some(a), Some(b)) => match a.cmp(b) {
                std::cmp::Ordering::Less => {
                    plan.remove.push(**a);
                    p.next();
                }
                std::cmp::Ordering::Greater => {
                    plan.add.push(**b);
                    w.next();
                }
                std::cmp::Ordering::Equal => {
                    p.next();
                    w.next();
                }
            },
            (Some(a), None) => {
                plan.remove.push(**a);
                p.next();
            }
            (None, Some(b)) => {
                plan.add.push(**b);
                w.next();
            }
            (None, None) => break,
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use model::snapshot::{Origin, ServiceEntry};
    use std::net::{Ipv4Addr, Ipv6Addr};
    use std::sync::Arc;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
    }

    fn set(items: &[&str]) -> BTreeSet<Address> {
        items
            .iter()
            .map(|s| match s.split_once('/') {
                Some((a, l)) => Address { ip: ip(a), prefix_len: l.parse().unwrap_or(0) },
                None => Address::host(ip(s)),
            })
            .collect()
    }

    fn service(name: &str, vips: &[&str]) -> Arc<ServiceEntry> {
        Arc::new(ServiceEntry {
            name: name.into(),
            origin: Origin::Static,
            vips: vips.iter().map(|v| ip(v)).collect(),
            ports: vec![],
            backends: vec![],
            announce: Default::default(),
            proxy: Default::default(),
            allocation_error: None,
            global: None,
            warnings: vec![],
        })
    }

    #[test]
    fn host_prefixes() {
        assert_eq!(Address::host(ip("10.0.0.1")).prefix_len, 32);
        assert_eq!(Address::host(ip("2001:db8::1")).prefix_len, 128);
        assert_eq!(Address::host(ip("2001:db8::1")).to_string(), "2001:db8::1/128");
    }

    #[test]
    fn wanted_takes_every_service_and_ingress_vip_once() {
        let mut snap = Snapshot {
            services: vec![
                service("a", &["10.0.0.1", "2001:db8::1"]),
                service("b", &["10.0.0.2"]),
                // A global service's members share its VIP.
                service("c/ns/m", &["10.0.0.1"]),
                service("d", &[]),
            ],
            ..Default::default()
        };
        snap.ingress_vips.insert("c".into(), vec![ip("10.0.0.9")]);
        let w = wanted(&snap);
        assert_eq!(w.addresses, set(&["10.0.0.1", "10.0.0.2", "10.0.0.9", "2001:db8::1"]));
        assert!(w.rejected.is_empty());
    }

    #[test]
    fn wanted_rejects_addresses_that_cannot_be_vips() {
        let snap = Snapshot {
            services: vec![service("a", &["0.0.0.0", "127.0.0.1", "224.0.0.1", "fe80::1", "::ffff:10.0.0.1", "::1"])],
            ..Default::default()
        };
        let w = wanted(&snap);
        assert!(w.addresses.is_empty());
        assert_eq!(w.rejected.len(), 6);
        assert_eq!(unusable(IpAddr::V4(Ipv4Addr::BROADCAST)), Some("broadcast address"));
        assert_eq!(unusable(IpAddr::V6(Ipv6Addr::LOCALHOST)), Some("loopback address"));
        assert_eq!(unusable(ip("192.0.2.1")), None);
    }

    #[test]
    fn plan_adds_and_removes_the_difference() {
        let present = set(&["10.0.0.1", "10.0.0.2", "2001:db8::5"]);
        let wanted = set(&["10.0.0.2", "10.0.0.3", "2001:db8::6"]);
        let p = plan(&present, &wanted);
        assert_eq!(p.remove, set(&["10.0.0.1", "2001:db8::5"]).into_iter().collect::<Vec<_>>());
        assert_eq!(p.add, set(&["10.0.0.3", "2001:db8::6"]).into_iter().collect::<Vec<_>>());
    }

    #[test]
    fn plan_is_empty_when_in_sync_and_idempotent() {
        let s = set(&["10.0.0.1", "2001:db8::1"]);
        assert!(plan(&s, &s).is_empty());
        assert!(plan(&BTreeSet::new(), &BTreeSet::new()).is_empty());
    }

    #[test]
    fn plan_replaces_a_leftover_with_the_wrong_prefix_length() {
        let present = set(&["10.0.0.1/24"]);
        let wanted = set(&["10.0.0.1"]);
        let p = plan(&present, &wanted);
        assert_eq!(p.remove, vec![Address { ip: ip("10.0.0.1"), prefix_len: 24 }]);
        assert_eq!(p.add, vec![Address::host(ip("10.0.0.1"))]);
    }

    #[test]
    fn plan_from_nothing_and_to_nothing() {
        let s = set(&["10.0.0.1", "10.0.0.2"]);
        assert_eq!(plan(&BTreeSet::new(), &s).add.len(), 2);
        assert_eq!(plan(&s, &BTreeSet::new()).remove.len(), 2);
    }

    #[test]
    fn plan_of_ten_thousand_matches_set_difference() {
        let present: BTreeSet<Address> =
            (0..10_000u32).map(|i| Address::host(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)))).collect();
        let wanted: BTreeSet<Address> =
            (5_000..15_000u32).map(|i| Address::host(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)))).collect();
        let p = plan(&present, &wanted);
        assert_eq!(p.remove, present.difference(&wanted).copied().collect::<Vec<_>>());
        assert_eq!(p.add, wanted.difference(&present).copied().collect::<Vec<_>>());
    }

    #[test]
    fn link_local_is_not_managed() {
        assert!(!managed(&Address { ip: ip("fe80::1"), prefix_len: 64 }));
        assert!(managed(&Address::host(ip("2001:db8::1"))));
        assert!(managed(&Address { ip: ip("10.0.0.1"), prefix_len: 24 }));
    }
}
