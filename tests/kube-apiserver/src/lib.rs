//! An in-process Kubernetes API server for Portico's tests.
//!
//! It speaks the real Kubernetes HTTP protocol over HTTPS (its own CA, bearer tokens) for the kinds the appliance
//! uses: core/v1 Services (with `status`), Nodes, Secrets, Namespaces and Events, events.k8s.io/v1 Events,
//! discovery.k8s.io/v1 EndpointSlices, networking.k8s.io/v1 Ingresses (with `status`) and IngressClasses, and
//! authorization.k8s.io/v1 SelfSubjectAccessReviews. Lists and watches follow the API conventions
//! (resourceVersion semantics, `limit`/`continue`, selectors, bookmarks, 410 Gone), writes validate like the real
//! server, and tests inject faults through the handle.
//!
//! ```no_run
//! # async fn demo() {
//! use portico_test_apiserver::{TestApiServer, permissions};
//! let server = TestApiServer::start().await;
//! let token = server.add_token("portico", permissions::appliance());
//! let kubeconfig = server.kubeconfig(&token);
//! server
//!     .create("Service", Some("default"), serde_json::json!({
//!         "metadata": {"name": "web"},
//!         "spec": {"type": "LoadBalancer", "ports": [{"port": 80}]}
//!     }))
//!     .unwrap();
//! # let _ = kubeconfig;
//! # }
//! ```

// Test infrastructure: a failed lock or a broken invariant here should fail the test loudly. Bad client input
// never panics; it is answered with a Status like the real server's.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod auth;
mod discovery;
mod http;
mod kinds;
mod ops;
mod patch;
pub mod permissions;
mod selector;
mod status;
mod store;
mod tls;
mod validate;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::Value;
use tokio::net::TcpListener;

pub use auth::Permission;
pub use http::RequestRecord;
pub use status::ApiError;

use crate::auth::TokenEntry;
use crate::http::{ErrorFault, Faults, Listener, Shared, lock};
use crate::ops::{PatchType, Settings, WriteCtx};
use crate::store::Store;
use crate::validate::ClusterNetwork;

/// Settings of a server before it starts.
#[derive(Debug, Clone)]
pub struct Builder {
    history_window: usize,
    bookmark_interval: Duration,
    dual_stack: bool,
    implicit_namespaces: bool,
}

impl Default for Builder {
    fn default() -> Self {
        Builder {
            history_window: 10_000,
            bookmark_interval: Duration::from_secs(10),
            dual_stack: false,
            implicit_namespaces: true,
        }
    }
}

impl Builder {
    /// How many changes the server remembers for watches and paginated lists (default 10 000). A watch or
    /// `continue` from a version older than the window gets 410 Expired.
    pub fn history_window(mut self, changes: usize) -> Self {
        self.history_window = changes;
        self
    }

    /// How often watches that allow bookmarks get a BOOKMARK (default 10 s; the real server: about a minute).
    pub fn bookmark_interval(mut self, every: Duration) -> Self {
        self.bookmark_interval = every;
        self
    }

    /// Whether the cluster serves IPv6 as well as IPv4 Service addresses (default IPv4 only).
    pub fn dual_stack(mut self, on: bool) -> Self {
        self.dual_stack = on;
        self
    }

    /// Whether writing into a namespace that does not exist creates it (default) or is a 404 like the real
    /// server.
    pub fn implicit_namespaces(mut self, on: bool) -> Self {
        self.implicit_namespaces = on;
        self
    }

    pub async fn start(self) -> TestApiServer {
        let pki = tls::generate().expect("generating the test CA");
        let tcp = TcpListener::bind("127.0.0.1:0").await.expect("binding 127.0.0.1");
        let addr = tcp.local_addr().expect("local address");
        let url = format!("https://{addr}");
        let mut store = Store::new(self.history_window);
        for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            store.put(
                store::ObjKey { storage: "namespaces", namespace: String::new(), name: ns.to_string() },
                ops::new_namespace(ns),
            );
        }
        let (watch_epoch, _) = tokio::sync::watch::channel(0);
        let shared = Arc::new(Shared {
            store: Mutex::new(store),
            tokens: Mutex::new(auth::Tokens::default()),
            faults: Mutex::new(Faults::default()),
            requests: Mutex::new(Vec::new()),
            settings: Settings {
                net: ClusterNetwork { dual_stack: self.dual_stack },
                implicit_namespaces: self.implicit_namespaces,
            },
            bookmark_interval: self.bookmark_interval,
            watch_epoch,
            url: url.clone(),
            open_watches: Mutex::new(std::collections::HashMap::new()),
        });
        let listener = http::serve(shared.clone(), tcp, pki.server_config.clone());
        TestApiServer {
            shared,
            addr,
            tls: pki.server_config,
            ca_pem: pki.ca_pem,
            url,
            listener: Mutex::new(Some(listener)),
        }
    }
}

/// A running test API server. Dropping it stops it.
pub struct TestApiServer {
    shared: Arc<Shared>,
    addr: SocketAddr,
    tls: Arc<rustls::ServerConfig>,
    ca_pem: String,
    url: String,
    listener: Mutex<Option<Listener>>,
}

impl std::fmt::Debug for TestApiServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestApiServer").field("url", &self.url).finish_non_exhaustive()
    }
}

const HELPER_MANAGER: &str = "portico-test-apiserver";

impl TestApiServer {
    /// Starts a server with default settings on a free port of 127.0.0.1.
    pub async fn start() -> Self {
        Builder::default().start().await
    }

    pub fn builder() -> Builder {
        Builder::default()
    }

    /// `https://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        self.url.clone()
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The PEM of the CA that signed the server certificate.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// Registers a bearer token for user `name` with these permissions, and returns it.
    pub fn add_token(&self, name: &str, permissions: Vec<Permission>) -> String {
        let token = format!("{name}-{}", uuid::Uuid::new_v4().simple());
        lock(&self.shared.tokens).by_token.insert(token.clone(), TokenEntry { user: name.to_string(), permissions });
        token
    }

    /// Replaces the permissions of a token (effective for the next request; open watches go on, as with RBAC).
    pub fn set_permissions(&self, token: &str, permissions: Vec<Permission>) {
        if let Some(e) = lock(&self.shared.tokens).by_token.get_mut(token) {
            e.permissions = permissions;
        }
    }

    /// Makes a token unknown: its next request is a 401.
    pub fn revoke_token(&self, token: &str) {
        lock(&self.shared.tokens).by_token.remove(token);
    }

    /// A kubeconfig (YAML) for this server and token, with the CA inline.
    pub fn kubeconfig(&self, token: &str) -> String {
        let ca = base64::engine::general_purpose::STANDARD.encode(self.ca_pem.as_bytes());
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {}\n    certificate-authority-data: {ca}\nusers:\n- name: test\n  user:\n    token: {token}\ncontexts:\n- name: test\n  context:\n    cluster: test\n    user: test\n    namespace: default\ncurrent-context: test\n",
            self.url
        )
    }

    fn kind(kind: &str) -> Result<&'static kinds::Kind, ApiError> {
        kinds::lookup(kind)
            .filter(|k| k.is_stored())
            .ok_or_else(|| ApiError::new(404, "NotFound", format!("the server doesn't have a resource type {kind:?}")))
    }

    fn ctx<'a>(kind: &'static kinds::Kind, namespace: Option<&'a str>, sub: Option<&'a str>) -> WriteCtx<'a> {
        WriteCtx { kind, namespace, subresource: sub, manager: HELPER_MANAGER.to_string(), dry_run: false }
    }

    fn name_of(obj: &Value) -> String {
        obj.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default().to_string()
    }

    /// Creates an object, as a client's POST would (defaults, validation, events to watchers). `kind` is a kind
    /// name (`"Service"`), optionally qualified (`"networking.k8s.io/v1/Ingress"`, `"events.k8s.io/v1/Event"`).
    pub fn create(&self, kind: &str, namespace: Option<&str>, obj: Value) -> Result<Value, ApiError> {
        let k = Self::kind(kind)?;
        let mut store = lock(&self.shared.store);
        ops::create(&mut store, &self.shared.settings, &Self::ctx(k, namespace, None), obj).map(|o| ops::to_view(k, &o))
    }

    /// Server-side apply (field manager `portico-test-apiserver`, forced): creates or updates.
    pub fn apply(&self, kind: &str, namespace: Option<&str>, obj: Value) -> Result<Value, ApiError> {
        let k = Self::kind(kind)?;
        let mut obj = obj;
        if !obj.is_object() {
            return Err(ApiError::bad_request("the applied configuration must be an object"));
        }
        obj["apiVersion"] = Value::from(k.api_version());
        obj["kind"] = Value::from(k.kind);
        let name = Self::name_of(&obj);
        let body = serde_json::to_vec(&obj).unwrap_or_default();
        let mut store = lock(&self.shared.store);
        ops::patch(
            &mut store,
            &self.shared.settings,
            &Self::ctx(k, namespace, None),
            &name,
            PatchType::Apply,
            &body,
            true,
        )
        .map(|(_, o)| ops::to_view(k, &o))
    }

    /// Replaces an object (PUT semantics: a `metadata.resourceVersion` in `obj` must be current). Status is
    /// ignored for kinds with a status subresource; use [`update_status`](Self::update_status).
    pub fn update(&self, kind: &str, namespace: Option<&str>, obj: Value) -> Result<Value, ApiError> {
        let k = Self::kind(kind)?;
        let name = Self::name_of(&obj);
        let mut store = lock(&self.shared.store);
        ops::update(&mut store, &self.shared.settings, &Self::ctx(k, namespace, None), &name, obj)
            .map(|(_, o)| ops::to_view(k, &o))
    }

    /// Replaces the status of an object (PUT on `/status`).
    pub fn update_status(&self, kind: &str, namespace: Option<&str>, obj: Value) -> Result<Value, ApiError> {
        let k = Self::kind(kind)?;
        let name = Self::name_of(&obj);
        let mut store = lock(&self.shared.store);
        ops::update(&mut store, &self.shared.settings, &Self::ctx(k, namespace, Some("status")), &name, obj)
            .map(|(_, o)| ops::to_view(k, &o))
    }

    /// A JSON merge patch of the main resource.
    pub fn patch(&self, kind: &str, namespace: Option<&str>, name: &str, merge: Value) -> Result<Value, ApiError> {
        let k = Self::kind(kind)?;
        let body = serde_json::to_vec(&merge).unwrap_or_default();
        let mut store = lock(&self.shared.store);
        ops::patch(
            &mut store,
            &self.shared.settings,
            &Self::ctx(k, namespace, None),
            name,
            PatchType::Merge,
            &body,
            false,
        )
        .map(|(_, o)| ops::to_view(k, &o))
    }

    /// Deletes an object (objects with finalizers are only marked, as by the real server).
    pub fn delete(&self, kind: &str, namespace: Option<&str>, name: &str) -> Result<Value, ApiError> {
        let k = Self::kind(kind)?;
        let mut store = lock(&self.shared.store);
        ops::delete(&mut store, &Self::ctx(k, namespace, None), name, &Value::Null).map(|o| ops::to_view(k, &o))
    }

    /// The current object, if it exists.
    pub fn get(&self, kind: &str, namespace: Option<&str>, name: &str) -> Option<Value> {
        let k = Self::kind(kind).ok()?;
        let store = lock(&self.shared.store);
        store.get(&ops::key(k, namespace, name)).map(|o| ops::to_view(k, &o))
    }

    /// Every object of a kind (in one namespace, or all with `None`), in namespace/name order.
    pub fn list(&self, kind: &str, namespace: Option<&str>) -> Vec<Value> {
        let Ok(k) = Self::kind(kind) else { return Vec::new() };
        let store = lock(&self.shared.store);
        store
            .objects
            .iter()
            .filter(|(key, _)| key.storage == k.storage && namespace.is_none_or(|ns| key.namespace == ns))
            .map(|(_, o)| ops::to_view(k, o))
            .collect()
    }

    /// Every recorded Event (both APIs write the same storage), in events.k8s.io/v1 form: `reason`, `note`,
    /// `type`, `regarding`, `series`...
    pub fn events(&self) -> Vec<Value> {
        self.list("events.k8s.io/v1/Event", None)
    }

    /// Every request served so far (method, path, query, user, status code), oldest first.
    pub fn requests(&self) -> Vec<RequestRecord> {
        lock(&self.shared.requests).clone()
    }

    /// Requests with this method whose path is exactly `path`.
    pub fn count_requests(&self, method: &str, path: &str) -> usize {
        let records = lock(&self.shared.requests);
        http::count_requests(&records).get(&(method.to_string(), path.to_string())).copied().unwrap_or(0)
    }

    pub fn clear_requests(&self) {
        lock(&self.shared.requests).clear();
    }

    /// The current (last issued) resourceVersion.
    pub fn resource_version(&self) -> u64 {
        lock(&self.shared.store).rv
    }

    /// How many watch streams are open now (all paths).
    pub fn open_watches(&self) -> usize {
        lock(&self.shared.open_watches).values().sum()
    }

    /// How many watch streams are open on paths containing `path_contains` (`"/services"`, `"/endpointslices"`).
    pub fn open_watches_on(&self, path_contains: &str) -> usize {
        lock(&self.shared.open_watches).iter().filter(|(p, _)| p.contains(path_contains)).map(|(_, n)| n).sum()
    }

    /// Waits until at least `n` watch streams are open on paths containing `path_contains`; false on timeout.
    pub async fn wait_for_watches(&self, path_contains: &str, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.open_watches_on(path_contains) >= n {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.open_watches_on(path_contains) >= n
    }

    // ----- faults -----

    /// Ends every open watch abruptly (as a dropped connection would); clients re-watch from their last version.
    pub fn drop_watches(&self) {
        self.shared.watch_epoch.send_modify(|e| *e += 1);
    }

    /// Answers the next `n` requests (whose path contains `path_contains`, if given) with a 500 InternalError.
    pub fn fail_next(&self, n: usize, path_contains: Option<&str>) {
        self.fail_next_with(500, n, path_contains);
    }

    /// Like [`fail_next`](Self::fail_next) with another code (429 and 503 get their real reasons).
    pub fn fail_next_with(&self, code: u16, n: usize, path_contains: Option<&str>) {
        if n == 0 {
            return;
        }
        lock(&self.shared.faults).errors.push(ErrorFault {
            remaining: n,
            path_contains: path_contains.map(str::to_string),
            code,
        });
    }

    /// Holds every request that arrives in the next `duration` until that time has passed.
    pub fn stall_for(&self, duration: Duration) {
        lock(&self.shared.faults).stall_until = Some(Instant::now() + duration);
    }

    /// Delays every response by `delay` until set back to `None`.
    pub fn set_response_delay(&self, delay: Option<Duration>) {
        lock(&self.shared.faults).delay = delay;
    }

    /// Removes every pending injected fault (errors, stalls, delays).
    pub fn clear_faults(&self) {
        *lock(&self.shared.faults) = Faults::default();
    }

    /// Drops the remembered history up to now: watches and `continue` tokens from any earlier version get 410.
    pub fn compact(&self) {
        let mut store = lock(&self.shared.store);
        let rv = store.rv;
        store.compact(rv);
    }

    /// A "restart" with a reset resourceVersion counter (like a restore of etcd): every watch is closed, the
    /// objects are renumbered from 1, history is forgotten, and resourceVersions handed out before are unknown
    /// (watches from them get 410 Expired until the client lists again).
    pub fn restart(&self) {
        lock(&self.shared.store).restart();
        self.drop_watches();
    }

    /// Makes the server unreachable: stops listening and closes every connection (and so every watch).
    pub async fn stop_listening(&self) {
        let l = lock(&self.listener).take();
        if let Some(l) = l {
            l.cancel.cancel();
            let _ = l.task.await;
        }
        self.drop_watches();
    }

    /// Listens again on the same address after [`stop_listening`](Self::stop_listening).
    pub async fn resume_listening(&self) -> std::io::Result<()> {
        if lock(&self.listener).is_some() {
            return Ok(());
        }
        let mut tries = 0;
        let tcp = loop {
            match TcpListener::bind(self.addr).await {
                Ok(t) => break t,
                Err(e) if tries < 50 => {
                    tries += 1;
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(e),
            }
        };
        let l = http::serve(self.shared.clone(), tcp, self.tls.clone());
        *lock(&self.listener) = Some(l);
        Ok(())
    }
}

impl Drop for TestApiServer {
    fn drop(&mut self) {
        if let Some(l) = lock(&self.listener).take() {
            l.cancel.cancel();
            l.task.abort();
        }
        self.shared.watch_epoch.send_modify(|e| *e += 1);
    }
}
