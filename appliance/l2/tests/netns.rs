//! The responder against real tools across a veth pair between two network namespaces the test makes:
//! `arping` and `ndisc6` from the client namespace get the responder's MAC, `tcpdump` sees the gratuitous
//! announcements (at start, on link up), a released VIP stops being answered, and a flood of ARP requests for
//! other addresses does not stop answers. Needs root and the Debian packages `arping`, `ndisc6`, `tcpdump`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::print_stdout)]

#[path = "../src/testutil.rs"]
mod testutil;

use model::bgp::AnnounceWhen;
use model::l2::L2Advertisement;
use model::snapshot::Snapshot;
use model::subsystem::Subsystem;
use nix::sched::{CloneFlags, setns};
use portico_l2::link::{self, PacketSocket};
use portico_l2::wire;
use portico_l2::{Responder, ResponderHandle};
use std::net::Ipv4Addr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};
use testutil::*;

const VIP4: &str = "192.0.2.10";
const VIP6: &str = "2001:db8::10";

static SEQ: AtomicU32 = AtomicU32::new(0);

fn run(args: &[&str]) -> std::process::Output {
    Command::new(args[0]).args(&args[1..]).output().unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

fn must(args: &[&str]) {
    let out = run(args);
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Two namespaces joined by a veth pair; deleted on drop (also when the test panics).
struct Net {
    ns_a: String,
    ns_c: String,
    if_a: String,
    if_c: String,
}

impl Net {
    fn new() -> Net {
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let id = format!("{}{n}", std::process::id());
        let net = Net {
            ns_a: format!("pl2a{id}"),
            ns_c: format!("pl2c{id}"),
            if_a: format!("l2a{id}"),
            if_c: format!("l2c{id}"),
        };
        must(&["ip", "netns", "add", &net.ns_a]);
        must(&["ip", "netns", "add", &net.ns_c]);
        must(&[
            "ip", "link", "add", &net.if_a, "netns", &net.ns_a, "type", "veth", "peer", "name", &net.if_c, "netns",
            &net.ns_c,
        ]);
        must(&["ip", "-n", &net.ns_c, "addr", "add", "192.0.2.1/24", "dev", &net.if_c]);
        must(&["ip", "-n", &net.ns_c, "addr", "add", "2001:db8::1/64", "dev", &net.if_c, "nodad"]);
        // No duplicate address detection: the client's link-local address is usable at once (ndisc6 sends
        // nothing while it is tentative).
        for (ns, ifname) in [(&net.ns_a, &net.if_a), (&net.ns_c, &net.if_c)] {
            let key = format!("net.ipv6.conf.{ifname}.accept_dad=0");
            must(&["ip", "netns", "exec", ns, "sysctl", "-q", "-w", &key]);
        }
        must(&["ip", "-n", &net.ns_a, "link", "set", &net.if_a, "up"]);
        must(&["ip", "-n", &net.ns_c, "link", "set", &net.if_c, "up"]);
        net
    }

    /// Moves the calling thread into namespace `ns` (only this thread).
    fn enter(ns: &str) {
        let f = std::fs::File::open(format!("/var/run/netns/{ns}")).unwrap();
        setns(&f, CloneFlags::CLONE_NEWNET).unwrap();
    }

    fn in_client(&self, args: &[&str]) -> std::process::Output {
        let mut all = vec!["ip", "netns", "exec", &self.ns_c];
        all.extend_from_slice(args);
        run(&all)
    }

    fn arping(&self, vip: &str, count: u32) -> String {
        let c = count.to_string();
        // -W: seconds between requests; -w: deadline for the whole run.
        let deadline = (count + 2).to_string();
        let out = self.in_client(&["arping", "-c", &c, "-W", "0.2", "-w", &deadline, "-I", &self.if_c, vip]);
        String::from_utf8_lossy(&out.stdout).to_lowercase()
    }

    /// ndisc6's answer; tries up to three times (right after link up, ndisc6 may send nothing while the
    /// client's IPv6 addresses settle).
    fn ndisc6(&self, vip: &str, want: &str) -> String {
        wait_for("the client's link-local address", || {
            let out = self.in_client(&["ip", "-6", "addr", "show", "dev", &self.if_c, "scope", "link"]);
            let text = String::from_utf8_lossy(&out.stdout).to_string();
            text.contains("fe80") && !text.contains("tentative")
        });
        let mut all = String::new();
        for _ in 0..3 {
            let out = self.in_client(&["ndisc6", "-1", "-r", "2", "-w", "500", vip, &self.if_c]);
            let text = String::from_utf8_lossy(&out.stdout).to_lowercase();
            all.push_str(&text);
            if text.contains(want) {
                break;
            }
        }
        all
    }

    fn capture(&self) -> Capture {
        let file = std::env::temp_dir().join(format!("{}.txt", self.ns_c));
        let out = std::fs::File::create(&file).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns_c, "tcpdump", "-l", "-n", "-i", &self.if_c, "arp or icmp6"])
            .stdout(out)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // tcpdump says "listening on" on stderr once the capture runs.
        let mut child = child;
        let mut stderr = child.stderr.take().unwrap();
        let mut seen = Vec::new();
        let mut b = [0u8; 256];
        while !String::from_utf8_lossy(&seen).contains("listening on") {
            let n = std::io::Read::read(&mut stderr, &mut b).unwrap();
            assert!(n > 0, "tcpdump: {}", String::from_utf8_lossy(&seen));
            seen.extend_from_slice(&b[..n]);
        }
        // Keep reading: with the pipe closed, tcpdump's next write to stderr (the rest of that line, at times)
        // killed it with SIGPIPE, and the capture stayed empty.
        std::thread::spawn(move || std::io::copy(&mut stderr, &mut std::io::sink()));
        Capture { child, file }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        let _ = run(&["ip", "netns", "del", &self.ns_a]);
        let _ = run(&["ip", "netns", "del", &self.ns_c]);
    }
}

struct Capture {
    child: Child,
    file: std::path::PathBuf,
}

impl Capture {
    fn lines(&self) -> Vec<String> {
        std::fs::read_to_string(&self.file).unwrap_or_default().lines().map(str::to_owned).collect()
    }

    fn gratuitous_arps(&self) -> usize {
        self.lines().iter().filter(|l| l.contains(&format!("Request who-has {VIP4} tell {VIP4}"))).count()
    }

    fn unsolicited_nas(&self) -> usize {
        self.lines()
            .iter()
            .filter(|l| l.contains(&format!("ff02::1: ICMP6, neighbor advertisement, tgt is {VIP6}")))
            .count()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.file);
    }
}

fn apply(rt: &tokio::runtime::Runtime, r: &mut Responder, s: Snapshot) {
    let report = rt.block_on(r.apply(Arc::new(s))).unwrap();
    println!("apply: {report:?}");
}

fn announcing(net: &Net, garp_count: u8, vips: &[&str]) -> Snapshot {
    let adv = L2Advertisement {
        garp_count,
        garp_interval: 100,
        announce_when: AnnounceWhen::Always,
        ..advertisement("lan", &[&net.if_a])
    };
    let services = if vips.is_empty() { vec![] } else { vec![service("web", vips, false)] };
    snapshot(1, vec![], services, vec![adv])
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < Duration::from_secs(10), "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn mac_of(handle: &ResponderHandle) -> String {
    handle.status()[0].mac.clone().unwrap()
}

#[test]
fn answers_announces_and_releases() {
    let net = Net::new();
    Net::enter(&net.ns_a);
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let mut responder = Responder::new();
    let handle = responder.handle();
    let capture = net.capture();

    apply(&rt, &mut responder, announcing(&net, 2, &[VIP4, VIP6]));
    wait_for("the interface to come up", || handle.status().first().is_some_and(|s| s.up));
    let mac = mac_of(&handle);

    // arping and ndisc6 get our MAC.
    let out = net.arping(VIP4, 1);
    assert!(out.contains(&mac), "arping: {out}");
    let out = net.ndisc6(VIP6, &mac);
    assert!(out.contains(&mac), "ndisc6 (mac {mac}): {out}\n{:?}\n{}", handle.status(), capture.lines().join("\n"));

    // Two gratuitous ARPs and two unsolicited NAs at start.
    std::thread::sleep(Duration::from_millis(500));
    println!("{}", capture.lines().join("\n"));
    wait_for("the gratuitous announcements", || capture.gratuitous_arps() == 2 && capture.unsolicited_nas() == 2);
    let st = &handle.status()[0];
    assert_eq!(st.gratuitous_sent, 4, "{st:?}");
    assert!(st.requests_answered >= 2, "{st:?}");
    assert!(st.vips.iter().all(|v| v.announced), "{st:?}");

    // Link down and up again: announced again.
    must(&["ip", "-n", &net.ns_a, "link", "set", &net.if_a, "down"]);
    wait_for("the interface to be down", || !handle.status()[0].up);
    must(&["ip", "-n", &net.ns_a, "link", "set", &net.if_a, "up"]);
    wait_for("the announcements after link up", || capture.gratuitous_arps() == 4 && capture.unsolicited_nas() == 4);
    let out = net.arping(VIP4, 1);
    assert!(out.contains(&mac), "arping after link up: {out}");

    // Released: no more answers, at once.
    apply(&rt, &mut responder, announcing(&net, 2, &[]));
    let out = net.arping(VIP4, 2);
    assert!(!out.contains(&mac), "arping after release: {out}");
    let out = net.ndisc6(VIP6, &mac);
    assert!(!out.contains(&mac), "ndisc6 after release: {out}");
    assert!(handle.status()[0].vips.is_empty());
    responder.shutdown();
    println!("{}", capture.lines().join("\n"));
}

#[test]
fn interface_that_comes_later_and_goes_away() {
    let net = Net::new();
    Net::enter(&net.ns_a);
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let mut responder = Responder::new();
    let handle = responder.handle();
    // A second interface that does not exist yet.
    let late = format!("{}x", net.if_a);
    let mut s = announcing(&net, 1, &[VIP4]);
    s.l2_advertisements[0].interfaces.push(late.clone());
    apply(&rt, &mut responder, s);
    wait_for("the missing interface reported", || {
        handle.status().iter().any(|s| s.interface == late && !s.up && s.last_error.is_some())
    });
    let report = responder.report().unwrap();
    assert_eq!(report.health, model::subsystem::Health::Degraded, "{report:?}");
    let peer = format!("{}y", net.if_a);
    must(&["ip", "-n", &net.ns_a, "link", "add", &late, "type", "veth", "peer", "name", &peer]);
    must(&["ip", "-n", &net.ns_a, "link", "set", &peer, "up"]);
    must(&["ip", "-n", &net.ns_a, "link", "set", &late, "up"]);
    wait_for("the late interface up", || handle.status().iter().any(|s| s.interface == late && s.up));
    wait_for("its announcement", || handle.status().iter().any(|s| s.interface == late && s.gratuitous_sent == 1));
    must(&["ip", "-n", &net.ns_a, "link", "del", &late]);
    wait_for("the interface gone", || handle.status().iter().any(|s| s.interface == late && !s.up));
    // The other interface kept answering throughout.
    let mac = handle.status().iter().find(|s| s.interface == net.if_a).unwrap().mac.clone().unwrap();
    assert!(net.arping(VIP4, 1).contains(&mac));
    responder.shutdown();
}

/// ARP requests for other addresses at about 50,000 a second from the client while it asks for the VIP.
#[test]
fn flood_does_not_stop_answers() {
    let net = Net::new();
    let stop = Arc::new(AtomicBool::new(false));
    let flood = {
        let (ns, ifc, stop) = (net.ns_c.clone(), net.if_c.clone(), stop.clone());
        std::thread::spawn(move || {
            Net::enter(&ns);
            let l = link::lookup(&ifc).unwrap().unwrap();
            let sock = PacketSocket::open(&ifc, &l, false, Duration::from_millis(10)).unwrap();
            let mut buf = [0u8; wire::MAX_FRAME];
            let mut sent = 0u64;
            let start = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                // 500 frames per 10 ms.
                for i in 0..500u32 {
                    let target = Ipv4Addr::from(0xc000_0200u32 + 100 + (i % 100)); // 192.0.2.100..199
                    let n = wire::arp_request_for_tests(&mut buf, l.mac, Ipv4Addr::new(192, 0, 2, 1), target);
                    if sock.send(&buf[..n]).is_ok() {
                        sent += 1;
                    }
                }
                let due = start + Duration::from_micros(sent * 20);
                if let Some(d) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(d);
                }
            }
            (sent, start.elapsed())
        })
    };
    Net::enter(&net.ns_a);
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let mut responder = Responder::new();
    let handle = responder.handle();
    apply(&rt, &mut responder, announcing(&net, 0, &[VIP4]));
    wait_for("the interface to come up", || handle.status().first().is_some_and(|s| s.up));
    let mac = mac_of(&handle);
    std::thread::sleep(Duration::from_millis(500));
    let out = net.arping(VIP4, 5);
    let replies = out.matches(&mac).count();
    stop.store(true, Ordering::Relaxed);
    let (sent, took) = flood.join().unwrap();
    let rate = sent as f64 / took.as_secs_f64();
    let st = &handle.status()[0];
    println!("flood: {sent} frames in {took:?} ({rate:.0}/s); status {st:?}");
    assert!(replies >= 4, "{replies} of 5 answered during the flood: {out}");
    assert!(st.frames_ignored > 10_000, "{st:?}");
    responder.shutdown();
}
