//! Backend selection: which backend a new connection or flow goes to.
//!
//! A [`Balancer`] is built from one service port's backend set (as the snapshot says it) and an [`Algorithm`];
//! it is shared by every connection of that listener (`Arc<Balancer>`), and replaced — never mutated — when the
//! backend set changes. [`Balancer::rebuild`] carries the per-backend counters (least connections) and the
//! `ClientIP` affinity table over to the new set, so a snapshot change does not reset them.
//!
//! Eligibility follows the Kubernetes endpoint conditions: backends that are `ready` (and have a weight above
//! zero) take new flows; only when none is, backends that are still `serving` while `terminating` do. A backend
//! absent from the set takes nothing new (its established connections are the relay's business). A backend
//! failing its active health checks takes nothing new either, in neither group.
//!
//! Passive outlier detection ([`Outlier`]): consecutive failed connects to a backend eject it for a while (the
//! ejection doubles each time it happens again without a success in between, up to a maximum). An ejected
//! backend takes no new flows while any other eligible backend is not ejected; when all are, ejection is ignored
//! (trying a backend beats refusing every client). Maglev walks its table onward from the client's slot to the
//! next backend that is not ejected, so every appliance with the same ejections still agrees.
//!
//! Everything here is deterministic for a given seed and clock: randomness comes from a seeded generator and
//! time is passed in as an [`Instant`], so tests can replay exactly.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The default Maglev lookup table size (a prime, as the paper's example).
pub const MAGLEV_DEFAULT_TABLE_SIZE: usize = 65_537;
/// The largest table size accepted (a table entry is a `u32`; 16 Mi entries is 64 MiB).
pub const MAGLEV_MAX_TABLE_SIZE: usize = 1 << 24;
/// Affinity entries are swept for expiry every this many insertions.
const AFFINITY_SWEEP_EVERY: usize = 1024;

/// How a backend is picked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// Each eligible backend in turn, ignoring weights.
    RoundRobin,
    /// nginx's smooth weighted round robin: proportional to weight, interleaved (no bursts).
    WeightedRoundRobin,
    /// The backend with the fewest active connections relative to its weight; ties go round robin.
    LeastConnections,
    /// Two backends sampled at random (weighted), the one with fewer active connections per weight wins.
    PowerOfTwoChoices,
    /// Maglev consistent hashing on the client IP address, with a lookup table of `table_size` (a prime).
    Maglev { table_size: usize },
}

impl Algorithm {
    /// Maglev with the default table size.
    pub const fn maglev() -> Algorithm {
        Algorithm::Maglev { table_size: MAGLEV_DEFAULT_TABLE_SIZE }
    }
}

/// Session affinity, as a Kubernetes Service's `sessionAffinity`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Affinity {
    #[default]
    None,
    /// The same client IP goes to the same backend while it stays eligible and the client came back within
    /// `timeout` of its last new connection (Kubernetes' default is 10 800 s).
    ClientIp { timeout: Duration },
}

/// Passive outlier detection of one balancer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outlier {
    /// Consecutive failed connects that eject a backend (at least 1).
    pub consecutive_failures: u32,
    /// The first ejection's length; doubled for each further ejection in a row.
    pub base_ejection: Duration,
    pub max_ejection: Duration,
}

/// A process-wide time origin, so an ejection deadline fits an atomic (milliseconds since it).
fn epoch() -> Instant {
    static EPOCH: std::sync::LazyLock<Instant> = std::sync::LazyLock::new(Instant::now);
    *EPOCH
}

/// Milliseconds on the process-wide clock used for ejections (also for rate-limiting logs).
pub(crate) fn millis_now() -> u64 {
    millis_since_epoch(Instant::now())
}

fn millis_since_epoch(t: Instant) -> u64 {
    // +1 so that 0 can mean "not ejected".
    t.saturating_duration_since(epoch()).as_millis() as u64 + 1
}

/// One backend as the balancer sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backend {
    pub addr: SocketAddr,
    /// Relative share; 0 takes no new flows.
    pub weight: u32,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    /// Not failing its active health checks: a backend that fails them takes no new flows, but its established
    /// connections are left alone (unlike a removed or terminating one's, which drain).
    pub healthy: bool,
}

impl Backend {
    /// A ready backend.
    pub fn ready(addr: SocketAddr, weight: u32) -> Backend {
        Backend { addr, weight, ready: true, serving: true, terminating: false, healthy: true }
    }

    /// Whether it may take new flows (ready or, as a fallback, serving) once the balancer allows.
    fn takes(&self, fallback: bool) -> bool {
        self.weight > 0 && self.healthy && if fallback { self.serving } else { self.ready }
    }

    /// From a snapshot entry, for the service port `port_name`/`target_port`: the endpoint's port of that name
    /// (and protocol) when it has one, else its own `port`, else `target_port`.
    pub fn from_entry(
        entry: &model::snapshot::BackendEntry,
        port_name: Option<&str>,
        protocol: model::config::Protocol,
        target_port: u16,
    ) -> Backend {
        let named = entry
            .named_ports
            .iter()
            .find(|(name, _, proto)| name.as_deref() == port_name && *proto == protocol)
            .map(|(_, port, _)| *port);
        let port = named.or(entry.port).unwrap_or(target_port);
        Backend {
            addr: SocketAddr::new(entry.ip, port),
            weight: entry.weight,
            ready: entry.ready,
            serving: entry.serving,
            terminating: entry.terminating,
            healthy: entry.health.passes(),
        }
    }
}

/// Why a balancer could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BalanceError {
    #[error("maglev table size {0} is not a prime")]
    TableSizeNotPrime(usize),
    #[error("maglev table size {size} must be larger than the number of backends ({backends}) and at most {max}")]
    TableSizeOutOfRange { size: usize, backends: usize, max: usize },
}

/// Live counters of one backend, shared by every connection to it and carried across rebuilds.
#[derive(Debug, Default)]
pub struct BackendCounters {
    /// Connections or flows currently held (a [`ConnGuard`] each).
    pub active: AtomicU64,
    /// Connections or flows ever assigned.
    pub total: AtomicU64,
    /// Failed connects (the relay reports them).
    pub connect_errors: AtomicU64,
    /// Bytes relayed to and from this backend (TCP, live).
    pub traffic: crate::relay::Traffic,
    /// Failed connects since the last success.
    pub consecutive_failures: AtomicU32,
    /// Times passive outlier detection ejected the backend.
    pub ejections: AtomicU64,
    /// Ejections in a row without a successful connect in between (the next one lasts 2^streak × base).
    ejection_streak: AtomicU32,
    /// Milliseconds since [`epoch`] (+1) until which the backend is ejected; 0 when it is not.
    ejected_until: AtomicU64,
}

impl BackendCounters {
    /// Whether passive outlier detection keeps the backend out at `now`.
    pub fn is_ejected(&self, now: Instant) -> bool {
        let until = self.ejected_until.load(Ordering::Relaxed);
        until != 0 && millis_since_epoch(now) < until
    }

    /// A connect succeeded: the failure count and the ejection streak start over.
    pub fn connect_succeeded(&self) {
        if self.consecutive_failures.load(Ordering::Relaxed) != 0 {
            self.consecutive_failures.store(0, Ordering::Relaxed);
        }
        if self.ejection_streak.load(Ordering::Relaxed) != 0 {
            self.ejection_streak.store(0, Ordering::Relaxed);
        }
    }

    /// A connect failed at `now`; with `outlier` set, ejects the backend after enough failures in a row.
    /// Returns the ejection's length when this failure ejected it.
    pub fn connect_failed(&self, outlier: Option<&Outlier>, now: Instant) -> Option<Duration> {
        self.connect_errors.fetch_add(1, Ordering::Relaxed);
        let failures = self.consecutive_failures.fetch_add(1, Ordering::Relaxed).saturating_add(1);
        let outlier = outlier?;
        if failures < outlier.consecutive_failures.max(1) || self.is_ejected(now) {
            return None;
        }
        self.consecutive_failures.store(0, Ordering::Relaxed);
        let streak = self.ejection_streak.fetch_add(1, Ordering::Relaxed).min(30);
        let length = outlier.base_ejection.saturating_mul(1u32 << streak).min(outlier.max_ejection);
        self.ejected_until.store(millis_since_epoch(now + length), Ordering::Relaxed);
        self.ejections.fetch_add(1, Ordering::Relaxed);
        Some(length)
    }
}

/// Holds one active connection on a backend; dropping it releases it.
#[derive(Debug)]
pub struct ConnGuard {
    counters: Arc<BackendCounters>,
}

impl ConnGuard {
    fn new(counters: Arc<BackendCounters>) -> ConnGuard {
        counters.active.fetch_add(1, Ordering::Relaxed);
        counters.total.fetch_add(1, Ordering::Relaxed);
        ConnGuard { counters }
    }

    pub fn counters(&self) -> &Arc<BackendCounters> {
        &self.counters
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.counters.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The answer of [`Balancer::pick`].
#[derive(Debug)]
pub struct Pick {
    /// Index into [`Balancer::backends`].
    pub index: usize,
    pub addr: SocketAddr,
    /// Whether the pick came from the affinity table.
    pub sticky: bool,
    pub guard: ConnGuard,
}

/// A small seeded generator (SplitMix64): deterministic, good enough to sample backends.
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..bound` (`bound` > 0), by multiply-shift (bias below 2^-32 for our bounds).
    pub fn below(&mut self, bound: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(bound)) >> 64) as u64
    }
}

/// A stable 64-bit hash (FNV-1a, then the MurmurHash3 finaliser): the same on every appliance and every
/// version, which Maglev needs so that appliances behind ECMP agree.
pub fn stable_hash(seed: u64, bytes: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

fn ip_bytes(ip: IpAddr) -> [u8; 16] {
    match ip {
        // IPv4 and its IPv4-mapped IPv6 form hash alike.
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

fn addr_bytes(addr: SocketAddr) -> [u8; 18] {
    let mut out = [0u8; 18];
    out[..16].copy_from_slice(&ip_bytes(addr.ip()));
    out[16..].copy_from_slice(&addr.port().to_be_bytes());
    out
}

/// A Maglev lookup table (Eisenbud et al., NSDI 2016, §3.4): every backend walks its own permutation of the
/// `M` slots (from an `offset` and a `skip` hashed from its address) and claims the next free slot in turn,
/// weighted backends taking turns in proportion to their weight. The table depends only on the set of
/// (address, weight) pairs, not on their order.
#[derive(Debug, Clone)]
pub struct MaglevTable {
    /// Slot → index into the `members` passed to [`MaglevTable::build`].
    slots: Vec<u32>,
}

const MAGLEV_OFFSET_SEED: u64 = 0x6d61_676c_6576_0001;
const MAGLEV_SKIP_SEED: u64 = 0x6d61_676c_6576_0002;
const MAGLEV_LOOKUP_SEED: u64 = 0x6d61_676c_6576_0003;

impl MaglevTable {
    /// Builds the table for `members` (address, weight > 0). `size` must be a prime larger than the number of
    /// members. With no members the table is empty and every lookup is `None`.
    pub fn build(members: &[(SocketAddr, u32)], size: usize) -> Result<MaglevTable, BalanceError> {
        if !is_prime(size) {
            return Err(BalanceError::TableSizeNotPrime(size));
        }
        if size <= members.len() || size > MAGLEV_MAX_TABLE_SIZE {
            return Err(BalanceError::TableSizeOutOfRange {
                size,
                backends: members.len(),
                max: MAGLEV_MAX_TABLE_SIZE,
            });
        }
        if members.is_empty() {
            return Ok(MaglevTable { slots: Vec::new() });
        }
        let m = size as u64;
        // Population order by address, so the result does not depend on the order the snapshot lists them in.
        let mut order: Vec<usize> = (0..members.len()).collect();
        order.sort_by_key(|&i| members[i].0);
        let perms: Vec<(u64, u64)> = order
            .iter()
            .map(|&i| {
                let key = addr_bytes(members[i].0);
                let offset = stable_hash(MAGLEV_OFFSET_SEED, &key) % m;
                let skip = stable_hash(MAGLEV_SKIP_SEED, &key) % (m - 1) + 1;
                (offset, skip)
            })
            .collect();
        let max_weight = u64::from(members.iter().map(|(_, w)| *w).max().unwrap_or(1).max(1));
        let mut next = vec![0u64; order.len()];
        let mut slots = vec![u32::MAX; size];
        let mut filled = 0usize;
        let mut round = 0u64;
        'fill: loop {
            for (k, &i) in order.iter().enumerate() {
                let w = u64::from(members[i].1);
                // Turns this round: floor((r+1)·w/max) − floor(r·w/max) ∈ {0, 1}.
                if (round + 1) * w / max_weight == round * w / max_weight {
                    continue;
                }
                let (offset, skip) = perms[k];
                let mut slot = ((offset + next[k] % m * skip) % m) as usize;
                while slots[slot] != u32::MAX {
                    next[k] += 1;
                    slot = ((offset + next[k] % m * skip) % m) as usize;
                }
                slots[slot] = i as u32;
                next[k] += 1;
                filled += 1;
                if filled == size {
                    break 'fill;
                }
            }
            round += 1;
        }
        Ok(MaglevTable { slots })
    }

    /// The member for a client address.
    pub fn lookup(&self, client: IpAddr) -> Option<usize> {
        self.lookup_where(client, &|_| true)
    }

    /// The member for a client address among those `usable`: the client's own slot, else the next slot onward
    /// whose member is usable (the same answer on every appliance that agrees on `usable`).
    pub fn lookup_where(&self, client: IpAddr, usable: &dyn Fn(usize) -> bool) -> Option<usize> {
        if self.slots.is_empty() {
            return None;
        }
        let len = self.slots.len();
        let start = (stable_hash(MAGLEV_LOOKUP_SEED, &ip_bytes(client)) % len as u64) as usize;
        (0..len).map(|k| self.slots[(start + k) % len] as usize).find(|&i| usable(i))
    }

    /// How many slots each member holds (for tests and status).
    pub fn shares(&self, members: usize) -> Vec<usize> {
        let mut out = vec![0usize; members];
        for &s in &self.slots {
            if let Some(c) = out.get_mut(s as usize) {
                *c += 1;
            }
        }
        out
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }
}

/// Whether `n` is prime (trial division; `n` ≤ 2^24 here).
pub fn is_prime(n: usize) -> bool {
    if n < 2 {
        return false;
    }
    if n.is_multiple_of(2) {
        return n == 2;
    }
    let mut d = 3usize;
    while d * d <= n {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 2;
    }
    true
}

/// Per-algorithm mutable state.
#[derive(Debug)]
enum State {
    RoundRobin,
    Smooth(Mutex<Vec<i64>>),
    LeastConnections,
    PowerOfTwo,
    Maglev(MaglevTable),
}

#[derive(Debug)]
struct AffinityTable {
    timeout: Duration,
    entries: Mutex<AffinityEntries>,
}

#[derive(Debug, Default)]
struct AffinityEntries {
    map: HashMap<IpAddr, (SocketAddr, Instant)>,
    inserts: usize,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks cannot leave the data inconsistent; keep going.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Picks backends for one service port. Cheap to share (`Arc`); rebuilt when the backend set changes.
#[derive(Debug)]
pub struct Balancer {
    algorithm: Algorithm,
    backends: Vec<Backend>,
    counters: Vec<Arc<BackendCounters>>,
    /// Indices of the backends that take new flows (ready, or the serving fallback).
    eligible: Vec<usize>,
    /// Whether `eligible` is the terminating-but-serving fallback.
    fallback: bool,
    state: State,
    cursor: AtomicUsize,
    rng: Mutex<SplitMix64>,
    affinity: Option<AffinityTable>,
    outlier: Option<Outlier>,
}

impl Balancer {
    /// A balancer with a random seed.
    pub fn new(algorithm: Algorithm, affinity: Affinity, backends: Vec<Backend>) -> Result<Balancer, BalanceError> {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
            ^ u64::from(std::process::id()).rotate_left(32);
        Balancer::with_seed(algorithm, affinity, backends, seed)
    }

    /// A balancer whose random choices (power of two) follow `seed`.
    pub fn with_seed(
        algorithm: Algorithm,
        affinity: Affinity,
        backends: Vec<Backend>,
        seed: u64,
    ) -> Result<Balancer, BalanceError> {
        let counters = backends.iter().map(|_| Arc::new(BackendCounters::default())).collect();
        Balancer::assemble(algorithm, affinity, backends, counters, seed, None)
    }

    /// A balancer for a new backend set that keeps this one's counters (for backends still present), affinity
    /// entries (for backends still eligible), and random stream.
    pub fn rebuild(
        &self,
        algorithm: Algorithm,
        affinity: Affinity,
        backends: Vec<Backend>,
    ) -> Result<Balancer, BalanceError> {
        let old: HashMap<SocketAddr, &Arc<BackendCounters>> =
            self.backends.iter().zip(&self.counters).map(|(b, c)| (b.addr, c)).collect();
        let counters = backends.iter().map(|b| old.get(&b.addr).map(|c| Arc::clone(c)).unwrap_or_default()).collect();
        let seed = lock(&self.rng).next_u64();
        let entries = self.affinity.as_ref().map(|a| std::mem::take(&mut *lock(&a.entries)));
        Balancer::assemble(algorithm, affinity, backends, counters, seed, entries)
    }

    fn assemble(
        algorithm: Algorithm,
        affinity: Affinity,
        backends: Vec<Backend>,
        counters: Vec<Arc<BackendCounters>>,
        seed: u64,
        entries: Option<AffinityEntries>,
    ) -> Result<Balancer, BalanceError> {
        let mut eligible: Vec<usize> = (0..backends.len()).filter(|&i| backends[i].takes(false)).collect();
        let mut fallback = false;
        if eligible.is_empty() {
            eligible = (0..backends.len()).filter(|&i| backends[i].takes(true)).collect();
            fallback = !eligible.is_empty();
        }
        let state = match algorithm {
            Algorithm::RoundRobin => State::RoundRobin,
            Algorithm::WeightedRoundRobin => State::Smooth(Mutex::new(vec![0; eligible.len()])),
            Algorithm::LeastConnections => State::LeastConnections,
            Algorithm::PowerOfTwoChoices => State::PowerOfTwo,
            Algorithm::Maglev { table_size } => {
                let members: Vec<(SocketAddr, u32)> =
                    eligible.iter().map(|&i| (backends[i].addr, backends[i].weight)).collect();
                State::Maglev(MaglevTable::build(&members, table_size)?)
            }
        };
        let affinity = match affinity {
            Affinity::None => None,
            Affinity::ClientIp { timeout } => {
                let mut kept = entries.unwrap_or_default();
                let live: std::collections::HashSet<SocketAddr> = eligible.iter().map(|&i| backends[i].addr).collect();
                kept.map.retain(|_, (addr, _)| live.contains(addr));
                Some(AffinityTable { timeout, entries: Mutex::new(kept) })
            }
        };
        Ok(Balancer {
            algorithm,
            backends,
            counters,
            eligible,
            fallback,
            state,
            cursor: AtomicUsize::new(0),
            rng: Mutex::new(SplitMix64::new(seed)),
            affinity,
            outlier: None,
        })
    }

    /// The same balancer with passive outlier detection (`None`: off).
    pub fn with_outlier(mut self, outlier: Option<Outlier>) -> Balancer {
        self.outlier = outlier;
        self
    }

    pub fn outlier(&self) -> Option<&Outlier> {
        self.outlier.as_ref()
    }

    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    pub fn backends(&self) -> &[Backend] {
        &self.backends
    }

    /// The counters of backend `index`.
    pub fn counters(&self, index: usize) -> Option<&Arc<BackendCounters>> {
        self.counters.get(index)
    }

    /// Indices of the backends that take new flows.
    pub fn eligible(&self) -> &[usize] {
        &self.eligible
    }

    /// Whether only terminating-but-serving backends are left to take new flows.
    pub fn is_fallback(&self) -> bool {
        self.fallback
    }

    /// Picks a backend for a new connection or flow from `client`, at time `now` (affinity expiry). `None` when
    /// no backend takes new flows.
    pub fn pick(&self, client: IpAddr, now: Instant) -> Option<Pick> {
        if self.eligible.is_empty() {
            return None;
        }
        if let Some(aff) = &self.affinity {
            let mut entries = lock(&aff.entries);
            if let Some((addr, seen)) = entries.map.get_mut(&client)
                && now.saturating_duration_since(*seen) < aff.timeout
                && let Some(index) = self.eligible.iter().copied().find(|&i| self.backends[i].addr == *addr)
                && !self.counters[index].is_ejected(now)
            {
                *seen = now;
                return Some(self.pick_of(index, true));
            }
            let index = self.choose(client, now)?;
            entries.map.insert(client, (self.backends[index].addr, now));
            entries.inserts += 1;
            if entries.inserts.is_multiple_of(AFFINITY_SWEEP_EVERY) {
                let timeout = aff.timeout;
                entries.map.retain(|_, (_, seen)| now.saturating_duration_since(*seen) < timeout);
            }
            return Some(self.pick_of(index, false));
        }
        let index = self.choose(client, now)?;
        Some(self.pick_of(index, false))
    }

    /// Number of clients in the affinity table.
    pub fn affinity_entries(&self) -> usize {
        self.affinity.as_ref().map(|a| lock(&a.entries).map.len()).unwrap_or(0)
    }

    fn pick_of(&self, index: usize, sticky: bool) -> Pick {
        Pick {
            index,
            addr: self.backends[index].addr,
            sticky,
            guard: ConnGuard::new(Arc::clone(&self.counters[index])),
        }
    }

    fn active(&self, index: usize) -> u64 {
        self.counters[index].active.load(Ordering::Relaxed)
    }

    /// Whether backend `a` is less loaded than `b` (active / weight).
    fn less_loaded(&self, a: usize, b: usize) -> bool {
        let (wa, wb) = (u128::from(self.backends[a].weight), u128::from(self.backends[b].weight));
        u128::from(self.active(a)) * wb < u128::from(self.active(b)) * wa
    }

    /// Picks among the eligible backends, passing over the ejected ones; when every one is ejected, as if none
    /// were.
    fn choose(&self, client: IpAddr, now: Instant) -> Option<usize> {
        if self.outlier.is_none() {
            return self.choose_among(client, &|_| false);
        }
        let ejected = |i: usize| self.counters[i].is_ejected(now);
        self.choose_among(client, &ejected).or_else(|| self.choose_among(client, &|_| false))
    }

    fn choose_among(&self, client: IpAddr, out: &dyn Fn(usize) -> bool) -> Option<usize> {
        let n = self.eligible.len();
        match &self.state {
            State::RoundRobin => {
                // All out: this turn's backend (a retry would advance the cursor twice and skip every other).
                let start = self.cursor.fetch_add(1, Ordering::Relaxed);
                let turn = (0..n).map(|k| self.eligible[(start + k) % n]).find(|&i| !out(i));
                turn.or(Some(self.eligible[start % n]))
            }
            State::Smooth(current) => {
                // nginx: every backend gains its weight; the largest current wins and pays the total.
                let mut current = lock(current);
                let mut total = 0i64;
                let mut best: Option<usize> = None;
                for (k, &i) in self.eligible.iter().enumerate() {
                    if out(i) {
                        continue;
                    }
                    let w = i64::from(self.backends[i].weight);
                    current[k] += w;
                    total += w;
                    if best.is_none_or(|b| current[k] > current[b]) {
                        best = Some(k);
                    }
                }
                let b = best?;
                current[b] -= total;
                Some(self.eligible[b])
            }
            State::LeastConnections => {
                let start = self.cursor.fetch_add(1, Ordering::Relaxed) % n;
                let mut best: Option<usize> = None;
                for k in 0..n {
                    let i = self.eligible[(start + k) % n];
                    if !out(i) && best.is_none_or(|b| self.less_loaded(i, b)) {
                        best = Some(i);
                    }
                }
                best
            }
            State::PowerOfTwo => {
                if n == 1 {
                    return Some(self.eligible[0]).filter(|&i| !out(i));
                }
                let mut rng = lock(&self.rng);
                let a = self.weighted_sample(&mut rng, out)?;
                let mut b = self.weighted_sample(&mut rng, out)?;
                // A few tries for a distinct second choice (one heavy backend can win the draw repeatedly).
                for _ in 0..4 {
                    if b != a {
                        break;
                    }
                    b = self.weighted_sample(&mut rng, out)?;
                }
                Some(if self.less_loaded(b, a) { b } else { a })
            }
            State::Maglev(table) => table
                .lookup_where(client, &|k| self.eligible.get(k).is_some_and(|&i| !out(i)))
                .and_then(|k| self.eligible.get(k).copied()),
        }
    }

    /// A backend drawn by weight among those not `out`.
    fn weighted_sample(&self, rng: &mut SplitMix64, out: &dyn Fn(usize) -> bool) -> Option<usize> {
        let weight = |i: usize| if out(i) { 0 } else { u64::from(self.backends[i].weight) };
        let total: u64 = self.eligible.iter().map(|&i| weight(i)).sum();
        if total == 0 {
            return None;
        }
        let mut r = rng.below(total);
        for &i in &self.eligible {
            let w = weight(i);
            if r < w {
                return Some(i);
            }
            r -= w;
        }
        None
    }
}

#[cfg(test)]
mod tests;
