//! Which backend gets a connection: every algorithm over real connections, Maglev when backends come and go,
//! and client-IP affinity.

use super::bed::{WAIT, client, members, start_proxy_appliance, tcp_service, until, weighted};
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};

/// How many connections each backend got.
fn counts(picks: &[String]) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for p in picks {
        *out.entry(p.clone()).or_default() += 1;
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_rotates_exactly() {
    let bed = start_proxy_appliance(None).await;
    let (a, b, c) = (bed.backend("a", 8080).await, bed.backend("b", 8080).await, bed.backend("c", 8080).await);
    let vip = bed.create_service(tcp_service("rr", members(&[&a, &b, &c]), json!({"algorithm": "round_robin"}))).await;
    let mut agent = bed.agent();
    let picks = agent.backends(&vip, 80, None, 30).await;
    // Weights are ignored and every backend comes in turn: one period of three distinct backends, repeated.
    let period: BTreeSet<&String> = picks[..3].iter().collect();
    assert_eq!(period.len(), 3, "{picks:?}");
    for (i, p) in picks.iter().enumerate() {
        assert_eq!(p, &picks[i % 3], "connection {i} broke the rotation: {picks:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_round_robin_keeps_the_proportion_in_every_cycle() {
    let bed = start_proxy_appliance(None).await;
    let (heavy, light) = (bed.backend("heavy", 8080).await, bed.backend("light", 8080).await);
    let backends = weighted(&[(&heavy, 3), (&light, 1)]);
    let vip = bed.create_service(tcp_service("wrr", backends, json!({"algorithm": "weighted_round_robin"}))).await;
    let mut agent = bed.agent();
    let picks = agent.backends(&vip, 80, None, 40).await;
    // Smooth weighted round robin repeats a period of 4 (3 + 1), so every 4 consecutive connections, wherever
    // they start, hold exactly 3 of the heavy backend and 1 of the light one: no bursts, no drift.
    for (i, window) in picks.windows(4).enumerate() {
        let light_ones = window.iter().filter(|p| *p == "light").count();
        assert_eq!(light_ones, 1, "connections {i}..{} hold {light_ones} of the light backend: {picks:?}", i + 4);
        assert!(window.iter().all(|p| p == "heavy" || p == "light"), "{picks:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_connections_avoids_the_busy_backend() {
    let bed = start_proxy_appliance(None).await;
    let (a, b, c) = (bed.backend("a", 8080).await, bed.backend("b", 8080).await, bed.backend("c", 8080).await);
    let policy = json!({"algorithm": "least_connections"});
    // Three connections held on `a` while it is the only backend…
    let vip = bed.create_service(tcp_service("lc", members(&[&a]), policy.clone())).await;
    let mut holder = bed.agent();
    for key in ["h1", "h2", "h3"] {
        let o = holder.open(key, &vip, 80, None).await;
        assert_eq!(o.backend.as_deref(), Some("a"), "{o:?}");
    }
    // …then `b` and `c` join: the proxy keeps `a`'s count across the change, so new connections avoid it.
    bed.update_service(tcp_service("lc", members(&[&a, &b, &c]), policy.clone())).await;
    let mut agent = bed.agent();
    let picks = agent.backends(&vip, 80, None, 12).await;
    let got = counts(&picks);
    assert!(!got.contains_key("a"), "a connection went to the busy backend: {picks:?}");
    assert!(got.contains_key("b") && got.contains_key("c"), "{picks:?}");
    // Two more, held: still not on `a` (b and c have at most one each).
    for key in ["n1", "n2"] {
        let o = agent.open(key, &vip, 80, None).await;
        assert!(matches!(o.backend.as_deref(), Some("b" | "c")), "{o:?}");
    }
    // Once `a`'s connections end it is the least loaded one.
    for key in ["h1", "h2", "h3"] {
        holder.close(key).await;
    }
    until(WAIT, "a new connection going to the backend that went idle", async || {
        (agent.backends(&vip, 80, None, 1).await[0] == "a").then_some(())
    })
    .await;
    assert_eq!(a.accepted(), 4, "no connection went to `a` while it was the busiest");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_of_two_follows_the_weights_roughly() {
    let bed = start_proxy_appliance(None).await;
    let (a, b, c) = (bed.backend("a", 8080).await, bed.backend("b", 8080).await, bed.backend("c", 8080).await);
    let backends = weighted(&[(&a, 1), (&b, 1), (&c, 2)]);
    let vip = bed.create_service(tcp_service("p2c", backends, json!({"algorithm": "power_of_two"}))).await;
    let mut agent = bed.agent();
    let picks = agent.backends(&vip, 80, None, 300).await;
    let got = counts(&picks);
    let (na, nb, nc) = (got.get("a").copied(), got.get("b").copied(), got.get("c").copied());
    let (na, nb, nc) = (na.unwrap_or(0), nb.unwrap_or(0), nc.unwrap_or(0));
    // Random draws: expected 75 : 75 : 150. The bounds are ≥ 4 standard deviations wide (a failure is a bug, not
    // bad luck): everyone gets a share, and the backend of double weight gets the most.
    assert!(na >= 30 && nb >= 30, "{got:?}");
    assert!(nc > na && nc > nb, "{got:?}");
    assert!((105..=195).contains(&nc), "{got:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maglev_keeps_each_client_on_one_backend_and_spreads_clients() {
    let bed = start_proxy_appliance(None).await;
    let (a, b, c) = (bed.backend("a", 8080).await, bed.backend("b", 8080).await, bed.backend("c", 8080).await);
    let vip = bed.create_service(tcp_service("mag", members(&[&a, &b, &c]), json!({"algorithm": "maglev"}))).await;
    let mut agent = bed.agent();
    let mut chosen = BTreeMap::new();
    for n in 1..=30 {
        let src = client(n);
        let picks = agent.backends(&vip, 80, Some(&src), 4).await;
        assert!(picks.iter().all(|p| p == &picks[0]), "client {src} was spread: {picks:?}");
        chosen.insert(src, picks[0].clone());
    }
    let used: BTreeSet<&String> = chosen.values().collect();
    // A consistent hash over three backends puts 30 clients on one backend only with probability ~3⁻²⁹.
    assert!(used.len() >= 2, "every client on one backend: {chosen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maglev_moves_few_clients_when_backends_come_and_go() {
    let bed = start_proxy_appliance(None).await;
    let (a, b, c, d) = (
        bed.backend("a", 8080).await,
        bed.backend("b", 8080).await,
        bed.backend("c", 8080).await,
        bed.backend("d", 8080).await,
    );
    let policy = json!({"algorithm": "maglev"});
    let vip = bed.create_service(tcp_service("mag", members(&[&a, &b, &c]), policy.clone())).await;
    let clients: Vec<String> = (1..=200).map(client).collect();
    let mut agent = bed.agent();
    let three = agent.backends_from(&vip, 80, &clients).await;
    assert_eq!(counts(&three).len(), 3, "200 clients should use all three backends: {:?}", counts(&three));

    bed.update_service(tcp_service("mag", members(&[&a, &b, &c, &d]), policy.clone())).await;
    let four = agent.backends_from(&vip, 80, &clients).await;
    let moved: Vec<usize> = (0..clients.len()).filter(|&i| three[i] != four[i]).collect();
    let to_d = moved.iter().filter(|&&i| four[i] == "d").count();
    let elsewhere = moved.len() - to_d;
    eprintln!(
        "maglev 3 → 4 backends: {} of 200 clients moved ({to_d} to the new backend, {elsewhere} elsewhere)",
        moved.len()
    );
    // The minimum is a quarter (the new backend's share). Maglev's table fill is not perfectly minimal, so a few
    // slots change hands between old backends too: with this balancer, for 3 → 4 backends at 200 random backend
    // address sets, 0.06 % of clients on average and 0.37 % at worst (seen here: 0 or 1 of 200). Four clients
    // (2 %) allow for that with a wide margin; more is not Maglev.
    assert!((20..=80).contains(&moved.len()), "{} of 200 clients moved: {three:?} → {four:?}", moved.len());
    assert!(elsewhere <= 4, "{elsewhere} clients moved between old backends: {three:?} → {four:?}");

    // Removing `b`: its clients must go; the others stay (up to the same slack).
    bed.update_service(tcp_service("mag", members(&[&a, &c, &d]), policy)).await;
    let without_b = agent.backends_from(&vip, 80, &clients).await;
    let mut disturbed = 0;
    for i in 0..clients.len() {
        assert_ne!(without_b[i], "b", "a client still goes to the removed backend");
        if four[i] != "b" && without_b[i] != four[i] {
            disturbed += 1;
        }
    }
    eprintln!("maglev remove one of 4: {disturbed} clients of the other backends moved");
    // The same slack (measured for removing one of 4: 0.06 % on average, 0.27 % at worst).
    assert!(disturbed <= 4, "{disturbed} clients of remaining backends moved: {four:?} → {without_b:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_ip_affinity_keeps_a_client_on_its_backend() {
    let bed = start_proxy_appliance(None).await;
    let (a, b, c) = (bed.backend("a", 8080).await, bed.backend("b", 8080).await, bed.backend("c", 8080).await);
    let policy = json!({"algorithm": "round_robin", "affinity": "client_ip"});
    let vip = bed.create_service(tcp_service("aff", members(&[&a, &b, &c]), policy.clone())).await;
    let mut agent = bed.agent();
    let mut first = Vec::new();
    for n in 1..=3 {
        let src = client(n);
        let picks = agent.backends(&vip, 80, Some(&src), 6).await;
        assert!(picks.iter().all(|p| p == &picks[0]), "client {src} under round robin with affinity: {picks:?}");
        first.push(picks[0].clone());
    }
    // A returning client does not advance the rotation, so three new clients got three different backends.
    let distinct: BTreeSet<&String> = first.iter().collect();
    assert_eq!(distinct.len(), 3, "{first:?}");

    // A change of the backend set keeps the affinities of backends that stay.
    let d = bed.backend("d", 8080).await;
    bed.update_service(tcp_service("aff", members(&[&a, &b, &c, &d]), policy)).await;
    for (n, before) in (1..=3).zip(&first) {
        let src = client(n);
        let picks = agent.backends(&vip, 80, Some(&src), 3).await;
        assert!(picks.iter().all(|p| p == before), "client {src} left {before} after a change: {picks:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_ip_affinity_expires_after_its_timeout() {
    let bed = start_proxy_appliance(None).await;
    let (a, b) = (bed.backend("a", 8080).await, bed.backend("b", 8080).await);
    let policy = json!({"algorithm": "round_robin", "affinity": "client_ip", "affinity_timeout": 1});
    let vip = bed.create_service(tcp_service("aff", members(&[&a, &b]), policy)).await;
    let mut agent = bed.agent();
    let src = client(1);
    let first = agent.backends(&vip, 80, Some(&src), 1).await.remove(0);
    // Back after more than the timeout (counted from its last new connection): a new pick, and as nobody else
    // picked meanwhile, round robin gives the other backend. A return within the timeout (a slow machine) keeps
    // the backend and restarts the timeout; then the client stays away again.
    until(WAIT, "the client's affinity expiring", async || {
        tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
        let now = agent.backends(&vip, 80, Some(&src), 1).await.remove(0);
        (now != first).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_of_weight_zero_takes_nothing_new() {
    let bed = start_proxy_appliance(None).await;
    let (a, b, c) = (bed.backend("a", 8080).await, bed.backend("b", 8080).await, bed.backend("c", 8080).await);
    let service =
        |algorithm| tcp_service("zero", weighted(&[(&a, 1), (&b, 0), (&c, 1)]), json!({"algorithm": algorithm}));
    let vip = bed.create_service(service("round_robin")).await;
    let mut agent = bed.agent();
    let srcs: Vec<String> = (1..=20).map(client).collect();
    for algorithm in ["round_robin", "weighted_round_robin", "least_connections", "power_of_two", "maglev"] {
        bed.update_service(service(algorithm)).await;
        let picks = agent.backends_from(&vip, 80, &srcs).await;
        assert!(!picks.iter().any(|p| p == "b"), "{algorithm} sent a connection to a backend of weight 0: {picks:?}");
    }
    assert_eq!(b.accepted(), 0);
}
