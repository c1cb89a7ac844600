//! The `portico` binary: command line, wiring of the control plane, the API and the subsystems, start-up and
//! graceful shutdown.

// The binary talks to its user on standard output (version, generated passwords); libraries never do.
#![allow(clippy::print_stdout)]

mod bootstrap;
mod logging;
mod offline;
mod tls;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use control::{Control, Pipeline, StatusRegistry, run_subsystem};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

#[global_allocator]
static ALLOCATOR: portico_allocator::MiMalloc = portico_allocator::MiMalloc;

#[derive(Debug, Parser)]
#[command(name = "portico", version = VERSION, about = "Portico: a Kubernetes edge appliance (VIPs, proxy, DNS, tunnels)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Args)]
struct DataDir {
    /// Where the database, certificates and generated secrets live.
    #[arg(long, env = "PORTICO_DATA_DIR", default_value = "./data")]
    data_dir: PathBuf,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the appliance.
    Run {
        #[command(flatten)]
        data: DataDir,
        /// Plain-HTTP admin listener (keep it on loopback), or `off`. Default: settings.admin.http (127.0.0.1:8080).
        #[arg(long, env = "PORTICO_ADMIN_HTTP")]
        admin_http: Option<String>,
        /// HTTPS admin listener with a self-signed certificate kept in the data dir, or `off`.
        /// Default: settings.admin.https (0.0.0.0:8443).
        #[arg(long, env = "PORTICO_ADMIN_HTTPS")]
        admin_https: Option<String>,
        /// Log as JSON lines instead of human-readable text.
        #[arg(long, env = "PORTICO_LOG_JSON")]
        log_json: bool,
        /// The dummy interface every VIP is added to, so the kernel accepts traffic for it; `off` leaves the
        /// kernel's addresses alone.
        #[arg(long, env = "PORTICO_VIP_INTERFACE", default_value = "portico0")]
        vip_interface: String,
    },
    /// Export or import the whole configuration (offline, on the data dir).
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// Administrative tasks on the data dir (offline).
    Admin {
        #[command(subcommand)]
        action: AdminAction,
    },
    /// Print the version.
    Version,
}

#[derive(Debug, Subcommand)]
enum ConfigAction {
    /// Write the configuration with its VIP allocations to FILE (or standard output). YAML when FILE ends in
    /// .yaml or .yml.
    Export {
        #[command(flatten)]
        data: DataDir,
        file: Option<PathBuf>,
        /// Include cluster credentials, in clear. Off by default: an export is safe to share.
        #[arg(long)]
        include_secrets: bool,
    },
    /// Replace the configuration with FILE (an export, or a bare configuration document), as one revision.
    Import {
        #[command(flatten)]
        data: DataDir,
        file: PathBuf,
        /// Only show what would change.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Debug, Subcommand)]
enum AdminAction {
    /// Give USER a new random password (printed once; it must be changed at the next login).
    ResetPassword {
        #[command(flatten)]
        data: DataDir,
        user: String,
    },
}

fn main() -> std::process::ExitCode {
    portico_allocator::return_freed_memory_at_once();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("portico: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Run { data, admin_http, admin_https, log_json, vip_interface } => {
                let vip_interface = (vip_interface != "off").then_some(vip_interface);
                run(&data.data_dir, admin_http, admin_https, log_json, vip_interface).await
            }
            Command::Config { action: ConfigAction::Export { data, file, include_secrets } } => {
                offline::export(&data.data_dir, file.as_deref(), include_secrets).await
            }
            Command::Config { action: ConfigAction::Import { data, file, dry_run } } => {
                offline::import(&data.data_dir, &file, dry_run).await
            }
            Command::Admin { action: AdminAction::ResetPassword { data, user } } => {
                offline::reset_password(&data.data_dir, &user).await
            }
            Command::Version => {
                println!("portico {VERSION}");
                Ok(())
            }
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("portico: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Creates the data dir (mode 0700) and takes its lock, so that two processes never write one database.
pub fn open_data_dir(dir: &Path) -> Result<std::fs::File> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("cannot create data dir {}", dir.display()))?;
    }
    let meta = std::fs::metadata(dir).with_context(|| format!("cannot read data dir {}", dir.display()))?;
    if !meta.is_dir() {
        bail!("data dir {} is not a directory", dir.display());
    }
    if meta.permissions().mode() & 0o077 != 0 {
        tracing::warn!(dir = %dir.display(), "data dir is readable by others; it holds secrets (chmod 700)");
    }
    let lock_path = dir.join("portico.lock");
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("cannot open {}", lock_path.display()))?;
    match lock.try_lock() {
        Ok(()) => Ok(lock),
        Err(std::fs::TryLockError::WouldBlock) => {
            bail!("data dir {} is in use by another portico process (stop it first)", dir.display())
        }
        Err(std::fs::TryLockError::Error(e)) => Err(e).with_context(|| format!("cannot lock {}", lock_path.display())),
    }
}

pub async fn open_store(dir: &Path) -> Result<store::Store> {
    let path = dir.join("portico.db");
    store::Store::open(&path).await.map_err(|e| anyhow::anyhow!(e))
}

/// The key that seals credentials in the database (`DATA/secrets.key`, created on first use, mode 0600).
pub fn open_sealer(dir: &Path) -> Result<control::sealing::Sealer> {
    control::sealing::Sealer::load_or_create(&dir.join("secrets.key")).map_err(|e| anyhow::anyhow!(e))
}

fn listener_addr(flag: Option<String>, setting: Option<String>, what: &str) -> Result<Option<SocketAddr>> {
    let text = match flag {
        Some(f) => Some(f),
        None => setting,
    };
    match text.as_deref() {
        None | Some("off") | Some("") => Ok(None),
        Some(t) => t.parse().map(Some).with_context(|| format!("{what} listener '{t}' is not an address:port")),
    }
}

/// Raises the soft limit on open descriptors to the hard one: every proxied connection holds two sockets (and
/// a bulk transfer on epoll a pooled pipe), and the soft limit a service gets by default (1024 under systemd)
/// would cap the proxy at a few hundred connections. The hard limit stays the operator's to set.
fn raise_descriptor_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => tracing::info!(from = soft, to = hard, "raised the open-descriptor limit"),
            Err(e) => tracing::warn!(soft, hard, error = %e, "cannot raise the open-descriptor limit"),
        },
        Ok((soft, _)) => tracing::debug!(limit = soft, "open-descriptor limit"),
        Err(e) => tracing::warn!(error = %e, "cannot read the open-descriptor limit"),
    }
}

/// The L4 proxy's I/O engine as `settings.proxy.l4_engine` asks (read at start), and why it is another one if
/// it is. io_uring asked for but unavailable does not keep the appliance down: it runs on epoll and says so.
fn l4_engine(setting: model::proxy::L4Engine) -> (Arc<dyn proxy::engine::Engine>, Option<String>) {
    use proxy::engine::EngineChoice;
    let choice = match setting {
        model::proxy::L4Engine::Auto => EngineChoice::Auto,
        model::proxy::L4Engine::IoUring => EngineChoice::IoUring,
        model::proxy::L4Engine::Epoll => EngineChoice::Epoll,
    };
    match proxy::engine::select(choice, None) {
        Ok((engine, why_not)) => (engine, why_not.map(|why| format!("io_uring unavailable: {why}"))),
        Err(e) => {
            tracing::error!(error = %e, "settings.proxy.l4_engine cannot be honoured; the L4 proxy runs on epoll");
            (Arc::new(proxy::engine::EpollEngine), Some(format!("configured io_uring, but {e}")))
        }
    }
}

async fn run(
    data_dir: &Path,
    admin_http: Option<String>,
    admin_https: Option<String>,
    log_json: bool,
    vip_interface: Option<String>,
) -> Result<()> {
    let log_control = logging::init(log_json)?;
    raise_descriptor_limit();
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let _lock = open_data_dir(data_dir)?;
    let render_metrics = install_metrics()?;

    let store = open_store(data_dir).await?;
    let pipeline = Pipeline::new();
    let sealer = open_sealer(data_dir)?;
    let control =
        Control::start(store.clone(), pipeline.clone(), sealer).await.context("cannot load the configuration")?;
    bootstrap::ensure_admin(&store, data_dir).await?;

    let settings = control.current().config.settings.clone();
    let http_addr = listener_addr(admin_http, settings.admin.http.clone(), "admin HTTP")?;
    let https_addr = listener_addr(admin_https, settings.admin.https.clone(), "admin HTTPS")?;
    if http_addr.is_none() && https_addr.is_none() {
        bail!("both admin listeners are off; enable at least one with --admin-http or --admin-https");
    }

    let shutdown = CancellationToken::new();
    let registry = StatusRegistry::default();
    let mut tasks = tokio::task::JoinSet::new();
    tasks.spawn(pipeline.clone().run(shutdown.clone()));
    tasks.spawn(drop_result(run_subsystem(log_control, pipeline.subscribe(), registry.clone(), shutdown.clone())));
    tasks.spawn(expire_sessions(store.clone(), shutdown.clone()));

    let clusters = cluster::ClusterManager::new();
    tasks.spawn(drop_result(run_subsystem(
        cluster::ClusterSync::new(clusters.clone()),
        pipeline.subscribe(),
        registry.clone(),
        shutdown.clone(),
    )));
    let speaker = bgp::Speaker::new(bgp::SpeakerOptions { restarting: started_before(data_dir) });
    let bgp_ops: Arc<dyn api::BgpOps> = Arc::new(BgpOps(speaker.handle()));
    {
        let (snapshots, registry, shutdown) = (pipeline.subscribe(), registry.clone(), shutdown.clone());
        tasks.spawn(async move {
            // Closes the sessions at the end: with graceful restart, peers keep our routes while we are away.
            run_subsystem(speaker, snapshots, registry, shutdown).await.shutdown().await;
        });
    }
    tasks.spawn(forward_observed(clusters.clone(), control.clone(), shutdown.clone()));
    let cluster_ops: Arc<dyn api::ClusterOps> = Arc::new(ClusterOps(clusters));
    let (engine, engine_note) = l4_engine(settings.proxy.l4_engine);
    let l4 = proxy::Proxy::with_engine(engine).engine_note(engine_note).health_sink(Arc::new(pipeline.clone()));
    let proxy_handle = l4.handle();
    tasks.spawn(drop_result(run_subsystem(l4, pipeline.subscribe(), registry.clone(), shutdown.clone())));
    let responder = l2::Responder::new();
    let l2_ops: Arc<dyn api::L2Ops> = Arc::new(L2Ops(responder.handle()));
    {
        let (snapshots, registry, shutdown) = (pipeline.subscribe(), registry.clone(), shutdown.clone());
        tasks.spawn(async move {
            run_subsystem(responder, snapshots, registry, shutdown).await.shutdown();
        });
    }
    match vip_interface {
        Some(interface) => {
            let local = localvips::LocalVips::new(localvips::LocalVipsOptions { interface });
            let (snapshots, registry, shutdown) = (pipeline.subscribe(), registry.clone(), shutdown.clone());
            tasks.spawn(async move {
                // Takes every VIP off the kernel at a clean stop; the next start reconciles after a crash.
                run_subsystem(local, snapshots, registry, shutdown).await.shutdown().await;
            });
        }
        None => tracing::warn!("--vip-interface off: VIPs are not made local; nothing on this box can serve them"),
    }
    let render_metrics: Box<dyn Fn() -> String + Send + Sync> = {
        let proxy_handle = proxy_handle.clone();
        // The proxy's per-listener and per-backend series are read from its live counters at scrape time.
        Box::new(move || render_metrics() + &proxy_handle.prometheus())
    };
    let subsystems =
        api::Subsystems { clusters: cluster_ops, bgp: bgp_ops, l2: l2_ops, proxy: Arc::new(ProxyOps(proxy_handle)) };
    let state = api::AppState::new(control.clone(), registry, render_metrics, VERSION, subsystems);
    let (router, _) = api::router(state);

    // Bind every listener before serving on any, so that answering on one means all are up.
    let http = match http_addr {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} (admin HTTP)"))?,
        ),
        None => None,
    };
    let https = match https_addr {
        Some(addr) => {
            let config = tls::admin_server_config(data_dir, &settings.hostname)?;
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} (admin HTTPS)"))?;
            Some((listener, config))
        }
        None => None,
    };
    if let Some((listener, config)) = https {
        let local = listener.local_addr()?;
        tracing::info!(url = %format!("https://{local}/"), "admin API listening (HTTPS, self-signed certificate)");
        tasks.spawn(api::server::serve(listener, Some(Arc::new(config)), router.clone(), shutdown.clone()));
    }
    if let Some(listener) = http {
        let local = listener.local_addr()?;
        tracing::info!(url = %format!("http://{local}/"), "admin API listening (HTTP)");
        tasks.spawn(api::server::serve(listener, None, router.clone(), shutdown.clone()));
    }
    tracing::info!(version = VERSION, data_dir = %data_dir.display(), revision = control.current().revision, "portico running");

    wait_for_signal().await;
    tracing::info!("shutting down");
    shutdown.cancel();
    while tasks.join_next().await.is_some() {}
    control.save_last_known().await;
    store.close().await;
    tracing::info!("stopped");
    Ok(())
}

/// Gives the control plane what the clusters say, a burst of watch events at a time.
async fn forward_observed(clusters: cluster::ClusterManager, control: Control, shutdown: CancellationToken) {
    let changed = clusters.changed();
    loop {
        tokio::select! {
            () = changed.notified() => {}
            () = shutdown.cancelled() => return,
        }
        // Let a burst (an initial list, a rollout) settle into one update: wait for 5 ms of quiet, but never
        // hold a change back more than 50 ms.
        let first = tokio::time::Instant::now();
        while first.elapsed() < std::time::Duration::from_millis(50)
            && tokio::time::timeout(std::time::Duration::from_millis(5), changed.notified()).await.is_ok()
        {}
        if let Err(e) = control.set_observed(clusters.observed()).await {
            tracing::error!(error = %e, "could not apply what the clusters say");
        }
    }
}

async fn drop_result<T>(task: impl std::future::Future<Output = T>) {
    task.await;
}

/// Whether this data dir has run the appliance before: then peers may still hold our BGP routes (graceful
/// restart), and the speaker says it restarted. Marks the data dir for the next start.
fn started_before(data_dir: &Path) -> bool {
    let marker = data_dir.join("started");
    let before = marker.exists();
    if let Err(e) = std::fs::write(&marker, b"") {
        tracing::warn!(path = %marker.display(), error = %e, "cannot mark the data dir as started");
    }
    before
}

struct ProxyOps(proxy::ProxyHandle);

impl api::ProxyOps for ProxyOps {
    fn status(&self) -> model::proxy::ProxyStatus {
        self.0.status()
    }
}

struct L2Ops(l2::ResponderHandle);

impl api::L2Ops for L2Ops {
    fn status(&self) -> Vec<model::l2::L2InterfaceStatus> {
        self.0.status()
    }
}

struct BgpOps(bgp::SpeakerHandle);

impl api::BgpOps for BgpOps {
    fn peer(&self, name: &str) -> Option<model::bgp::PeerStatus> {
        self.0.peer(name)
    }

    fn received_routes(&self, name: &str) -> Option<Vec<model::bgp::ReceivedRoute>> {
        self.0.received_routes(name)
    }

    fn announcements(&self) -> Vec<model::bgp::Announcement> {
        self.0.announcements()
    }
}

struct ClusterOps(cluster::ClusterManager);

impl api::ClusterOps for ClusterOps {
    fn status(&self, name: &str) -> Option<model::cluster::ClusterStatus> {
        self.0.status(name)
    }

    fn test(
        &self,
        cluster: model::config::Cluster,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = model::cluster::ClusterTest> + Send>> {
        Box::pin(async move { cluster::ClusterManager::test(&cluster).await })
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (mut term, mut int) = match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(t), Ok(i)) => (t, i),
        _ => {
            tracing::error!("cannot install signal handlers; stop with SIGKILL");
            std::future::pending::<()>().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!(signal = "SIGTERM", "signal received"),
        _ = int.recv() => tracing::info!(signal = "SIGINT", "signal received"),
    }
}

async fn expire_sessions(store: store::Store, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(300));
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if let Err(e) = store.purge_expired_sessions().await {
                    tracing::warn!(error = %e, "could not purge expired sessions");
                }
            }
            () = shutdown.cancelled() => return,
        }
    }
}

fn install_metrics() -> Result<Box<dyn Fn() -> String + Send + Sync>> {
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets(&[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0])
        .context("metric buckets")?
        .install_recorder()
        .context("cannot install the metrics recorder")?;
    let collector = metrics_process::Collector::default();
    collector.describe();
    metrics::describe_counter!("portico_http_requests_total", "HTTP requests to the admin API");
    metrics::describe_histogram!("portico_http_request_duration_seconds", "Admin API request latency");
    metrics::describe_histogram!("portico_snapshot_compile_seconds", "Time to compile a snapshot");
    metrics::describe_gauge!("portico_snapshot_generation", "Generation of the newest snapshot");
    metrics::describe_gauge!("portico_config_revision", "Configuration revision in force");
    metrics::describe_counter!("portico_config_revisions_total", "Configuration revisions written");
    metrics::describe_histogram!(
        "portico_store_commit_seconds",
        "Time to write one revision to SQLite (fsync included)"
    );
    metrics::describe_gauge!("portico_store_bytes", "Size of the SQLite database and its WAL");
    metrics::describe_gauge!("portico_allocations", "VIP allocations");
    Ok(Box::new(move || {
        collector.collect();
        handle.render()
    }))
}
