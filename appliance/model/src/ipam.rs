//! IP address management: VIPs for services, from pools. Free space is kept as sorted intervals per pool,
//! so allocating, taking a requested address and releasing are O(log n) in the number of allocations.

use crate::addr::{AddrKey, Family, IpRange, is_buggy_ipv4};
use crate::config::Pool;
use crate::validation::{FieldError, ValidationErrors};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

/// A VIP held by an owner (`service/<name>` for static services).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Allocation {
    #[schema(value_type = String)]
    pub address: IpAddr,
    pub pool: String,
    pub owner: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IpamError {
    #[error("{0} is outside every pool")]
    OutsidePools(IpAddr),
    #[error("{ip} is already allocated to {owner}")]
    Taken { ip: IpAddr, owner: String },
    #[error("{ip} ends in .0 or .255 and pool '{pool}' avoids such addresses")]
    Buggy { ip: IpAddr, pool: String },
    #[error("pool '{0}' has no free address left")]
    Exhausted(String),
    #[error("no pool with auto_assign has a free address left")]
    NoAutoAssignSpace,
    #[error("no pool is named '{0}'")]
    UnknownPool(String),
    #[error("{ip} is in pool '{actual}', not in the requested pool '{wanted}'")]
    WrongPool { ip: IpAddr, actual: String, wanted: String },
}

#[derive(Debug, Clone)]
struct PoolSpace {
    name: String,
    auto_assign: bool,
    avoid_buggy: bool,
    /// Free addresses: first → last, disjoint and not adjacent-merged necessarily.
    free: BTreeMap<AddrKey, AddrKey>,
}

/// The allocation state for one set of pools.
#[derive(Debug, Clone, Default)]
pub struct Ipam {
    pools: Vec<PoolSpace>,
    /// Every pool range: first → (last, pool index), to find the pool of an address.
    ranges: BTreeMap<AddrKey, (AddrKey, usize)>,
    used: HashMap<IpAddr, (usize, String)>,
}

impl Ipam {
    /// Builds empty state for pools; invalid address entries are skipped (validate first).
    pub fn new(pools: &[Pool]) -> Ipam {
        let mut ipam = Ipam::default();
        for (i, p) in pools.iter().enumerate() {
            let mut free = BTreeMap::new();
            for r in p.ranges() {
                let (first, last) = keys(r);
                free.insert(first, last);
                ipam.ranges.insert(first, (last, i));
            }
            ipam.pools.push(PoolSpace {
                name: p.name.clone(),
                auto_assign: p.auto_assign,
                avoid_buggy: p.avoid_buggy_ips,
                free,
            });
        }
        ipam
    }

    fn pool_index_of(&self, ip: IpAddr) -> Option<usize> {
        let k = AddrKey::from_ip(ip);
        let (_, &(last, idx)) = self.ranges.range(..=k).next_back()?;
        (last.family == k.family && k <= last).then_some(idx)
    }

    /// The pool that contains `ip`.
    pub fn pool_of(&self, ip: IpAddr) -> Option<&str> {
        self.pool_index_of(ip).map(|i| self.pools[i].name.as_str())
    }

    pub fn owner_of(&self, ip: IpAddr) -> Option<&str> {
        self.used.get(&ip).map(|(_, o)| o.as_str())
    }

    /// Takes a specific address for `owner`.
    pub fn take(&mut self, ip: IpAddr, owner: &str) -> Result<Allocation, IpamError> {
        let idx = self.pool_index_of(ip).ok_or(IpamError::OutsidePools(ip))?;
        if let Some((_, holder)) = self.used.get(&ip) {
            return Err(IpamError::Taken { ip, owner: holder.clone() });
        }
        let pool = &mut self.pools[idx];
        let k = AddrKey::from_ip(ip);
        if pool.avoid_buggy && is_buggy_ipv4(k) {
            return Err(IpamError::Buggy { ip, pool: pool.name.clone() });
        }
        remove_from_free(&mut pool.free, k);
        self.used.insert(ip, (idx, owner.to_string()));
        Ok(Allocation { address: ip, pool: pool.name.clone(), owner: owner.to_string() })
    }

    /// Allocates the lowest free address of a pool (of `family`, when given).
    pub fn allocate_from(&mut self, pool: &str, owner: &str, family: Option<Family>) -> Result<Allocation, IpamError> {
        let idx =
            self.pools.iter().position(|p| p.name == pool).ok_or_else(|| IpamError::UnknownPool(pool.to_string()))?;
        self.allocate_at(idx, owner, family).ok_or_else(|| IpamError::Exhausted(pool.to_string()))
    }

    /// Allocates from the first auto-assign pool that has a free address.
    pub fn allocate_auto(&mut self, owner: &str, family: Option<Family>) -> Result<Allocation, IpamError> {
        for idx in 0..self.pools.len() {
            if self.pools[idx].auto_assign
                && let Some(a) = self.allocate_at(idx, owner, family)
            {
                return Ok(a);
            }
        }
        Err(IpamError::NoAutoAssignSpace)
    }

    fn allocate_at(&mut self, idx: usize, owner: &str, family: Option<Family>) -> Option<Allocation> {
        let pool = &mut self.pools[idx];
        loop {
            let start = AddrKey { family: family.unwrap_or(Family::Ipv4), value: 0 };
            let (&first, &last) = pool.free.range(start..).next()?;
            if family.is_some_and(|f| f != first.family) {
                return None;
            }
            if pool.avoid_buggy && is_buggy_ipv4(first) {
                // Unusable here for good, so drop it from the free space instead of skipping it every time.
                pool.free.remove(&first);
                if first < last {
                    pool.free.insert(AddrKey { family: first.family, value: first.value + 1 }, last);
                }
                continue;
            }
            pool.free.remove(&first);
            if first < last {
                pool.free.insert(AddrKey { family: first.family, value: first.value + 1 }, last);
            }
            let ip = first.to_ip();
            self.used.insert(ip, (idx, owner.to_string()));
            return Some(Allocation { address: ip, pool: pool.name.clone(), owner: owner.to_string() });
        }
    }

    /// Gives an address back to its pool.
    pub fn release(&mut self, ip: IpAddr) {
        let Some((idx, _)) = self.used.remove(&ip) else { return };
        let k = AddrKey::from_ip(ip);
        let free = &mut self.pools[idx].free;
        let mut first = k;
        let mut last = k;
        if let Some((&pf, &pl)) = free.range(..k).next_back()
            && pl.family == k.family
            && pl.value + 1 == k.value
        {
            free.remove(&pf);
            first = pf;
        }
        let next = AddrKey { family: k.family, value: k.value.saturating_add(1) };
        if next != k
            && let Some(nl) = free.remove(&next)
        {
            last = nl;
        }
        free.insert(first, last);
    }

    /// Number of addresses allocated.
    pub fn used(&self) -> usize {
        self.used.len()
    }
}

fn keys(r: IpRange) -> (AddrKey, AddrKey) {
    (AddrKey { family: r.family, value: r.first }, AddrKey { family: r.family, value: r.last })
}

fn remove_from_free(free: &mut BTreeMap<AddrKey, AddrKey>, k: AddrKey) {
    let Some((&first, &last)) = free.range(..=k).next_back() else { return };
    if last.family != k.family || last < k {
        return;
    }
    free.remove(&first);
    if first < k {
        free.insert(first, AddrKey { family: k.family, value: k.value - 1 });
    }
    if k < last {
        free.insert(AddrKey { family: k.family, value: k.value + 1 }, last);
    }
}

/// What one owner asks for.
#[derive(Debug, Clone)]
pub struct Request {
    pub owner: String,
    /// Where errors about this request are reported (e.g. `services[3]`).
    pub field: String,
    pub pool: Option<String>,
    pub addresses: Vec<IpAddr>,
}

/// Works out the allocations for a set of requests, keeping every existing allocation that still fits so that
/// VIPs stay stable, releasing those of owners no longer asking, and allocating the rest in request order.
pub fn plan(
    pools: &[Pool],
    requests: &[Request],
    existing: &[Allocation],
) -> Result<Vec<Allocation>, ValidationErrors> {
    let mut ipam = Ipam::new(pools);
    let by_owner: HashMap<&str, &Request> = requests.iter().map(|r| (r.owner.as_str(), r)).collect();
    let mut kept: HashMap<&str, Vec<Allocation>> = HashMap::new();
    for a in existing {
        let Some(req) = by_owner.get(a.owner.as_str()) else { continue };
        let fits = if !req.addresses.is_empty() {
            req.addresses.contains(&a.address)
        } else if let Some(p) = &req.pool {
            ipam.pool_of(a.address) == Some(p.as_str())
        } else {
            kept.get(a.owner.as_str()).is_none_or(|v| v.is_empty())
        };
        if fits && let Ok(taken) = ipam.take(a.address, &a.owner) {
            kept.entry(req.owner.as_str()).or_default().push(taken);
        }
    }
    let mut out: Vec<Allocation> = Vec::new();
    let mut errors = Vec::new();
    for req in requests {
        let mut mine = kept.remove(req.owner.as_str()).unwrap_or_default();
        if !req.addresses.is_empty() {
            for (i, ip) in req.addresses.iter().enumerate() {
                if mine.iter().any(|a| a.address == *ip) {
                    continue;
                }
                let result = ipam.take(*ip, &req.owner).and_then(|a| match &req.pool {
                    Some(p) if *p != a.pool => {
                        Err(IpamError::WrongPool { ip: *ip, actual: a.pool.clone(), wanted: p.clone() })
                    }
                    _ => Ok(a),
                });
                match result {
                    Ok(a) => mine.push(a),
                    Err(e) => errors
                        .push(FieldError { field: format!("{}.addresses[{i}]", req.field), message: e.to_string() }),
                }
            }
        } else if mine.is_empty() {
            let result = match &req.pool {
                Some(p) => ipam.allocate_from(p, &req.owner, None),
                None => ipam.allocate_auto(&req.owner, None),
            };
            match result {
                Ok(a) => mine.push(a),
                Err(e) => {
                    // `pool` is the field that decides where the address comes from (and the one to set to fix it).
                    let field = format!("{}.pool", req.field);
                    errors.push(FieldError { field, message: e.to_string() });
                }
            }
        }
        out.extend(mine);
    }
    if errors.is_empty() {
        out.sort();
        Ok(out)
    } else {
        Err(ValidationErrors(errors))
    }
}

/// The allocation requests of the static services of a configuration (validate it first).
pub fn static_requests(config: &crate::config::Config) -> Vec<Request> {
    config
        .services
        .iter()
        .enumerate()
        .map(|(i, s)| Request {
            owner: crate::snapshot::static_owner(&s.name),
            field: format!("services[{i}]"),
            pool: s.pool.clone(),
            addresses: s.addresses.iter().filter_map(|a| a.parse().ok()).collect(),
        })
        .collect()
}

/// Existing allocations that their owner would keep but that a pool change takes away (the address is no
/// longer in the pool it was allocated from). Such a change must be refused: it would move a live VIP.
pub fn orphaned<'a>(pools: &[Pool], requests: &[Request], existing: &'a [Allocation]) -> Vec<&'a Allocation> {
    let ipam = Ipam::new(pools);
    let by_owner: HashMap<&str, &Request> = requests.iter().map(|r| (r.owner.as_str(), r)).collect();
    existing
        .iter()
        .filter(|a| {
            let Some(req) = by_owner.get(a.owner.as_str()) else { return false };
            let still_wanted = if req.addresses.is_empty() {
                req.pool.as_ref().is_none_or(|p| *p == a.pool)
            } else {
                req.addresses.contains(&a.address)
            };
            still_wanted && ipam.pool_of(a.address) != Some(a.pool.as_str())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PoolSelectors;
    use proptest::prelude::*;
    use std::collections::HashSet;

    fn pool(name: &str, addrs: &[&str], auto: bool, buggy: bool) -> Pool {
        Pool {
            name: name.into(),
            addresses: addrs.iter().map(|s| s.to_string()).collect(),
            auto_assign: auto,
            avoid_buggy_ips: buggy,
            selectors: PoolSelectors::default(),
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn allocates_lowest_free_and_reuses_released() {
        let mut ipam = Ipam::new(&[pool("a", &["10.0.0.1-10.0.0.3"], true, false)]);
        let a = ipam.allocate_auto("s1", None).unwrap();
        let b = ipam.allocate_auto("s2", None).unwrap();
        assert_eq!((a.address, b.address), (ip("10.0.0.1"), ip("10.0.0.2")));
        ipam.release(a.address);
        assert_eq!(ipam.allocate_auto("s3", None).unwrap().address, ip("10.0.0.1"));
        assert_eq!(ipam.allocate_auto("s4", None).unwrap().address, ip("10.0.0.3"));
        assert_eq!(ipam.allocate_auto("s5", None), Err(IpamError::NoAutoAssignSpace));
        assert_eq!(ipam.allocate_from("a", "s5", None), Err(IpamError::Exhausted("a".into())));
    }

    #[test]
    fn explicit_addresses_and_reasons() {
        let mut ipam =
            Ipam::new(&[pool("a", &["10.0.0.0/24"], false, true), pool("b", &["2001:db8::/126"], true, false)]);
        assert_eq!(ipam.take(ip("10.0.1.1"), "x"), Err(IpamError::OutsidePools(ip("10.0.1.1"))));
        assert!(matches!(ipam.take(ip("10.0.0.255"), "x"), Err(IpamError::Buggy { .. })));
        ipam.take(ip("10.0.0.7"), "x").unwrap();
        assert_eq!(ipam.take(ip("10.0.0.7"), "y"), Err(IpamError::Taken { ip: ip("10.0.0.7"), owner: "x".into() }));
        // Pool a is not auto-assign, so automatic allocation goes to b.
        assert_eq!(ipam.allocate_auto("z", None).unwrap().address, ip("2001:db8::"));
        // Pool a skips .0 when allocating.
        assert_eq!(ipam.allocate_from("a", "w", None).unwrap().address, ip("10.0.0.1"));
    }

    #[test]
    fn plan_keeps_existing_and_reports_errors_per_field() {
        let pools = [pool("a", &["10.0.0.1-10.0.0.2"], true, false)];
        let req = |o: &str, addrs: &[&str]| Request {
            owner: o.into(),
            field: format!("services[{o}]"),
            pool: None,
            addresses: addrs.iter().map(|s| ip(s)).collect(),
        };
        let existing = vec![Allocation { address: ip("10.0.0.2"), pool: "a".into(), owner: "s2".into() }];
        let out = plan(&pools, &[req("s1", &[]), req("s2", &[])], &existing).unwrap();
        assert_eq!(out.iter().find(|a| a.owner == "s2").unwrap().address, ip("10.0.0.2"));
        assert_eq!(out.iter().find(|a| a.owner == "s1").unwrap().address, ip("10.0.0.1"));
        let err = plan(&pools, &[req("s1", &[]), req("s2", &[]), req("s3", &[]), req("s4", &["10.9.9.9"])], &existing)
            .unwrap_err();
        let fields: Vec<_> = err.0.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["services[s3].pool", "services[s4].addresses[0]"]);
    }

    #[test]
    fn ten_thousand_allocations_in_a_slash_16() {
        let mut ipam = Ipam::new(&[pool("big", &["10.0.0.0/16"], true, true)]);
        let mut seen = HashSet::new();
        for i in 0..10_000 {
            let a = ipam.allocate_auto(&format!("s{i}"), None).unwrap();
            assert!(!is_buggy_ipv4(AddrKey::from_ip(a.address)));
            assert!(seen.insert(a.address));
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Auto,
        Take(u8),
        Release(usize),
    }

    proptest! {
        #[test]
        fn never_double_allocates_or_leaves_pools(
            ops in proptest::collection::vec(prop_oneof![
                Just(Op::Auto),
                any::<u8>().prop_map(Op::Take),
                any::<usize>().prop_map(Op::Release),
            ], 1..400),
            buggy in any::<bool>(),
        ) {
            let pools = [
                pool("a", &["10.0.0.250-10.0.1.4"], true, buggy),
                pool("b", &["10.0.2.0/28", "10.0.2.100"], false, buggy),
            ];
            let ranges: Vec<IpRange> = pools.iter().flat_map(|p| p.ranges()).collect();
            let mut ipam = Ipam::new(&pools);
            let mut held: Vec<IpAddr> = Vec::new();
            for (n, op) in ops.into_iter().enumerate() {
                match op {
                    Op::Auto => {
                        if let Ok(a) = ipam.allocate_auto(&format!("o{n}"), None) {
                            prop_assert!(!held.contains(&a.address), "double allocation of {}", a.address);
                            prop_assert!(ranges.iter().any(|r| r.contains(a.address)));
                            held.push(a.address);
                        } else {
                            // Exhaustion must be real: every usable address of pool a is held.
                            let usable = pools[0].ranges().iter().flat_map(|r| r.first..=r.last)
                                .filter(|v| !(buggy && matches!(v & 0xff, 0 | 0xff))).count();
                            let held_a = held.iter().filter(|h| ipam.pool_of(**h) == Some("a")).count();
                            prop_assert_eq!(usable, held_a);
                        }
                    }
                    Op::Take(last) => {
                        let cand = ip(&format!("10.0.{}.{}", last % 3, last));
                        match ipam.take(cand, "t") {
                            Ok(_) => { prop_assert!(!held.contains(&cand)); held.push(cand); }
                            Err(IpamError::Taken { .. }) => prop_assert!(held.contains(&cand)),
                            Err(IpamError::OutsidePools(_)) => prop_assert!(!ranges.iter().any(|r| r.contains(cand))),
                            Err(IpamError::Buggy { .. }) => prop_assert!(buggy),
                            Err(e) => prop_assert!(false, "unexpected {e}"),
                        }
                    }
                    Op::Release(i) => {
                        if !held.is_empty() {
                            let a = held.swap_remove(i % held.len());
                            ipam.release(a);
                        }
                    }
                }
                prop_assert_eq!(ipam.used(), held.len());
            }
        }

        #[test]
        fn plan_never_double_allocates(n in 0usize..60, explicit in proptest::collection::vec(0u8..40, 0..20)) {
            let pools = [pool("a", &["10.0.0.0/27"], true, false), pool("b", &["10.0.0.32/28"], true, false)];
            let mut reqs: Vec<Request> = (0..n).map(|i| Request {
                owner: format!("auto{i}"), field: format!("a{i}"), pool: None, addresses: vec![] }).collect();
            for (i, e) in explicit.iter().enumerate() {
                reqs.push(Request { owner: format!("ex{i}"), field: format!("e{i}"), pool: None,
                    addresses: vec![ip(&format!("10.0.0.{e}"))] });
            }
            match plan(&pools, &reqs, &[]) {
                Ok(allocs) => {
                    let set: HashSet<_> = allocs.iter().map(|a| a.address).collect();
                    prop_assert_eq!(set.len(), allocs.len());
                    prop_assert!(allocs.iter().all(|a| pools.iter().flat_map(|p| p.ranges()).any(|r| r.contains(a.address))));
                    prop_assert_eq!(allocs.len(), reqs.len());
                }
                Err(e) => prop_assert!(!e.0.is_empty()),
            }
        }
    }
}
