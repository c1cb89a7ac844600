//! The ARP/NDP responder against the kernel's own neighbour replies (issue #5). Two network namespaces joined by a
//! veth pair (the end-to-end harness `tests/e2e/netns.rs`, included here as a module): on the responder side the
//! interface has an ordinary IPv4 and IPv6 address, which the kernel answers for, and the `portico-l2`
//! [`Responder`] (the crate, in process, not the whole appliance) answers for one static service's VIPs on the
//! same interface, driven by a [`Snapshot`] as the appliance drives it. From the client side, our own `AF_PACKET`
//! sender and receiver (a thread that entered the client namespace):
//!
//! - latency: `--requests` ARP requests to the kernel's address and to the VIP, interleaved, one outstanding at
//!   a time, each timed from just before `send` to the `recv` of its reply (`Instant`), first busy-polling the
//!   socket, then with blocking reads; the same for IPv6
//!   Neighbor Solicitations. p50/p99/max and the ratio responder/kernel.
//! - rate: ARP requests for one address sent as fast as one thread can for `--seconds`, and the replies counted
//!   at the client; for the VIP also the responder's own answered counter and the CPU its interface thread used.
//!
//! With two or more cores the responder (its interface thread inherits the affinity of the thread that starts
//! it) is pinned to CPU 0 and the client's threads to CPU 1. Needs root. Namespaces and the veth pair are removed
//! at the end, on failure and on Ctrl-C.

// A benchmark reports on standard output.
#![allow(clippy::print_stdout)]

#[allow(clippy::expect_used, clippy::panic, clippy::unwrap_used)]
#[path = "../../../tests/e2e/netns.rs"]
mod netns;

#[allow(clippy::expect_used, clippy::panic, clippy::unwrap_used)]
#[path = "../../../appliance/l2/src/testutil.rs"]
mod testutil;

use anyhow::{Context, Result, anyhow, bail};
use clap::Parser;
use l2::Responder;
use l2::link::{self, PacketSocket};
use l2::wire::{self, MAX_FRAME, Mac};
use model::bgp::AnnounceWhen;
use model::l2::{L2Advertisement, L2InterfaceStatus};
use model::subsystem::Subsystem;
use netns::{Link, Netns};
use nix::sched::{CloneFlags, CpuSet, sched_setaffinity, setns};
use nix::unistd::Pid;
use portico_bench::stats::{Summary, table};
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr, Icmpv6Packet, Icmpv6Repr, IpProtocol, Ipv6Packet,
    Ipv6Repr, NdiscRepr, RawHardwareAddress,
};
use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

#[derive(Debug, Parser)]
struct Args {
    /// Requests per address and family in the latency phase (interleaved: kernel, VIP, kernel, …).
    #[arg(long, default_value_t = 10_000)]
    requests: usize,
    /// Seconds of each rate measurement.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Skip the IPv6 Neighbor Solicitation latencies.
    #[arg(long)]
    no_ipv6: bool,
    /// Do not pin the responder to CPU 0 and the client to CPU 1.
    #[arg(long)]
    no_pin: bool,
}

/// The VIPs the responder announces (off the link's own subnets: the kernel has no address for them).
const VIP4: Ipv4Addr = Ipv4Addr::new(198, 18, 5, 10);
const VIP6: Ipv6Addr = Ipv6Addr::new(0xfd50, 0x7274, 0xd5, 0, 0, 0, 0, 0x10);
/// A reply later than this counts as lost.
const REPLY_TIMEOUT: Duration = Duration::from_millis(200);
/// How long the receiver keeps draining after the sender stopped.
const DRAIN: Duration = Duration::from_millis(200);

/// Moves the calling thread (only it) into the namespace.
fn enter(ns: &str) -> Result<()> {
    let f = std::fs::File::open(format!("/var/run/netns/{ns}")).with_context(|| format!("open netns {ns}"))?;
    setns(&f, CloneFlags::CLONE_NEWNET).with_context(|| format!("setns {ns}"))
}

/// Pins the calling thread (and the threads it starts from now on) to one CPU.
fn pin(cpu: Option<usize>) -> Result<()> {
    let Some(cpu) = cpu else { return Ok(()) };
    let mut set = CpuSet::new();
    set.set(cpu)?;
    sched_setaffinity(Pid::from_raw(0), &set).context("sched_setaffinity")
}

// ---------------------------------------------------------------------------------------------------------------
// Frames.

const LD_W_ABS: u16 = 0x20;
const LD_H_ABS: u16 = 0x28;
const LD_B_ABS: u16 = 0x30;
const JEQ_K: u16 = 0x15;
const RET_K: u16 = 0x06;

/// The client's filter: received (not sent) ARP replies and Neighbor Advertisements only, so the client's
/// socket is not also busy with its own requests.
fn client_filter() -> Vec<socket2::SockFilter> {
    let program: [(u16, u8, u8, u32); 13] = [
        (LD_W_ABS, 0, 0, l2::filter::AD_PKTTYPE),
        (JEQ_K, 10, 0, l2::filter::PACKET_OUTGOING),
        (LD_H_ABS, 0, 0, 12),
        (JEQ_K, 0, 2, 0x0806),
        (LD_H_ABS, 0, 0, 20),
        (JEQ_K, 5, 6, 2), // ARP reply
        (JEQ_K, 0, 5, 0x86dd),
        (LD_B_ABS, 0, 0, 20),
        (JEQ_K, 0, 3, 58),
        (LD_B_ABS, 0, 0, 54),
        (JEQ_K, 0, 1, 136), // Neighbor Advertisement
        (RET_K, 0, 0, 2048),
        (RET_K, 0, 0, 0),
    ];
    program.iter().map(|&(c, jt, jf, k)| socket2::SockFilter::new(c, jt, jf, k)).collect()
}

/// A Neighbor Solicitation from `src` (with its link-layer address option) for `target`, to the target's
/// solicited-node group, as hosts send it.
fn neighbor_solicit(buf: &mut [u8; MAX_FRAME], own: Mac, src: Ipv6Addr, target: Ipv6Addr) -> usize {
    let group = wire::solicited_node(target);
    let icmp = Icmpv6Repr::Ndisc(NdiscRepr::NeighborSolicit {
        target_addr: target,
        lladdr: Some(RawHardwareAddress::from_bytes(&own)),
    });
    let icmp_len = icmp.buffer_len();
    let ip = Ipv6Repr {
        src_addr: src,
        dst_addr: group,
        next_header: IpProtocol::Icmpv6,
        payload_len: icmp_len,
        hop_limit: 255,
    };
    let ip_len = ip.buffer_len();
    let total = 14 + ip_len + icmp_len;
    let eth = EthernetRepr {
        src_addr: EthernetAddress(own),
        dst_addr: EthernetAddress(wire::multicast_mac(group)),
        ethertype: EthernetProtocol::Ipv6,
    };
    eth.emit(&mut EthernetFrame::new_unchecked(&mut buf[..]));
    ip.emit(&mut Ipv6Packet::new_unchecked(&mut buf[14..total]));
    let caps = ChecksumCapabilities::default();
    icmp.emit(&src, &group, &mut Icmpv6Packet::new_unchecked(&mut buf[14 + ip_len..total]), &caps);
    total
}

/// The client end: a packet socket on its interface, and its addresses.
struct Client {
    sock: PacketSocket,
    mac: Mac,
    v4: Ipv4Addr,
    v6: Ipv6Addr,
}

impl Client {
    fn open(ifname: &str, v4: Ipv4Addr, v6: Ipv6Addr, read_timeout: Duration) -> Result<Client> {
        let l = link::lookup(ifname)?.with_context(|| format!("no interface {ifname}"))?;
        let sock = PacketSocket::open(ifname, &l, false, read_timeout)?;
        sock.socket.attach_filter(&client_filter()).context("attach the client's filter")?;
        Ok(Client { sock, mac: l.mac, v4, v6 })
    }

    /// The request for `target`: an ARP request or a Neighbor Solicitation.
    fn request(&self, buf: &mut [u8; MAX_FRAME], target: IpAddr) -> usize {
        match target {
            IpAddr::V4(t) => wire::arp_request_for_tests(buf, self.mac, self.v4, t),
            IpAddr::V6(t) => neighbor_solicit(buf, self.mac, self.v6, t),
        }
    }

    /// Whether `f` answers our request for `target`: an ARP reply from it to us, or a Neighbor Advertisement
    /// for it to our address.
    fn is_reply(&self, f: &[u8], target: IpAddr) -> bool {
        match target {
            IpAddr::V4(t) => {
                f.len() >= 42
                    && f[12..14] == [0x08, 0x06]
                    && f[20..22] == [0, 2]
                    && f[28..32] == t.octets()
                    && f[38..42] == self.v4.octets()
            }
            IpAddr::V6(t) => {
                f.len() >= 78
                    && f[12..14] == [0x86, 0xdd]
                    && f[20] == 58
                    && f[54] == 136
                    && f[38..54] == self.v6.octets()
                    && f[62..78] == t.octets()
            }
        }
    }
}

/// CPU seconds (user + system) one thread of this process has used: `/proc/self/task/TID/stat` (`/proc/TID/stat`
/// would be the whole process's).
fn thread_cpu_seconds(tid: u32) -> Result<f64> {
    let path = format!("/proc/self/task/{tid}/stat");
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    // After the command name's closing parenthesis: state (field 3) … utime (14) and stime (15), in USER_HZ.
    let after = text.rsplit_once(')').map(|(_, rest)| rest).context("no command name")?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let tick = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).context("short stat");
    Ok((tick(11)? + tick(12)?) as f64 / 100.0)
}

/// The frames the responder side's interface dropped on receipt (`ip -s link`: the backlog was full), which
/// tells drops before the responder's socket from drops in it.
fn rx_dropped(ns: &str, ifname: &str) -> Result<u64> {
    let out = std::process::Command::new("ip").args(["-n", ns, "-j", "-s", "link", "show", "dev", ifname]).output()?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("ip -j -s link")?;
    v[0]["stats64"]["rx"]["dropped"].as_u64().context("no rx dropped counter")
}

fn timed_out(e: &std::io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted)
}

// ---------------------------------------------------------------------------------------------------------------
// The responder side.

/// What the responder thread reports once it answers.
struct Started {
    mac: Mac,
    /// The interface thread's id (for its CPU time in `/proc/TID/stat`).
    tid: u32,
    status: Arc<dyn Fn() -> L2InterfaceStatus + Send + Sync>,
}

/// Runs the responder in namespace `ns` on `ifname` until `stop` says so.
fn run_responder(
    ns: String,
    ifname: String,
    cpu: Option<usize>,
    started: mpsc::Sender<Result<Started>>,
    stop: mpsc::Receiver<()>,
) -> Result<()> {
    let setup = || -> Result<(Responder, tokio::runtime::Runtime)> {
        enter(&ns)?;
        pin(cpu)?;
        let rt = tokio::runtime::Builder::new_current_thread().build()?;
        let mut responder = Responder::new();
        let adv = L2Advertisement {
            garp_count: 0,
            announce_when: AnnounceWhen::Always,
            ..testutil::advertisement("lan", &[&ifname])
        };
        let vips = [VIP4.to_string(), VIP6.to_string()];
        let vips: Vec<&str> = vips.iter().map(String::as_str).collect();
        let snapshot = testutil::snapshot(1, vec![], vec![testutil::service("web", &vips, true)], vec![adv]);
        let report = rt.block_on(responder.apply(Arc::new(snapshot))).map_err(|e| anyhow!("apply: {e:?}"))?;
        println!("responder: {}", report.detail);
        Ok((responder, rt))
    };
    let (responder, _rt) = match setup() {
        Ok(r) => r,
        Err(e) => {
            let _ = started.send(Err(anyhow!("{e:#}")));
            return Err(e);
        }
    };
    let handle = responder.handle();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !handle.status().first().is_some_and(|s| s.up) {
        if Instant::now() > deadline {
            let _ = started.send(Err(anyhow!("the responder did not come up: {:?}", handle.status())));
            bail!("responder not up");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let mac = handle.status().first().and_then(|s| s.mac.as_deref().and_then(wire::parse_mac)).context("no MAC")?;
    // The interface thread is `l2-IFNAME`, cut to the 15 bytes a thread name holds.
    let comm: String = format!("l2-{ifname}").chars().take(15).collect();
    let tid = std::fs::read_dir("/proc/self/task")?
        .filter_map(|e| e.ok())
        .find(|e| std::fs::read_to_string(e.path().join("comm")).is_ok_and(|c| c.trim() == comm))
        .and_then(|e| e.file_name().to_str().and_then(|s| s.parse().ok()))
        .context("the responder's interface thread")?;
    let status_handle = handle.clone();
    let status = Arc::new(move || status_handle.status().into_iter().next().unwrap_or_default());
    let _ = started.send(Ok(Started { mac, tid, status }));
    let _ = stop.recv();
    responder.shutdown();
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------------
// Measurements, on client threads.

/// Latency samples per target, and the requests that got no reply within [`REPLY_TIMEOUT`].
fn latencies(client: &Client, targets: &[IpAddr], n: usize) -> Result<Vec<(Vec<Duration>, usize)>> {
    let mut out: Vec<(Vec<Duration>, usize)> = targets.iter().map(|_| (Vec::with_capacity(n), 0)).collect();
    let (mut req, mut buf) = ([0u8; MAX_FRAME], vec![0u8; 2048]);
    for i in 0..n {
        // Alternate which target goes first, so neither always follows the other.
        for j in 0..targets.len() {
            let k = (i + j) % targets.len();
            let target = targets[k];
            let len = client.request(&mut req, target);
            let start = Instant::now();
            client.sock.send(&req[..len])?;
            let answered = loop {
                match client.sock.recv(&mut buf) {
                    Ok(got) if client.is_reply(&buf[..got], target) => break Some(start.elapsed()),
                    Ok(_) => {}
                    Err(e) if timed_out(&e) => {}
                    Err(e) => return Err(e.into()),
                }
                if start.elapsed() > REPLY_TIMEOUT {
                    break None;
                }
            };
            match answered {
                Some(d) => out[k].0.push(d),
                None => out[k].1 += 1,
            }
        }
    }
    Ok(out)
}

struct Rate {
    sent: u64,
    send_errors: u64,
    window: Duration,
    /// Replies received within the sending window.
    in_window: u64,
    /// All replies received, up to [`DRAIN`] after the window.
    total: u64,
}

/// Sends requests for `target` as fast as one thread can for `seconds` while another client thread counts the
/// replies.
fn blast(
    client_ns: &str,
    ifname: &str,
    addrs: (Ipv4Addr, Ipv6Addr),
    cpu: Option<usize>,
    target: IpAddr,
    seconds: f64,
) -> Result<Rate> {
    let stop = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready_rx) = mpsc::channel();
    let receiver = {
        let (ns, ifname, stop) = (client_ns.to_owned(), ifname.to_owned(), stop.clone());
        std::thread::spawn(move || -> Result<(u64, u64)> {
            enter(&ns)?;
            pin(cpu)?;
            let client = Client::open(&ifname, addrs.0, addrs.1, Duration::from_millis(10))?;
            let mut buf = vec![0u8; 2048];
            let _ = ready_tx.send(());
            let (mut in_window, mut total) = (0u64, 0u64);
            let mut window_end = None;
            loop {
                if window_end.is_none() && stop.load(Ordering::Acquire) {
                    window_end = Some(Instant::now());
                }
                if window_end.is_some_and(|e| e.elapsed() > DRAIN) {
                    break;
                }
                match client.sock.recv(&mut buf) {
                    Ok(n) if client.is_reply(&buf[..n], target) => {
                        total += 1;
                        if window_end.is_none() {
                            in_window += 1;
                        }
                    }
                    Ok(_) => {}
                    Err(e) if timed_out(&e) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            Ok((in_window, total))
        })
    };
    ready_rx.recv_timeout(Duration::from_secs(10)).map_err(|_| anyhow!("the receiver did not start"))?;
    let client = Client::open(ifname, addrs.0, addrs.1, Duration::from_millis(10))?;
    let mut req = [0u8; MAX_FRAME];
    let len = client.request(&mut req, target);
    let (mut sent, mut send_errors) = (0u64, 0u64);
    let start = Instant::now();
    let window = Duration::from_secs_f64(seconds);
    while start.elapsed() < window {
        for _ in 0..64 {
            match client.sock.send(&req[..len]) {
                Ok(_) => sent += 1,
                Err(_) => send_errors += 1,
            }
        }
    }
    let window = start.elapsed();
    stop.store(true, Ordering::Release);
    let (in_window, total) = receiver.join().map_err(|_| anyhow!("receiver panicked"))??;
    Ok(Rate { sent, send_errors, window, in_window, total })
}

// ---------------------------------------------------------------------------------------------------------------

fn us(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e6)
}

fn latency_row(label: &str, samples: &[Duration], lost: usize) -> Vec<String> {
    match Summary::of(samples) {
        Some(s) => vec![
            label.to_owned(),
            s.count.to_string(),
            lost.to_string(),
            us(s.min),
            us(s.p50),
            us(s.p90),
            us(s.p99),
            us(s.max),
            us(s.mean),
        ],
        None => vec![label.to_owned(), "0".into(), lost.to_string()],
    }
}

fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64()
}

/// The two namespaces and the veth between them, by name and address only (the [`Netns`] and [`Link`] values
/// stay with `main`, which removes them whatever happens here).
struct Setup {
    resp_ns: String,
    client_ns: String,
    a: (String, Ipv4Addr, Ipv6Addr),
    b: (String, Ipv4Addr, Ipv6Addr),
}

fn bench(args: &Args, setup: &Setup) -> Result<()> {
    let pinned = !args.no_pin && std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) >= 2;
    let (resp_cpu, client_cpu) = if pinned { (Some(0), Some(1)) } else { (None, None) };
    println!(
        "# {} cores, {}; load:{}",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        if pinned { "responder on CPU 0, client on CPU 1" } else { "not pinned" },
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!(
        "responder side {} ({}, {}), VIPs {VIP4} and {VIP6}; client side {} ({}, {})",
        setup.a.0, setup.a.1, setup.a.2, setup.b.0, setup.b.1, setup.b.2
    );
    let (started_tx, started_rx) = mpsc::channel();
    let (stop_tx, stop_rx) = mpsc::channel();
    let responder = {
        let (ns, ifname) = (setup.resp_ns.clone(), setup.a.0.clone());
        std::thread::spawn(move || run_responder(ns, ifname, resp_cpu, started_tx, stop_rx))
    };
    let started =
        started_rx.recv_timeout(Duration::from_secs(20)).map_err(|_| anyhow!("responder did not start"))??;
    println!("responder MAC {}, interface thread {}", wire::format_mac(started.mac), started.tid);

    let result = (|| -> Result<()> {
        let (cns, cif) = (setup.client_ns.clone(), setup.b.0.clone());
        let (rns, rif) = (setup.resp_ns.clone(), setup.a.0.clone());
        let addrs = (setup.b.1, setup.b.2);
        let kernel4 = IpAddr::V4(setup.a.1);
        let kernel6 = IpAddr::V6(setup.a.2);
        let (n, seconds, no_ipv6) = (args.requests, args.seconds, args.no_ipv6);
        let status = started.status.clone();
        let tid = started.tid;
        // Everything client-side runs on this thread (and the receivers it starts), in the client namespace.
        let client = std::thread::spawn(move || -> Result<()> {
            enter(&cns)?;
            pin(client_cpu)?;
            let c = Client::open(&cif, addrs.0, addrs.1, Duration::from_millis(20))?;
            // Warm up: neighbour entries on both sides, caches.
            latencies(&c, &[kernel4, IpAddr::V4(VIP4)], 200)?;
            let mut families = vec![("ARP", kernel4, IpAddr::V4(VIP4))];
            if !no_ipv6 {
                latencies(&c, &[kernel6, IpAddr::V6(VIP6)], 200)?;
                families.push(("NS", kernel6, IpAddr::V6(VIP6)));
            }
            let mut rows = Vec::new();
            let mut ratios = Vec::new();
            // Busy-polling the client's socket first: no wake-up of the client thread on either path, so the
            // difference is the responder's. Then blocking reads, which add the client's wake-up where the
            // reply is not already queued when `send` returns (the kernel's reply usually is).
            for (mode, nonblocking) in [("poll", true), ("block", false)] {
                c.sock.socket.set_nonblocking(nonblocking)?;
                for &(what, kernel, vip) in &families {
                    let t = Instant::now();
                    let r = latencies(&c, &[kernel, vip], n)?;
                    println!("{what} latency ({mode}): {n} × 2 requests in {:.1} s", t.elapsed().as_secs_f64());
                    rows.push(latency_row(&format!("{what} kernel, {mode}"), &r[0].0, r[0].1));
                    rows.push(latency_row(&format!("{what} responder, {mode}"), &r[1].0, r[1].1));
                    if let (Some(k), Some(v)) = (Summary::of(&r[0].0), Summary::of(&r[1].0)) {
                        ratios.push(format!(
                            "{what}, {mode}: ratio responder/kernel p50 {:.2}, p99 {:.2}, max {:.2}",
                            ratio(v.p50, k.p50),
                            ratio(v.p99, k.p99),
                            ratio(v.max, k.max)
                        ));
                    }
                }
            }
            println!();
            let header = ["request → reply", "n", "lost", "min µs", "p50 µs", "p90 µs", "p99 µs", "max µs", "mean µs"];
            print!("{}", table(&header, &rows));
            for r in ratios {
                println!("{r}");
            }
            drop(c);

            println!();
            let mut rows = Vec::new();
            for (label, target) in [("ARP kernel", kernel4), ("ARP responder", IpAddr::V4(VIP4))] {
                let before = status();
                let dropped0 = rx_dropped(&rns, &rif)?;
                let cpu0 = thread_cpu_seconds(tid)?;
                let rate = blast(&cns, &cif, addrs, client_cpu, target, seconds)?;
                let cpu = thread_cpu_seconds(tid)? - cpu0;
                let after = status();
                let dropped = rx_dropped(&rns, &rif)? - dropped0;
                let secs = rate.window.as_secs_f64();
                let answered = after.requests_answered - before.requests_answered;
                let (answered, cpu, per) = if target == kernel4 {
                    ("-".to_owned(), "-".to_owned(), "-".to_owned())
                } else {
                    (
                        format!("{:.0}", answered as f64 / secs),
                        format!("{:.0} %", cpu / secs * 100.0),
                        format!("{:.2}", cpu * 1e6 / answered.max(1) as f64),
                    )
                };
                rows.push(vec![
                    label.to_owned(),
                    format!("{secs:.2}"),
                    format!("{:.0}", rate.sent as f64 / secs),
                    rate.send_errors.to_string(),
                    format!("{:.0}", rate.in_window as f64 / secs),
                    format!("{:.0}", rate.sent.saturating_sub(rate.total) as f64 / secs),
                    format!("{:.0}", dropped as f64 / secs),
                    answered,
                    cpu,
                    per,
                ]);
            }
            let header = [
                "blast (one sender thread)",
                "s",
                "sent/s",
                "send errors",
                "replies/s",
                "unanswered/s",
                "dropped by veth/s",
                "answered/s (counter)",
                "responder thread CPU",
                "CPU µs/answer",
            ];
            print!("{}", table(&header, &rows));
            Ok(())
        });
        client.join().map_err(|_| anyhow!("the client thread panicked"))?
    })();
    let _ = stop_tx.send(());
    let _ = responder.join();
    result
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid = status.lines().find_map(|l| l.strip_prefix("Uid:")).and_then(|l| l.split_whitespace().nth(1));
    if euid != Some("0") {
        bail!("needs root: it makes network namespaces and a veth pair");
    }
    let resp_ns = Netns::new();
    let client_ns = Netns::new();
    let link = Link::between(&resp_ns, &client_ns);
    let setup = Setup {
        resp_ns: resp_ns.name().to_owned(),
        client_ns: client_ns.name().to_owned(),
        a: (link.a.ifname.clone(), link.a.v4, link.a.v6),
        b: (link.b.ifname.clone(), link.b.v4, link.b.v6),
    };
    let mut work = tokio::task::spawn_blocking(move || bench(&args, &setup));
    let result = tokio::select! {
        done = &mut work => done.map_err(anyhow::Error::from).and_then(|r| r),
        _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
    };
    drop(link);
    drop((resp_ns, client_ns));
    if let Err(e) = result {
        // Exit at once: a measuring thread may still run in the (now deleted) namespaces.
        eprintln!("Error: {e:#}");
        std::process::exit(1);
    }
    Ok(())
}
