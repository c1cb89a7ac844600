//! What each peer should be sent: a pure function of the snapshot and the peer's configuration.

use crate::wire::{Origin, OutAttributes};
use ipnet::IpNet;
use model::bgp::{AddressFamily, AnnounceWhen, BgpPeer, BgpSettings};
use model::snapshot::Snapshot;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

/// Where an announced prefix comes from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteSource {
    pub vips: BTreeSet<IpAddr>,
    pub services: BTreeSet<String>,
}

/// A peer's Adj-RIB-Out before attributes: the prefixes, each with its VIPs and services.
pub type RibOut = BTreeMap<IpNet, RouteSource>;

/// The prefixes `peer` should carry according to the snapshot (RFC-independent policy):
/// - a service's VIPs, if it wants BGP (`announce.bgp`) and, unless the peer announces `always`, has a ready
///   backend;
/// - only VIPs inside the peer's `advertise.pools` and of its `advertise.services`, when those are set;
/// - as /32 or /128, or as the pool's `aggregate_length` covering prefix;
/// - only of the families the peer is configured for.
pub fn rib_out(snapshot: &Snapshot, peer: &BgpPeer) -> RibOut {
    let adv = &peer.advertise;
    let wanted_services: BTreeSet<&str> = adv.services.iter().map(String::as_str).collect();
    let mut out = RibOut::new();
    for s in &snapshot.services {
        if !s.announce.bgp || s.vips.is_empty() {
            continue;
        }
        if adv.announce_when == AnnounceWhen::Healthy && !s.backends.iter().any(|b| b.usable()) {
            continue;
        }
        if !wanted_services.is_empty() && !wanted_services.contains(s.name.as_str()) {
            continue;
        }
        for &vip in &s.vips {
            let family = AddressFamily::of(vip);
            if !peer.families.contains(&family) {
                continue;
            }
            let pool = snapshot.pools.iter().find(|p| p.ranges.iter().any(|r| r.contains(vip)));
            if !adv.pools.is_empty() && !pool.is_some_and(|p| adv.pools.contains(&p.name)) {
                continue;
            }
            let aggregate = pool.and_then(|p| adv.aggregate_length.get(&p.name)).and_then(|a| match family {
                AddressFamily::Ipv4Unicast => a.ipv4,
                AddressFamily::Ipv6Unicast => a.ipv6,
            });
            let len = aggregate.unwrap_or(if vip.is_ipv4() { 32 } else { 128 });
            let Ok(prefix) = IpNet::new(vip, len) else { continue };
            let entry = out.entry(prefix.trunc()).or_default();
            entry.vips.insert(vip);
            entry.services.insert(s.name.clone());
        }
    }
    out
}

/// The attributes sent to `peer` for one family, given our address on the session. `Err` says why that
/// family's routes cannot be sent (no usable next hop).
pub fn out_attributes(
    settings: &BgpSettings,
    peer: &BgpPeer,
    family: AddressFamily,
    local_addr: IpAddr,
) -> Result<OutAttributes, String> {
    let ibgp = peer.asn == settings.asn;
    let next_hop = peer
        .next_hop_for(family)
        .or_else(|| (AddressFamily::of(local_addr) == family).then_some(local_addr))
        .or_else(|| {
            let src = peer.source_address.as_deref()?.parse::<IpAddr>().ok()?;
            (AddressFamily::of(src) == family).then_some(src)
        })
        .ok_or_else(|| {
            format!(
                "{} routes need a next hop of that family over this {} session: set advertise.next_hop",
                family.as_str(),
                if local_addr.is_ipv4() { "IPv4" } else { "IPv6" }
            )
        })?;
    let adv = &peer.advertise;
    Ok(OutAttributes {
        origin: Origin::Igp,
        as_path: if ibgp { Vec::new() } else { vec![settings.asn] },
        next_hop,
        med: adv.med,
        local_pref: if ibgp { Some(adv.local_pref.unwrap_or(100)) } else { None },
        communities: adv.communities.iter().filter_map(|c| model::bgp::parse_community(c)).collect(),
        large_communities: adv.large_communities.iter().filter_map(|c| model::bgp::parse_large_community(c)).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use model::addr::IpRange;
    use model::snapshot::{BackendEntry, Origin as SvcOrigin, PoolEntry, ServiceEntry};

    fn backend(ready: bool) -> BackendEntry {
        BackendEntry {
            ip: "10.0.0.1".parse().unwrap(),
            port: Some(80),
            named_ports: std::sync::Arc::from([]),
            weight: 1,
            ready,
            serving: ready,
            terminating: false,
            zone: None,
            node: None,
            health: Default::default(),
        }
    }

    fn service(name: &str, vips: &[&str], ready: bool) -> ServiceEntry {
        ServiceEntry {
            name: name.into(),
            origin: SvcOrigin::Static,
            vips: vips.iter().map(|v| v.parse().unwrap()).collect(),
            ports: vec![],
            backends: vec![backend(ready)],
            announce: Default::default(),
            proxy: Default::default(),
            allocation_error: None,
            global: None,
            warnings: vec![],
        }
    }

    fn snapshot() -> Snapshot {
        Snapshot {
            pools: vec![
                PoolEntry { name: "public".into(), ranges: vec![IpRange::parse("203.0.113.0/24").unwrap()] },
                PoolEntry { name: "v6".into(), ranges: vec![IpRange::parse("2001:db8::/64").unwrap()] },
                PoolEntry { name: "other".into(), ranges: vec![IpRange::parse("198.51.100.0/24").unwrap()] },
            ],
            // `Into` so this builds whether the snapshot holds services by value or behind an `Arc`.
            #[allow(clippy::useless_conversion)]
            services: [
                service("web", &["203.0.113.10", "2001:db8::10"], true),
                service("down", &["203.0.113.11"], false),
                service("api", &["198.51.100.5"], true),
                service("shared", &["203.0.113.10"], true),
            ]
            .into_iter()
            .map(Into::into)
            .collect(),
            ..Default::default()
        }
    }

    fn peer() -> BgpPeer {
        serde_json::from_value(serde_json::json!({"name": "tor1", "address": "192.0.2.254", "asn": 64513})).unwrap()
    }

    fn prefixes(r: &RibOut) -> Vec<String> {
        r.keys().map(|p| p.to_string()).collect()
    }

    #[test]
    fn healthy_services_are_announced_as_host_routes() {
        let r = rib_out(&snapshot(), &peer());
        assert_eq!(prefixes(&r), ["198.51.100.5/32", "203.0.113.10/32", "2001:db8::10/128"]);
        let shared = &r[&"203.0.113.10/32".parse().unwrap()];
        assert_eq!(shared.services.iter().collect::<Vec<_>>(), ["shared", "web"]);
    }

    #[test]
    fn always_announces_services_without_ready_backends() {
        let mut p = peer();
        p.advertise.announce_when = AnnounceWhen::Always;
        assert!(rib_out(&snapshot(), &p).contains_key(&"203.0.113.11/32".parse().unwrap()));
    }

    #[test]
    fn services_that_do_not_want_bgp_are_left_out() {
        let mut s = snapshot();
        let mut web = service("web", &["203.0.113.10", "2001:db8::10"], true);
        web.announce.bgp = false;
        s.services[0] = web.into();
        assert_eq!(prefixes(&rib_out(&s, &peer())), ["198.51.100.5/32", "203.0.113.10/32"]);
    }

    #[test]
    fn pools_services_and_families_filter() {
        let mut p = peer();
        p.advertise.pools = vec!["public".into()];
        assert_eq!(prefixes(&rib_out(&snapshot(), &p)), ["203.0.113.10/32"]);
        let mut p = peer();
        p.advertise.services = vec!["api".into()];
        assert_eq!(prefixes(&rib_out(&snapshot(), &p)), ["198.51.100.5/32"]);
        let mut p = peer();
        p.families = vec![AddressFamily::Ipv6Unicast];
        assert_eq!(prefixes(&rib_out(&snapshot(), &p)), ["2001:db8::10/128"]);
    }

    #[test]
    fn aggregates_cover_their_pool() {
        let mut p = peer();
        p.advertise
            .aggregate_length
            .insert("public".into(), model::bgp::AggregateLength { ipv4: Some(24), ipv6: None });
        p.advertise.announce_when = AnnounceWhen::Always;
        let r = rib_out(&snapshot(), &p);
        assert_eq!(prefixes(&r), ["198.51.100.5/32", "203.0.113.0/24", "2001:db8::10/128"]);
        let agg = &r[&"203.0.113.0/24".parse().unwrap()];
        assert_eq!(agg.vips.len(), 2);
        assert_eq!(agg.services.len(), 3);
    }

    fn settings() -> BgpSettings {
        serde_json::from_value(serde_json::json!({"asn": 64512, "router_id": "192.0.2.1"})).unwrap()
    }

    #[test]
    fn ebgp_attributes_carry_our_as_and_communities() {
        let mut p = peer();
        p.advertise.communities = vec!["65000:100".into(), "no-export".into()];
        p.advertise.large_communities = vec!["64512:1:2".into()];
        p.advertise.med = Some(10);
        let local: IpAddr = "192.0.2.1".parse().unwrap();
        let a = out_attributes(&settings(), &p, AddressFamily::Ipv4Unicast, local).unwrap();
        assert_eq!(a.as_path, [64_512]);
        assert_eq!(a.next_hop, local);
        assert_eq!(a.local_pref, None);
        assert_eq!(a.med, Some(10));
        assert_eq!(a.communities, [0xFDE8_0064, 0xFFFF_FF01]);
        assert_eq!(a.large_communities, [[64_512, 1, 2]]);
    }

    #[test]
    fn ibgp_gets_local_pref_and_an_empty_path() {
        let mut p = peer();
        p.asn = 64_512;
        let a = out_attributes(&settings(), &p, AddressFamily::Ipv4Unicast, "192.0.2.1".parse().unwrap()).unwrap();
        assert_eq!((a.as_path.len(), a.local_pref), (0, Some(100)));
        p.advertise.local_pref = Some(250);
        let a = out_attributes(&settings(), &p, AddressFamily::Ipv4Unicast, "192.0.2.1".parse().unwrap()).unwrap();
        assert_eq!(a.local_pref, Some(250));
    }

    #[test]
    fn ipv6_over_an_ipv4_session_needs_a_configured_next_hop() {
        let mut p = peer();
        let local: IpAddr = "192.0.2.1".parse().unwrap();
        let e = out_attributes(&settings(), &p, AddressFamily::Ipv6Unicast, local).unwrap_err();
        assert!(e.contains("advertise.next_hop"), "{e}");
        p.advertise.next_hop = vec!["2001:db8::1".into()];
        let a = out_attributes(&settings(), &p, AddressFamily::Ipv6Unicast, local).unwrap();
        assert_eq!(a.next_hop, "2001:db8::1".parse::<IpAddr>().unwrap());
        // A configured next hop wins over our own address for its family too.
        p.advertise.next_hop.push("192.0.2.99".into());
        let a = out_attributes(&settings(), &p, AddressFamily::Ipv4Unicast, local).unwrap();
        assert_eq!(a.next_hop, "192.0.2.99".parse::<IpAddr>().unwrap());
    }
}
