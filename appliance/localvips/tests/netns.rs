//! Local VIPs against the real kernel, each test in a network namespace of its own.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{NetNs, ip, service_draining, snapshot, snapshot_of};
use model::subsystem::{Health, Subsystem};
use portico_localvips::{LocalVips, LocalVipsOptions, SysctlOutcome};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Instant;

fn options() -> LocalVipsOptions {
    LocalVipsOptions { interface: "portico0".into() }
}

#[test]
fn vips_follow_the_snapshots() {
    let Some(ns) = NetNs::new("follow") else { return };
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let (back_tx, back_rx) = std::sync::mpsc::channel::<()>();
    let name = ns.name.clone();
    // The subsystem lives on the namespace thread; the test thread checks with `ip` between steps.
    let worker = std::thread::spawn(move || {
        let ns = NetNs { name };
        let out = ns.run(move || async move {
            let mut lv = LocalVips::new(options());
            let handle = lv.handle();
            let r = lv.apply(snapshot(1, &["192.0.2.1", "192.0.2.2", "2001:db8::1"])).await.unwrap();
            assert_eq!(r.health, Health::Ok, "{}", r.detail);
            back_tx.send(()).unwrap();
            rx.recv().unwrap();
            let r = lv.apply(snapshot(2, &["192.0.2.2", "192.0.2.3", "2001:db8::2"])).await.unwrap();
            assert_eq!(r.health, Health::Ok, "{}", r.detail);
            let st = handle.status();
            assert_eq!(st.generation, Some(2));
            let stats = st.last_apply.clone().unwrap();
            assert_eq!((stats.added, stats.removed, stats.failed), (2, 2, 0));
            assert_eq!(st.addresses, vec![ip("192.0.2.2"), ip("192.0.2.3"), ip("2001:db8::2")]);
            // The same snapshot again changes nothing.
            lv.apply(snapshot(3, &["192.0.2.2", "192.0.2.3", "2001:db8::2"])).await.unwrap();
            let stats = handle.status().last_apply.unwrap();
            assert_eq!((stats.added, stats.removed), (0, 0));
            back_tx.send(()).unwrap();
            rx.recv().unwrap();
            lv.shutdown().await;
            handle.status()
        });
        std::mem::forget(ns); // the outer NetNs owns the namespace
        out
    });
    back_rx.recv().unwrap();
    assert_eq!(ns.addrs("portico0"), vec!["192.0.2.1/32", "192.0.2.2/32", "2001:db8::1/128"]);
    let link = ns.ip(&["link", "show", "dev", "portico0"]);
    assert!(link.contains("NOARP") && link.contains(",UP"), "{link}");
    // A dummy, or an ifb where the kernel has no dummy driver (as on the VMs these tests run on).
    let details = ns.ip(&["-d", "link", "show", "dev", "portico0"]);
    assert!(details.contains("dummy") || details.contains("ifb"), "{details}");
    // IPv6 VIPs are added without duplicate address detection (never tentative).
    let v6 = ns.addr_lines("portico0").into_iter().find(|l| l.contains("2001:db8::1/128")).unwrap();
    assert!(v6.contains("nodad") && v6.contains("noprefixroute") && !v6.contains("tentative"), "{v6}");
    // No kernel-made link-local address on the VIP interface.
    assert!(!ns.addr_lines("portico0").iter().any(|l| l.contains("fe80::")));
    // The sysctls, in this namespace.
    assert_eq!(ns.sysctl("net.ipv4.ip_nonlocal_bind"), "1");
    assert_eq!(ns.sysctl("net.ipv6.ip_nonlocal_bind"), "1");
    assert_eq!(ns.sysctl("net.ipv4.conf.all.arp_ignore"), "1");
    assert_eq!(ns.sysctl("net.ipv4.conf.all.arp_announce"), "2");
    tx.send(()).unwrap();
    back_rx.recv().unwrap();
    assert_eq!(ns.addrs("portico0"), vec!["192.0.2.2/32", "192.0.2.3/32", "2001:db8::2/128"]);
    tx.send(()).unwrap();
    let st = worker.join().unwrap();
    // Shutdown: this run created the interface, so it is gone, and with it every VIP.
    assert!(!ns.has_link("portico0"));
    assert!(st.addresses.is_empty());
    assert!(st.created_interface);
    assert!(st.sysctls.iter().all(|s| !s.failed()), "{:?}", st.sysctls);
}

#[test]
fn leftovers_of_a_previous_run_are_removed_and_nothing_else_is_touched() {
    let Some(ns) = NetNs::new("leftover") else { return };
    // A previous run's interface, with a stale VIP, a still-wanted VIP, a hand-made /24 and an IPv6 leftover.
    ns.add_dummy("portico0");
    ns.ip(&["link", "set", "portico0", "up"]);
    for a in ["198.51.100.9/32", "198.51.100.1/32", "203.0.113.5/24"] {
        ns.ip(&["addr", "add", a, "dev", "portico0"]);
    }
    ns.ip(&["addr", "add", "2001:db8::99/128", "dev", "portico0", "nodad"]);
    // Another interface with addresses that must survive.
    ns.add_dummy("other0");
    ns.ip(&["addr", "add", "198.51.100.9/32", "dev", "other0"]);
    ns.ip(&["addr", "add", "10.1.1.1/24", "dev", "other0"]);
    let other_before = ns.addrs("other0");

    let st = ns.run(|| async {
        let mut lv = LocalVips::new(options());
        let r = lv.apply(snapshot(1, &["198.51.100.1", "198.51.100.2"])).await.unwrap();
        assert_eq!(r.health, Health::Ok, "{}", r.detail);
        let st = lv.handle().status();
        let stats = st.last_apply.clone().unwrap();
        assert_eq!((stats.added, stats.removed), (1, 3));
        st
    });
    assert!(!st.created_interface);
    // The kernel's own link-local address of that interface (made before we set addr_gen_mode) is left alone.
    assert_eq!(ns.global_addrs("portico0"), vec!["198.51.100.1/32", "198.51.100.2/32"]);
    // The existing interface was brought to NOARP too.
    assert!(ns.ip(&["link", "show", "dev", "portico0"]).contains("NOARP"));
    assert_eq!(ns.addrs("other0"), other_before);

    // A crash (no shutdown) followed by a new run: the new run reconciles, and its shutdown empties the
    // interface it did not create without deleting it.
    ns.run(|| async {
        let mut lv = LocalVips::new(options());
        lv.apply(snapshot(1, &["198.51.100.2", "2001:db8::7"])).await.unwrap();
        lv.shutdown().await;
    });
    assert!(ns.has_link("portico0"));
    assert!(ns.global_addrs("portico0").is_empty(), "{:?}", ns.addrs("portico0"));
    assert_eq!(ns.addrs("other0"), other_before);
}

#[test]
fn an_interface_of_another_kind_is_left_alone() {
    let Some(ns) = NetNs::new("foreign") else { return };
    ns.ip(&["link", "add", "portico0", "type", "veth", "peer", "name", "peer0"]);
    ns.ip(&["addr", "add", "10.2.2.2/24", "dev", "portico0"]);
    let err = ns.run(|| async {
        let mut lv = LocalVips::new(options());
        let e = lv.apply(snapshot(1, &["192.0.2.1"])).await.unwrap_err();
        // Between snapshots the runner asks for a report: it must still say failed.
        assert_eq!(lv.report().map(|r| r.health), Some(Health::Failed));
        let st = lv.handle().status();
        lv.shutdown().await;
        (e.0, st)
    });
    assert!(err.0.contains("not a dummy"), "{}", err.0);
    assert!(err.1.last_error.unwrap().contains("not a dummy"));
    assert_eq!(ns.addrs("portico0"), vec!["10.2.2.2/24"]);
}

#[test]
fn a_listener_on_a_vip_accepts_connections() {
    let Some(ns) = NetNs::new("listen") else { return };
    ns.run(|| async {
        let mut lv = LocalVips::new(options());
        // Sysctls first (with no VIP yet): a listener may bind a VIP that is not there yet.
        lv.apply(snapshot(1, &[])).await.unwrap();
        let v4 = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10));
        let v6 = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0x10));
        let early = tokio::net::TcpListener::bind((v4, 8080)).await.expect("non-local bind of a VIP not yet present");
        lv.apply(snapshot(2, &["192.0.2.10", "2001:db8::10"])).await.unwrap();
        let late = tokio::net::TcpListener::bind((v6, 8080)).await.unwrap();
        for (listener, vip) in [(early, v4), (late, v6)] {
            let client = tokio::spawn(async move {
                // The kernel may take a moment after the netlink ack before the new address routes locally
                // (seen as ENETUNREACH on a loaded machine).
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
                let mut s = loop {
                    match tokio::net::TcpStream::connect((vip, 8080)).await {
                        Ok(s) => break s,
                        Err(_) if std::time::Instant::now() < deadline => {
                            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                        }
                        Err(e) => panic!("connect to {vip}: {e}"),
                    }
                };
                tokio::io::AsyncWriteExt::write_all(&mut s, b"hello").await.unwrap();
            });
            let (mut conn, peer) = listener.accept().await.unwrap();
            let mut buf = Vec::new();
            tokio::io::AsyncReadExt::read_to_end(&mut conn, &mut buf).await.unwrap();
            assert_eq!(buf, b"hello");
            assert_eq!(peer.ip(), vip, "a connection to a local VIP comes from the VIP itself");
            client.await.unwrap();
        }
        lv.shutdown().await;
    });
}

#[test]
fn sysctls_are_written_only_where_needed() {
    let Some(ns) = NetNs::new("sysctl") else { return };
    ns.exec(&["sysctl", "-qw", "net.ipv4.conf.all.arp_ignore=2"]);
    ns.exec(&["sysctl", "-qw", "net.ipv4.ip_nonlocal_bind=1"]);
    let st = ns.run(|| async {
        let mut lv = LocalVips::new(options());
        lv.apply(snapshot(1, &["192.0.2.1"])).await.unwrap();
        let st = lv.handle().status();
        lv.shutdown().await;
        st
    });
    let outcome = |k: &str| st.sysctls.iter().find(|s| s.key == k).map(|s| s.outcome.clone());
    assert_eq!(outcome("net.ipv4.conf.all.arp_ignore"), Some(SysctlOutcome::AlreadySet));
    assert_eq!(outcome("net.ipv4.ip_nonlocal_bind"), Some(SysctlOutcome::AlreadySet));
    assert_eq!(outcome("net.ipv6.ip_nonlocal_bind"), Some(SysctlOutcome::Written));
    assert_eq!(outcome("net.ipv4.conf.all.arp_announce"), Some(SysctlOutcome::Written));
    assert_eq!(ns.sysctl("net.ipv4.conf.all.arp_ignore"), "2");
}

#[test]
fn ten_thousand_vips() {
    let Some(ns) = NetNs::new("tenk") else { return };
    let report = ns.run(|| async {
        let v4 = |i: u32| IpAddr::V4(Ipv4Addr::from(0x0a40_0000 + i)); // 10.64.0.0 onwards
        let v6 = |i: u32| IpAddr::V6(Ipv6Addr::from(0x2001_0db8_0000_0000_0000_0000_0001_0000u128 + u128::from(i)));
        let mut lv = LocalVips::new(options());
        lv.apply(snapshot(1, &[])).await.unwrap();
        let mut lines = Vec::new();
        let mut step = async |lv: &mut LocalVips, what: &str, gen_: u64, vips: Vec<IpAddr>| {
            let n = vips.len();
            let snap = snapshot_of(gen_, vips);
            let t = Instant::now();
            let r = lv.apply(snap).await.unwrap();
            let took = t.elapsed();
            assert_eq!(r.health, Health::Ok, "{}", r.detail);
            let st = lv.handle().status();
            assert_eq!(st.addresses.len(), n);
            let s = st.last_apply.unwrap();
            lines.push(format!("{what}: +{} -{} in {:.1} ms", s.added, s.removed, took.as_secs_f64() * 1e3));
        };
        step(&mut lv, "10,000 IPv4 added", 2, (0..10_000).map(v4).collect()).await;
        step(&mut lv, "same 10,000 again", 3, (0..10_000).map(v4).collect()).await;
        step(&mut lv, "5,000 removed, 5,000 added", 4, (5_000..15_000).map(v4).collect()).await;
        step(&mut lv, "10,000 IPv4 swapped for 10,000 IPv6", 5, (0..10_000).map(v6).collect()).await;
        let t = Instant::now();
        lv.shutdown().await;
        lines.push(format!("shutdown (interface deleted) in {:.1} ms", t.elapsed().as_secs_f64() * 1e3));
        lines
    });
    // Wall-clock figures are printed, not asserted (see DESIGN.md); run with --nocapture to see them.
    for line in &report {
        eprintln!("local VIPs timing: {line}");
    }
    assert!(!ns.has_link("portico0"));
}

#[test]
fn without_cap_net_admin_it_is_degraded_not_dead() {
    let Some(ns) = NetNs::new("nocap") else { return };
    let (report, status) = ns.run(|| async {
        // Capabilities are per thread: only this namespace thread loses CAP_NET_ADMIN.
        caps::drop(None, caps::CapSet::Effective, caps::Capability::CAP_NET_ADMIN).unwrap();
        let mut lv = LocalVips::new(options());
        let report = lv.apply(snapshot(1, &["192.0.2.1"])).await.expect("degraded, not failed");
        // A second snapshot retries and is still degraded, without panicking.
        let report2 = lv.apply(snapshot(2, &["192.0.2.1"])).await.expect("degraded, not failed");
        assert_eq!(report2.health, Health::Degraded);
        let status = lv.handle().status();
        lv.shutdown().await;
        (report, status)
    });
    assert_eq!(report.health, Health::Degraded);
    assert!(report.detail.contains("CAP_NET_ADMIN"), "{}", report.detail);
    assert!(status.last_error.unwrap().contains("no permission"));
    assert!(status.addresses.is_empty());
    assert!(!ns.has_link("portico0"));
}

#[test]
fn a_released_vip_stays_local_for_its_drain_timeout() {
    let Some(ns) = NetNs::new("linger") else { return };
    let name = ns.name.clone();
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let (back_tx, back_rx) = std::sync::mpsc::channel::<()>();
    let worker = std::thread::spawn(move || {
        let ns = NetNs { name };
        ns.run(move || async move {
            let one = |generation, vips: &[&str]| {
                let services =
                    vips.iter().enumerate().map(|(i, v)| service_draining(&format!("s{i}"), &[ip(v)], 1)).collect();
                std::sync::Arc::new(model::snapshot::Snapshot { generation, services, ..Default::default() })
            };
            let mut lv = LocalVips::new(options());
            let handle = lv.handle();
            lv.apply(one(1, &["192.0.2.1", "192.0.2.2"])).await.unwrap();
            assert!(lv.reapply_at().is_none());
            // 192.0.2.2 is released: it stays while its connections drain, and the subsystem asks to be
            // applied again at the deadline.
            lv.apply(one(2, &["192.0.2.1"])).await.unwrap();
            assert_eq!(handle.status().draining, vec![ip("192.0.2.2")]);
            let at = lv.reapply_at().expect("a deadline");
            back_tx.send(()).unwrap();
            rx.recv().unwrap();
            tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await;
            lv.apply(one(2, &["192.0.2.1"])).await.unwrap();
            assert!(handle.status().draining.is_empty());
            assert!(lv.reapply_at().is_none());
            back_tx.send(()).unwrap();
            rx.recv().unwrap();
            lv.shutdown().await;
        });
        std::mem::forget(ns);
    });
    back_rx.recv().unwrap();
    assert_eq!(ns.addrs("portico0"), vec!["192.0.2.1/32", "192.0.2.2/32"]);
    tx.send(()).unwrap();
    back_rx.recv().unwrap();
    assert_eq!(ns.addrs("portico0"), vec!["192.0.2.1/32"]);
    tx.send(()).unwrap();
    worker.join().unwrap();
}
