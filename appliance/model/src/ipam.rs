//! IP address management: VIPs for services, from pools. Free space is kept as sorted intervals per pool,
//! so allocating, taking a requested address and releasing are O(log n) in the number of allocations.
//!
//! Beyond static services, requests carry what Kubernetes Services need: a scope (cluster, namespace, labels)
//! matched against pool selectors, address families (single or dual stack), and a sharing key under which
//! several owners may hold one address when their ports do not clash.

use crate::addr::{AddrKey, Family, IpRange, is_buggy_ipv4};
use crate::config::{Pool, PoolSelectors, Protocol};
use crate::validation::{FieldError, ValidationErrors};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

/// A VIP held by an owner (`service/<name>` for static services). A shared address has one row per owner.
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
    #[error("{ip} is shared by {owner} under sharing key '{key}', but the ports clash ({port})")]
    PortClash { ip: IpAddr, owner: String, key: String, port: String },
    #[error("{ip} ends in .0 or .255 and pool '{pool}' avoids such addresses")]
    Buggy { ip: IpAddr, pool: String },
    #[error("pool '{0}' has no free address left")]
    Exhausted(String),
    #[error("pool '{pool}' has no free {family} address left")]
    ExhaustedFamily { pool: String, family: Family },
    #[error("no pool with auto_assign has a free address left")]
    NoAutoAssignSpace,
    #[error("no pool this service may use (by the pools' selectors) has a free {0} address")]
    NoEligibleSpace(String),
    #[error("no pool is named '{0}'")]
    UnknownPool(String),
    #[error("{ip} is in pool '{actual}', not in the requested pool '{wanted}'")]
    WrongPool { ip: IpAddr, actual: String, wanted: String },
    #[error("pool '{pool}' does not admit this service (its selectors: {why})")]
    NotAdmitted { pool: String, why: String },
}

/// Who asks, for pool selectors: a Kubernetes Service's cluster, namespace and labels.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scope {
    pub cluster: String,
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
}

/// Owners with the same key may hold the same address when their ports differ.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sharing {
    pub key: String,
    pub ports: Vec<(Protocol, u16)>,
}

/// Which address families a request wants.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Families {
    /// One address, of whichever family the pool has first (IPv4 before IPv6).
    #[default]
    Any,
    Single(Family),
    /// One address of each family, primary first; `required` fails the request without both.
    Dual {
        primary: Family,
        required: bool,
    },
}

impl Families {
    fn wanted(self) -> Vec<Option<Family>> {
        match self {
            Families::Any => vec![None],
            Families::Single(f) => vec![Some(f)],
            Families::Dual { primary, .. } => vec![Some(primary), Some(other(primary))],
        }
    }
}

fn other(f: Family) -> Family {
    match f {
        Family::Ipv4 => Family::Ipv6,
        Family::Ipv6 => Family::Ipv4,
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
    pub families: Families,
    /// `None` for static services, which may use any pool; cluster services only pools whose selectors match.
    pub scope: Option<Scope>,
    pub sharing: Option<Sharing>,
}

impl Request {
    /// A request of a static service: a pool or explicit addresses, any pool, no sharing.
    pub fn simple(
        owner: impl Into<String>,
        field: impl Into<String>,
        pool: Option<String>,
        addresses: Vec<IpAddr>,
    ) -> Self {
        Request {
            owner: owner.into(),
            field: field.into(),
            pool,
            addresses,
            families: Families::Any,
            scope: None,
            sharing: None,
        }
    }
}

#[derive(Debug, Clone)]
struct PoolSpace {
    name: String,
    auto_assign: bool,
    avoid_buggy: bool,
    selectors: PoolSelectors,
    /// Free addresses: first → last, disjoint.
    free: BTreeMap<AddrKey, AddrKey>,
}

impl PoolSpace {
    /// Why this pool does not admit `scope`, if it doesn't. Static requests (no scope) are always admitted.
    fn refuses(&self, scope: Option<&Scope>) -> Option<String> {
        let scope = scope?;
        let s = &self.selectors;
        if !s.clusters.is_empty() && !s.clusters.contains(&scope.cluster) {
            return Some(format!("clusters {:?}", s.clusters));
        }
        if !s.namespaces.is_empty() && !s.namespaces.contains(&scope.namespace) {
            return Some(format!("namespaces {:?}", s.namespaces));
        }
        for (k, v) in &s.service_labels {
            if scope.labels.get(k) != Some(v) {
                return Some(format!("label {k}={v}"));
            }
        }
        None
    }
}

#[derive(Debug, Clone)]
struct Holder {
    pool: usize,
    key: Option<String>,
    owners: Vec<(String, Option<Sharing>)>,
}

/// The allocation state for one set of pools.
#[derive(Debug, Clone, Default)]
pub struct Ipam {
    pools: Vec<PoolSpace>,
    /// Every pool range: first → (last, pool index), to find the pool of an address.
    ranges: BTreeMap<AddrKey, (AddrKey, usize)>,
    used: HashMap<IpAddr, Holder>,
    /// Addresses held under each sharing key, to find one to share.
    shared: HashMap<String, Vec<IpAddr>>,
}

/// What an owner brings to `take` and `allocate`.
#[derive(Debug, Clone, Copy)]
pub struct Ask<'a> {
    pub owner: &'a str,
    pub pool: Option<&'a str>,
    pub scope: Option<&'a Scope>,
    pub sharing: Option<&'a Sharing>,
}

impl<'a> Ask<'a> {
    pub fn owner(owner: &'a str) -> Self {
        Ask { owner, pool: None, scope: None, sharing: None }
    }

    fn of(req: &'a Request) -> Self {
        Ask { owner: &req.owner, pool: req.pool.as_deref(), scope: req.scope.as_ref(), sharing: req.sharing.as_ref() }
    }
}

fn ports_clash(a: &Sharing, b: &Sharing) -> Option<String> {
    a.ports.iter().find(|p| b.ports.contains(p)).map(|(proto, port)| format!("{port}/{proto}"))
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
                selectors: p.selectors.clone(),
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

    /// The first owner holding `ip`.
    pub fn owner_of(&self, ip: IpAddr) -> Option<&str> {
        self.used.get(&ip).and_then(|h| h.owners.first()).map(|(o, _)| o.as_str())
    }

    /// Takes a specific address for an owner (joining its holders when the sharing rules allow).
    pub fn take(&mut self, ip: IpAddr, ask: Ask<'_>) -> Result<Allocation, IpamError> {
        let idx = self.pool_index_of(ip).ok_or(IpamError::OutsidePools(ip))?;
        let pool = &self.pools[idx];
        if let Some(wanted) = ask.pool
            && wanted != pool.name
        {
            return Err(IpamError::WrongPool { ip, actual: pool.name.clone(), wanted: wanted.to_string() });
        }
        if let Some(why) = pool.refuses(ask.scope) {
            return Err(IpamError::NotAdmitted { pool: pool.name.clone(), why });
        }
        let name = pool.name.clone();
        if let Some(holder) = self.used.get_mut(&ip) {
            if holder.owners.iter().any(|(o, _)| o == ask.owner) {
                return Ok(Allocation { address: ip, pool: name, owner: ask.owner.to_string() });
            }
            let (first_owner, first_sharing) = &holder.owners[0];
            let (Some(mine), Some(theirs)) = (ask.sharing, first_sharing) else {
                return Err(IpamError::Taken { ip, owner: first_owner.clone() });
            };
            if mine.key != theirs.key {
                return Err(IpamError::Taken { ip, owner: first_owner.clone() });
            }
            for (o, s) in &holder.owners {
                if let Some(port) = s.as_ref().and_then(|s| ports_clash(mine, s)) {
                    return Err(IpamError::PortClash { ip, owner: o.clone(), key: mine.key.clone(), port });
                }
            }
            holder.owners.push((ask.owner.to_string(), Some(mine.clone())));
            return Ok(Allocation { address: ip, pool: name, owner: ask.owner.to_string() });
        }
        let k = AddrKey::from_ip(ip);
        let pool = &mut self.pools[idx];
        if pool.avoid_buggy && is_buggy_ipv4(k) {
            return Err(IpamError::Buggy { ip, pool: pool.name.clone() });
        }
        remove_from_free(&mut pool.free, k);
        self.hold(ip, idx, ask);
        Ok(Allocation { address: ip, pool: name, owner: ask.owner.to_string() })
    }

    fn hold(&mut self, ip: IpAddr, idx: usize, ask: Ask<'_>) {
        let key = ask.sharing.map(|s| s.key.clone());
        self.used.insert(ip, Holder { pool: idx, key, owners: vec![(ask.owner.to_string(), ask.sharing.cloned())] });
        if let Some(s) = ask.sharing {
            self.shared.entry(s.key.clone()).or_default().push(ip);
        }
    }

    /// Allocates an address: a shareable one under the owner's sharing key if there is one, else the lowest
    /// free address of the named pool, or of the first auto-assign pool that admits the owner.
    pub fn allocate(&mut self, ask: Ask<'_>, family: Option<Family>) -> Result<Allocation, IpamError> {
        let candidates: Vec<usize> = match ask.pool {
            Some(name) => {
                let idx = self
                    .pools
                    .iter()
                    .position(|p| p.name == name)
                    .ok_or_else(|| IpamError::UnknownPool(name.to_string()))?;
                if let Some(why) = self.pools[idx].refuses(ask.scope) {
                    return Err(IpamError::NotAdmitted { pool: name.to_string(), why });
                }
                vec![idx]
            }
            None => (0..self.pools.len())
                .filter(|&i| self.pools[i].auto_assign && self.pools[i].refuses(ask.scope).is_none())
                .collect(),
        };
        if let Some(sharing) = ask.sharing
            && let Some(ips) = self.shared.get(&sharing.key).cloned()
        {
            for ip in ips {
                let in_candidates = self.used.get(&ip).is_some_and(|h| candidates.contains(&h.pool));
                if in_candidates
                    && family.is_none_or(|f| Family::of(ip) == f)
                    && let Ok(a) = self.take(ip, ask)
                {
                    return Ok(a);
                }
            }
        }
        for &idx in &candidates {
            if let Some(a) = self.allocate_at(idx, ask, family) {
                return Ok(a);
            }
        }
        Err(match (ask.pool, family) {
            (Some(p), Some(f)) => IpamError::ExhaustedFamily { pool: p.to_string(), family: f },
            (Some(p), None) => IpamError::Exhausted(p.to_string()),
            (None, f) if ask.scope.is_some() => {
                IpamError::NoEligibleSpace(f.map(|f| f.to_string()).unwrap_or_else(|| "IPv4 or IPv6".into()))
            }
            (None, _) => IpamError::NoAutoAssignSpace,
        })
    }

    /// Allocates the lowest free address of a pool (of `family`, when given).
    pub fn allocate_from(&mut self, pool: &str, owner: &str, family: Option<Family>) -> Result<Allocation, IpamError> {
        self.allocate(Ask { pool: Some(pool), ..Ask::owner(owner) }, family)
    }

    /// Allocates from the first auto-assign pool that has a free address.
    pub fn allocate_auto(&mut self, owner: &str, family: Option<Family>) -> Result<Allocation, IpamError> {
        self.allocate(Ask::owner(owner), family)
    }

    fn allocate_at(&mut self, idx: usize, ask: Ask<'_>, family: Option<Family>) -> Option<Allocation> {
        let pool = &mut self.pools[idx];
        loop {
            let start = AddrKey { family: family.unwrap_or(Family::Ipv4), value: 0 };
            let (&first, &last) = pool.free.range(start..).next()?;
            if family.is_some_and(|f| f != first.family) {
                return None;
            }
            pool.free.remove(&first);
            if first < last {
                pool.free.insert(AddrKey { family: first.family, value: first.value + 1 }, last);
            }
            // A .0/.255 address is unusable in this pool for good: dropping it from the free space (instead of
            // skipping it every time) keeps allocation O(log n).
            if pool.avoid_buggy && is_buggy_ipv4(first) {
                continue;
            }
            let ip = first.to_ip();
            let name = pool.name.clone();
            self.hold(ip, idx, ask);
            return Some(Allocation { address: ip, pool: name, owner: ask.owner.to_string() });
        }
    }

    /// Takes `owner` off an address; the address goes back to its pool when no owner is left.
    pub fn release(&mut self, ip: IpAddr, owner: &str) {
        let Some(holder) = self.used.get_mut(&ip) else { return };
        holder.owners.retain(|(o, _)| o != owner);
        if !holder.owners.is_empty() {
            return;
        }
        let idx = holder.pool;
        if let Some(key) = holder.key.take()
            && let Some(ips) = self.shared.get_mut(&key)
        {
            ips.retain(|x| *x != ip);
            if ips.is_empty() {
                self.shared.remove(&key);
            }
        }
        self.used.remove(&ip);
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

    /// Number of addresses in use (a shared address counts once).
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

/// One request that could not be satisfied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub owner: String,
    pub field: String,
    pub error: IpamError,
}

/// The outcome of planning: every allocation, and the requests (or parts of them) that failed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Planned {
    pub allocations: Vec<Allocation>,
    pub failures: Vec<Failure>,
}

/// Works out the allocations for a set of requests, keeping every existing allocation that still fits so that
/// VIPs stay stable (earlier entries of `existing` win), releasing those of owners no longer asking, and
/// allocating the rest in request order. A request that fails keeps nothing it would only have had in part
/// (a required dual-stack pair is all or nothing).
pub fn plan_all(pools: &[Pool], requests: &[Request], existing: &[Allocation]) -> Planned {
    let mut ipam = Ipam::new(pools);
    let by_owner: HashMap<&str, &Request> = requests.iter().map(|r| (r.owner.as_str(), r)).collect();
    let mut kept: HashMap<&str, Vec<Allocation>> = HashMap::new();
    for a in existing {
        let Some(req) = by_owner.get(a.owner.as_str()) else { continue };
        let mine = kept.get(a.owner.as_str());
        if mine.is_some_and(|m| m.iter().any(|x| x.address == a.address)) {
            continue;
        }
        let family = Family::of(a.address);
        let fits = if !req.addresses.is_empty() {
            req.addresses.contains(&a.address)
        } else {
            let family_wanted = req.families.wanted().iter().any(|f| f.is_none_or(|f| f == family));
            let held = |f: Family| mine.is_some_and(|m| m.iter().any(|x| Family::of(x.address) == f));
            let room = match req.families {
                Families::Any => mine.is_none_or(|m| m.is_empty()),
                _ => !held(family),
            };
            family_wanted && room
        };
        if fits && let Ok(taken) = ipam.take(a.address, Ask::of(req)) {
            kept.entry(req.owner.as_str()).or_default().push(taken);
        }
    }
    let mut planned = Planned::default();
    for req in requests {
        let mut mine = kept.remove(req.owner.as_str()).unwrap_or_default();
        let mut failed: Vec<Failure> = Vec::new();
        if !req.addresses.is_empty() {
            for (i, ip) in req.addresses.iter().enumerate() {
                if mine.iter().any(|a| a.address == *ip) {
                    continue;
                }
                match ipam.take(*ip, Ask::of(req)) {
                    Ok(a) => mine.push(a),
                    Err(error) => failed.push(Failure {
                        owner: req.owner.clone(),
                        field: format!("{}.addresses[{i}]", req.field),
                        error,
                    }),
                }
            }
        } else {
            let optional_second = matches!(req.families, Families::Dual { required: false, .. });
            for (n, family) in req.families.wanted().into_iter().enumerate() {
                let have = match family {
                    None => !mine.is_empty(),
                    Some(f) => mine.iter().any(|a| Family::of(a.address) == f),
                };
                if have {
                    continue;
                }
                match ipam.allocate(Ask::of(req), family) {
                    Ok(a) => mine.push(a),
                    // PreferDualStack: the second family is a bonus, not a requirement.
                    Err(_) if n == 1 && optional_second => {}
                    Err(error) => failed.push(Failure {
                        owner: req.owner.clone(),
                        // `pool` decides where the address comes from (and is the field to set to fix it).
                        field: format!("{}.pool", req.field),
                        error,
                    }),
                }
            }
        }
        if failed.is_empty() || !req.addresses.is_empty() {
            planned.allocations.extend(mine);
        } else {
            for a in mine {
                ipam.release(a.address, &a.owner);
            }
        }
        planned.failures.extend(failed);
    }
    planned.allocations.sort();
    planned
}

/// Like [`plan_all`], for configuration changes: any failure refuses the whole change.
pub fn plan(
    pools: &[Pool],
    requests: &[Request],
    existing: &[Allocation],
) -> Result<Vec<Allocation>, ValidationErrors> {
    let planned = plan_all(pools, requests, existing);
    if planned.failures.is_empty() {
        Ok(planned.allocations)
    } else {
        Err(ValidationErrors(
            planned.failures.into_iter().map(|f| FieldError { field: f.field, message: f.error.to_string() }).collect(),
        ))
    }
}

/// The allocation requests of the static services of a configuration (validate it first).
pub fn static_requests(config: &crate::config::Config) -> Vec<Request> {
    config
        .services
        .iter()
        .enumerate()
        .map(|(i, s)| {
            Request::simple(
                crate::snapshot::static_owner(&s.name),
                format!("services[{i}]"),
                s.pool.clone(),
                s.addresses.iter().filter_map(|a| a.parse().ok()).collect(),
            )
        })
        .collect()
}

/// The allocation requests of everything the configuration itself asks VIPs for: static services and
/// global services (whose members' own Services then use the global VIP).
pub fn config_requests(config: &crate::config::Config) -> Vec<Request> {
    let mut requests = static_requests(config);
    requests.extend(config.global_services.iter().enumerate().map(|(i, g)| {
        Request::simple(
            crate::snapshot::global_owner(&g.name),
            format!("global_services[{i}]"),
            g.pool.clone(),
            g.addresses.iter().filter_map(|a| a.parse().ok()).collect(),
        )
    }));
    requests
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
    use proptest::prelude::*;
    use std::collections::HashSet;

    fn pool(name: &str, addrs: &[&str], auto: bool, buggy: bool) -> Pool {
        Pool { auto_assign: auto, avoid_buggy_ips: buggy, ..Pool::new(name, addrs) }
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
        ipam.release(a.address, "s1");
        assert_eq!(ipam.allocate_auto("s3", None).unwrap().address, ip("10.0.0.1"));
        assert_eq!(ipam.allocate_auto("s4", None).unwrap().address, ip("10.0.0.3"));
        assert_eq!(ipam.allocate_auto("s5", None), Err(IpamError::NoAutoAssignSpace));
        assert_eq!(ipam.allocate_from("a", "s5", None), Err(IpamError::Exhausted("a".into())));
    }

    #[test]
    fn explicit_addresses_and_reasons() {
        let mut ipam =
            Ipam::new(&[pool("a", &["10.0.0.0/24"], false, true), pool("b", &["2001:db8::/126"], true, false)]);
        assert_eq!(ipam.take(ip("10.0.1.1"), Ask::owner("x")), Err(IpamError::OutsidePools(ip("10.0.1.1"))));
        assert!(matches!(ipam.take(ip("10.0.0.255"), Ask::owner("x")), Err(IpamError::Buggy { .. })));
        ipam.take(ip("10.0.0.7"), Ask::owner("x")).unwrap();
        assert_eq!(
            ipam.take(ip("10.0.0.7"), Ask::owner("y")),
            Err(IpamError::Taken { ip: ip("10.0.0.7"), owner: "x".into() })
        );
        // Pool a is not auto-assign, so automatic allocation goes to b.
        assert_eq!(ipam.allocate_auto("z", None).unwrap().address, ip("2001:db8::"));
        // Pool a skips .0 when allocating.
        assert_eq!(ipam.allocate_from("a", "w", None).unwrap().address, ip("10.0.0.1"));
    }

    #[test]
    fn plan_keeps_existing_and_reports_errors_per_field() {
        let pools = [pool("a", &["10.0.0.1-10.0.0.2"], true, false)];
        let req = |o: &str, addrs: &[&str]| {
            Request::simple(o, format!("services[{o}]"), None, addrs.iter().map(|s| ip(s)).collect())
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

    fn cluster_req(owner: &str, ns: &str, families: Families, sharing: Option<(&str, &[u16])>) -> Request {
        Request {
            owner: owner.into(),
            field: owner.into(),
            pool: None,
            addresses: vec![],
            families,
            scope: Some(Scope { cluster: "c1".into(), namespace: ns.into(), labels: BTreeMap::new() }),
            sharing: sharing.map(|(key, ports)| Sharing {
                key: key.into(),
                ports: ports.iter().map(|p| (Protocol::Tcp, *p)).collect(),
            }),
        }
    }

    #[test]
    fn selectors_decide_which_pools_a_cluster_service_may_use() {
        let mut team = pool("team", &["10.1.0.0/30"], true, false);
        team.selectors.namespaces = vec!["team".into()];
        let pools = [team, pool("z-general", &["10.2.0.0/30"], true, false)];
        let planned = plan_all(
            &pools,
            &[
                cluster_req("a", "team", Families::Any, None),
                cluster_req("b", "other", Families::Any, None),
                Request::simple("static", "s", Some("team".into()), vec![]),
            ],
            &[],
        );
        assert!(planned.failures.is_empty(), "{:?}", planned.failures);
        let addr = |o: &str| planned.allocations.iter().find(|a| a.owner == o).map(|a| a.address.to_string());
        assert_eq!(addr("a").as_deref(), Some("10.1.0.0"));
        assert_eq!(addr("b").as_deref(), Some("10.2.0.0"), "not admitted to 'team'");
        assert_eq!(addr("static").as_deref(), Some("10.1.0.1"), "static services ignore selectors");
        let mut asks_team = cluster_req("c", "other", Families::Any, None);
        asks_team.pool = Some("team".into());
        let planned = plan_all(&pools, &[asks_team], &[]);
        assert!(matches!(planned.failures[0].error, IpamError::NotAdmitted { .. }), "{:?}", planned.failures);
    }

    #[test]
    fn sharing_key_shares_an_address_when_ports_differ() {
        let pools = [pool("p", &["10.0.0.0/30"], true, false)];
        let mut requests = vec![
            cluster_req("dns-tcp", "ns", Families::Any, Some(("dns", &[53]))),
            cluster_req("dns-udp-ish", "ns", Families::Any, Some(("dns", &[853]))),
            cluster_req("clash", "ns", Families::Any, Some(("dns", &[53]))),
            cluster_req("other-key", "ns", Families::Any, Some(("web", &[80]))),
        ];
        let planned = plan_all(&pools, &requests, &[]);
        let addr = |o: &str| planned.allocations.iter().find(|a| a.owner == o).map(|a| a.address.to_string());
        assert_eq!(addr("dns-tcp"), addr("dns-udp-ish"));
        assert_ne!(addr("clash"), addr("dns-tcp"), "a port clash gets its own address");
        assert_ne!(addr("other-key"), addr("dns-tcp"));
        // An explicit request for a shared address with a clashing port says so.
        let mut explicit = cluster_req("late", "ns", Families::Any, Some(("dns", &[53])));
        explicit.addresses = vec![ip("10.0.0.0")];
        requests.push(explicit);
        let planned = plan_all(&pools, &requests, &planned.allocations);
        assert!(matches!(planned.failures[0].error, IpamError::PortClash { .. }), "{:?}", planned.failures);
        // Releasing one sharer keeps the address for the other.
        let mut ipam = Ipam::new(&pools);
        let s1 = Sharing { key: "k".into(), ports: vec![(Protocol::Tcp, 1)] };
        let s2 = Sharing { key: "k".into(), ports: vec![(Protocol::Udp, 1)] };
        let a = ipam.allocate(Ask { sharing: Some(&s1), ..Ask::owner("x") }, None).unwrap();
        let b = ipam.allocate(Ask { sharing: Some(&s2), ..Ask::owner("y") }, None).unwrap();
        assert_eq!(a.address, b.address, "tcp/1 and udp/1 do not clash");
        ipam.release(a.address, "x");
        assert_eq!(ipam.used(), 1);
        ipam.release(a.address, "y");
        assert_eq!(ipam.used(), 0);
    }

    #[test]
    fn dual_stack_required_and_preferred() {
        let v4_only = [pool("v4", &["10.0.0.0/30"], true, false)];
        let both = [pool("v4", &["10.0.0.0/30"], true, false), pool("v6", &["2001:db8::/126"], true, false)];
        let required = Families::Dual { primary: Family::Ipv6, required: true };
        let preferred = Families::Dual { primary: Family::Ipv4, required: false };
        let planned = plan_all(&both, &[cluster_req("r", "ns", required, None)], &[]);
        let mut got: Vec<String> = planned.allocations.iter().map(|a| a.address.to_string()).collect();
        got.sort();
        assert_eq!(got, ["10.0.0.0", "2001:db8::"]);
        let planned = plan_all(&v4_only, &[cluster_req("r", "ns", required, None)], &[]);
        assert!(planned.allocations.is_empty(), "required dual stack is all or nothing");
        assert_eq!(planned.failures.len(), 1);
        let planned = plan_all(&v4_only, &[cluster_req("p", "ns", preferred, None)], &[]);
        assert_eq!(planned.allocations.len(), 1);
        assert!(planned.failures.is_empty());
        let planned = plan_all(&v4_only, &[cluster_req("s", "ns", Families::Single(Family::Ipv6), None)], &[]);
        assert!(matches!(planned.failures[0].error, IpamError::NoEligibleSpace(_)), "{:?}", planned.failures);
    }

    #[test]
    fn first_holder_wins_across_clusters() {
        let pools = [pool("p", &["10.0.0.0/30"], true, false)];
        let mut a = cluster_req("cluster/a/ns/x", "ns", Families::Any, None);
        a.addresses = vec![ip("10.0.0.2")];
        let mut b = cluster_req("cluster/b/ns/x", "ns", Families::Any, None);
        b.addresses = vec![ip("10.0.0.2")];
        let existing = [Allocation { address: ip("10.0.0.2"), pool: "p".into(), owner: "cluster/b/ns/x".into() }];
        let planned = plan_all(&pools, &[a, b], &existing);
        assert_eq!(planned.allocations.len(), 1);
        assert_eq!(planned.allocations[0].owner, "cluster/b/ns/x", "the holder keeps it");
        assert_eq!(planned.failures[0].owner, "cluster/a/ns/x");
        assert!(matches!(planned.failures[0].error, IpamError::Taken { .. }));
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
            let mut held: Vec<(IpAddr, String)> = Vec::new();
            let holds = |held: &[(IpAddr, String)], ip: IpAddr| held.iter().any(|(h, _)| *h == ip);
            for (n, op) in ops.into_iter().enumerate() {
                let owner = format!("o{n}");
                match op {
                    Op::Auto => {
                        if let Ok(a) = ipam.allocate_auto(&owner, None) {
                            prop_assert!(!holds(&held, a.address), "double allocation of {}", a.address);
                            prop_assert!(ranges.iter().any(|r| r.contains(a.address)));
                            held.push((a.address, owner));
                        } else {
                            // Exhaustion must be real: every usable address of pool a is held.
                            let usable = pools[0].ranges().iter().flat_map(|r| r.first..=r.last)
                                .filter(|v| !(buggy && matches!(v & 0xff, 0 | 0xff))).count();
                            let held_a = held.iter().filter(|(h, _)| ipam.pool_of(*h) == Some("a")).count();
                            prop_assert_eq!(usable, held_a);
                        }
                    }
                    Op::Take(last) => {
                        let cand = ip(&format!("10.0.{}.{}", last % 3, last));
                        match ipam.take(cand, Ask::owner(&owner)) {
                            Ok(_) => { prop_assert!(!holds(&held, cand)); held.push((cand, owner)); }
                            Err(IpamError::Taken { .. }) => prop_assert!(holds(&held, cand)),
                            Err(IpamError::OutsidePools(_)) => prop_assert!(!ranges.iter().any(|r| r.contains(cand))),
                            Err(IpamError::Buggy { .. }) => prop_assert!(buggy),
                            Err(e) => prop_assert!(false, "unexpected {e}"),
                        }
                    }
                    Op::Release(i) => {
                        if !held.is_empty() {
                            let (a, o) = held.swap_remove(i % held.len());
                            ipam.release(a, &o);
                        }
                    }
                }
                prop_assert_eq!(ipam.used(), held.len());
            }
        }

        #[test]
        fn plan_never_double_allocates(n in 0usize..60, explicit in proptest::collection::vec(0u8..40, 0..20)) {
            let pools = [pool("a", &["10.0.0.0/27"], true, false), pool("b", &["10.0.0.32/28"], true, false)];
            let mut reqs: Vec<Request> =
                (0..n).map(|i| Request::simple(format!("auto{i}"), format!("a{i}"), None, vec![])).collect();
            for (i, e) in explicit.iter().enumerate() {
                reqs.push(Request::simple(format!("ex{i}"), format!("e{i}"), None, vec![ip(&format!("10.0.0.{e}"))]));
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
