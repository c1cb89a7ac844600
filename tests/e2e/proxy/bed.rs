//! The test bed of the proxy tests: the appliance in its own namespace (admin API over a veth from the root
//! namespace, VIPs on its `portico0`), a client namespace on a second veth, and backends on veths of their own
//! (backend.rs). Everything is removed when the bed drops, also after a panic.
//!
//! ```text
//!  client ns ── lan veth ── appliance ns ── admin veth ── root ns (the test: REST, backends on their own veths)
//!  10.99.0.0/24 (AnyIP)      VIPs 198.18.0.0/28           ├─ backend veth 10.201.x.1 ("a")
//!                                                          └─ backend veth 10.201.y.1 ("b") …
//! ```

use super::agent::Agent;
use super::backend::Backend;
use crate::harness::{Api, Appliance, Options, eventually};
use crate::netns::{Link, Netns};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::time::Duration;

/// The pool VIPs come from (only the appliance and client namespaces route it).
pub const POOL: &str = "198.18.0.0/28";
/// An IPv6 pool, made by the tests that need it.
pub const POOL6: &str = "fd50:7274:d1::/125";
/// Client source addresses: the whole /24 is local to the client namespace (an AnyIP route), so a client socket
/// can bind any of them.
pub const CLIENT_NET: &str = "10.99.0.0/24";
/// Bound for things that happen eventually (configuration applied, a connection ending); only against hangs.
pub const WAIT: Duration = Duration::from_secs(60);

pub struct Bed {
    pub app: Appliance,
    pub api: Api,
    pub app_ns: Netns,
    pub client_ns: Netns,
    pub lan: Link,
    _admin: Link,
}

/// The `n`-th client source address (1–254).
pub fn client(n: u8) -> String {
    format!("10.99.0.{n}")
}

/// The L4 engine the proxy tests run on when they do not name one: `PORTICO_E2E_L4_ENGINE` (`epoll`,
/// `io_uring`), else the appliance's default (`auto`, which runs epoll). `make test` runs the proxy tests once
/// more with `io_uring`, so both engines pass the same suite.
pub const ENGINE_ENV: &str = "PORTICO_E2E_L4_ENGINE";

/// Starts an appliance in its own namespace with a pool and a client namespace routed to it. `engine` is the L4
/// engine to run (`settings.proxy.l4_engine`); `None` takes [`ENGINE_ENV`] or the default.
pub async fn start_proxy_appliance(engine: Option<&str>) -> Bed {
    let from_env = std::env::var(ENGINE_ENV).ok().filter(|e| !e.is_empty());
    let engine = engine.or(from_env.as_deref());
    let app_ns = Netns::new();
    let admin = Link::to_root(&app_ns);
    let client_ns = Netns::new();
    let lan = Link::between(&app_ns, &client_ns);
    let options = Options {
        netns: Some(app_ns.name().to_string()),
        admin_ip: admin.b.v4.into(),
        vip_interface: Some("portico0".into()),
        ..Options::default()
    };
    let mut app = Appliance::start_with(options).await;
    let mut api = app.admin_token().await;
    if let Some(engine) = engine {
        let mut settings = api.json("/api/v1/settings").await;
        settings["proxy"] = json!({ "l4_engine": engine });
        api.put("/api/v1/settings", settings).await.expect(StatusCode::OK);
        // The engine is chosen at start.
        app.restart().await;
        api = app.admin_token().await;
        let running = api.json("/api/v1/proxy/status").await;
        assert_eq!(running["engine"], engine, "the proxy runs on the engine asked for: {running}");
    }
    // The client reaches VIPs through the appliance's end of the LAN (not by ARP for the VIP itself: the
    // appliance's kernel answers ARP only for addresses on the asking interface), and the appliance reaches the
    // clients' addresses through the client's end.
    client_ns.exec(&["ip", "route", "add", POOL, "via", &lan.a.v4.to_string()]);
    client_ns.exec(&["ip", "route", "add", "local", CLIENT_NET, "dev", "lo"]);
    app_ns.exec(&["ip", "route", "add", CLIENT_NET, "via", &lan.b.v4.to_string()]);
    api.post("/api/v1/pools", json!({"name": "vips", "addresses": [POOL]})).await.expect(StatusCode::CREATED);
    Bed { app, api, app_ns, client_ns, lan, _admin: admin }
}

/// `backends[]` of a service: every backend with weight 1.
pub fn members(backends: &[&Backend]) -> Value {
    Value::Array(backends.iter().map(|b| json!({"address": b.address()})).collect())
}

/// `backends[]` with weights.
pub fn weighted(backends: &[(&Backend, u32)]) -> Value {
    Value::Array(backends.iter().map(|(b, w)| json!({"address": b.address(), "weight": w})).collect())
}

/// A one-port TCP service on port 80 of a VIP from the pool.
pub fn tcp_service(name: &str, backends: Value, proxy: Value) -> Value {
    json!({"name": name, "pool": "vips", "ports": [{"port": 80}], "backends": backends, "proxy": proxy})
}

impl Bed {
    /// A backend on its own veth into the appliance's namespace.
    pub async fn backend(&self, name: &str, port: u16) -> Backend {
        Backend::start(&self.app_ns, name, port, false, false).await
    }

    /// A backend on the IPv6 address of its veth.
    pub async fn backend6(&self, name: &str, port: u16) -> Backend {
        Backend::start(&self.app_ns, name, port, false, true).await
    }

    /// A backend that also answers UDP on the same port.
    pub async fn udp_backend(&self, name: &str, port: u16) -> Backend {
        Backend::start(&self.app_ns, name, port, true, false).await
    }

    /// A client agent in the client namespace.
    pub fn agent(&self) -> Agent {
        Agent::spawn(&self.client_ns, self.app.ws.path())
    }

    /// Creates a service and waits until the proxy listens on its VIP; returns the VIP.
    pub async fn create_service(&self, body: Value) -> String {
        let name = body["name"].as_str().expect("a name").to_string();
        self.api.post("/api/v1/services", body).await.expect(StatusCode::CREATED);
        self.applied().await;
        self.vip_of(&name).await
    }

    /// Replaces a service and waits until the proxy has applied it.
    pub async fn update_service(&self, body: Value) {
        self.put_service(body).await;
        self.applied().await;
    }

    /// Replaces a service without waiting for the proxy.
    pub async fn put_service(&self, body: Value) {
        let name = body["name"].as_str().expect("a name").to_string();
        self.api.put(&format!("/api/v1/services/{name}"), body).await.expect(StatusCode::OK);
    }

    async fn vip_of(&self, service: &str) -> String {
        let page = self.api.json("/api/v1/allocations").await;
        page["items"]
            .as_array()
            .and_then(|items| items.iter().find(|a| a["owner"] == format!("service/{service}")))
            .and_then(|a| a["address"].as_str())
            .unwrap_or_else(|| panic!("no VIP for {service}: {page:#}"))
            .to_string()
    }

    /// Waits until the snapshot of the configuration in force now is applied by the proxy and the VIPs are on the
    /// appliance's kernel, and the proxy listens on every VIP port (no `degraded` report).
    pub async fn applied(&self) {
        let revision = self.api.json("/api/v1/status").await["revision"].as_u64().expect("revision");
        let api = &self.api;
        eventually(WAIT, "the proxy applying the configuration", || async move {
            let s = api.json("/api/v1/status").await;
            let generation = s["generation"].as_u64()?;
            let done = |name: &str| s["subsystems"][name]["applied_generation"].as_u64() >= Some(generation);
            (s["snapshot_revision"].as_u64()? >= revision
                && done("proxy")
                && done("local_vips")
                && s["subsystems"]["proxy"]["health"] == "ok")
                .then_some(())
        })
        .await;
    }

    /// The proxy subsystem's line in `/status`.
    pub async fn proxy_status(&self) -> Value {
        self.api.json("/api/v1/status").await["subsystems"]["proxy"].clone()
    }

    /// The `protocol` (`tcp`, `udp`) listener of `service` in `/api/v1/proxy/status`.
    pub async fn listener(&self, service: &str, protocol: &str) -> Value {
        let status = self.api.json(&format!("/api/v1/proxy/status?service={service}")).await;
        let listeners = status["listeners"].as_array().cloned().unwrap_or_default();
        listeners
            .into_iter()
            .find(|l| l["protocol"] == protocol)
            .unwrap_or_else(|| panic!("no {protocol} listener of {service}: {status:#}"))
    }

    /// Waits until `check` holds for the `protocol` listener of `service` (its counters follow the traffic a
    /// moment later); fails with the last listener status seen.
    pub async fn listener_until(&self, service: &str, protocol: &str, what: &str, check: impl Fn(&Value) -> bool) {
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            let last = self.listener(service, protocol).await;
            if check(&last) {
                return;
            }
            assert!(std::time::Instant::now() < deadline, "{what} did not show within {WAIT:?}: {last:#}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// A counter of a listener or backend status (0 when absent).
pub fn count(v: &Value, path: &[&str]) -> u64 {
    path.iter().fold(v, |v, k| &v[*k]).as_u64().unwrap_or(0)
}

/// Polls `check` until it gives a value, up to `bound` (only against hangs). Like `harness::eventually`, but
/// the check may borrow mutably (a client agent), which an async closure allows.
pub async fn until<T>(bound: Duration, what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + bound;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(std::time::Instant::now() < deadline, "{what} did not happen within {bound:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
