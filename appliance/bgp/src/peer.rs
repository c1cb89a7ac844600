//! One task per neighbour: connection attempts and accepted connections, their handshakes (each in a task of
//! its own, so two can race and collide), then the Established session: UPDATEs both ways, timers, route
//! refresh and graceful restart.

use crate::fsm::{self, Close, Direction, Fsm, LocalParams, Negotiated, SessionParams, State, Step};
use crate::policy::{self, RibOut};
use crate::rib::{AdjRibIn, AdjRibOut};
use crate::transport;
use crate::wire::{self, AfiSafi, DecodeContext, DecodeError, Message, Notification, SegmentType, code, subcode};
use ipnet::IpNet;
use model::bgp::{BgpPeer, BgpSettings, NotificationInfo, PeerStatus, SessionState};
use std::collections::{BTreeSet, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedReadHalf;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Everything a peer's task needs to know from configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerConfig {
    pub peer: BgpPeer,
    pub settings: BgpSettings,
    pub local: LocalParams,
}

impl PeerConfig {
    pub fn ibgp(&self) -> bool {
        self.peer.asn == self.settings.asn
    }

    fn session_params(&self) -> SessionParams {
        SessionParams {
            peer_asn: self.peer.asn,
            hold_time: self.peer.hold_time,
            keepalive: self.peer.keepalive,
            families: self.peer.families.iter().map(|f| AfiSafi::of(*f)).collect(),
        }
    }

    /// Whether moving from `self` to `new` needs a new session; anything else (what is advertised and how)
    /// is applied to the running session by re-diffing its Adj-RIB-Out.
    pub fn session_differs(&self, new: &PeerConfig) -> bool {
        let strip = |p: &BgpPeer| BgpPeer { advertise: Default::default(), max_prefixes: None, ..p.clone() };
        // Where we listen concerns the listener only; established sessions stay.
        let speaker = |s: &BgpSettings| BgpSettings { listen: None, ..s.clone() };
        strip(&self.peer) != strip(&new.peer)
            || speaker(&self.settings) != speaker(&new.settings)
            || self.local != new.local
    }
}

pub enum Cmd {
    /// New policy (advertise settings, max prefixes) and a new Adj-RIB-Out.
    Policy { config: Arc<PeerConfig>, rib: Arc<RibOut> },
    /// A connection the listener accepted from this peer's address.
    Inbound(TcpStream),
    /// Close the session with this NOTIFICATION, or without one (graceful restart keeps our routes).
    Stop { notification: Option<Notification>, done: oneshot::Sender<()> },
}

/// What the handle reads: status, Adj-RIB-In, and what has been advertised.
pub struct Shared {
    pub name: String,
    status: Mutex<StatusCell>,
    rib_in: Mutex<AdjRibIn>,
    advertised: Mutex<HashSet<IpNet>>,
    on_state_change: Box<dyn Fn() + Send + Sync>,
}

struct StatusCell {
    status: PeerStatus,
    up_since: Option<std::time::Instant>,
    /// What the last resync could not send (a family without a next hop), so that it can be cleared once solved.
    next_hop_error: Option<String>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A poisoned lock only means another thread panicked while holding it; the data is still usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

fn info(n: &Notification) -> NotificationInfo {
    NotificationInfo {
        code: n.code,
        subcode: n.subcode,
        description: n.description(),
        message: n.shutdown_message(),
        at: now_rfc3339(),
    }
}

impl Shared {
    pub fn new(peer: &BgpPeer, on_state_change: Box<dyn Fn() + Send + Sync>) -> Shared {
        let status = PeerStatus {
            name: peer.name.clone(),
            address: peer.address.clone(),
            asn: peer.asn,
            state: if peer.enabled { SessionState::Idle } else { SessionState::Disabled },
            since: Some(now_rfc3339()),
            ..Default::default()
        };
        Shared {
            name: peer.name.clone(),
            status: Mutex::new(StatusCell { status, up_since: None, next_hop_error: None }),
            rib_in: Mutex::new(AdjRibIn::default()),
            advertised: Mutex::new(HashSet::new()),
            on_state_change,
        }
    }

    pub fn status(&self) -> PeerStatus {
        let cell = lock(&self.status);
        let mut s = cell.status.clone();
        s.uptime_seconds = cell.up_since.map(|t| t.elapsed().as_secs());
        s.prefixes_received = lock(&self.rib_in).len() as u64;
        s
    }

    pub fn state(&self) -> SessionState {
        lock(&self.status).status.state
    }

    pub fn received_routes(&self) -> Vec<model::bgp::ReceivedRoute> {
        lock(&self.rib_in).to_model()
    }

    pub fn advertised(&self) -> HashSet<IpNet> {
        lock(&self.advertised).clone()
    }

    /// Keeps a configuration change's address and AS visible without a new session.
    pub fn set_identity(&self, peer: &BgpPeer) {
        let mut c = lock(&self.status);
        c.status.address.clone_from(&peer.address);
        c.status.asn = peer.asn;
    }

    pub fn set_state(&self, state: SessionState) {
        {
            let mut c = lock(&self.status);
            if c.status.state == state {
                return;
            }
            if c.status.state == SessionState::Established {
                c.status.flaps += 1;
                c.up_since = None;
                c.status.negotiated = None;
                crate::metrics::flap(&self.name);
            }
            if state == SessionState::Established {
                c.up_since = Some(std::time::Instant::now());
            }
            c.status.state = state;
            c.status.since = Some(now_rfc3339());
        }
        (self.on_state_change)();
    }

    fn update_status(&self, f: impl FnOnce(&mut PeerStatus)) {
        f(&mut lock(&self.status).status);
    }

    fn error(&self, text: String) {
        self.update_status(|s| s.last_error = Some(text));
    }

    fn count_sent(&self, kind: &'static str, n: u64) {
        crate::metrics::message_sent(&self.name, kind);
        self.update_status(|s| {
            s.messages_sent += n;
            if kind == "update" {
                s.updates_sent += n;
            }
        });
    }

    fn count_received(&self, kind: &'static str) {
        crate::metrics::message_received(&self.name, kind);
        self.update_status(|s| {
            s.messages_received += 1;
            if kind == "update" {
                s.updates_received += 1;
            }
        });
    }

    fn publish_prefixes(&self, advertised: usize) {
        let received = lock(&self.rib_in).len();
        self.update_status(|s| s.prefixes_advertised = advertised as u64);
        crate::metrics::prefixes(&self.name, advertised, received);
    }
}

// ---------------------------------------------------------------------------------------------------------
// Connections

enum WriterCmd {
    Bytes(Vec<u8>),
    Close,
}

/// One TCP connection: reads are done by whoever owns it (cancel-safe), writes by a task of its own so a slow
/// peer never stalls the session's timers.
struct Conn {
    reader: OwnedReadHalf,
    buf: Vec<u8>,
    start: usize,
    writer_tx: mpsc::UnboundedSender<WriterCmd>,
    writer: JoinHandle<()>,
    local: SocketAddr,
    shared: Arc<Shared>,
}

#[derive(Debug)]
enum ConnError {
    Closed,
    Io(std::io::Error),
    Invalid(Notification),
}

impl Conn {
    fn new(stream: TcpStream, shared: Arc<Shared>) -> std::io::Result<Conn> {
        let local = stream.local_addr()?;
        let (reader, mut write_half) = stream.into_split();
        let (writer_tx, mut rx) = mpsc::unbounded_channel::<WriterCmd>();
        let writer = tokio::spawn(async move {
            while let Some(cmd) = rx.recv().await {
                match cmd {
                    WriterCmd::Bytes(b) => {
                        if write_half.write_all(&b).await.is_err() {
                            break;
                        }
                    }
                    WriterCmd::Close => break,
                }
            }
            let _ = write_half.shutdown().await;
        });
        Ok(Conn { reader, buf: Vec::with_capacity(8192), start: 0, writer_tx, writer, local, shared })
    }

    fn local_ip(&self) -> IpAddr {
        self.local.ip().to_canonical()
    }

    fn send(&self, kind: &'static str, bytes: Vec<u8>) {
        self.shared.count_sent(kind, 1);
        let _ = self.writer_tx.send(WriterCmd::Bytes(bytes));
    }

    fn send_all(&self, kind: &'static str, msgs: Vec<Vec<u8>>) {
        if msgs.is_empty() {
            return;
        }
        self.shared.count_sent(kind, msgs.len() as u64);
        for m in msgs {
            let _ = self.writer_tx.send(WriterCmd::Bytes(m));
        }
    }

    /// Sends what is queued (and `last`, if any), closes, and waits briefly for the bytes to leave.
    async fn close(self, last: Option<&Notification>) {
        if let Some(n) = last {
            self.send("notification", wire::encode_notification(n));
            self.shared.update_status(|s| s.last_notification_sent = Some(info(n)));
        }
        let _ = self.writer_tx.send(WriterCmd::Close);
        let _ = tokio::time::timeout(Duration::from_secs(2), self.writer).await;
    }

    async fn recv(&mut self, ctx: &DecodeContext) -> Result<Message, ConnError> {
        loop {
            match wire::decode(self.buf.get(self.start..).unwrap_or_default(), ctx) {
                Ok((m, n)) => {
                    self.start += n;
                    if self.start >= self.buf.len() {
                        self.buf.clear();
                        self.start = 0;
                    }
                    self.shared.count_received(m.kind());
                    return Ok(m);
                }
                Err(DecodeError::Incomplete) => {}
                Err(DecodeError::Invalid(n)) => return Err(ConnError::Invalid(n)),
            }
            if self.start > 0 {
                self.buf.drain(..self.start);
                self.start = 0;
            }
            self.buf.reserve(8192);
            match self.reader.read_buf(&mut self.buf).await {
                Ok(0) => return Err(ConnError::Closed),
                Ok(_) => {}
                Err(e) => return Err(ConnError::Io(e)),
            }
        }
    }
}

/// How a connection ended.
#[derive(Debug)]
enum Ending {
    Sent(Notification),
    Received(Notification),
    Closed,
    Io(String),
    /// Lost a collision, or was closed by the peer task.
    Aborted,
}

impl Ending {
    fn describe(&self) -> Option<String> {
        match self {
            Ending::Sent(n) => Some(format!("sent NOTIFICATION {}", n.description())),
            Ending::Received(n) => Some(match n.shutdown_message() {
                Some(m) => format!("received NOTIFICATION {}: {m}", n.description()),
                None => format!("received NOTIFICATION {}", n.description()),
            }),
            Ending::Closed => Some("the peer closed the connection".into()),
            Ending::Io(e) => Some(e.clone()),
            Ending::Aborted => None,
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// Handshakes

enum HsEvent {
    Connected { id: u64 },
    Opened { id: u64, peer_id: Ipv4Addr, reply: oneshot::Sender<bool> },
    Ready { id: u64, conn: Box<Conn>, fsm: Box<Fsm> },
    Failed { id: u64, ending: Ending },
}

enum Source {
    Connect,
    Accepted(TcpStream),
}

struct Pending {
    id: u64,
    direction: Direction,
    state: Option<State>,
    abort: Option<oneshot::Sender<Notification>>,
    task: JoinHandle<()>,
}

struct HsArgs {
    id: u64,
    source: Source,
    config: Arc<PeerConfig>,
    shared: Arc<Shared>,
    events: mpsc::UnboundedSender<HsEvent>,
    abort: oneshot::Receiver<Notification>,
}

async fn handshake(mut a: HsArgs) {
    let id = a.id;
    let ending = handshake_inner(&mut a).await;
    if let Err(ending) = ending {
        let _ = a.events.send(HsEvent::Failed { id, ending });
    }
}

async fn handshake_inner(a: &mut HsArgs) -> Result<(), Ending> {
    let cfg = a.config.clone();
    let ibgp = cfg.ibgp();
    let stream = match std::mem::replace(&mut a.source, Source::Connect) {
        Source::Accepted(s) => s,
        Source::Connect => {
            let timeout = Duration::from_secs(u64::from(cfg.peer.connect_retry).clamp(1, 30));
            tokio::select! {
                r = transport::connect(&cfg.peer, ibgp, timeout) => r.map_err(|e| Ending::Io(format!("connect: {e}")))?,
                _ = &mut a.abort => return Err(Ending::Aborted),
            }
        }
    };
    transport::configure_stream(&stream, &cfg.peer, ibgp).map_err(|e| Ending::Io(format!("socket options: {e}")))?;
    let mut conn = Conn::new(stream, a.shared.clone()).map_err(|e| Ending::Io(e.to_string()))?;
    let session = cfg.session_params();
    conn.send("open", wire::encode_open(&fsm::build_open(&cfg.local, &session)));
    let _ = a.events.send(HsEvent::Connected { id: a.id });
    let mut fsm = Fsm::new(cfg.local.clone(), session);
    let mut hold = Instant::now() + fsm::LARGE_HOLD_TIME;
    let ctx = DecodeContext::default();
    loop {
        let r = tokio::select! {
            r = conn.recv(&ctx) => r,
            _ = tokio::time::sleep_until(hold) => {
                let n = fsm.on_hold_timer_expired();
                return Err(close_with(conn, n).await);
            }
            n = &mut a.abort => {
                let n = n.ok();
                conn.close(n.as_ref()).await;
                return Err(Ending::Aborted);
            }
        };
        let msg = match r {
            Ok(m) => m,
            Err(e) => return Err(conn_failed(conn, e).await),
        };
        match fsm.on_message(msg) {
            Ok(Step::OpenAccepted(neg)) => {
                let (reply, verdict) = oneshot::channel();
                let _ = a.events.send(HsEvent::Opened { id: a.id, peer_id: neg.peer_router_id, reply });
                // The peer task may be busy with a session that won; its abort must still reach us here.
                let go_on = tokio::select! {
                    v = verdict => v.unwrap_or(false),
                    n = &mut a.abort => {
                        conn.close(n.ok().as_ref()).await;
                        return Err(Ending::Aborted);
                    }
                };
                if !go_on {
                    let n = Notification::new(code::CEASE, subcode::CONNECTION_COLLISION, Vec::new());
                    conn.close(Some(&n)).await;
                    return Err(Ending::Aborted);
                }
                conn.send("keepalive", wire::encode_keepalive());
                hold = deadline(neg.hold_time);
            }
            Ok(Step::Established) => {
                let _ = a.events.send(HsEvent::Ready { id: a.id, conn: Box::new(conn), fsm: Box::new(fsm) });
                return Ok(());
            }
            Ok(_) => {}
            Err(Close::Send(n)) => return Err(close_with(conn, n).await),
            Err(Close::Received(n)) => {
                received(&a.shared, &n);
                conn.close(None).await;
                return Err(Ending::Received(n));
            }
        }
    }
}

fn received(shared: &Shared, n: &Notification) {
    shared.update_status(|s| s.last_notification_received = Some(info(n)));
}

async fn close_with(conn: Conn, n: Notification) -> Ending {
    conn.close(Some(&n)).await;
    Ending::Sent(n)
}

async fn conn_failed(conn: Conn, e: ConnError) -> Ending {
    match e {
        ConnError::Invalid(n) => close_with(conn, n).await,
        ConnError::Closed => {
            conn.close(None).await;
            Ending::Closed
        }
        ConnError::Io(e) => {
            conn.close(None).await;
            Ending::Io(e.to_string())
        }
    }
}

/// When a timer of `secs` seconds runs out; 0 means never (hold time 0 turns timers off).
fn deadline(secs: u16) -> Instant {
    if secs == 0 { far_future() } else { Instant::now() + Duration::from_secs(u64::from(secs)) }
}

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365)
}

// ---------------------------------------------------------------------------------------------------------
// The peer task

pub struct PeerTask {
    config: Arc<PeerConfig>,
    rib: Arc<RibOut>,
    shared: Arc<Shared>,
    cmds: mpsc::UnboundedReceiver<Cmd>,
    events_tx: mpsc::UnboundedSender<HsEvent>,
    events: mpsc::UnboundedReceiver<HsEvent>,
    pending: Vec<Pending>,
    next_id: u64,
    /// When stale routes of a restarting peer are given up (RFC 4724 restart timer).
    stale_until: Option<Instant>,
    /// No connection before this (after a max-prefixes Cease), in either direction.
    held_down_until: Option<Instant>,
    /// Max-prefixes Ceases in a row, for the doubling hold-down.
    max_prefix_closes: u32,
}

enum Exit {
    Stopped(oneshot::Sender<()>),
    ChannelClosed,
}

/// How long a session closed for sending too many prefixes stays down, the first time; it doubles each time
/// the peer does it again, up to `MAX_HOLD_DOWN`.
const MAX_PREFIXES_HOLD_DOWN: Duration = Duration::from_secs(30);
const MAX_HOLD_DOWN: Duration = Duration::from_secs(480);

impl PeerTask {
    pub fn spawn(
        config: Arc<PeerConfig>,
        rib: Arc<RibOut>,
        shared: Arc<Shared>,
    ) -> (mpsc::UnboundedSender<Cmd>, JoinHandle<()>) {
        let (tx, cmds) = mpsc::unbounded_channel();
        let (events_tx, events) = mpsc::unbounded_channel();
        let task = PeerTask {
            config,
            rib,
            shared,
            cmds,
            events_tx,
            events,
            pending: Vec::new(),
            next_id: 0,
            stale_until: None,
            held_down_until: None,
            max_prefix_closes: 0,
        };
        (tx, tokio::spawn(task.run()))
    }

    async fn run(mut self) {
        let name = self.shared.name.clone();
        tracing::info!(peer = %name, address = %self.config.peer.address, "BGP peer started");
        let exit = self.run_loop().await;
        for p in self.pending.drain(..) {
            p.task.abort();
        }
        self.shared.set_state(SessionState::Idle);
        lock(&self.shared.advertised).clear();
        self.shared.publish_prefixes(0);
        tracing::info!(peer = %name, "BGP peer stopped");
        if let Exit::Stopped(done) = exit {
            let _ = done.send(());
        }
    }

    fn start_handshake(&mut self, direction: Direction, source: Source) {
        self.next_id += 1;
        let id = self.next_id;
        let (abort_tx, abort) = oneshot::channel();
        let args = HsArgs {
            id,
            source,
            config: self.config.clone(),
            shared: self.shared.clone(),
            events: self.events_tx.clone(),
            abort,
        };
        let task = tokio::spawn(handshake(args));
        let state = (direction == Direction::Inbound).then_some(State::OpenSent);
        self.pending.push(Pending { id, direction, state, abort: Some(abort_tx), task });
        self.publish_state();
    }

    fn abort_pending(&mut self, keep: Option<u64>, n: Option<Notification>) {
        for p in self.pending.iter_mut().filter(|p| Some(p.id) != keep) {
            if let Some(tx) = p.abort.take() {
                let _ = tx.send(n.clone().unwrap_or_else(|| Notification::new(code::CEASE, 0, Vec::new())));
            }
        }
    }

    fn publish_state(&self) {
        let state = if self.pending.iter().any(|p| p.state == Some(State::OpenConfirm)) {
            SessionState::OpenConfirm
        } else if self.pending.iter().any(|p| p.state == Some(State::OpenSent)) {
            SessionState::OpenSent
        } else if self.pending.iter().any(|p| p.direction == Direction::Outbound) {
            SessionState::Connect
        } else {
            SessionState::Active
        };
        self.shared.set_state(state);
    }

    async fn run_loop(&mut self) -> Exit {
        let mut retry_at = Instant::now();
        loop {
            let outbound_busy = self.pending.iter().any(|p| p.direction == Direction::Outbound);
            let held_down = self.held_down_until.is_some_and(|t| Instant::now() < t);
            let may_connect = !self.config.peer.passive && !outbound_busy && !held_down;
            let stale_at = self.stale_until.unwrap_or_else(far_future);
            tokio::select! {
                cmd = self.cmds.recv() => match cmd {
                    None => return Exit::ChannelClosed,
                    Some(Cmd::Stop { notification, done }) => {
                        self.abort_pending(None, notification);
                        for p in self.pending.drain(..) {
                            let _ = tokio::time::timeout(Duration::from_secs(2), p.task).await;
                        }
                        return Exit::Stopped(done);
                    }
                    Some(Cmd::Policy { config, rib }) => {
                        self.config = config;
                        self.rib = rib;
                    }
                    Some(Cmd::Inbound(stream)) if held_down => {
                        tokio::spawn(reject(stream, subcode::CONNECTION_REJECTED));
                    }
                    Some(Cmd::Inbound(stream)) => {
                        // A newer connection from the peer replaces an older accepted one still in handshake.
                        for p in self.pending.iter_mut().filter(|p| p.direction == Direction::Inbound) {
                            if let Some(tx) = p.abort.take() {
                                let _ = tx.send(Notification::new(code::CEASE, subcode::CONNECTION_COLLISION, Vec::new()));
                            }
                        }
                        self.start_handshake(Direction::Inbound, Source::Accepted(stream));
                    }
                },
                _ = tokio::time::sleep_until(retry_at.max(self.held_down_until.unwrap_or(retry_at))), if may_connect || held_down => {
                    if held_down {
                        // The hold-down is over: connect (or accept) again.
                        self.held_down_until = None;
                        if self.config.peer.passive {
                            continue;
                        }
                    }
                    retry_at = Instant::now() + fsm::jittered(Duration::from_secs(u64::from(self.config.peer.connect_retry)));
                    self.start_handshake(Direction::Outbound, Source::Connect);
                }
                _ = tokio::time::sleep_until(stale_at), if self.stale_until.is_some() => {
                    self.expire_stale();
                }
                Some(ev) = self.events.recv() => match ev {
                    HsEvent::Connected { id } => {
                        if let Some(p) = self.pending.iter_mut().find(|p| p.id == id) {
                            p.state = Some(State::OpenSent);
                        }
                        self.publish_state();
                    }
                    HsEvent::Opened { id, peer_id, reply } => {
                        let go_on = self.resolve_collision(id, peer_id);
                        let _ = reply.send(go_on);
                        self.publish_state();
                    }
                    HsEvent::Failed { id, ending } => {
                        self.pending.retain(|p| p.id != id);
                        if let Some(text) = ending.describe() {
                            tracing::info!(peer = %self.shared.name, reason = %text, "BGP connection failed");
                            self.shared.error(text);
                        }
                        self.publish_state();
                    }
                    HsEvent::Ready { id, conn, fsm } => {
                        self.pending.retain(|p| p.id != id);
                        self.abort_pending(None, Some(Notification::new(code::CEASE, subcode::CONNECTION_COLLISION, Vec::new())));
                        match self.established(*conn, *fsm).await {
                            Some(exit) => return exit,
                            None => {
                                retry_at = Instant::now() + fsm::jittered(Duration::from_secs(u64::from(self.config.peer.connect_retry).min(5)));
                                self.publish_state();
                            }
                        }
                    }
                },
            }
        }
    }

    /// RFC 4271 §6.8, decided when a connection's OPEN arrives; returns whether that connection goes on.
    fn resolve_collision(&mut self, id: u64, peer_id: Ipv4Addr) -> bool {
        let survivor = fsm::collision_survivor(self.config.local.router_id, peer_id);
        let Some(me) = self.pending.iter().find(|p| p.id == id).map(|p| p.direction) else { return false };
        let mut go_on = true;
        for other in self.pending.iter_mut().filter(|p| p.id != id && p.state.is_some()) {
            if me == survivor {
                tracing::info!(peer = %self.shared.name, kept = ?me, "BGP connection collision");
                if let Some(tx) = other.abort.take() {
                    let _ = tx.send(Notification::new(code::CEASE, subcode::CONNECTION_COLLISION, Vec::new()));
                }
            } else {
                go_on = false;
            }
        }
        if go_on && let Some(p) = self.pending.iter_mut().find(|p| p.id == id) {
            p.state = Some(State::OpenConfirm);
        }
        go_on
    }

    fn expire_stale(&mut self) {
        let n = lock(&self.shared.rib_in).purge_stale(None);
        self.stale_until = None;
        if n > 0 {
            tracing::info!(peer = %self.shared.name, routes = n, "graceful restart timer expired; stale routes removed");
        }
        self.shared.publish_prefixes(lock(&self.shared.advertised).len());
    }

    /// Runs an Established session; `None` when it ends and the peer should be tried again.
    async fn established(&mut self, mut conn: Conn, mut fsm: Fsm) -> Option<Exit> {
        let Some(neg) = fsm.negotiated.clone() else {
            conn.close(None).await;
            return None;
        };
        let name = self.shared.name.clone();
        tracing::info!(peer = %name, peer_router_id = %neg.peer_router_id, hold_time = neg.hold_time, "BGP session established");
        self.shared.update_status(|s| {
            s.negotiated = Some(neg.to_model());
            s.last_error = None;
        });
        self.shared.set_state(SessionState::Established);
        self.reconcile_stale(&neg);

        let mut out = AdjRibOut::default();
        self.resync(&conn, &neg, &mut out);
        if neg.peer_graceful_restart.is_some() {
            for f in &neg.families {
                conn.send("update", wire::encode_end_of_rib(*f));
            }
        }
        // Our restart is over once the first session has had its routes and End-of-RIB.
        if self.config.local.restarting {
            let mut c = (*self.config).clone();
            c.local.restarting = false;
            self.config = Arc::new(c);
        }

        let ctx = DecodeContext { four_octet_as: neg.four_octet_as };
        let mut hold = deadline(neg.hold_time);
        let keepalive = Duration::from_secs(u64::from(neg.keepalive));
        let mut next_keepalive =
            if neg.keepalive == 0 { far_future() } else { Instant::now() + fsm::jittered(keepalive) };
        let ending: Ending = loop {
            let stale_at = self.stale_until.unwrap_or_else(far_future);
            tokio::select! {
                r = conn.recv(&ctx) => {
                    let msg = match r {
                        Ok(m) => m,
                        Err(e) => break conn_failed(conn, e).await,
                    };
                    hold = deadline(neg.hold_time);
                    match fsm.on_message(msg) {
                        Ok(Step::Update(u)) => {
                            if let Err(n) = self.receive_update(*u, &neg) {
                                break close_with(conn, n).await;
                            }
                        }
                        Ok(Step::RouteRefresh(f)) => {
                            tracing::debug!(peer = %name, afi = f.afi, "ROUTE-REFRESH received; resending Adj-RIB-Out");
                            out.forget(f);
                            self.resync(&conn, &neg, &mut out);
                        }
                        Ok(_) => {}
                        Err(Close::Send(n)) => break close_with(conn, n).await,
                        Err(Close::Received(n)) => {
                            received(&self.shared, &n);
                            conn.close(None).await;
                            break Ending::Received(n);
                        }
                    }
                }
                _ = tokio::time::sleep_until(hold) => {
                    let n = fsm.on_hold_timer_expired();
                    break close_with(conn, n).await;
                }
                _ = tokio::time::sleep_until(next_keepalive) => {
                    conn.send("keepalive", wire::encode_keepalive());
                    next_keepalive = Instant::now() + fsm::jittered(keepalive);
                }
                _ = tokio::time::sleep_until(stale_at), if self.stale_until.is_some() => self.expire_stale(),
                cmd = self.cmds.recv() => match cmd {
                    None => {
                        conn.close(None).await;
                        self.session_down(&neg, &Ending::Aborted);
                        return Some(Exit::ChannelClosed);
                    }
                    Some(Cmd::Stop { notification, done }) => {
                        conn.close(notification.as_ref()).await;
                        let ending = notification.map(Ending::Sent).unwrap_or(Ending::Aborted);
                        self.session_down(&neg, &ending);
                        return Some(Exit::Stopped(done));
                    }
                    Some(Cmd::Policy { config, rib }) => {
                        self.config = config;
                        self.rib = rib;
                        self.resync(&conn, &neg, &mut out);
                        if let Some(n) = self.check_max_prefixes() {
                            break close_with(conn, n).await;
                        }
                    }
                    Some(Cmd::Inbound(stream)) => {
                        if neg.peer_graceful_restart.is_some() {
                            // RFC 4724 §4.2: a new connection from a peer that can restart means it did; the
                            // old session is gone and its routes become stale.
                            tracing::info!(peer = %name, "new connection while established: the peer restarted");
                            conn.close(None).await;
                            self.session_down(&neg, &Ending::Closed);
                            self.start_handshake(Direction::Inbound, Source::Accepted(stream));
                            return None;
                        }
                        // RFC 4271 §6.8: a collision with an Established session closes the new connection.
                        tokio::spawn(reject(stream, subcode::CONNECTION_COLLISION));
                    }
                },
            }
        };
        if let Some(text) = ending.describe() {
            tracing::info!(peer = %name, reason = %text, "BGP session down");
            // A max-prefixes Cease already left a more useful reason than "sent NOTIFICATION Cease".
            let specific =
                matches!(&ending, Ending::Sent(n) if n.code == code::CEASE && n.subcode == subcode::MAX_PREFIXES);
            if !specific {
                self.shared.error(text);
            }
        }
        if matches!(&ending, Ending::Sent(n) if n.code == code::CEASE && n.subcode == subcode::MAX_PREFIXES) {
            // A peer that sends too much would send it again at once: stay down a while (doubling while it goes
            // on), as routers do, rather than flap. The reason stays in `last_error` meanwhile.
            self.max_prefix_closes += 1;
            let wait =
                MAX_PREFIXES_HOLD_DOWN.saturating_mul(1 << (self.max_prefix_closes - 1).min(4)).min(MAX_HOLD_DOWN);
            self.held_down_until = Some(Instant::now() + wait);
            // Said again in full: a colliding connection's failure may have replaced it meanwhile.
            let count = lock(&self.shared.rib_in).len();
            let max = self.config.peer.max_prefixes.unwrap_or_default();
            self.shared.error(format!(
                "maximum prefixes exceeded: received {count}, the limit is {max}; the session stays down for {} s",
                wait.as_secs()
            ));
        } else {
            self.max_prefix_closes = 0;
        }
        self.session_down(&neg, &ending);
        None
    }

    fn session_down(&mut self, neg: &Negotiated, ending: &Ending) {
        lock(&self.shared.advertised).clear();
        let keep = neg.peer_graceful_restart.as_ref().filter(|_| matches!(ending, Ending::Closed | Ending::Io(_)));
        {
            let mut rib = lock(&self.shared.rib_in);
            match keep {
                Some(gr) if !rib.is_empty() => {
                    rib.mark_stale();
                    self.stale_until = Some(Instant::now() + Duration::from_secs(u64::from(gr.restart_time)));
                    tracing::info!(peer = %self.shared.name, routes = rib.len(), restart_time = gr.restart_time,
                        "peer may be restarting; keeping its routes as stale");
                }
                _ => {
                    rib.clear();
                    self.stale_until = None;
                }
            }
        }
        self.shared.set_state(SessionState::Idle);
        self.shared.publish_prefixes(0);
    }

    /// After a peer's restart: routes of families it could not preserve go now, the rest at End-of-RIB.
    fn reconcile_stale(&mut self, neg: &Negotiated) {
        if self.stale_until.is_none() {
            return;
        }
        let mut rib = lock(&self.shared.rib_in);
        match &neg.peer_graceful_restart {
            None => {
                rib.purge_stale(None);
                self.stale_until = None;
            }
            Some(gr) => {
                for f in [AfiSafi::IPV4_UNICAST, AfiSafi::IPV6_UNICAST] {
                    let preserved = gr.families.iter().any(|(g, fwd)| *g == f && *fwd);
                    if !preserved || !neg.families.contains(&f) {
                        rib.purge_stale(Some(f));
                    }
                }
                if rib.stale_count() == 0 {
                    self.stale_until = None;
                }
            }
        }
    }

    fn receive_update(&mut self, mut u: wire::Update, neg: &Negotiated) -> Result<(), Notification> {
        if !u.discarded.is_empty() {
            tracing::info!(peer = %self.shared.name, discarded = ?u.discarded, "UPDATE attributes discarded (RFC 7606)");
        }
        if u.treat_as_withdraw.is_none() && !u.announced.is_empty() && !self.config.ibgp() {
            // RFC 4271 §6.3 and RFC 7606 §7.2: an eBGP path must start with the peer's AS and carry no
            // confederation segments; otherwise the routes are withdrawn rather than the session reset.
            let segs = u.attributes.as_path.as_deref().unwrap_or_default();
            let confed = segs.iter().any(|s| matches!(s.kind, SegmentType::ConfedSequence | SegmentType::ConfedSet));
            let first = u.attributes.flat_as_path().first().copied();
            if confed || first != Some(neg.peer_asn) {
                u.withdrawn.append(&mut u.announced);
                u.treat_as_withdraw = Some("AS_PATH does not start with the peer's AS".into());
            }
        }
        if let Some(why) = &u.treat_as_withdraw {
            tracing::warn!(peer = %self.shared.name, reason = %why, prefixes = u.withdrawn.len(), "UPDATE treated as withdraw (RFC 7606)");
            self.shared.error(format!("UPDATE treated as withdraw: {why}"));
        }
        {
            let mut rib = lock(&self.shared.rib_in);
            rib.apply(&u, &neg.families);
            if let Some(f) = u.end_of_rib {
                let n = rib.purge_stale(Some(f));
                tracing::debug!(peer = %self.shared.name, afi = f.afi, stale_removed = n, "End-of-RIB received");
                if rib.stale_count() == 0 {
                    self.stale_until = None;
                }
            }
        }
        self.shared.publish_prefixes(lock(&self.shared.advertised).len());
        match self.check_max_prefixes() {
            Some(n) => Err(n),
            None => Ok(()),
        }
    }

    fn check_max_prefixes(&self) -> Option<Notification> {
        let max = self.config.peer.max_prefixes?;
        let count = lock(&self.shared.rib_in).len();
        if count <= max as usize {
            return None;
        }
        let text = format!("maximum prefixes exceeded: received {count}, the limit is {max}");
        tracing::warn!(peer = %self.shared.name, count, max, "BGP maximum prefixes exceeded; closing the session");
        self.shared.error(text);
        // RFC 4486 §4: AFI, SAFI and the limit. The family is that of the routes that crossed it.
        let mut data = AfiSafi::IPV4_UNICAST.afi.to_be_bytes().to_vec();
        data.push(AfiSafi::IPV4_UNICAST.safi);
        data.extend_from_slice(&max.to_be_bytes());
        Some(Notification::new(code::CEASE, subcode::MAX_PREFIXES, data))
    }

    /// Sends whatever gets the peer from what it has to the current Adj-RIB-Out.
    fn resync(&self, conn: &Conn, neg: &Negotiated, out: &mut AdjRibOut) {
        let local_ip = conn.local_ip();
        let mut problems = Vec::new();
        for f in &neg.families {
            let Some(family) = f.family() else { continue };
            let wanted: BTreeSet<IpNet> = self
                .rib
                .keys()
                .filter(|p| AfiSafi::of(model::bgp::AddressFamily::of(p.addr())) == *f)
                .copied()
                .collect();
            let attrs = match policy::out_attributes(&self.config.settings, &self.config.peer, family, local_ip) {
                Ok(a) => Some(a),
                Err(why) => {
                    // Only a problem when there is something of that family to send.
                    if !wanted.is_empty() {
                        problems.push(why);
                    }
                    None
                }
            };
            let msgs = out.sync(*f, attrs.as_ref(), &wanted, neg.four_octet_as);
            conn.send_all("update", msgs);
        }
        {
            let problem = (!problems.is_empty()).then(|| problems.join("; "));
            let mut c = lock(&self.shared.status);
            match &problem {
                Some(text) => c.status.last_error = Some(text.clone()),
                // Solved (a next hop configured, or nothing of that family left to send): the error goes, unless
                // something else has been reported since.
                None if c.next_hop_error.is_some() && c.status.last_error == c.next_hop_error => {
                    c.status.last_error = None
                }
                None => {}
            }
            c.next_hop_error = problem;
        }
        {
            let mut adv = lock(&self.shared.advertised);
            adv.clear();
            adv.extend(out.prefixes().copied());
        }
        self.shared.publish_prefixes(out.len());
    }
}

async fn reject(stream: TcpStream, subcode: u8) {
    let mut stream = stream;
    let n = Notification::new(code::CEASE, subcode, Vec::new());
    let _ = tokio::time::timeout(Duration::from_secs(2), stream.write_all(&wire::encode_notification(&n))).await;
    let _ = stream.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> PeerConfig {
        PeerConfig {
            peer: serde_json::from_value(serde_json::json!({"name": "a", "address": "192.0.2.2", "asn": 65002}))
                .unwrap(),
            settings: serde_json::from_value(serde_json::json!({"asn": 65001, "router_id": "192.0.2.1"})).unwrap(),
            local: LocalParams {
                asn: 65_001,
                router_id: Ipv4Addr::new(192, 0, 2, 1),
                graceful_restart: None,
                restarting: false,
            },
        }
    }

    #[test]
    fn only_session_fields_restart_a_session() {
        let a = config();
        let mut b = config();
        b.peer.advertise.communities = vec!["1:1".into()];
        b.peer.max_prefixes = Some(10);
        b.settings.listen = Some(serde_json::from_value(serde_json::json!({"address": "::"})).unwrap());
        assert!(!a.session_differs(&b), "policy, limits and the listener apply in place");
        for change in [
            |c: &mut PeerConfig| c.peer.hold_time = 30,
            |c: &mut PeerConfig| c.peer.password = Some("x".into()),
            |c: &mut PeerConfig| c.peer.families.pop().map(drop).unwrap_or(()),
            |c: &mut PeerConfig| c.settings.asn = 65_003,
            |c: &mut PeerConfig| c.local.graceful_restart = Some(120),
        ] {
            let mut c = config();
            change(&mut c);
            assert!(a.session_differs(&c));
        }
    }
}
