//! Adj-RIB-In (what a peer sent us, shown and never installed) and the per-session record of what we have
//! sent, from which UPDATEs are computed as differences.

use crate::wire::{self, AfiSafi, OutAttributes, PathAttributes, Update};
use ipnet::IpNet;
use model::bgp::ReceivedRoute;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

#[derive(Debug, Clone)]
struct InEntry {
    attrs: Arc<PathAttributes>,
    next_hop: Option<IpAddr>,
    /// Kept from a session that went down while the peer restarts (RFC 4724 helper).
    stale: bool,
}

/// One peer's Adj-RIB-In. Ordered by prefix: it is shown that way, and a B-tree grows node by node, where a
/// hash table doubled and rehashed its way to a full table (fresh zeroed pages were 40 % of the CPU of taking
/// 500,000 routes, and the spare half of the last table stayed; `bench/RESULTS.md`, BGP).
#[derive(Debug, Clone, Default)]
pub struct AdjRibIn {
    routes: BTreeMap<IpNet, InEntry>,
}

fn family_of(p: &IpNet) -> AfiSafi {
    match p {
        IpNet::V4(_) => AfiSafi::IPV4_UNICAST,
        IpNet::V6(_) => AfiSafi::IPV6_UNICAST,
    }
}

impl AdjRibIn {
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    pub fn stale_count(&self) -> usize {
        self.routes.values().filter(|e| e.stale).count()
    }

    /// Applies a decoded UPDATE whose families were negotiated; returns (announced, withdrawn) counts.
    pub fn apply(&mut self, u: &Update, families: &[AfiSafi]) -> (usize, usize) {
        let mut withdrawn = 0;
        for p in &u.withdrawn {
            if self.routes.remove(p).is_some() {
                withdrawn += 1;
            }
        }
        if u.announced.is_empty() {
            return (0, withdrawn);
        }
        let attrs = Arc::new(u.attributes.clone());
        let mut announced = 0;
        for p in &u.announced {
            if !families.contains(&family_of(p)) {
                continue;
            }
            let next_hop = match p {
                IpNet::V4(_) => u.attributes.next_hop.map(IpAddr::V4).or(u.attributes.mp_next_hop),
                IpNet::V6(_) => u.attributes.mp_next_hop,
            };
            self.routes.insert(*p, InEntry { attrs: attrs.clone(), next_hop, stale: false });
            announced += 1;
        }
        (announced, withdrawn)
    }

    pub fn clear(&mut self) {
        self.routes.clear();
    }

    /// Marks every route stale: the peer went away and is expected back (graceful restart).
    pub fn mark_stale(&mut self) {
        for e in self.routes.values_mut() {
            e.stale = true;
        }
    }

    /// Drops the stale routes of one family (End-of-RIB received, or the peer cannot preserve them), or of all
    /// families; returns how many were dropped.
    pub fn purge_stale(&mut self, family: Option<AfiSafi>) -> usize {
        let before = self.routes.len();
        self.routes.retain(|p, e| !(e.stale && family.is_none_or(|f| family_of(p) == f)));
        before - self.routes.len()
    }

    /// The routes in display form, sorted by prefix.
    pub fn to_model(&self) -> Vec<ReceivedRoute> {
        self.routes
            .iter()
            .map(|(p, e)| {
                let a = &e.attrs;
                ReceivedRoute {
                    prefix: p.to_string(),
                    next_hop: e.next_hop.map(|n| n.to_string()).unwrap_or_default(),
                    as_path: a.flat_as_path(),
                    origin: a.origin.unwrap_or_default().as_str().to_owned(),
                    local_pref: a.local_pref,
                    med: a.med,
                    communities: a.communities.iter().map(|c| community_text(*c)).collect(),
                    large_communities: a.large_communities.iter().map(|[x, y, z]| format!("{x}:{y}:{z}")).collect(),
                    stale: e.stale,
                }
            })
            .collect()
    }
}

/// The text form `parse_community` reads back: a well-known name, or `asn:value`.
pub fn community_text(c: u32) -> String {
    match c {
        0xFFFF_0000 => "graceful-shutdown".into(),
        0xFFFF_029A => "blackhole".into(),
        0xFFFF_FF01 => "no-export".into(),
        0xFFFF_FF02 => "no-advertise".into(),
        0xFFFF_FF03 => "no-export-subconfed".into(),
        0xFFFF_FF04 => "no-peer".into(),
        _ => format!("{}:{}", c >> 16, c & 0xffff),
    }
}

/// What one family of an Established session has been sent.
#[derive(Debug, Clone, Default)]
struct SentFamily {
    attrs: Option<OutAttributes>,
    prefixes: BTreeSet<IpNet>,
}

/// What an Established session has told the peer; `sync` turns a new wish into the UPDATEs that get the peer
/// there, and nothing else.
#[derive(Debug, Clone, Default)]
pub struct AdjRibOut {
    sent: HashMap<AfiSafi, SentFamily>,
}

impl AdjRibOut {
    /// UPDATEs that move `family` from what was sent to `wanted` with `attrs` (`None`: nothing may be sent).
    pub fn sync(
        &mut self,
        family: AfiSafi,
        attrs: Option<&OutAttributes>,
        wanted: &BTreeSet<IpNet>,
        four_octet: bool,
    ) -> Vec<Vec<u8>> {
        let sent = self.sent.entry(family).or_default();
        let empty = BTreeSet::new();
        let wanted = if attrs.is_some() { wanted } else { &empty };
        let withdraw: Vec<IpNet> = sent.prefixes.difference(wanted).copied().collect();
        // New attributes replace the old ones on every prefix: an announcement implicitly withdraws the
        // previous one (RFC 4271 §3.1), so re-announcing is all it takes.
        let announce: Vec<IpNet> = if sent.attrs.as_ref() != attrs {
            wanted.iter().copied().collect()
        } else {
            wanted.difference(&sent.prefixes).copied().collect()
        };
        let mut out = Vec::new();
        if !withdraw.is_empty() {
            out.extend(wire::encode_withdrawals(family, &withdraw));
        }
        if let Some(a) = attrs
            && !announce.is_empty()
        {
            out.extend(wire::encode_announcements(family, a, &announce, four_octet));
        }
        sent.attrs = attrs.cloned();
        sent.prefixes.clone_from(wanted);
        out
    }

    /// Forgets what was sent, so the next `sync` sends everything again (ROUTE-REFRESH).
    pub fn forget(&mut self, family: AfiSafi) {
        self.sent.remove(&family);
    }

    pub fn prefixes(&self) -> impl Iterator<Item = &IpNet> {
        self.sent.values().flat_map(|s| s.prefixes.iter())
    }

    pub fn len(&self) -> usize {
        self.sent.values().map(|s| s.prefixes.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{DecodeContext, Message, decode};

    fn attrs() -> OutAttributes {
        OutAttributes { as_path: vec![64_512], next_hop: "192.0.2.1".parse().unwrap(), ..Default::default() }
    }

    fn set(p: &[&str]) -> BTreeSet<IpNet> {
        p.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn decoded(msgs: &[Vec<u8>]) -> Vec<Update> {
        msgs.iter()
            .map(|m| match decode(m, &DecodeContext::default()).unwrap().0 {
                Message::Update(u) => u,
                other => panic!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn only_differences_are_sent() {
        let mut out = AdjRibOut::default();
        let v4 = AfiSafi::IPV4_UNICAST;
        let first = decoded(&out.sync(v4, Some(&attrs()), &set(&["203.0.113.1/32", "203.0.113.2/32"]), true));
        assert_eq!(first.len(), 1, "one UPDATE carries both prefixes");
        assert_eq!(first[0].announced.len(), 2);
        assert!(out.sync(v4, Some(&attrs()), &set(&["203.0.113.1/32", "203.0.113.2/32"]), true).is_empty());
        let next = decoded(&out.sync(v4, Some(&attrs()), &set(&["203.0.113.2/32", "203.0.113.3/32"]), true));
        assert_eq!(next[0].withdrawn, [("203.0.113.1/32".parse::<IpNet>().unwrap())]);
        assert_eq!(next[1].announced, [("203.0.113.3/32".parse::<IpNet>().unwrap())]);
        let mut changed = attrs();
        changed.med = Some(5);
        let again = decoded(&out.sync(v4, Some(&changed), &set(&["203.0.113.2/32", "203.0.113.3/32"]), true));
        assert_eq!(again.len(), 1);
        assert_eq!((again[0].announced.len(), again[0].attributes.med), (2, Some(5)));
        let gone = decoded(&out.sync(v4, None, &set(&["203.0.113.2/32"]), true));
        assert_eq!(gone[0].withdrawn.len(), 2);
        assert_eq!(out.len(), 0);
    }

    #[test]
    fn ten_thousand_prefixes_pack_into_few_updates() {
        let mut out = AdjRibOut::default();
        let wanted: BTreeSet<IpNet> =
            (0..10_000u32).map(|i| IpNet::new(IpAddr::V4((0x0A00_0000 + i).into()), 32).unwrap()).collect();
        let msgs = out.sync(AfiSafi::IPV4_UNICAST, Some(&attrs()), &wanted, true);
        assert!(msgs.len() <= 15, "{} UPDATEs", msgs.len());
        assert!(msgs.iter().all(|m| m.len() <= 4096));
        let total: usize = decoded(&msgs).iter().map(|u| u.announced.len()).sum();
        assert_eq!(total, 10_000);
        let v6: BTreeSet<IpNet> =
            (0..5_000u128).map(|i| IpNet::new(IpAddr::V6((0x2001_0db8_u128 << 96 | i).into()), 128).unwrap()).collect();
        let mut a6 = attrs();
        a6.next_hop = "2001:db8::1".parse().unwrap();
        let msgs = out.sync(AfiSafi::IPV6_UNICAST, Some(&a6), &v6, true);
        assert!(msgs.iter().all(|m| m.len() <= 4096));
        let total: usize = decoded(&msgs).iter().map(|u| u.announced.len()).sum();
        assert_eq!(total, 5_000);
    }

    #[test]
    fn stale_routes_survive_until_purged() {
        let mut rib = AdjRibIn::default();
        let u = Update {
            announced: vec!["10.0.0.0/24".parse().unwrap(), "2001:db8::/48".parse().unwrap()],
            attributes: PathAttributes {
                next_hop: Some("192.0.2.2".parse().unwrap()),
                mp_next_hop: Some("2001:db8::2".parse().unwrap()),
                communities: vec![0xFFFF_FF01, 0x0001_0002],
                ..Default::default()
            },
            ..Default::default()
        };
        rib.apply(&u, &[AfiSafi::IPV4_UNICAST, AfiSafi::IPV6_UNICAST]);
        assert_eq!(rib.len(), 2);
        let shown = rib.to_model();
        assert_eq!(shown[0].communities, ["no-export", "1:2"]);
        assert_eq!(shown[1].next_hop, "2001:db8::2");
        rib.mark_stale();
        assert_eq!(rib.stale_count(), 2);
        assert_eq!(rib.purge_stale(Some(AfiSafi::IPV4_UNICAST)), 1);
        assert_eq!(rib.purge_stale(None), 1);
        assert!(rib.is_empty());
    }

    #[test]
    fn unnegotiated_families_are_not_kept() {
        let mut rib = AdjRibIn::default();
        let u = Update { announced: vec!["2001:db8::/48".parse().unwrap()], ..Default::default() };
        assert_eq!(rib.apply(&u, &[AfiSafi::IPV4_UNICAST]), (0, 0));
    }
}
