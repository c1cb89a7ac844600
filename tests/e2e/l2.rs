//! L2 announcement end to end (issue #5): the appliance runs in its own network namespace (so its VIPs, its
//! `portico0` and its sysctls touch nothing of the host), reached by the test over one veth for the admin API,
//! with a client namespace on another veth: the LAN. From the client, `arping` and `ndisc6` get the appliance's
//! MAC for its VIPs, a capture sees the gratuitous announcements, and a TCP connection to VIP:port reaches a
//! listener in the appliance's namespace; released VIPs stop being answered and leave the kernel, and a stopped
//! appliance leaves no address behind. Needs root, `arping`, `ndisc6`, `tcpdump`.

use crate::harness::{Api, Appliance, Options};
use crate::netns::{Link, Netns};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(30);
const POOL4: &str = "198.18.0.0/29";
const POOL6: &str = "fd50:7274:d0::/125";

struct Lan {
    app: Appliance,
    api: Api,
    appliance_ns: Netns,
    client: Netns,
    lan: Link,
    _admin: Link,
}

async fn lan() -> Lan {
    let appliance_ns = Netns::new();
    let admin = Link::to_root(&appliance_ns);
    let client = Netns::new();
    let lan = Link::between(&appliance_ns, &client);
    let options = Options {
        netns: Some(appliance_ns.name().to_string()),
        admin_ip: admin.b.v4.into(),
        vip_interface: Some("portico0".into()),
        ..Options::default()
    };
    let app = Appliance::start_with(options).await;
    let api = app.admin_token().await;
    // The client reaches the VIPs on its link, as hosts on a flat segment do.
    client.exec(&["ip", "route", "add", POOL4, "dev", &lan.b.ifname]);
    client.exec(&["ip", "-6", "route", "add", POOL6, "dev", &lan.b.ifname]);
    Lan { app, api, appliance_ns, client, lan, _admin: admin }
}

impl Lan {
    fn mac(&self) -> String {
        let out = self.appliance_ns.exec(&["ip", "-j", "link", "show", "dev", &self.lan.a.ifname]);
        let links: Value = serde_json::from_str(&out).expect("ip -j link");
        links[0]["address"].as_str().expect("a MAC address").to_lowercase()
    }

    fn kernel_addresses(&self) -> String {
        let out = self.appliance_ns.try_exec(&["ip", "addr", "show", "dev", "portico0"]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The MAC in an `arping` reply for `vip`, if one came.
    fn arping(&self, vip: &str) -> Option<String> {
        let out = self.client.try_exec(&["arping", "-c", "1", "-w", "2", "-I", &self.lan.b.ifname, vip]);
        // Debian's arping: "60 bytes from 02:80:0b:1e:76:e6 (198.18.0.1): index=0 time=…".
        let text = String::from_utf8_lossy(&out.stdout).to_lowercase();
        let line = text.lines().find(|l| l.contains("bytes from"))?;
        Some(line.split("bytes from ").nth(1)?.split_whitespace().next()?.to_string())
    }

    /// The target link-layer address in an `ndisc6` answer for `vip`, if one came.
    fn ndisc6(&self, vip: &str) -> Option<String> {
        let out = self.client.try_exec(&["ndisc6", "-1", "-r", "2", "-w", "1000", vip, &self.lan.b.ifname]);
        let text = String::from_utf8_lossy(&out.stdout).to_lowercase();
        let line = text.lines().find(|l| l.contains("target link-layer address"))?;
        Some(line.rsplit(' ').next()?.trim().to_string())
    }
}

impl Lan {
    /// Polls `check` until it gives a value; on timeout, fails with the L2 status and the appliance's log.
    async fn eventually<T>(&self, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(v) = check() {
                return v;
            }
            if Instant::now() > deadline {
                let status = self.api.json("/api/v1/l2/status").await;
                let overall = self.api.json("/api/v1/status").await;
                panic!(
                    "timed out waiting for {what}\nl2 status: {status:#}\nstatus: {overall:#}\nlog:\n{}",
                    self.app.ws.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

async fn vip_of(api: &Api, service: &str) -> String {
    let page = api.json("/api/v1/allocations").await;
    page["items"]
        .as_array()
        .and_then(|items| items.iter().find(|a| a["owner"] == format!("service/{service}")))
        .and_then(|a| a["address"].as_str())
        .unwrap_or_else(|| panic!("no VIP for {service}: {page:#}"))
        .to_string()
}

/// A service with one port (8080) whose backend is 127.0.0.1:9000 in the appliance's namespace.
async fn add_service(api: &Api, name: &str, pool: &str) -> String {
    let body =
        json!({"name": name, "pool": pool, "ports": [{"port": 8080}], "backends": [{"address": "127.0.0.1:9000"}]});
    api.post("/api/v1/services", body).await.expect(StatusCode::CREATED);
    vip_of(api, name).await
}

#[tokio::test]
async fn vips_are_answered_announced_served_and_withdrawn() {
    let net = lan().await;
    let api = &net.api;
    let mac = net.mac();
    let capture_log = net.app.ws.path().join("capture.txt");
    let mut tcpdump = net.client.command("tcpdump");
    tcpdump.args(["-i", &net.lan.b.ifname, "-n", "-l", "-U", "arp or icmp6"]);
    let _capture = net.client.spawn(tcpdump, &capture_log);
    tokio::time::sleep(Duration::from_millis(500)).await;

    api.post("/api/v1/pools", json!({"name": "lan4", "addresses": [POOL4]})).await.expect(StatusCode::CREATED);
    api.post("/api/v1/pools", json!({"name": "lan6", "addresses": [POOL6]})).await.expect(StatusCode::CREATED);
    let advertisement = json!({"name": "lan", "interfaces": [net.lan.a.ifname], "garp_count": 3, "garp_interval": 100});
    api.post("/api/v1/l2/advertisements", advertisement).await.expect(StatusCode::CREATED);
    let vip4 = add_service(api, "web4", "lan4").await;
    let vip6 = add_service(api, "web6", "lan6").await;

    // ARP and NDP answers carry the appliance's MAC.
    let got = net.eventually("an ARP reply", || net.arping(&vip4)).await;
    assert_eq!(got, mac, "ARP reply for {vip4}");
    let got = net.eventually("a Neighbor Advertisement", || net.ndisc6(&vip6)).await;
    assert_eq!(got, mac, "NA for {vip6}");

    // The gratuitous announcements were seen on the wire: 3 of each.
    let capture = net
        .eventually("3 gratuitous ARPs and 3 unsolicited NAs", || {
            let text = std::fs::read_to_string(&capture_log).unwrap_or_default();
            let garps = text
                .lines()
                .filter(|l| l.contains(&format!("who-has {vip4}")) && l.contains(&format!("tell {vip4}")))
                .count();
            let nas = text
                .lines()
                .filter(|l| {
                    l.contains("neighbor advertisement")
                        && l.contains(&format!("tgt is {vip6}"))
                        && l.contains("ff02::1")
                })
                .count();
            (garps >= 3 && nas >= 3).then_some(text)
        })
        .await;
    assert!(!capture.is_empty());

    // The VIPs are local to the appliance's kernel: a TCP connection to VIP:port reaches the appliance, whose
    // proxy passes it on to the service's backend (a listener in the appliance's namespace).
    net.eventually("the VIPs on portico0", || {
        let a = net.kernel_addresses();
        (a.contains(&format!("{vip4}/32")) && a.contains(&format!("{vip6}/128"))).then_some(())
    })
    .await;
    let listener_log = net.app.ws.path().join("listener.txt");
    let script = "import socket; s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); \
         s.bind(('127.0.0.1', 9000)); s.listen(); c, a = s.accept(); print('accepted', c.recv(16).decode(), flush=True)";
    let mut listener = net.appliance_ns.command("python3");
    listener.args(["-c", script]);
    let _listener = net.appliance_ns.spawn(listener, &listener_log);
    net.eventually("a connection through the VIP", || {
        let _ = net.client.try_exec(&["bash", "-c", &format!("echo hello > /dev/tcp/{vip4}/8080")]);
        std::fs::read_to_string(&listener_log).unwrap_or_default().contains("accepted hello").then_some(())
    })
    .await;

    // The status says what was done.
    let status = api.json("/api/v1/l2/status").await;
    let iface = &status["items"][0];
    assert_eq!(iface["interface"], net.lan.a.ifname, "{status:#}");
    assert_eq!(iface["up"], true, "{status:#}");
    assert_eq!(iface["mac"].as_str().map(str::to_lowercase), Some(mac.clone()), "{status:#}");
    assert!(iface["requests_answered"].as_u64().unwrap_or(0) >= 2, "{status:#}");
    assert!(iface["gratuitous_sent"].as_u64().unwrap_or(0) >= 6, "{status:#}");
    let vips = iface["vips"].as_array().expect("vips");
    assert!(vips.iter().any(|v| v["vip"] == vip4 && v["announced"] == true), "{status:#}");

    // A released VIP is no longer answered and leaves the kernel; the other one stays.
    api.delete("/api/v1/services/web4").await.expect(StatusCode::NO_CONTENT);
    net.eventually("no ARP reply for a released VIP", || net.arping(&vip4).is_none().then_some(())).await;
    net.eventually("the released VIP gone from portico0", || {
        (!net.kernel_addresses().contains(&format!("{vip4}/32"))).then_some(())
    })
    .await;
    assert_eq!(net.ndisc6(&vip6), Some(mac.clone()), "the IPv6 VIP is still answered");

    // A clean stop takes every VIP off the kernel; a restart puts back what the configuration says.
    let mut net = net;
    net.app.stop().await;
    assert!(!net.kernel_addresses().contains(&vip6), "no stale address after a stop:\n{}", net.kernel_addresses());
    net.app.restart().await;
    net.eventually("the IPv6 VIP back after the restart", || {
        net.kernel_addresses().contains(&format!("{vip6}/128")).then_some(())
    })
    .await;
    assert!(!net.kernel_addresses().contains(&vip4));
    net.eventually("NDP answers after the restart", || net.ndisc6(&vip6)).await;
}

#[tokio::test]
async fn healthy_mode_stops_answering_without_ready_backends() {
    let net = lan().await;
    let api = &net.api;
    api.post("/api/v1/pools", json!({"name": "lan4", "addresses": [POOL4]})).await.expect(StatusCode::CREATED);
    let advertisement = json!({"name": "lan", "interfaces": [net.lan.a.ifname], "garp_count": 0});
    api.post("/api/v1/l2/advertisements", advertisement).await.expect(StatusCode::CREATED);
    let vip = add_service(api, "web", "lan4").await;
    net.eventually("an ARP reply", || net.arping(&vip)).await;

    let no_backends = json!({"name": "web", "pool": "lan4", "ports": [{"port": 8080}], "backends": []});
    api.put("/api/v1/services/web", no_backends).await.expect(StatusCode::OK);
    net.eventually("no ARP reply without ready backends", || net.arping(&vip).is_none().then_some(())).await;

    let always = json!({"name": "lan", "interfaces": [net.lan.a.ifname], "garp_count": 0, "announce_when": "always"});
    api.put("/api/v1/l2/advertisements/lan", always).await.expect(StatusCode::OK);
    net.eventually("ARP replies again with announce_when: always", || net.arping(&vip)).await;
}
