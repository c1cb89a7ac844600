//! Runs the real `portico` binary on free loopback ports with its own data dir, and talks to it over HTTP.
//!
//! Every test starts its own process(es) in its own temporary directory, so tests run in parallel. The
//! process's output goes to a log file in that directory, printed when a test fails. Dropping an
//! [`Appliance`] kills its process.
//!
//! Tests against real peers use `netns.rs` (network namespaces and veth pairs the test makes and removes, also
//! when it panics) and `bgp_peers.rs` (BIRD 2 and GoBGP inside those namespaces, configured from builders and
//! read back as `PeerRoute`s). The appliance stays in the root namespace, so the test still reaches its admin
//! API on 127.0.0.1; each peer gets a `Link::to_root`, whose root end (`link.a.v4`, `link.a.v6`) is what the
//! appliance's BGP listener binds (port 179 of that address only, so parallel tests never clash) and whose far
//! end (`link.b.*`) is the peer's address. `appliance_bgp_settings` and `appliance_peer` make the matching
//! `settings.bgp` and `bgp_peers` JSON. These tests need root and the packages of `scripts/install-test-deps.sh`;
//! `cargo test -p portico --test e2e bgp_peers::selftest` checks the peers themselves, without the appliance.

use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::fs::File;
use std::io::Write as _;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The password the harness gives the `admin` user (through `PORTICO_ADMIN_PASSWORD`) unless a test asks for
/// a generated one.
pub const ADMIN_PASSWORD: &str = "e2e-admin-password";

/// How long the appliance may take to answer its health probe after start.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a stopped appliance may take to exit.
const EXIT_TIMEOUT: Duration = Duration::from_secs(30);

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_portico")
}

/// Installs the TLS crypto provider once (reqwest's rustls needs one when several are compiled in).
fn crypto() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    });
}

/// A port that was free a moment ago (the appliance binds it; a lost race is retried by [`Appliance::start`]).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("local address").port()
}

/// How to start an appliance.
#[derive(Debug, Clone)]
pub struct Options {
    /// `PORTICO_ADMIN_PASSWORD`; `None` makes the appliance generate one.
    pub admin_password: Option<String>,
    /// Also serve the HTTPS admin listener.
    pub https: bool,
    /// Run inside this network namespace (`ip netns exec`), with the admin API on `admin_ip` there.
    pub netns: Option<String>,
    /// Where the admin listeners bind (and the harness connects); loopback unless the appliance runs in a
    /// namespace the test process reaches over a link.
    pub admin_ip: std::net::IpAddr,
    /// `--vip-interface`: the dummy interface that makes VIPs local. Off unless a test asks (appliances in the
    /// root namespace must not add addresses to it or fight over one interface).
    pub vip_interface: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            admin_password: Some(ADMIN_PASSWORD.into()),
            https: false,
            netns: None,
            admin_ip: std::net::Ipv4Addr::LOCALHOST.into(),
            vip_interface: None,
        }
    }
}

/// A temporary directory holding a data dir and the log of every process run on it.
#[derive(Debug)]
pub struct Workspace {
    dir: tempfile::TempDir,
}

impl Workspace {
    pub fn new() -> Workspace {
        Workspace { dir: tempfile::Builder::new().prefix("portico-e2e-").tempdir().expect("temp dir") }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("portico.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn log_file(&self) -> File {
        File::options().create(true).append(true).open(self.log_path()).expect("open the log file")
    }

    /// Runs a command (`config export`, `admin reset-password`, `version`, or a `run` that must fail) to
    /// completion, killing it after a generous bound; its output is also appended to the log.
    pub fn cli(&self, args: &[&str]) -> Output {
        self.cli_with_env(args, &[])
    }

    /// [`Workspace::cli`] with extra environment variables.
    pub fn cli_with_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let out_path = self.path().join(format!("cli-{n}.out"));
        let err_path = self.path().join(format!("cli-{n}.err"));
        let mut child = base_command(None)
            .args(args)
            .envs(env.iter().copied())
            .current_dir(self.path())
            .stdin(Stdio::null())
            .stdout(File::create(&out_path).expect("create stdout file"))
            .stderr(File::create(&err_path).expect("create stderr file"))
            .spawn()
            .expect("run the portico binary");
        let deadline = Instant::now() + EXIT_TIMEOUT;
        let status = loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("portico {} did not finish within {EXIT_TIMEOUT:?}", args.join(" "));
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let output = Output {
            status,
            stdout: std::fs::read(&out_path).unwrap_or_default(),
            stderr: std::fs::read(&err_path).unwrap_or_default(),
        };
        let mut log = self.log_file();
        let _ = writeln!(log, "=== portico {} → {}", args.join(" "), output.status);
        let _ = log.write_all(&output.stdout);
        let _ = log.write_all(&output.stderr);
        output
    }
}

impl Drop for Workspace {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("----- portico log ({}) -----\n{}----- end of log -----", self.log_path().display(), self.log());
        }
    }
}

/// The binary, in a network namespace if given (`ip netns exec` executes it in place: same process).
fn base_command(netns: Option<&str>) -> Command {
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, binary()]);
            c
        }
        None => Command::new(binary()),
    };
    // The harness decides everything; nothing leaks in from the environment of whoever runs the tests.
    for var in [
        "PORTICO_DATA_DIR",
        "PORTICO_ADMIN_HTTP",
        "PORTICO_ADMIN_HTTPS",
        "PORTICO_LOG_JSON",
        "PORTICO_ADMIN_PASSWORD",
        "PORTICO_VIP_INTERFACE",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("NO_COLOR", "1");
    cmd
}

/// A running `portico run`.
#[derive(Debug)]
pub struct Appliance {
    pub ws: Workspace,
    pub options: Options,
    child: Option<Child>,
    pub http_port: u16,
    pub https_port: Option<u16>,
}

impl Appliance {
    /// Starts an appliance with the default options in a new workspace.
    pub async fn start() -> Appliance {
        Appliance::start_with(Options::default()).await
    }

    pub async fn start_with(options: Options) -> Appliance {
        Appliance::start_in(Workspace::new(), options).await
    }

    /// Starts an appliance on an existing workspace (and its data dir).
    pub async fn start_in(ws: Workspace, options: Options) -> Appliance {
        let mut appliance = Appliance { ws, options, child: None, http_port: 0, https_port: None };
        appliance.launch().await;
        appliance
    }

    /// Spawns the process and waits until it answers, retrying with new ports if one was taken meanwhile.
    async fn launch(&mut self) {
        assert!(self.child.is_none(), "the appliance is already running");
        for attempt in 1..=5 {
            self.http_port = free_port();
            self.https_port = self.options.https.then(free_port);
            let mut log = self.ws.log_file();
            let _ = writeln!(log, "=== start (attempt {attempt}) http={} https={:?}", self.http_port, self.https_port);
            let mut cmd = base_command(self.options.netns.as_deref());
            let ip = self.options.admin_ip;
            cmd.arg("run")
                .arg("--data-dir")
                .arg(self.ws.data())
                .arg("--admin-http")
                .arg(std::net::SocketAddr::new(ip, self.http_port).to_string())
                .arg("--admin-https")
                .arg(match self.https_port {
                    Some(p) => std::net::SocketAddr::new(ip, p).to_string(),
                    None => "off".into(),
                })
                .arg("--vip-interface")
                .arg(self.options.vip_interface.as_deref().unwrap_or("off"))
                .current_dir(self.ws.path())
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("clone log handle"))
                .stderr(log);
            if let Some(p) = &self.options.admin_password {
                cmd.env("PORTICO_ADMIN_PASSWORD", p);
            }
            self.child = Some(cmd.spawn().expect("spawn the portico binary"));
            match self.wait_ready().await {
                Ok(()) => return,
                Err(status) => {
                    self.child = None;
                    if self.ws.log().contains("Address already in use") && attempt < 5 {
                        continue;
                    }
                    panic!("portico exited during start ({status}); log:\n{}", self.ws.log());
                }
            }
        }
    }

    /// Polls `/healthz` until it answers; `Err` with the exit status if the process ends first.
    async fn wait_ready(&mut self) -> Result<(), ExitStatus> {
        let client = reqwest::Client::builder().timeout(Duration::from_secs(2)).build().expect("client");
        let url = format!("{}/healthz", self.base());
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().expect("try_wait")) {
                return Err(status);
            }
            if let Ok(r) = client.get(&url).send().await
                && r.status() == StatusCode::OK
            {
                return Ok(());
            }
            assert!(Instant::now() < deadline, "portico did not answer {url} within {START_TIMEOUT:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn base(&self) -> String {
        format!("http://{}", std::net::SocketAddr::new(self.options.admin_ip, self.http_port))
    }

    pub fn https_base(&self) -> String {
        let port = self.https_port.expect("started without HTTPS");
        format!("https://{}", std::net::SocketAddr::new(self.options.admin_ip, port))
    }

    pub fn data(&self) -> PathBuf {
        self.ws.data()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("not running").id()
    }

    /// Sends a signal with kill(1) (the tests need no libc bindings for that).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill").arg(format!("-{name}")).arg(self.pid().to_string()).status().expect("kill");
        assert!(status.success(), "kill -{name} failed");
    }

    /// Waits for the process to exit, up to a generous bound.
    pub async fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + EXIT_TIMEOUT;
        let child = self.child.as_mut().expect("not running");
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                self.child = None;
                return status;
            }
            assert!(Instant::now() < deadline, "portico did not exit within {EXIT_TIMEOUT:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGTERM and wait; asserts a clean exit.
    pub async fn stop(&mut self) {
        self.signal("TERM");
        let status = self.wait_exit().await;
        assert!(status.success(), "portico exited with {status} after SIGTERM; log:\n{}", self.ws.log());
    }

    /// SIGKILL: no chance to clean up.
    pub async fn kill9(&mut self) {
        let mut child = self.child.take().expect("not running");
        child.kill().expect("SIGKILL");
        child.wait().expect("reap");
    }

    /// Starts the process again on the same data dir (new ports).
    pub async fn restart(&mut self) {
        if self.child.is_some() {
            self.stop().await;
        }
        self.launch().await;
    }

    /// The workspace of a stopped appliance, to run offline commands on or to start another process in.
    pub fn into_workspace(mut self) -> Workspace {
        assert!(self.child.is_none(), "stop the appliance first");
        std::mem::replace(&mut self.ws, Workspace::new())
    }

    /// Starts the process again after it was stopped.
    pub async fn start_again(&mut self) {
        self.launch().await;
    }

    /// A client without credentials.
    pub fn anonymous(&self) -> Api {
        Api::new(self.base(), None, false)
    }

    /// A session client logged in as `user`; panics unless the login succeeds.
    pub async fn login(&self, user: &str, password: &str) -> Api {
        let api = Api::new(self.base(), None, true);
        let r = api.post("/api/v1/auth/login", json!({ "username": user, "password": password })).await;
        assert_eq!(r.status, StatusCode::OK, "login as {user}: {r:?}");
        api
    }

    pub async fn admin(&self) -> Api {
        self.login("admin", self.options.admin_password.as_deref().expect("generated admin password")).await
    }

    /// A bearer-token client for a new token of `role`, created by `creator`.
    pub async fn token(&self, creator: &Api, role: &str) -> Api {
        let r = creator.post("/api/v1/tokens", json!({ "name": format!("e2e-{role}"), "role": role })).await;
        assert_eq!(r.status, StatusCode::CREATED, "create token: {r:?}");
        Api::new(self.base(), Some(r.body["secret"].as_str().expect("secret").to_string()), false)
    }

    /// An admin bearer-token client (no session, no CSRF header).
    pub async fn admin_token(&self) -> Api {
        let admin = self.admin().await;
        self.token(&admin, "admin").await
    }
}

impl Drop for Appliance {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A response, read whole.
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub text: String,
    /// The body as JSON (`Null` when it is not JSON).
    pub body: Value,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The `type` of a problem document, after the last `/`.
    pub fn problem(&self) -> &str {
        self.body["type"].as_str().map(|t| t.rsplit('/').next().unwrap_or(t)).unwrap_or("")
    }

    /// The `field`s of a problem document's errors.
    pub fn fields(&self) -> Vec<String> {
        self.body["errors"]
            .as_array()
            .map(|a| a.iter().map(|e| e["field"].as_str().unwrap_or("").to_string()).collect())
            .unwrap_or_default()
    }

    /// The message of the error about `field`.
    pub fn message_for(&self, field: &str) -> String {
        self.body["errors"]
            .as_array()
            .and_then(|a| a.iter().find(|e| e["field"] == field))
            .and_then(|e| e["message"].as_str())
            .unwrap_or_else(|| panic!("no error for field {field:?} in {self:?}"))
            .to_string()
    }

    pub fn etag(&self) -> String {
        self.header("etag").unwrap_or_else(|| panic!("no ETag in {self:?}")).to_string()
    }

    #[track_caller]
    pub fn expect(&self, status: StatusCode) -> &Self {
        assert_eq!(self.status, status, "unexpected response: {self:?}");
        self
    }

    /// Asserts an RFC 9457 problem of this status and type.
    #[track_caller]
    pub fn expect_problem(&self, status: StatusCode, kind: &str) -> &Self {
        self.expect(status);
        assert_eq!(self.header("content-type"), Some("application/problem+json"), "{self:?}");
        assert_eq!(self.problem(), kind, "{self:?}");
        assert_eq!(self.body["status"], status.as_u16(), "{self:?}");
        self
    }
}

/// A client of one appliance: a cookie session (sending `X-Requested-With` on changes) or a bearer token.
#[derive(Debug, Clone)]
pub struct Api {
    pub client: reqwest::Client,
    pub base: String,
    pub token: Option<String>,
    /// Send `X-Requested-With` (what the web UI does) on every request.
    pub csrf_header: bool,
}

impl Api {
    pub fn new(base: String, token: Option<String>, csrf_header: bool) -> Api {
        crypto();
        let client = reqwest::Client::builder()
            .cookie_store(true)
            .timeout(Duration::from_secs(60))
            .danger_accept_invalid_certs(true)
            .build()
            .expect("client");
        Api { client, base, token, csrf_header }
    }

    /// A request with this client's credentials; add headers and a body, then [`send`] it.
    pub fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let mut b = self.client.request(method, format!("{}{path}", self.base));
        if let Some(t) = &self.token {
            b = b.bearer_auth(t);
        }
        if self.csrf_header {
            b = b.header("x-requested-with", HeaderValue::from_static("portico-e2e"));
        }
        b
    }

    pub async fn get(&self, path: &str) -> Resp {
        send(self.request(Method::GET, path)).await
    }

    pub async fn post(&self, path: &str, body: Value) -> Resp {
        send(self.request(Method::POST, path).json(&body)).await
    }

    pub async fn put(&self, path: &str, body: Value) -> Resp {
        send(self.request(Method::PUT, path).json(&body)).await
    }

    pub async fn delete(&self, path: &str) -> Resp {
        send(self.request(Method::DELETE, path)).await
    }

    /// GET that must answer 200; returns the JSON body.
    pub async fn json(&self, path: &str) -> Value {
        let r = self.get(path).await;
        r.expect(StatusCode::OK);
        r.body
    }

    /// Every item of a paged list, following `next_cursor`.
    pub async fn all(&self, path: &str) -> Vec<Value> {
        let sep = if path.contains('?') { '&' } else { '?' };
        let mut items = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let url = match &cursor {
                Some(c) => format!("{path}{sep}limit=1000&cursor={c}"),
                None => format!("{path}{sep}limit=1000"),
            };
            let page = self.json(&url).await;
            items.extend(page["items"].as_array().expect("items").iter().cloned());
            match page["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_string()),
                None => return items,
            }
        }
    }
}

pub async fn send(builder: reqwest::RequestBuilder) -> Resp {
    let response = builder.send().await.expect("request failed");
    read(response).await
}

pub async fn read(response: reqwest::Response) -> Resp {
    let status = response.status();
    let headers = response.headers().clone();
    let text = response.text().await.expect("read body");
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    Resp { status, headers, text, body }
}

/// Polls `check` until it returns `Some`, up to `bound`; for things that happen eventually (never a
/// performance assertion).
pub async fn eventually<T, F, Fut>(bound: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + bound;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "{what} did not happen within {bound:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub fn pool(name: &str, addresses: &[&str]) -> Value {
    json!({ "name": name, "addresses": addresses })
}

pub fn service(name: &str) -> Value {
    json!({ "name": name, "ports": [{ "port": 80 }], "backends": [{ "address": "192.0.2.10:8080" }] })
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}
