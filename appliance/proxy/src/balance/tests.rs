#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::print_stdout)]

use super::*;
use std::net::Ipv4Addr;

fn addr(i: u32) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)), 8080)
}

fn ready(n: u32) -> Vec<Backend> {
    (1..=n).map(|i| Backend::ready(addr(i), 1)).collect()
}

fn weighted(weights: &[u32]) -> Vec<Backend> {
    weights.iter().enumerate().map(|(i, &w)| Backend::ready(addr(i as u32 + 1), w)).collect()
}

fn client(i: u32) -> IpAddr {
    // Spread over the IPv4 space like real clients (a multiplicative hash of the counter).
    IpAddr::V4(Ipv4Addr::from(i.wrapping_mul(2_654_435_761).wrapping_add(0x0100_0000)))
}

/// Picks `n` times, releasing each connection at once; returns picks per backend index.
fn counts(b: &Balancer, n: u32) -> Vec<usize> {
    let now = Instant::now();
    let mut out = vec![0usize; b.backends().len()];
    for i in 0..n {
        out[b.pick(client(i), now).unwrap().index] += 1;
    }
    out
}

fn assert_proportional(counts: &[usize], weights: &[u32], tolerance: f64) {
    let total: usize = counts.iter().sum();
    let wsum: u32 = weights.iter().sum();
    for (c, w) in counts.iter().zip(weights) {
        let want = total as f64 * f64::from(*w) / f64::from(wsum);
        let rel = (*c as f64 - want).abs() / want;
        assert!(rel <= tolerance, "got {counts:?} for weights {weights:?} (off by {:.2}%)", rel * 100.0);
    }
}

#[test]
fn round_robin_cycles_over_the_ready_backends() {
    let b = Balancer::with_seed(Algorithm::RoundRobin, Affinity::None, weighted(&[1, 5, 1]), 1).unwrap();
    let now = Instant::now();
    let seq: Vec<usize> = (0..6).map(|i| b.pick(client(i), now).unwrap().index).collect();
    assert_eq!(seq, vec![0, 1, 2, 0, 1, 2]);
}

#[test]
fn smooth_weighted_round_robin_is_nginx_interleaved() {
    let b = Balancer::with_seed(Algorithm::WeightedRoundRobin, Affinity::None, weighted(&[5, 1, 1]), 1).unwrap();
    let now = Instant::now();
    let seq: Vec<usize> = (0..14).map(|i| b.pick(client(i), now).unwrap().index).collect();
    // nginx's documented sequence for {a:5, b:1, c:1}: a a b a c a a, repeating.
    assert_eq!(seq, vec![0, 0, 1, 0, 2, 0, 0, 0, 0, 1, 0, 2, 0, 0]);
}

#[test]
fn smooth_weighted_round_robin_matches_weights_exactly_without_bursts() {
    let weights = [3, 1, 4, 1, 5, 9, 2, 6];
    let b = Balancer::with_seed(Algorithm::WeightedRoundRobin, Affinity::None, weighted(&weights), 1).unwrap();
    let total: u32 = weights.iter().sum();
    let c = counts(&b, total * 100);
    for (got, w) in c.iter().zip(weights) {
        assert_eq!(*got, w as usize * 100);
    }
    // Equal weights: never the same backend twice in a row.
    let b = Balancer::with_seed(Algorithm::WeightedRoundRobin, Affinity::None, weighted(&[2, 2, 2]), 1).unwrap();
    let now = Instant::now();
    let seq: Vec<usize> = (0..30).map(|i| b.pick(client(i), now).unwrap().index).collect();
    assert!(seq.windows(2).all(|w| w[0] != w[1]), "{seq:?}");
}

#[test]
fn least_connections_follows_active_connections_and_weights() {
    let b = Balancer::with_seed(Algorithm::LeastConnections, Affinity::None, weighted(&[1, 1, 2]), 1).unwrap();
    let now = Instant::now();
    // Holding every connection: the weight-2 backend ends up with twice the others' share.
    let held: Vec<Pick> = (0..400).map(|i| b.pick(client(i), now).unwrap()).collect();
    let active: Vec<u64> = (0..3).map(|i| b.counters(i).unwrap().active.load(Ordering::Relaxed)).collect();
    assert_eq!(active, vec![100, 100, 200]);
    drop(held);
    assert!((0..3).all(|i| b.counters(i).unwrap().active.load(Ordering::Relaxed) == 0));
    // A backend with long-lived connections gets no new ones until the others catch up.
    let long: Vec<Pick> = (0..4).map(|i| b.pick(client(i), now).unwrap()).collect();
    assert_eq!(long.iter().filter(|p| p.index == 2).count(), 2);
    let only_long_on_2: Vec<Pick> = long.into_iter().filter(|p| p.index == 2).collect();
    let next: Vec<usize> = (0..2).map(|i| b.pick(client(i), now).unwrap().index).collect();
    assert!(next.iter().all(|&i| i != 2), "{next:?}");
    drop(only_long_on_2);
}

#[test]
fn least_connections_spreads_ties_round_robin() {
    let b = Balancer::with_seed(Algorithm::LeastConnections, Affinity::None, ready(4), 1).unwrap();
    let c = counts(&b, 4000);
    assert_eq!(c, vec![1000; 4]);
}

#[test]
fn power_of_two_choices_matches_weights_when_idle_and_balances_when_loaded() {
    let weights = [1, 2, 3, 4];
    let b = Balancer::with_seed(Algorithm::PowerOfTwoChoices, Affinity::None, weighted(&weights), 7).unwrap();
    // Released at once, every draw is a tie and the first sample wins: proportional to weight.
    let c = counts(&b, 100_000);
    println!("p2c idle distribution for weights {weights:?}: {c:?}");
    assert_proportional(&c, &weights, 0.03);
    // Held: active/weight stays close to even.
    let b = Balancer::with_seed(Algorithm::PowerOfTwoChoices, Affinity::None, ready(8), 7).unwrap();
    let now = Instant::now();
    let held: Vec<Pick> = (0..8000).map(|i| b.pick(client(i), now).unwrap()).collect();
    let active: Vec<u64> = (0..8).map(|i| b.counters(i).unwrap().active.load(Ordering::Relaxed)).collect();
    println!("p2c held connections over 8 backends: {active:?}");
    assert!(active.iter().all(|&a| (950..=1050).contains(&a)), "{active:?}");
    drop(held);
}

#[test]
fn power_of_two_choices_is_deterministic_for_a_seed() {
    let seq = |seed| {
        let b = Balancer::with_seed(Algorithm::PowerOfTwoChoices, Affinity::None, ready(5), seed).unwrap();
        let now = Instant::now();
        (0..50).map(|i| b.pick(client(i), now).unwrap().index).collect::<Vec<_>>()
    };
    assert_eq!(seq(42), seq(42));
    assert_ne!(seq(42), seq(43));
}

#[test]
fn terminating_and_unready_backends_take_no_new_flows_unless_nothing_else_is_ready() {
    let mut set = ready(3);
    set[1].ready = false;
    set[1].terminating = true; // still serving
    set[2].ready = false;
    set[2].serving = false;
    for alg in [
        Algorithm::RoundRobin,
        Algorithm::WeightedRoundRobin,
        Algorithm::LeastConnections,
        Algorithm::PowerOfTwoChoices,
        Algorithm::Maglev { table_size: 251 },
    ] {
        let b = Balancer::with_seed(alg, Affinity::None, set.clone(), 1).unwrap();
        assert_eq!(b.eligible(), &[0]);
        assert!(!b.is_fallback());
        assert_eq!(counts(&b, 100), vec![100, 0, 0], "{alg:?}");
        // Nothing ready: the terminating one that still serves takes them, the non-serving one never.
        let mut none_ready = set.clone();
        none_ready[0].ready = false;
        none_ready[0].serving = false;
        let b = Balancer::with_seed(alg, Affinity::None, none_ready.clone(), 1).unwrap();
        assert!(b.is_fallback());
        assert_eq!(counts(&b, 100), vec![0, 100, 0], "{alg:?}");
        none_ready[1].serving = false;
        let b = Balancer::with_seed(alg, Affinity::None, none_ready, 1).unwrap();
        assert!(b.pick(client(1), Instant::now()).is_none());
    }
}

#[test]
fn zero_weight_and_empty_sets_take_nothing() {
    let b = Balancer::with_seed(Algorithm::WeightedRoundRobin, Affinity::None, weighted(&[0, 3]), 1).unwrap();
    assert_eq!(counts(&b, 30), vec![0, 30]);
    let b = Balancer::with_seed(Algorithm::maglev(), Affinity::None, vec![], 1).unwrap();
    assert!(b.pick(client(1), Instant::now()).is_none());
}

#[test]
fn maglev_rejects_bad_table_sizes() {
    assert_eq!(MaglevTable::build(&[], 65_536).unwrap_err(), BalanceError::TableSizeNotPrime(65_536));
    let members: Vec<(SocketAddr, u32)> = (1..=7).map(|i| (addr(i), 1)).collect();
    assert!(matches!(MaglevTable::build(&members, 7), Err(BalanceError::TableSizeOutOfRange { .. })));
    assert!(MaglevTable::build(&members, 11).is_ok());
    assert!(is_prime(65_537) && is_prime(2) && !is_prime(1) && !is_prime(65_535) && is_prime(251));
}

fn members(n: u32) -> Vec<(SocketAddr, u32)> {
    (1..=n).map(|i| (addr(i), 1)).collect()
}

#[test]
fn maglev_gives_every_backend_its_share_of_the_table() {
    for n in [3u32, 10, 100] {
        let t = MaglevTable::build(&members(n), MAGLEV_DEFAULT_TABLE_SIZE).unwrap();
        let shares = t.shares(n as usize);
        let ideal = MAGLEV_DEFAULT_TABLE_SIZE as f64 / f64::from(n);
        let worst = shares.iter().map(|&s| (s as f64 - ideal).abs() / ideal).fold(0.0, f64::max);
        println!(
            "maglev N={n}: slots min {} max {} ideal {ideal:.0} (worst {:.2}%)",
            shares.iter().min().unwrap(),
            shares.iter().max().unwrap(),
            worst * 100.0
        );
        // The paper's population is balanced to within one slot per backend per round.
        assert!(worst < 0.01 || shares.iter().max().unwrap() - shares.iter().min().unwrap() <= 1, "{shares:?}");
    }
    // Weighted: shares follow weights.
    let ws = [1u32, 2, 3, 4];
    let m: Vec<(SocketAddr, u32)> = ws.iter().enumerate().map(|(i, &w)| (addr(i as u32 + 1), w)).collect();
    let t = MaglevTable::build(&m, MAGLEV_DEFAULT_TABLE_SIZE).unwrap();
    let shares = t.shares(4);
    println!("maglev weighted {ws:?}: {shares:?}");
    assert_proportional(&shares, &ws, 0.01);
}

#[test]
fn maglev_does_not_depend_on_backend_order() {
    let mut m = members(20);
    let a = MaglevTable::build(&m, 4099).unwrap();
    m.reverse();
    let b = MaglevTable::build(&m, 4099).unwrap();
    for i in 0..10_000 {
        let (x, y) = (a.lookup(client(i)).unwrap(), b.lookup(client(i)).unwrap());
        assert_eq!(members(20)[x].0, m[y].0);
    }
}

/// Share of `clients` whose backend address differs between two member sets.
fn moved(before: &[(SocketAddr, u32)], after: &[(SocketAddr, u32)], clients: u32) -> f64 {
    let a = MaglevTable::build(before, MAGLEV_DEFAULT_TABLE_SIZE).unwrap();
    let b = MaglevTable::build(after, MAGLEV_DEFAULT_TABLE_SIZE).unwrap();
    let mut n = 0u32;
    for i in 0..clients {
        let c = client(i);
        if before[a.lookup(c).unwrap()].0 != after[b.lookup(c).unwrap()].0 {
            n += 1;
        }
    }
    f64::from(n) / f64::from(clients)
}

#[test]
fn maglev_moves_close_to_the_minimum_when_a_backend_comes_or_goes() {
    const CLIENTS: u32 = 100_000;
    for n in [5u32, 10, 50] {
        let all = members(n + 1);
        let fewer = &all[..n as usize];
        let added = moved(fewer, &all, CLIENTS);
        // Removing a backend from the middle of the set.
        let mut removed_set = members(n);
        removed_set.remove(n as usize / 2);
        let removed = moved(&members(n), &removed_set, CLIENTS);
        let min_add = 1.0 / f64::from(n + 1);
        let min_remove = 1.0 / f64::from(n);
        println!(
            "maglev N={n}: add one -> {:.2}% moved (minimum {:.2}%), remove one -> {:.2}% moved (minimum {:.2}%)",
            added * 100.0,
            min_add * 100.0,
            removed * 100.0,
            min_remove * 100.0
        );
        assert!(added >= min_add * 0.9 && added <= min_add * 1.5 + 0.01, "add: {added}");
        assert!(removed >= min_remove * 0.9 && removed <= min_remove * 1.5 + 0.01, "remove: {removed}");
    }
}

#[test]
fn maglev_is_consistent_per_client_and_spreads_clients() {
    let b = Balancer::with_seed(Algorithm::maglev(), Affinity::None, ready(10), 1).unwrap();
    let now = Instant::now();
    for i in 0..1000 {
        assert_eq!(b.pick(client(i), now).unwrap().index, b.pick(client(i), now).unwrap().index);
    }
    // Another balancer (another appliance) with another seed agrees.
    let other = Balancer::with_seed(Algorithm::maglev(), Affinity::None, ready(10), 99).unwrap();
    assert!((0..1000).all(|i| b.pick(client(i), now).unwrap().index == other.pick(client(i), now).unwrap().index));
    let c = counts(&b, 100_000);
    println!("maglev 100,000 clients over 10 backends: {c:?}");
    assert_proportional(&c, &[1; 10], 0.05);
}

#[test]
fn maglev_builds_a_table_for_a_thousand_backends() {
    let m = members(1000);
    let start = Instant::now();
    let t = MaglevTable::build(&m, MAGLEV_DEFAULT_TABLE_SIZE).unwrap();
    let took = start.elapsed();
    println!("maglev table of {} slots for 1,000 backends built in {took:?} (debug build)", t.len());
    let shares = t.shares(1000);
    assert!(shares.iter().all(|&s| (65..=66).contains(&s)), "{:?}", (shares.iter().min(), shares.iter().max()));
}

#[test]
fn client_ip_affinity_sticks_until_the_timeout_or_the_backend_leaves() {
    let timeout = Duration::from_secs(10);
    let aff = Affinity::ClientIp { timeout };
    let b = Balancer::with_seed(Algorithm::RoundRobin, aff, ready(3), 1).unwrap();
    let t0 = Instant::now();
    let c = client(1);
    let first = b.pick(c, t0).unwrap();
    assert!(!first.sticky);
    // Round robin would move on; affinity keeps the client, and each use refreshes the timer.
    for s in 1..5 {
        let p = b.pick(c, t0 + Duration::from_secs(s * 9)).unwrap();
        assert!(p.sticky);
        assert_eq!(p.index, first.index);
    }
    // Other clients still rotate.
    assert_ne!(b.pick(client(2), t0).unwrap().index, b.pick(client(3), t0).unwrap().index);
    // Expired: a fresh choice.
    let late = b.pick(c, t0 + Duration::from_secs(36 + 10)).unwrap();
    assert!(!late.sticky);
    // The chosen backend becomes terminating: the rebuilt balancer drops the entry.
    let now = t0 + Duration::from_secs(47);
    let chosen = b.pick(c, now).unwrap();
    assert!(chosen.sticky);
    let mut set = ready(3);
    set[chosen.index].ready = false;
    set[chosen.index].terminating = true;
    let nb = b.rebuild(Algorithm::RoundRobin, aff, set).unwrap();
    let moved = nb.pick(c, now).unwrap();
    assert!(!moved.sticky);
    assert_ne!(moved.index, chosen.index);
}

#[test]
fn affinity_entries_expire_and_are_swept() {
    let aff = Affinity::ClientIp { timeout: Duration::from_secs(1) };
    let b = Balancer::with_seed(Algorithm::LeastConnections, aff, ready(2), 1).unwrap();
    let t0 = Instant::now();
    for i in 0..AFFINITY_SWEEP_EVERY as u32 - 1 {
        b.pick(client(i), t0);
    }
    assert_eq!(b.affinity_entries(), AFFINITY_SWEEP_EVERY - 1);
    b.pick(client(1_000_000), t0 + Duration::from_secs(2));
    assert_eq!(b.affinity_entries(), 1);
}

#[test]
fn rebuild_keeps_counters_of_backends_that_stay() {
    let b = Balancer::with_seed(Algorithm::LeastConnections, Affinity::None, ready(3), 1).unwrap();
    let now = Instant::now();
    let held: Vec<Pick> = (0..30).map(|i| b.pick(client(i), now).unwrap()).collect();
    // Backend 1 leaves, a new one (4) arrives: least connections sends the next 10 to the new one.
    let set = vec![Backend::ready(addr(1), 1), Backend::ready(addr(3), 1), Backend::ready(addr(4), 1)];
    let nb = b.rebuild(Algorithm::LeastConnections, Affinity::None, set).unwrap();
    assert_eq!(nb.counters(0).unwrap().active.load(Ordering::Relaxed), 10);
    let next: Vec<Pick> = (0..10).map(|i| nb.pick(client(i), now).unwrap()).collect();
    assert!(next.iter().all(|p| p.addr == addr(4)));
    drop(held);
    assert_eq!(nb.counters(0).unwrap().active.load(Ordering::Relaxed), 0);
}

#[test]
fn backends_from_snapshot_entries_resolve_their_port() {
    use model::config::Protocol;
    let mut e = model::snapshot::BackendEntry {
        ip: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 9)),
        port: None,
        named_ports: Arc::from([
            (Some("http".to_string()), 8080, Protocol::Tcp),
            (Some("dns".into()), 53, Protocol::Udp),
        ]),
        weight: 2,
        ready: false,
        serving: true,
        terminating: true,
        zone: None,
        node: None,
        health: Default::default(),
    };
    let b = Backend::from_entry(&e, Some("http"), Protocol::Tcp, 80);
    assert_eq!(b.addr.port(), 8080);
    assert!(b.terminating && b.serving && !b.ready && b.weight == 2);
    assert_eq!(Backend::from_entry(&e, Some("dns"), Protocol::Udp, 5353).addr.port(), 53);
    assert_eq!(Backend::from_entry(&e, Some("dns"), Protocol::Tcp, 5353).addr.port(), 5353);
    e.port = Some(9000);
    assert_eq!(Backend::from_entry(&e, None, Protocol::Tcp, 80).addr.port(), 9000);
}

fn outlier(failures: u32) -> Option<Outlier> {
    Some(Outlier {
        consecutive_failures: failures,
        base_ejection: Duration::from_secs(10),
        max_ejection: Duration::from_secs(25),
    })
}

#[test]
fn consecutive_connect_failures_eject_with_doubling_back_off() {
    let now = Instant::now();
    for algorithm in [
        Algorithm::RoundRobin,
        Algorithm::WeightedRoundRobin,
        Algorithm::LeastConnections,
        Algorithm::PowerOfTwoChoices,
        Algorithm::maglev(),
    ] {
        let b = Balancer::with_seed(algorithm, Affinity::None, ready(3), 7).unwrap().with_outlier(outlier(3));
        let c = b.counters(1).unwrap();
        // Two failures, a success, two more: never three in a row.
        for ok in [false, false, true, false, false] {
            if ok {
                c.connect_succeeded();
            } else {
                assert_eq!(c.connect_failed(b.outlier(), now), None);
            }
        }
        assert_eq!(c.connect_failed(b.outlier(), now), Some(Duration::from_secs(10)), "{algorithm:?}");
        assert!(c.is_ejected(now + Duration::from_secs(9)) && !c.is_ejected(now + Duration::from_secs(11)));
        let picks = counts(&b, 3000);
        assert_eq!(picks[1], 0, "{algorithm:?}: an ejected backend takes nothing: {picks:?}");
        assert!(picks[0] > 0 && picks[2] > 0, "{algorithm:?}: {picks:?}");
        // Back after the ejection; failing again ejects for twice as long, then at most the maximum.
        let later = now + Duration::from_secs(11);
        assert!(b.pick(client(1), later).is_some());
        for _ in 0..2 {
            assert_eq!(c.connect_failed(b.outlier(), later), None);
        }
        assert_eq!(c.connect_failed(b.outlier(), later), Some(Duration::from_secs(20)));
        let much_later = later + Duration::from_secs(21);
        for _ in 0..2 {
            c.connect_failed(b.outlier(), much_later);
        }
        assert_eq!(c.connect_failed(b.outlier(), much_later), Some(Duration::from_secs(25)));
        assert_eq!(c.ejections.load(Ordering::Relaxed), 3);
        // A success ends the streak: the next ejection is the base length again.
        let after = much_later + Duration::from_secs(26);
        c.connect_succeeded();
        for _ in 0..2 {
            c.connect_failed(b.outlier(), after);
        }
        assert_eq!(c.connect_failed(b.outlier(), after), Some(Duration::from_secs(10)));
    }
}

#[test]
fn all_ejected_means_none_is_and_detection_off_ignores_ejections() {
    let now = Instant::now();
    let b = Balancer::with_seed(Algorithm::RoundRobin, Affinity::None, ready(2), 1).unwrap().with_outlier(outlier(1));
    for i in 0..2 {
        assert!(b.counters(i).unwrap().connect_failed(b.outlier(), now).is_some());
    }
    assert_eq!(counts(&b, 10), vec![5, 5], "every backend ejected: all take flows again");

    // Ejected under a balancer with detection on; the rebuilt one (detection off) keeps the counters but
    // does not act on them.
    let b = Balancer::with_seed(Algorithm::RoundRobin, Affinity::None, ready(2), 1).unwrap().with_outlier(outlier(1));
    assert!(b.counters(0).unwrap().connect_failed(b.outlier(), now).is_some());
    assert_eq!(counts(&b, 10), vec![0, 10]);
    let off = b.rebuild(Algorithm::RoundRobin, Affinity::None, ready(2)).unwrap();
    assert!(off.counters(0).unwrap().is_ejected(now));
    assert_eq!(counts(&off, 10), vec![5, 5]);
}

#[test]
fn maglev_moves_only_the_ejected_backends_clients() {
    let now = Instant::now();
    let b = Balancer::with_seed(Algorithm::maglev(), Affinity::None, ready(5), 1).unwrap().with_outlier(outlier(1));
    let before: Vec<usize> = (0..5000).map(|i| b.pick(client(i), now).unwrap().index).collect();
    assert!(b.counters(2).unwrap().connect_failed(b.outlier(), now).is_some());
    let after: Vec<usize> = (0..5000).map(|i| b.pick(client(i), now).unwrap().index).collect();
    for (x, y) in before.iter().zip(&after) {
        assert!(x == y || *x == 2, "a client of a healthy backend moved: {x} -> {y}");
        assert_ne!(*y, 2);
    }
    // A second balancer with the same ejection answers the same (appliances behind ECMP agree).
    let other =
        Balancer::with_seed(Algorithm::maglev(), Affinity::None, ready(5), 99).unwrap().with_outlier(outlier(1));
    assert!(other.counters(2).unwrap().connect_failed(other.outlier(), now).is_some());
    let again: Vec<usize> = (0..5000).map(|i| other.pick(client(i), now).unwrap().index).collect();
    assert_eq!(after, again);
}
