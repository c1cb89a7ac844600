//! The BGP speaker against real BIRD 2 and GoBGP (issue #4), each in its own network namespace joined by veth
//! pairs (the end-to-end harness `tests/e2e/netns.rs` and `tests/e2e/bgp_peers.rs`, included here as modules).
//! Needs root, `bird`/`birdc` and `gobgp`/`gobgpd`, and the release `portico` next to this binary. Three phases,
//! each with an anchor run side by side on the same two cores:
//!
//! - `announce`: 10,000 VIPs exist (stored with one `PUT /api/v1/config` while the peers are disabled); the
//!   peer is enabled and we time, at the receiver, session up → all 10,000 prefixes held, for a BIRD and a
//!   GoBGP receiver. Anchor: a BIRD announcing the same 10,000 prefixes as static routes to the same receivers.
//! - `alloc`: a static service created through REST (its VIP from a pool) → the /32 in BIRD's table, with the
//!   10,000 VIPs of `announce` still announced. Anchor: a static route added to the anchor BIRD by `birdc
//!   configure` → the route in the same receiving BIRD.
//! - `receive`: GoBGP holds `--prefixes` routes (injected before any session is up), then the session to the
//!   appliance comes up and we time until its Adj-RIB-In holds them all, and its RSS; then the same for a BIRD
//!   receiving from the same GoBGP.
//!
//! BIRD's tables are watched over one persistent connection to its control socket (the protocol `birdc`
//! speaks), a query per millisecond; GoBGP's through `gobgp neighbor ADDR -j` (a process per poll, ~20 ms).

// A benchmark reports on standard output.
#![allow(clippy::print_stdout)]

#[allow(clippy::expect_used, clippy::panic, clippy::unwrap_used)]
#[path = "../../../tests/e2e/netns.rs"]
mod netns;

#[allow(clippy::expect_used, clippy::panic, clippy::unwrap_used)]
#[path = "../../../tests/e2e/bgp_peers.rs"]
mod bgp_peers;

use anyhow::{Context, Result, bail};
use bgp_peers::{
    Afi, Bird, BirdConfig, BirdNeighbor, Gobgp, GobgpConfig, GobgpNeighbor, ProtocolState, RouteSpec, Session,
    appliance_bgp_settings, appliance_peer, parse_bird_protocols, synthetic_prefixes,
};
use clap::{Parser, ValueEnum};
use netns::{Link, Netns};
use portico_bench::server::{Api, Portico, ProcMemory, cpu_seconds};
use portico_bench::stats::{Summary, mib, ms, table};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Phase {
    Announce,
    Alloc,
    Receive,
}

#[derive(Debug, Parser)]
struct Args {
    /// VIPs announced in the `announce` phase (and present during `alloc`).
    #[arg(long, default_value_t = 10_000)]
    services: usize,
    /// Session-up rounds per announcer and receiver in the `announce` phase.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Services created one by one in the `alloc` phase (and static routes added to the anchor).
    #[arg(long, default_value_t = 200)]
    allocations: usize,
    /// Routes GoBGP announces in the `receive` phase.
    #[arg(long, default_value_t = 500_000)]
    prefixes: u32,
    /// Phases to run, in this order.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "announce,alloc,receive")]
    phases: Vec<Phase>,
}

const OUR_AS: u32 = 65000;
const RECV_BIRD_AS: u32 = 65001;
const ANCHOR_AS: u32 = 65002;
const RECV_GOBGP_AS: u32 = 65010;
const SENDER_GOBGP_AS: u32 = 65020;
const SENDER_BIRD_AS: u32 = 65021;
/// Every wait is bounded by this.
const BOUND: Duration = Duration::from_secs(600);
/// The pool of the benchmark's VIPs, and where the anchor's extra static routes of `alloc` come from.
const POOL: &str = "10.60.0.0/16";
const ANCHOR_EXTRA: Ipv4Addr = Ipv4Addr::new(10, 61, 0, 0);

// ---------------------------------------------------------------------------------------------------------------
// Watching BIRD through its control socket.

/// One connection to a BIRD control socket: the line protocol `birdc` speaks (`CODE-text` continues a reply,
/// `CODE text` ends it, a leading space continues the previous line's code).
struct BirdSock {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl BirdSock {
    fn connect(path: &Path) -> Result<BirdSock> {
        let writer = UnixStream::connect(path).with_context(|| format!("connect {}", path.display()))?;
        writer.set_read_timeout(Some(Duration::from_secs(60)))?;
        let reader = BufReader::new(writer.try_clone()?);
        let mut sock = BirdSock { reader, writer };
        sock.reply()?; // the greeting, `0001 BIRD 2.0.12 ready.`
        Ok(sock)
    }

    fn query(&mut self, command: &str) -> Result<String> {
        self.writer.write_all(format!("{command}\n").as_bytes())?;
        self.reply()
    }

    fn reply(&mut self) -> Result<String> {
        let mut out = String::new();
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line)? == 0 {
                bail!("BIRD closed its control socket");
            }
            let b = line.as_bytes();
            if b.len() >= 5 && b[..4].iter().all(u8::is_ascii_digit) {
                out.push_str(&line[5..]);
                if b[4] == b' ' {
                    return Ok(out);
                }
            } else {
                out.push_str(line.strip_prefix(' ').unwrap_or(&line));
            }
        }
    }

    /// `show protocols all NAME`.
    fn protocol(&mut self, name: &str) -> Result<ProtocolState> {
        let text = self.query(&format!("show protocols all {name}"))?;
        parse_bird_protocols(&text).into_iter().find(|p| p.name == name).with_context(|| format!("no {name}: {text}"))
    }

    /// Whether the protocol `name` has a route to `prefix`.
    fn has_route(&mut self, prefix: &str, protocol: &str) -> Result<bool> {
        Ok(self.query(&format!("show route {prefix} protocol {protocol}"))?.contains(prefix))
    }
}

/// A receiver of routes, asked about one session: whether it is Established, and how many prefixes it holds
/// from that peer.
enum Receiver<'a> {
    /// A BIRD protocol, through its control socket.
    Bird(&'a mut BirdSock, &'a str),
    /// A GoBGP neighbor.
    Gobgp(&'a Gobgp, IpAddr),
    /// A peer of the appliance (`GET /api/v1/bgp/peers/{name}/status`).
    Portico(&'a Api, &'a str),
}

impl Receiver<'_> {
    async fn probe(&mut self) -> Result<(bool, u64)> {
        match self {
            Receiver::Bird(sock, protocol) => {
                let p = sock.protocol(protocol)?;
                Ok((p.established(), p.imported))
            }
            Receiver::Gobgp(gobgp, neighbor) => {
                let n = gobgp.neighbor_state(*neighbor);
                Ok((n.established(), n.received))
            }
            Receiver::Portico(api, name) => {
                let s = get(api, &format!("/api/v1/bgp/peers/{name}/status")).await?;
                Ok((s["state"] == "established", s["prefixes_received"].as_u64().unwrap_or(0)))
            }
        }
    }
}

/// From `t0`: when the session was first seen Established and when `want` prefixes were first seen held.
#[derive(Debug, Clone, Copy)]
struct Up {
    established: Duration,
    all: Duration,
}

impl Up {
    fn transfer(&self) -> Duration {
        self.all.saturating_sub(self.established)
    }
}

async fn watch_up(t0: Instant, mut probe: Receiver<'_>, want: u64, what: &str) -> Result<Up> {
    let mut established = None;
    loop {
        let (up, count) = probe.probe().await?;
        let now = t0.elapsed();
        if up && established.is_none() {
            established = Some(now);
        }
        if count >= want {
            return Ok(Up { established: established.unwrap_or(now), all: now });
        }
        if now > BOUND {
            bail!("{what}: {count} of {want} prefixes after {BOUND:?}");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

async fn watch_down(mut probe: Receiver<'_>, what: &str) -> Result<()> {
    let t0 = Instant::now();
    loop {
        let (up, count) = probe.probe().await?;
        if !up && count == 0 {
            return Ok(());
        }
        if t0.elapsed() > BOUND {
            bail!("{what}: still up with {count} prefixes after {BOUND:?}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// ---------------------------------------------------------------------------------------------------------------
// The appliance.

async fn send(api: &Api, method: reqwest::Method, path: &str, body: &Value) -> Result<Value> {
    let r = api.http.request(method.clone(), format!("{}{path}", api.base)).json(body).send().await?;
    let status = r.status();
    let text = r.text().await?;
    if !status.is_success() {
        bail!("{method} {path}: {status} {text}");
    }
    Ok(if text.is_empty() { Value::Null } else { serde_json::from_str(&text)? })
}

async fn get(api: &Api, path: &str) -> Result<Value> {
    let r = api.http.get(format!("{}{path}", api.base)).send().await?;
    let status = r.status();
    let text = r.text().await?;
    if !status.is_success() {
        bail!("GET {path}: {status} {text}");
    }
    Ok(serde_json::from_str(&text)?)
}

/// A peer with long timers (a 500,000-route transfer must not run into a 3 s hold timer).
fn peer(name: &str, address: IpAddr, asn: u32, enabled: bool) -> Value {
    let mut p = appliance_peer(name, address, asn);
    p["hold_time"] = json!(90);
    p["enabled"] = json!(enabled);
    p
}

async fn set_peer(api: &Api, name: &str, address: IpAddr, asn: u32, enabled: bool) -> Result<()> {
    send(api, reqwest::Method::PUT, &format!("/api/v1/bgp/peers/{name}"), &peer(name, address, asn, enabled)).await?;
    Ok(())
}

async fn appliance() -> Result<(Portico, Api)> {
    let portico = Portico::start().await?;
    let api = Api::admin(&portico.base).await?;
    let bgp = appliance_bgp_settings(OUR_AS, Ipv4Addr::new(192, 0, 2, 1), None, None);
    send(&api, reqwest::Method::PUT, "/api/v1/settings", &json!({ "bgp": bgp })).await?;
    Ok((portico, api))
}

fn service(name: &str) -> Value {
    json!({ "name": name, "pool": "bench", "ports": [{ "port": 80 }], "backends": [{ "address": "192.0.2.10" }] })
}

/// Every allocated address, in address order (paged).
async fn allocations(api: &Api) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/api/v1/allocations?limit=1000&cursor={c}"),
            None => "/api/v1/allocations?limit=1000".to_string(),
        };
        let page = get(api, &path).await?;
        for a in page["items"].as_array().into_iter().flatten() {
            out.push(a["address"].as_str().context("allocation without address")?.to_string());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => return Ok(out),
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Phases `announce` and `alloc`: one appliance, a receiving BIRD, a receiving GoBGP and an anchor BIRD.

/// The anchor BIRD: protocols `r` (to the receiving BIRD) and `g` (to the receiving GoBGP), exporting its
/// static routes; `disabled` as given.
fn anchor_config(rs: &Link, gs: &Link, r_off: bool, g_off: bool, statics: &[String]) -> BirdConfig {
    let neighbor = |name: &str, link: &Link, asn: u32, off: bool| {
        let n = BirdNeighbor::new(name, ANCHOR_AS, link.b.v4.into(), asn)
            .local_address(link.a.v4)
            .timers(90, 30)
            .families(true, false)
            .export_static();
        if off { n.extra("  disabled;") } else { n }
    };
    let prefixes = statics.iter().filter_map(|a| a.parse::<IpAddr>().ok()).map(|a| (a, 32));
    BirdConfig::new(rs.a.v4)
        .neighbor(neighbor("r", rs, RECV_BIRD_AS, r_off))
        .neighbor(neighbor("g", gs, RECV_GOBGP_AS, g_off))
        .static_prefixes(prefixes)
}

struct Topology {
    // Daemons first: they go before their namespaces and links.
    recv_bird: Bird,
    recv_gobgp: Gobgp,
    anchor: Bird,
    lr: Link,
    lg: Link,
    rs: Link,
    gs: Link,
    _ns: (Netns, Netns, Netns),
}

fn topology(vips: &[String]) -> Topology {
    let (nr, ng, ns) = (Netns::new(), Netns::new(), Netns::new());
    let lr = Link::to_root(&nr);
    let lg = Link::to_root(&ng);
    let rs = Link::between(&ns, &nr);
    let gs = Link::between(&ns, &ng);
    let recv_bird = Bird::start(
        &nr,
        &BirdConfig::new(lr.b.v4)
            .neighbor(
                BirdNeighbor::new("portico", RECV_BIRD_AS, lr.a.v4.into(), OUR_AS)
                    .local_address(lr.b.v4)
                    .passive()
                    .timers(90, 30)
                    .families(true, false),
            )
            .neighbor(
                BirdNeighbor::new("anchor", RECV_BIRD_AS, rs.a.v4.into(), ANCHOR_AS)
                    .local_address(rs.b.v4)
                    .passive()
                    .timers(90, 30)
                    .families(true, false),
            ),
    );
    let recv_gobgp = Gobgp::start(
        &ng,
        &GobgpConfig::new(RECV_GOBGP_AS, lg.b.v4)
            .neighbor(
                GobgpNeighbor::new(lg.a.v4.into(), OUR_AS)
                    .local_address(lg.b.v4)
                    .passive()
                    .timers(90, 30)
                    .families(true, false),
            )
            .neighbor(
                GobgpNeighbor::new(gs.a.v4.into(), ANCHOR_AS)
                    .local_address(gs.b.v4)
                    .passive()
                    .timers(90, 30)
                    .families(true, false),
            ),
    );
    let anchor = Bird::start(&ns, &anchor_config(&rs, &gs, true, true, vips));
    Topology { recv_bird, recv_gobgp, anchor, lr, lg, rs, gs, _ns: (nr, ng, ns) }
}

async fn announce_and_alloc(args: &Args, run_announce: bool, run_alloc: bool) -> Result<()> {
    let (portico, api) = appliance().await?;
    send(&api, reqwest::Method::POST, "/api/v1/pools", &json!({ "name": "bench", "addresses": [POOL] })).await?;

    // The VIPs first, in one revision.
    let t = Instant::now();
    let mut config = get(&api, "/api/v1/config").await?;
    let services: Vec<Value> = (0..args.services).map(|i| service(&format!("v{i}"))).collect();
    config["services"] = Value::Array(services);
    send(&api, reqwest::Method::PUT, "/api/v1/config", &config).await?;
    let vips = allocations(&api).await?;
    if vips.len() != args.services {
        bail!("{} VIPs allocated for {} services", vips.len(), args.services);
    }
    eprintln!("{} services with VIPs stored in {:.2} s", vips.len(), t.elapsed().as_secs_f64());

    let topo = topology(&vips);
    let (bird_addr, gobgp_addr) = (IpAddr::from(topo.lr.b.v4), IpAddr::from(topo.lg.b.v4));
    for (name, addr, asn) in [("bird", bird_addr, RECV_BIRD_AS), ("gobgp", gobgp_addr, RECV_GOBGP_AS)] {
        send(&api, reqwest::Method::POST, "/api/v1/bgp/peers", &peer(name, addr, asn, false)).await?;
    }
    let mut rsock = BirdSock::connect(&topo.recv_bird.socket_path())?;
    let want = vips.len() as u64;

    if run_announce {
        println!("\n## announce: {want} VIPs, session up → all prefixes at the receiver ({} rounds)\n", args.rounds);
        let mut rows = Vec::new();
        let mut ratios = Vec::new();
        for receiver in ["BIRD", "GoBGP"] {
            let (mut ours, mut theirs) = (Vec::new(), Vec::new());
            let (name, addr, asn, proto) = match receiver {
                "BIRD" => ("bird", bird_addr, RECV_BIRD_AS, "r"),
                _ => ("gobgp", gobgp_addr, RECV_GOBGP_AS, "g"),
            };
            for _ in 0..args.rounds {
                // Portico: enable the peer; the receiver's session from the appliance.
                let cpu0 = cpu_seconds(portico.pid)?;
                let t0 = Instant::now();
                set_peer(&api, name, addr, asn, true).await?;
                let probe = match receiver {
                    "BIRD" => Receiver::Bird(&mut rsock, "portico"),
                    _ => Receiver::Gobgp(&topo.recv_gobgp, topo.lg.a.v4.into()),
                };
                let up = watch_up(t0, probe, want, &format!("portico → {receiver}")).await?;
                let cpu = cpu_seconds(portico.pid)? - cpu0;
                ours.push(up);
                rows.push(up_row(receiver, "portico", &up, cpu));
                set_peer(&api, name, addr, asn, false).await?;
                let probe = match receiver {
                    "BIRD" => Receiver::Bird(&mut rsock, "portico"),
                    _ => Receiver::Gobgp(&topo.recv_gobgp, topo.lg.a.v4.into()),
                };
                watch_down(probe, "portico session down").await?;

                // The anchor: enable its protocol to this receiver.
                let cpu0 = anchor_cpu(&topo.anchor)?;
                let t0 = Instant::now();
                topo.anchor.birdc(&format!("enable {proto}"));
                let probe = match receiver {
                    "BIRD" => Receiver::Bird(&mut rsock, "anchor"),
                    _ => Receiver::Gobgp(&topo.recv_gobgp, topo.gs.a.v4.into()),
                };
                let up = watch_up(t0, probe, want, &format!("BIRD → {receiver}")).await?;
                let cpu = anchor_cpu(&topo.anchor)? - cpu0;
                theirs.push(up);
                rows.push(up_row(receiver, "BIRD (anchor)", &up, cpu));
                topo.anchor.birdc(&format!("disable {proto}"));
                let probe = match receiver {
                    "BIRD" => Receiver::Bird(&mut rsock, "anchor"),
                    _ => Receiver::Gobgp(&topo.recv_gobgp, topo.gs.a.v4.into()),
                };
                watch_down(probe, "anchor session down").await?;
            }
            let median = |v: &[Up]| {
                let d: Vec<Duration> = v.iter().map(Up::transfer).collect();
                Summary::of(&d).map(|s| s.p50).unwrap_or_default()
            };
            ratios.push((receiver, median(&ours), median(&theirs)));
        }
        println!(
            "{}",
            table(
                &["receiver", "announcer", "trigger → up ms", "up → all ms", "trigger → all ms", "announcer CPU s"],
                &rows
            )
        );
        println!("(trigger: PUT of the peer with enabled: true / `birdc enable`; BIRD waits its 1 s connect delay)");
        for (receiver, ours, theirs) in ratios {
            println!(
                "{receiver} receiver, median up → all {want} prefixes: portico {} ms, BIRD {} ms, ratio portico/BIRD {:.3}",
                ms(ours),
                ms(theirs),
                ours.as_secs_f64() / theirs.as_secs_f64().max(1e-9)
            );
        }
    }

    if run_alloc {
        alloc(args, &api, &topo, &mut rsock, &vips, bird_addr).await?;
    }
    drop(rsock);
    drop(topo);
    portico.stop().await
}

fn up_row(receiver: &str, announcer: &str, up: &Up, cpu: f64) -> Vec<String> {
    vec![
        receiver.to_string(),
        announcer.to_string(),
        ms(up.established),
        ms(up.transfer()),
        ms(up.all),
        format!("{cpu:.2}"),
    ]
}

fn bird_pid(bird: &Bird) -> Result<u32> {
    let path = bird.conf_path().with_file_name("bird.pid");
    let text = std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
    text.trim().parse().with_context(|| format!("{}: {text:?}", path.display()))
}

fn anchor_cpu(bird: &Bird) -> Result<f64> {
    cpu_seconds(bird_pid(bird)?)
}

async fn alloc(
    args: &Args,
    api: &Api,
    topo: &Topology,
    rsock: &mut BirdSock,
    vips: &[String],
    bird_addr: IpAddr,
) -> Result<()> {
    // Both announcers up to the receiving BIRD, each with its VIPs in place.
    set_peer(api, "bird", bird_addr, RECV_BIRD_AS, true).await?;
    let mut statics = vips.to_vec();
    topo.anchor.configure(&anchor_config(&topo.rs, &topo.gs, false, true, &statics));
    let want = vips.len() as u64;
    watch_up(Instant::now(), Receiver::Bird(rsock, "portico"), want, "portico → BIRD").await?;
    watch_up(Instant::now(), Receiver::Bird(rsock, "anchor"), want, "anchor → BIRD").await?;

    println!(
        "\n## alloc: {} times, a new VIP → its /32 in BIRD's table ({} VIPs already announced)\n",
        args.allocations,
        vips.len()
    );
    let (mut post, mut post_to_route, mut reply_to_route, mut anchor) = (vec![], vec![], vec![], vec![]);
    for i in 0..args.allocations {
        let name = format!("a{i}");
        let t0 = Instant::now();
        send(api, reqwest::Method::POST, "/api/v1/services", &service(&name)).await?;
        let replied = Instant::now();
        let page = get(api, &format!("/api/v1/allocations?owner=service/{name}")).await?;
        let vip = page["items"][0]["address"].as_str().context("no VIP for the new service")?.to_string();
        let prefix = format!("{vip}/32");
        while !rsock.has_route(&prefix, "portico")? {
            if t0.elapsed() > BOUND {
                bail!("{prefix} never reached BIRD");
            }
            std::thread::sleep(Duration::from_micros(500));
        }
        let at = Instant::now();
        post.push(replied - t0);
        post_to_route.push(at - t0);
        reply_to_route.push(at - replied);

        // The anchor: one more static route, `birdc configure`.
        let extra = Ipv4Addr::from(u32::from(ANCHOR_EXTRA) + u32::try_from(i)?);
        statics.push(extra.to_string());
        let config = anchor_config(&topo.rs, &topo.gs, false, true, &statics);
        let prefix = format!("{extra}/32");
        let t0 = Instant::now();
        topo.anchor.configure(&config);
        while !rsock.has_route(&prefix, "anchor")? {
            if t0.elapsed() > BOUND {
                bail!("{prefix} never reached BIRD from the anchor");
            }
            std::thread::sleep(Duration::from_micros(500));
        }
        anchor.push(t0.elapsed());
    }
    let mut header = vec!["measure"];
    header.extend(Summary::HEADER);
    let row = |label: &str, samples: &[Duration]| {
        let mut r = vec![label.to_string()];
        r.extend(Summary::of(samples).map(|s| s.cells()).unwrap_or_default());
        r
    };
    println!(
        "{}",
        table(
            &header,
            &[
                row("portico: POST /services (reply)", &post),
                row("portico: POST sent → /32 at BIRD", &post_to_route),
                row("portico: POST reply → /32 at BIRD", &reply_to_route),
                row("anchor: birdc configure → /32 at BIRD", &anchor),
            ]
        )
    );
    let p50 = |v: &[Duration]| Summary::of(v).map(|s| s.p50).unwrap_or_default().as_secs_f64();
    println!(
        "ratio of p50s, portico POST sent → route / BIRD configure → route: {:.2} (the anchor is a config reload, \
         not an allocation: a rough yardstick only)",
        p50(&post_to_route) / p50(&anchor).max(1e-9)
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------------
// Phase `receive`: GoBGP announces many routes to the appliance, then to a BIRD.

async fn receive(args: &Args) -> Result<()> {
    let n = u64::from(args.prefixes);
    let (ng, nb) = (Netns::new(), Netns::new());
    let lp = Link::to_root(&ng);
    let gb = Link::between(&ng, &nb);
    let gobgp = Gobgp::start(
        &ng,
        &GobgpConfig::new(SENDER_GOBGP_AS, lp.b.v4)
            .neighbor(
                GobgpNeighbor::new(lp.a.v4.into(), OUR_AS)
                    .local_address(lp.b.v4)
                    .passive()
                    .timers(90, 30)
                    .families(true, false),
            )
            .neighbor(
                GobgpNeighbor::new(gb.b.v4.into(), SENDER_BIRD_AS)
                    .local_address(gb.a.v4)
                    .passive()
                    .timers(90, 30)
                    .families(true, false),
            ),
    );
    let bird = Bird::start(
        &nb,
        &BirdConfig::new(gb.b.v4).neighbor(
            BirdNeighbor::new("gob", SENDER_BIRD_AS, gb.a.v4.into(), SENDER_GOBGP_AS)
                .local_address(gb.b.v4)
                .timers(90, 30)
                .families(true, false)
                .extra("  disabled;"),
        ),
    );
    let (portico, api) = appliance().await?;

    println!("\n## receive: {n} IPv4 prefixes from GoBGP\n");
    let t = Instant::now();
    gobgp.inject_prefixes(synthetic_prefixes(Afi::Ipv4, args.prefixes), &RouteSpec::new("").next_hop(gb.a.v4));
    println!("injected into GoBGP in {:.1} s (before any session is up)", t.elapsed().as_secs_f64());

    let mut rows = Vec::new();
    // The appliance.
    let before = portico.memory()?;
    let cpu0 = cpu_seconds(portico.pid)?;
    let t0 = Instant::now();
    send(&api, reqwest::Method::POST, "/api/v1/bgp/peers", &peer("gob", lp.b.v4.into(), SENDER_GOBGP_AS, true)).await?;
    let ours = watch_up(t0, Receiver::Portico(&api, "gob"), n, "GoBGP → portico").await?;
    let cpu_ours = cpu_seconds(portico.pid)? - cpu0;
    let after = portico.memory()?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let settled = portico.memory()?;
    rows.push(receive_row("portico", &ours, cpu_ours, &before, &after, &settled));

    // BIRD, from the same GoBGP (the appliance's session stays up, idle).
    let pid = bird_pid(&bird)?;
    let mut sock = BirdSock::connect(&bird.socket_path())?;
    let before = ProcMemory::of(pid)?;
    let cpu0 = cpu_seconds(pid)?;
    let t0 = Instant::now();
    bird.birdc("enable gob");
    let theirs = watch_up(t0, Receiver::Bird(&mut sock, "gob"), n, "GoBGP → BIRD").await?;
    let cpu_theirs = cpu_seconds(pid)? - cpu0;
    let after = ProcMemory::of(pid)?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let settled = ProcMemory::of(pid)?;
    rows.push(receive_row("BIRD (anchor)", &theirs, cpu_theirs, &before, &after, &settled));
    let counted = bird.route_count_from("gob");
    if counted != n {
        bail!("BIRD counts {counted} routes from GoBGP, not {n}");
    }

    println!(
        "{}",
        table(
            &[
                "receiver",
                "trigger → up ms",
                "up → all ms",
                "CPU s",
                "RSS before MiB",
                "RSS after MiB",
                "RSS +5 s MiB",
                "VmHWM MiB"
            ],
            &rows
        )
    );
    println!("(trigger: POST of the peer / `birdc enable`; BIRD waits its 1 s connect delay)");
    let ratio = |a: f64, b: f64| a / b.max(1e-9);
    println!(
        "ratios portico/BIRD: up → all {:.2}, CPU {:.2}, RSS after {:.2}, RSS growth {:.2}",
        ratio(ours.transfer().as_secs_f64(), theirs.transfer().as_secs_f64()),
        ratio(cpu_ours, cpu_theirs),
        ratio(settled_rss(&rows[0]), settled_rss(&rows[1])),
        ratio(growth(&rows[0]), growth(&rows[1])),
    );
    drop(sock);
    drop(bird);
    drop(gobgp);
    portico.stop().await
}

fn receive_row(
    who: &str,
    up: &Up,
    cpu: f64,
    before: &ProcMemory,
    after: &ProcMemory,
    settled: &ProcMemory,
) -> Vec<String> {
    let m = |kib: u64| mib(kib * 1024);
    vec![
        who.to_string(),
        ms(up.established),
        ms(up.transfer()),
        format!("{cpu:.2}"),
        m(before.rss_kib),
        m(after.rss_kib),
        m(settled.rss_kib),
        m(settled.hwm_kib),
    ]
}

fn settled_rss(row: &[String]) -> f64 {
    row[6].parse().unwrap_or(0.0)
}

fn growth(row: &[String]) -> f64 {
    row[6].parse::<f64>().unwrap_or(0.0) - row[4].parse::<f64>().unwrap_or(0.0)
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    // Namespaces and veths need root.
    let uid = std::fs::read_to_string("/proc/self/status")?
        .lines()
        .find_map(|l| l.strip_prefix("Uid:").and_then(|r| r.split_whitespace().next().map(str::to_string)))
        .unwrap_or_default();
    if uid != "0" {
        bail!("the BGP benchmark makes network namespaces: run it as root");
    }
    println!(
        "# BGP benchmark: {} cores, load{}",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        std::fs::read_to_string("/proc/loadavg").map(|l| format!(" {}", l.trim())).unwrap_or_default()
    );
    let run = async {
        let (announce, alloc) = (args.phases.contains(&Phase::Announce), args.phases.contains(&Phase::Alloc));
        if announce || alloc {
            announce_and_alloc(&args, announce, alloc).await?;
        }
        if args.phases.contains(&Phase::Receive) {
            receive(&args).await?;
        }
        Ok(())
    };
    // Ctrl-C drops the run, and with it every daemon, namespace and link.
    tokio::select! {
        r = run => r,
        _ = tokio::signal::ctrl_c() => bail!("interrupted"),
    }
}
