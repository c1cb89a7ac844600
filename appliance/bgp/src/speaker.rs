//! The speaker: reconciles peer tasks and the listener to each snapshot, and answers status questions.

use crate::fsm::LocalParams;
use crate::peer::{Cmd, PeerConfig, PeerTask, Shared};
use crate::policy::{self, RibOut};
use crate::transport;
use crate::wire::{Notification, subcode};
use ipnet::IpNet;
use model::bgp::{Announcement, BgpSettings, PeerStatus, ReceivedRoute, SessionState};
use model::snapshot::Snapshot;
use model::subsystem::{ApplyError, Report, Subsystem};
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// How the speaker starts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpeakerOptions {
    /// This process start is a restart, and peers may still hold our routes (RFC 4724): with graceful restart
    /// enabled, the first OPEN to each peer sets the Restart State bit and asks it to keep our routes until
    /// our End-of-RIB.
    pub restarting: bool,
}

type Dispatch = HashMap<IpAddr, mpsc::UnboundedSender<Cmd>>;

#[derive(Default)]
struct Inner {
    peers: RwLock<BTreeMap<String, Arc<Shared>>>,
    /// Where the listener sends a connection, by the peer's address.
    dispatch: RwLock<Dispatch>,
    /// Every prefix some peer's policy selects, with its VIPs and services.
    sources: RwLock<Arc<RibOut>>,
}

impl Inner {
    fn publish_session_metrics(&self) {
        let peers = self.peers.read().unwrap_or_else(|e| e.into_inner());
        crate::metrics::publish_sessions(peers.values().map(|p| p.state()));
    }
}

/// Read-only access to the speaker's state, for the REST layer. Cheap to clone.
#[derive(Clone)]
pub struct SpeakerHandle {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for SpeakerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpeakerHandle").finish_non_exhaustive()
    }
}

impl SpeakerHandle {
    fn shared(&self, name: &str) -> Option<Arc<Shared>> {
        self.inner.peers.read().unwrap_or_else(|e| e.into_inner()).get(name).cloned()
    }

    /// Every configured peer, enabled or not, by name.
    pub fn peers(&self) -> Vec<PeerStatus> {
        let peers: Vec<Arc<Shared>> =
            self.inner.peers.read().unwrap_or_else(|e| e.into_inner()).values().cloned().collect();
        peers.iter().map(|p| p.status()).collect()
    }

    pub fn peer(&self, name: &str) -> Option<PeerStatus> {
        self.shared(name).map(|p| p.status())
    }

    /// The peer's Adj-RIB-In, sorted by prefix; `None` for an unknown peer.
    pub fn received_routes(&self, name: &str) -> Option<Vec<ReceivedRoute>> {
        self.shared(name).map(|p| p.received_routes())
    }

    /// Every prefix the policy selects for some peer, with its VIPs and services, and the peers whose
    /// Established sessions it has been sent to.
    pub fn announcements(&self) -> Vec<Announcement> {
        let sources = self.inner.sources.read().unwrap_or_else(|e| e.into_inner()).clone();
        let peers: Vec<(String, std::collections::HashSet<IpNet>)> = self
            .inner
            .peers
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(|p| (p.name.clone(), p.advertised()))
            .collect();
        sources
            .iter()
            .map(|(prefix, src)| Announcement {
                prefix: prefix.to_string(),
                vips: src.vips.iter().map(|v| v.to_string()).collect(),
                services: src.services.iter().cloned().collect(),
                peers: peers.iter().filter(|(_, sent)| sent.contains(prefix)).map(|(n, _)| n.clone()).collect(),
            })
            .collect()
    }
}

struct PeerRun {
    config: Arc<PeerConfig>,
    tx: mpsc::UnboundedSender<Cmd>,
    task: JoinHandle<()>,
}

struct ListenerRun {
    addr: SocketAddr,
    listener: Arc<TcpListener>,
    task: JoinHandle<()>,
    /// MD5 keys set on the listening socket, by peer address.
    keys: HashMap<IpAddr, String>,
}

/// Portico's BGP speaker, a [`Subsystem`] named `bgp`.
pub struct Speaker {
    restarting: bool,
    inner: Arc<Inner>,
    peers: HashMap<String, PeerRun>,
    listener: Option<ListenerRun>,
    settings: Option<BgpSettings>,
    /// What the last apply could not do (a listener that would not bind, a key that could not be set).
    problems: Vec<String>,
}

impl std::fmt::Debug for Speaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Speaker").field("peers", &self.peers.len()).finish_non_exhaustive()
    }
}

fn admin_shutdown(message: &str) -> Notification {
    Notification::cease_with_message(subcode::ADMIN_SHUTDOWN, message)
}

impl Speaker {
    pub fn new(options: SpeakerOptions) -> Speaker {
        Speaker {
            restarting: options.restarting,
            inner: Arc::new(Inner::default()),
            peers: HashMap::new(),
            listener: None,
            settings: None,
            problems: Vec::new(),
        }
    }

    pub fn handle(&self) -> SpeakerHandle {
        SpeakerHandle { inner: self.inner.clone() }
    }

    /// Stops every session and the listener. With graceful restart enabled the connections are closed
    /// without a NOTIFICATION, so peers keep our routes for the restart time; otherwise each peer gets a
    /// Cease / Administrative Shutdown.
    pub fn shutdown(mut self) -> impl Future<Output = ()> + Send {
        let graceful = self.settings.as_ref().is_some_and(|s| s.graceful_restart.enabled);
        let notification = (!graceful).then(|| admin_shutdown("the appliance is shutting down"));
        let peers: Vec<PeerRun> = self.peers.drain().map(|(_, p)| p).collect();
        let listener = self.listener.take();
        async move {
            if let Some(l) = listener {
                l.task.abort();
            }
            stop_all(peers, notification).await;
        }
    }

    fn stop_listener(&mut self) {
        if let Some(l) = self.listener.take() {
            l.task.abort();
        }
    }

    /// Binds (or keeps) the listener; returns a problem to report if it cannot.
    fn reconcile_listener(&mut self, want: Option<SocketAddr>) -> Option<String> {
        if self.listener.as_ref().map(|l| l.addr) == want {
            return None;
        }
        self.stop_listener();
        let addr = want?;
        match transport::listen(addr) {
            Ok(l) => {
                let listener = Arc::new(l);
                let task = tokio::spawn(accept_loop(listener.clone(), self.inner.clone()));
                tracing::info!(address = %addr, "BGP listening");
                self.listener = Some(ListenerRun { addr, listener, task, keys: HashMap::new() });
                None
            }
            Err(e) => {
                tracing::warn!(address = %addr, error = %e, "BGP cannot listen");
                Some(format!("cannot listen on {addr}: {e}"))
            }
        }
    }

    fn reconcile_listener_keys(&mut self, wanted: HashMap<IpAddr, String>) -> Vec<String> {
        let mut problems = Vec::new();
        let Some(l) = &mut self.listener else { return problems };
        for (ip, old) in &l.keys {
            if wanted.get(ip) != Some(old)
                && let Err(e) = transport::set_listener_key(&l.listener, *ip, b"")
            {
                tracing::debug!(peer_address = %ip, error = %e, "removing a TCP-MD5 key");
            }
        }
        for (ip, key) in &wanted {
            if l.keys.get(ip) != Some(key)
                && let Err(e) = transport::set_listener_key(&l.listener, *ip, key.as_bytes())
            {
                tracing::warn!(peer_address = %ip, error = %e, "cannot set the TCP-MD5 key on the listener");
                problems.push(format!("TCP-MD5 key for {ip}: {e}"));
            }
        }
        l.keys = wanted;
        problems
    }

    async fn apply_snapshot(&mut self, snapshot: &Snapshot) -> Report {
        let Some(settings) = snapshot.settings.bgp.clone() else {
            let peers: Vec<PeerRun> = self.peers.drain().map(|(_, p)| p).collect();
            stop_all(peers, Some(admin_shutdown("BGP is switched off"))).await;
            self.stop_listener();
            self.settings = None;
            self.inner.peers.write().unwrap_or_else(|e| e.into_inner()).clear();
            self.inner.dispatch.write().unwrap_or_else(|e| e.into_inner()).clear();
            *self.inner.sources.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(RibOut::new());
            self.inner.publish_session_metrics();
            return Report::ok("BGP is off");
        };
        let local = LocalParams {
            asn: settings.asn,
            router_id: settings.router_id(),
            graceful_restart: settings.graceful_restart.enabled.then_some(settings.graceful_restart.restart_time),
            restarting: self.restarting && settings.graceful_restart.enabled,
        };
        // Only the peers started by the first apply after a restart announce it.
        self.restarting = false;
        let mut problems: Vec<String> = Vec::new();
        problems.extend(self.reconcile_listener(settings.listen_addr()));

        let wanted: HashMap<&str, &model::bgp::BgpPeer> =
            snapshot.bgp_peers.iter().map(|p| (p.name.as_str(), p)).collect();
        let mut stopping: Vec<(PeerRun, Notification)> = Vec::new();
        let names: Vec<String> = self.peers.keys().cloned().collect();
        for name in names {
            let reason = match wanted.get(name.as_str()) {
                None => Some(Notification::cease_with_message(subcode::PEER_DECONFIGURED, "peer removed")),
                Some(p) if !p.enabled => Some(admin_shutdown("peer disabled")),
                Some(p) => {
                    let new = PeerConfig { peer: (*p).clone(), settings: settings.clone(), local: local.clone() };
                    let running = self.peers.get(&name).map(|r| r.config.session_differs(&new)).unwrap_or(false);
                    running.then(|| Notification::cease_with_message(subcode::ADMIN_RESET, "configuration changed"))
                }
            };
            if let Some(n) = reason
                && let Some(run) = self.peers.remove(&name)
            {
                tracing::info!(peer = %name, reason = %n.description(), "BGP peer stopping");
                stopping.push((run, n));
            }
        }
        let stops = stopping.into_iter().map(|(run, n)| stop_one(run, Some(n)));
        futures_join_all(stops).await;

        let mut sources = RibOut::new();
        let mut dispatch = Dispatch::new();
        let mut keys = HashMap::new();
        // The write lock is held only to add and remove entries: a state change publishes metrics, which reads
        // the same map.
        let shareds: Vec<Arc<Shared>> = {
            let mut shared_peers = self.inner.peers.write().unwrap_or_else(|e| e.into_inner());
            shared_peers.retain(|name, _| wanted.contains_key(name.as_str()));
            snapshot
                .bgp_peers
                .iter()
                .map(|p| {
                    let inner = Arc::downgrade(&self.inner);
                    shared_peers
                        .entry(p.name.clone())
                        .or_insert_with(|| {
                            Arc::new(Shared::new(
                                p,
                                Box::new(move || {
                                    if let Some(i) = inner.upgrade() {
                                        i.publish_session_metrics();
                                    }
                                }),
                            ))
                        })
                        .clone()
                })
                .collect()
        };
        for (p, shared) in snapshot.bgp_peers.iter().zip(shareds) {
            shared.set_identity(p);
            if !p.enabled {
                shared.set_state(SessionState::Disabled);
                continue;
            }
            let rib = Arc::new(policy::rib_out(snapshot, p));
            for (prefix, src) in rib.iter() {
                let e = sources.entry(*prefix).or_default();
                e.vips.extend(src.vips.iter().copied());
                e.services.extend(src.services.iter().cloned());
            }
            let config = Arc::new(PeerConfig { peer: p.clone(), settings: settings.clone(), local: local.clone() });
            let tx = match self.peers.get_mut(&p.name) {
                Some(run) => {
                    let _ = run.tx.send(Cmd::Policy { config: config.clone(), rib });
                    run.config = config;
                    run.tx.clone()
                }
                None => {
                    if shared.state() == SessionState::Disabled {
                        shared.set_state(SessionState::Idle);
                    }
                    let (tx, task) = PeerTask::spawn(config.clone(), rib, shared.clone());
                    self.peers.insert(p.name.clone(), PeerRun { config, tx: tx.clone(), task });
                    tx
                }
            };
            dispatch.insert(p.ip(), tx);
            if let Some(pw) = &p.password {
                keys.insert(p.ip(), pw.clone());
            }
        }
        *self.inner.dispatch.write().unwrap_or_else(|e| e.into_inner()) = dispatch;
        *self.inner.sources.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(sources);
        problems.extend(self.reconcile_listener_keys(keys));
        self.settings = Some(settings);
        self.inner.publish_session_metrics();

        self.problems = problems;
        self.current_report()
    }

    /// Sessions as they are now, with the problems the last apply met.
    fn current_report(&self) -> Report {
        if self.settings.is_none() {
            return Report::ok("BGP is off");
        }
        let peers = self.handle().peers();
        let down: Vec<String> = peers
            .iter()
            .filter(|s| s.state != SessionState::Established && s.state != SessionState::Disabled)
            .map(|s| format!("{} ({})", s.name, crate::metrics::state_label(s.state)))
            .collect();
        let mut problems = self.problems.clone();
        if !down.is_empty() {
            problems.insert(0, format!("not established: {}", down.join(", ")));
        }
        if problems.is_empty() {
            let established = peers.iter().filter(|s| s.state == SessionState::Established).count();
            Report::ok(format!("{established} peer(s) established"))
        } else {
            Report::degraded(problems.join("; "))
        }
    }
}

async fn futures_join_all<F: Future<Output = ()> + Send + 'static>(futs: impl Iterator<Item = F>) {
    let handles: Vec<JoinHandle<()>> = futs.map(|f| tokio::spawn(f)).collect();
    for h in handles {
        let _ = h.await;
    }
}

async fn stop_one(run: PeerRun, notification: Option<Notification>) {
    let (done, wait) = oneshot::channel();
    if run.tx.send(Cmd::Stop { notification, done }).is_ok() {
        let _ = tokio::time::timeout(Duration::from_secs(3), wait).await;
    }
    run.task.abort();
}

async fn stop_all(peers: Vec<PeerRun>, notification: Option<Notification>) {
    futures_join_all(peers.into_iter().map(|p| stop_one(p, notification.clone()))).await;
}

async fn accept_loop(listener: Arc<TcpListener>, inner: Arc<Inner>) {
    loop {
        match listener.accept().await {
            Ok((stream, from)) => {
                let ip = from.ip().to_canonical();
                let tx = inner.dispatch.read().unwrap_or_else(|e| e.into_inner()).get(&ip).cloned();
                match tx {
                    Some(tx) => {
                        tracing::debug!(from = %from, "BGP connection accepted");
                        let _ = tx.send(Cmd::Inbound(stream));
                    }
                    None => {
                        // Not a configured, enabled peer: close at once without a word.
                        tracing::debug!(from = %from, "BGP connection from an unknown address refused");
                        drop(stream);
                    }
                }
            }
            Err(e) => {
                // Typically out of descriptors; back off instead of spinning.
                tracing::warn!(error = %e, "BGP accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

impl Subsystem for Speaker {
    fn name(&self) -> &'static str {
        "bgp"
    }

    async fn apply(&mut self, snapshot: Arc<Snapshot>) -> Result<Report, ApplyError> {
        Ok(self.apply_snapshot(&snapshot).await)
    }

    fn report(&self) -> Option<Report> {
        Some(self.current_report())
    }
}

impl Drop for Speaker {
    fn drop(&mut self) {
        // A speaker dropped without `shutdown` must not leave sessions running behind it.
        for (_, p) in self.peers.drain() {
            p.task.abort();
        }
        self.stop_listener();
    }
}
