//! The io_uring engine, on tokio-uring: one OS thread per core, each running its own tokio-uring runtime (one
//! ring). A TCP listener binds one `SO_REUSEPORT` socket per thread, so the kernel spreads new connections over
//! the threads and a connection lives and dies on the thread that accepted it (no cross-thread handoff).
//! The balancer, config, counters and connection registry are the engine-neutral [`ListenerShared`], read by all
//! of a listener's threads: swapping a balancer reaches every socket without rebinding.
//!
//! The relay is an owned-buffer copy loop per direction (read into a buffer the ring owns while the operation is
//! in flight, then write it all), with the epoll relay's rules: half-close, shared idle timeout, live counters,
//! a reset on error, cancellation. There is no `splice(2)` here: tokio-uring 0.5 has no splice operation, and
//! the workspace forbids the `unsafe` needed to submit one by hand. A pending read owns its buffer for as long
//! as it waits, so buffers are what an idle connection costs: a direction reads into 512 bytes until a read fills
//! them, then waits for data by readiness with no buffer at all (see [`pump`]).
//!
//! Two tokio-uring traits shape the code:
//! - an operation dropped before it completes (a `select!` that took another branch) is not cancelled: the
//!   ring keeps the buffer and the socket until the kernel completes it. So ending a relay early must make the
//!   kernel complete pending reads and writes: `shutdown(2)` for an idle timeout, `connect(AF_UNSPEC)` (an
//!   abortive disconnect: RST, pending operations fail) for errors and cancellation, `shutdown(2)` on the
//!   listening socket to end a pending accept when a listener stops.
//! - its `TcpStream` lends no `AsFd`, so socket options cannot be set through it safely. For the rare abort (and
//!   to learn the local address of a connection on a wildcard listener) the engine duplicates the descriptor with
//!   `pidfd_getfd(2)` on its own process (safe in rustix; same-process access needs no ptrace rights) and works
//!   on the duplicate, which shares the socket. If that fails (a seccomp filter), an abort degrades to a
//!   `shutdown(2)`: the peer sees FIN instead of RST. A relay direction's readiness registration is on such a
//!   duplicate too, kept while the direction runs.
//!
//! UDP: one `SO_REUSEPORT` socket per core thread too. The kernel hashes a client's datagrams to one socket, so
//! a session lives on one thread, in that thread's session map; the cap and the listing use the listener's
//! shared table. A session's upstream read stays pending across idle-timer checks (a dropped read would still
//! take the next reply and lose it); when the session ends, `shutdown(2)` completes the read.

use crate::balance::{ConnGuard, Pick};
use crate::engine::{AcceptGuard, Engine, EngineKind};
use crate::listener::{Admitted, ListenerConfig, ListenerShared};
use crate::proxy_protocol::{self, MAX_HEADER, Parsed, SendProxy};
use crate::relay::{Activity, Count, Direction, RelayConfig, RelayEnd, RelayError, RelayOutcome, Traffic};
use crate::udp::{MAX_DATAGRAM, UdpShared};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io;
use std::net::{Shutdown, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::sync::mpsc;
use tokio_uring::buf::BoundedBuf;
use tokio_uring::net::{TcpListener, TcpStream, UdpSocket};
use tokio_util::sync::CancellationToken;

/// Work for a core thread: runs on that thread, inside its runtime (so it may `tokio_uring::spawn`).
type Job = Box<dyn FnOnce() + Send>;

/// The read buffer of a direction until a read fills it (see [`pump`]): what an idle connection lends the ring
/// per direction, and enough for most requests and replies of chatty protocols.
const SMALL_BUFFER: usize = 512;

/// The first buffer of a direction in readiness mode; one that fills it moves to `RelayConfig::buffer_size`.
const FIRST_BUFFER: usize = 4096;

#[derive(Debug)]
struct Worker {
    jobs: Option<mpsc::UnboundedSender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Worker {
    fn submit(&self, job: Job) -> io::Result<()> {
        self.jobs
            .as_ref()
            .and_then(|jobs| jobs.send(job).ok())
            .ok_or_else(|| io::Error::other("an io_uring engine thread has stopped"))
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // Closing the queue ends the thread's loop; its runtime then drops its tasks and cancels their
        // operations.
        self.jobs.take();
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("an io_uring engine thread panicked");
        }
    }
}

/// The io_uring engine: its core threads run until it is dropped (then established connections end too).
#[derive(Debug)]
pub struct UringEngine {
    workers: Vec<Worker>,
}

impl UringEngine {
    /// Starts `threads` core threads (at least one), each with its own ring; fails if a ring cannot be made.
    pub fn new(threads: usize) -> io::Result<UringEngine> {
        let cpus = allowed_cpus();
        let mut workers = Vec::new();
        for i in 0..threads.max(1) {
            let (jobs, queue) = mpsc::unbounded_channel::<Job>();
            let (ready_tx, ready_rx) = std::sync::mpsc::channel();
            let cpu = (!cpus.is_empty()).then(|| cpus[i % cpus.len()]);
            let thread = std::thread::Builder::new()
                .name(format!("l4-uring-{i}"))
                .spawn(move || core_thread(queue, ready_tx, cpu))?;
            let ready = ready_rx.recv();
            // Dropped on error: joins the threads started so far.
            workers.push(Worker { jobs: Some(jobs), thread: Some(thread) });
            match ready {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err(io::Error::other("an io_uring engine thread died while starting")),
            }
        }
        Ok(UringEngine { workers })
    }

    /// How many core threads run.
    pub fn threads(&self) -> usize {
        self.workers.len()
    }
}

/// The CPUs this process may run on, to pin one core thread to each.
fn allowed_cpus() -> Vec<usize> {
    use nix::sched::{CpuSet, sched_getaffinity};
    let Ok(set) = sched_getaffinity(nix::unistd::Pid::from_raw(0)) else { return Vec::new() };
    (0..CpuSet::count()).filter(|&c| set.is_set(c).unwrap_or(false)).collect()
}

fn core_thread(
    mut queue: mpsc::UnboundedReceiver<Job>,
    ready: std::sync::mpsc::Sender<io::Result<()>>,
    cpu: Option<usize>,
) {
    if let Some(cpu) = cpu {
        // Best effort: unpinned threads still work, the scheduler just moves them.
        let mut set = nix::sched::CpuSet::new();
        if set.set(cpu).is_ok() {
            let _ = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set);
        }
    }
    // IORING_SETUP_COOP_TASKRUN (Linux 5.19): a completion that arrives while this thread runs does not
    // interrupt it with an IPI to post the result; the result is posted at the thread's next system call (it
    // makes one at every park: the submission and the epoll wait). A sleeping thread is still woken. Older
    // kernels refuse the flag: then the ring is made without it.
    let coop = tokio_uring::Runtime::new(
        tokio_uring::builder().uring_builder(tokio_uring::uring_builder().setup_coop_taskrun()),
    );
    let rt = match coop.or_else(|e| {
        tracing::debug!(error = %e, "no io_uring ring with COOP_TASKRUN; making one without");
        tokio_uring::Runtime::new(&tokio_uring::builder())
    }) {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let _ = ready.send(Ok(()));
    rt.block_on(async move {
        while let Some(job) = queue.recv().await {
            job();
        }
    });
}

impl Engine for UringEngine {
    fn kind(&self) -> EngineKind {
        EngineKind::IoUring
    }

    fn serve_tcp(&self, addr: SocketAddr, shared: ListenerShared) -> io::Result<(SocketAddr, AcceptGuard)> {
        let mut bound = addr;
        let mut sockets = Vec::new();
        let mut stop = StopAccepting { cancel: CancellationToken::new(), controls: Vec::new() };
        for _ in &self.workers {
            let socket = reuseport_listener(bound)?;
            if bound.port() == 0 {
                // The others join the port the first one got.
                bound = socket.local_addr()?.as_socket().ok_or_else(|| io::Error::other("not an IP socket"))?;
            }
            // A duplicate to shut the socket down with: tokio-uring's listener lends no descriptor.
            stop.controls.push(socket.try_clone()?);
            sockets.push(std::net::TcpListener::from(socket));
        }
        for (worker, socket) in self.workers.iter().zip(sockets) {
            let (shared, cancel) = (shared.clone(), stop.cancel.clone());
            worker.submit(Box::new(move || {
                let listener = TcpListener::from_std(socket);
                tokio_uring::spawn(accept_loop(listener, bound, shared, cancel));
            }))?;
        }
        Ok((bound, Box::new(stop)))
    }

    fn serve_udp(&self, addr: SocketAddr, shared: UdpShared) -> io::Result<(SocketAddr, AcceptGuard)> {
        let mut bound = addr;
        let mut sockets = Vec::new();
        let mut stop = StopAccepting { cancel: CancellationToken::new(), controls: Vec::new() };
        for _ in &self.workers {
            let socket = reuseport_udp(bound)?;
            if bound.port() == 0 {
                bound = socket.local_addr()?.as_socket().ok_or_else(|| io::Error::other("not an IP socket"))?;
            }
            stop.controls.push(socket.try_clone()?);
            sockets.push(std::net::UdpSocket::from(socket));
        }
        for (worker, socket) in self.workers.iter().zip(sockets) {
            let (shared, cancel) = (shared.clone(), stop.cancel.clone());
            worker.submit(Box::new(move || {
                let socket = Rc::new(UdpSocket::from_std(socket));
                tokio_uring::spawn(udp_loop(socket, shared, cancel));
            }))?;
        }
        Ok((bound, Box::new(stop)))
    }
}

fn reuseport_listener(addr: SocketAddr) -> io::Result<socket2::Socket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    socket.listen(crate::listener::LISTEN_BACKLOG)?;
    Ok(socket)
}

/// Ends a listener's loops: they are told, and their pending accepts (receives, for UDP) are ended by shutting
/// the sockets down (a shut down TCP listening socket also leaves its `SO_REUSEPORT` group at once).
struct StopAccepting {
    cancel: CancellationToken,
    controls: Vec<socket2::Socket>,
}

impl Drop for StopAccepting {
    fn drop(&mut self) {
        self.cancel.cancel();
        for socket in &self.controls {
            let _ = socket.shutdown(Shutdown::Both);
        }
    }
}

async fn accept_loop(listener: TcpListener, bound: SocketAddr, shared: ListenerShared, cancel: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            biased;
            () = cancel.cancelled() => return,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((client, peer)) => match shared.admit() {
                Some(admitted) => {
                    tokio_uring::spawn(connection(client, peer, bound, shared.clone(), admitted));
                }
                None => abort(&client),
            },
            Err(e) => {
                if cancel.is_cancelled() {
                    return;
                }
                // Out of descriptors or a connection gone before we took it: keep the listener, slow down.
                tokio::time::sleep(shared.accept_failed(&e)).await;
            }
        }
    }
}

/// A duplicate of a descriptor of this process (see the module comment for why).
fn duplicate(raw: RawFd) -> io::Result<OwnedFd> {
    use rustix::process::{PidfdFlags, PidfdGetfdFlags, getpid, pidfd_getfd, pidfd_open};
    thread_local! {
        static PIDFD: Option<OwnedFd> = pidfd_open(getpid(), PidfdFlags::empty()).ok();
    }
    PIDFD.with(|pidfd| match pidfd {
        Some(pidfd) => pidfd_getfd(pidfd, raw, PidfdGetfdFlags::empty()).map_err(io::Error::from),
        None => Err(io::Error::from(io::ErrorKind::Unsupported)),
    })
}

/// Resets a connection now: RST to the peer, pending operations on it complete with an error.
fn abort(stream: &TcpStream) {
    match duplicate(stream.as_raw_fd()).and_then(|fd| rustix::net::connect_unspec(&fd).map_err(io::Error::from)) {
        Ok(()) => {}
        Err(e) => {
            tracing::debug!(error = %e, "cannot reset a connection; closing it instead");
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

/// The local address of an accepted connection: the listener's, unless it listens on a wildcard address.
fn local_addr(stream: &TcpStream, bound: SocketAddr) -> SocketAddr {
    if !bound.ip().is_unspecified() {
        return bound;
    }
    duplicate(stream.as_raw_fd())
        .and_then(|fd| socket2::Socket::from(fd).local_addr())
        .ok()
        .and_then(|a| a.as_socket())
        .unwrap_or(bound)
}

/// Reads the PROXY protocol header an upstream balancer sends first; see the epoll engine's twin.
async fn read_header(client: &TcpStream) -> Result<(Option<(SocketAddr, SocketAddr)>, Vec<u8>), String> {
    let mut buf: Vec<u8> = Vec::with_capacity(MAX_HEADER);
    loop {
        let start = buf.len();
        let (res, slice) = client.read(buf.slice(start..)).await;
        buf = slice.into_inner();
        match res {
            Ok(0) => return Err("closed before a complete header".into()),
            Ok(_) => {}
            Err(e) => return Err(e.to_string()),
        }
        match proxy_protocol::parse(&buf) {
            Parsed::Incomplete if buf.len() < MAX_HEADER => continue,
            Parsed::Incomplete => return Err(format!("no complete header in {MAX_HEADER} bytes")),
            Parsed::Invalid(why) => return Err(why),
            Parsed::Header { len, addresses } => return Ok((addresses, buf[len..].to_vec())),
        }
    }
}

async fn connect(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, RelayError> {
    match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        // The abandoned connect keeps its socket until the kernel gives up on it (a SYN timeout).
        Err(_) => Err(RelayError::ConnectTimeout { addr, timeout }),
        Ok(Err(source)) => Err(RelayError::Connect { addr, source }),
        Ok(Ok(stream)) => Ok(stream),
    }
}

async fn connection(
    client: TcpStream,
    peer: SocketAddr,
    bound: SocketAddr,
    shared: ListenerShared,
    admitted: Admitted,
) {
    let Admitted { active: _active, config } = admitted;
    // The setup is its own future, awaited to completion before the relay starts: its locals (header buffers,
    // the connect, the early writes) then share space with the relay's in this task instead of sitting next to
    // them for the connection's whole life.
    let Some((backend, pick, source)) = setup(&client, peer, bound, &shared, &config).await else {
        return;
    };
    let registered = shared.register(pick.addr);
    let per_backend = &pick.guard.counters().traffic;
    let result = {
        let cancel = std::pin::pin!(registered.cancel.notified());
        relay_until(client, backend, &config.relay, &shared.stats().traffic, per_backend, cancel).await
    };
    shared.finished(source, pick.addr, &result);
    drop(registered);
    drop(pick);
}

/// Everything before the relay: the PROXY header in, the pick, the connect, the header and early bytes out.
/// Returns the backend, the pick and the client's address (from the header if one came); `None` once it has
/// counted and reset a connection that goes no further.
async fn setup(
    client: &TcpStream,
    peer: SocketAddr,
    bound: SocketAddr,
    shared: &ListenerShared,
    config: &ListenerConfig,
) -> Option<(TcpStream, Pick, SocketAddr)> {
    let pp = &config.proxy_protocol;
    let (from_header, early) = if pp.accept {
        match tokio::time::timeout(pp.header_timeout, read_header(client)).await {
            Ok(Ok(got)) => got,
            Ok(Err(why)) => {
                shared.header_failed(peer, &why);
                abort(client);
                return None;
            }
            Err(_) => {
                shared.header_failed(peer, "timed out");
                abort(client);
                return None;
            }
        }
    } else {
        (None, Vec::new())
    };
    let source = from_header.map_or(peer, |(client, _)| client);
    let Some(pick) = shared.pick(config, source) else {
        abort(client);
        return None;
    };
    let backend = match connect(pick.addr, config.relay.connect_timeout).await {
        Ok(b) => {
            pick.guard.counters().connect_succeeded();
            b
        }
        Err(e) => {
            shared.connect_failed(source, &pick, &e);
            abort(client);
            return None;
        }
    };
    let header = match pp.send {
        SendProxy::None => None,
        send => {
            let dest = from_header.map_or_else(|| local_addr(client, bound), |(_, dest)| dest);
            proxy_protocol::header(send, source, dest)
        }
    };
    let early_len = early.len();
    for bytes in [header, Some(early)].into_iter().flatten() {
        if bytes.is_empty() {
            continue;
        }
        if let (Err(e), _) = backend.write_all(bytes).await {
            tracing::debug!(client = %source, backend = %pick.addr, error = %e, "writing to the backend failed");
            shared.stats().relay_errors.fetch_add(1, Ordering::Relaxed);
            abort(client);
            abort(&backend);
            return None;
        }
    }
    shared.sent_early(early_len);
    Some((backend, pick, source))
}

/// The relay: both directions until both have ended, one fails, the idle timeout passes or `cancel` completes.
async fn relay_until(
    client: TcpStream,
    backend: TcpStream,
    config: &RelayConfig,
    traffic: &Traffic,
    per_backend: &Traffic,
    // Pinned by the caller, so the future is not stored twice (see below).
    cancel: std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
) -> Result<RelayOutcome, RelayError> {
    let _ = client.set_nodelay(true);
    let _ = backend.set_nodelay(true);
    let activity = Activity::new();
    let up_count = Count::new(&traffic.to_backend, Some(&per_backend.to_backend));
    let down_count = Count::new(&traffic.to_client, Some(&per_backend.to_client));
    let size = config.buffer_size.max(1);
    let idle = config.idle_timeout;
    // The futures are written inside the macros, not bound to locals first: a local moved into `try_join!` or
    // `select!` keeps its own slot in this future's state next to the macro's copy (rustc does not overlap
    // them), which made this future twice the size — it is most of what an idle connection costs.
    let end = tokio::select! {
        r = async {
            tokio::try_join!(
                async {
                    pump(&client, &backend, size, &up_count, &activity)
                        .await
                        .map_err(|source| RelayError::Io { direction: Direction::ToBackend, source })
                },
                async {
                    pump(&backend, &client, size, &down_count, &activity)
                        .await
                        .map_err(|source| RelayError::Io { direction: Direction::ToClient, source })
                },
            )
        } => match r {
            Ok(_) => RelayEnd::Closed,
            Err(e) => {
                // Pass the failure on as a reset; this also ends the other direction's pending operations.
                abort(&client);
                abort(&backend);
                tracing::debug!(error = %e, "relay failed");
                return Err(e);
            }
        },
        () = async {
            match idle {
                Some(idle) => activity.idle(idle).await,
                None => std::future::pending().await,
            }
        } => {
            // A clean close, as the epoll engine's; the shutdown completes the pending reads.
            let _ = client.shutdown(Shutdown::Both);
            let _ = backend.shutdown(Shutdown::Both);
            RelayEnd::IdleTimeout
        }
        () = cancel => {
            abort(&client);
            abort(&backend);
            RelayEnd::Cancelled
        }
    };
    Ok(RelayOutcome {
        to_backend: up_count.own.load(Ordering::Relaxed),
        to_client: down_count.own.load(Ordering::Relaxed),
        end,
        spliced: (false, false),
    })
}

/// Copies `src` → `dst` until `src` reads EOF, then shuts down `dst`'s write side.
///
/// A pending read must lend the ring a buffer for as long as it waits, so a direction starts by reading into a
/// [`SMALL_BUFFER`]: an idle connection, or one that only ever carries small messages, holds two of those and
/// nothing more. The first read that fills it moves the direction to readiness mode for good: it waits for data
/// with no buffer at all (epoll, through the tokio reactor tokio-uring runs on — the ring has no poll operation
/// in tokio-uring 0.5), then reads through the ring into a buffer that starts at [`FIRST_BUFFER`], grows to
/// `size` once a read fills it, and goes back to the thread's pool once a read leaves it part empty (the socket
/// is drained, so the next read would wait). Bulk transfers keep their buffer between reads that fill it and
/// pay no readiness wait there; a connection idle after a burst holds no buffer.
async fn pump(src: &TcpStream, dst: &TcpStream, size: usize, count: &Count<'_>, activity: &Activity) -> io::Result<()> {
    let mut small: Vec<u8> = Vec::with_capacity(SMALL_BUFFER.min(size));
    loop {
        small.clear();
        let (res, b) = src.read(small).await;
        small = b;
        let n = res?;
        if n == 0 {
            return finish(dst);
        }
        activity.touch();
        let full = n == small.capacity();
        let (res, b) = dst.write_all(small).await;
        small = b;
        res?;
        count.add(n);
        activity.touch();
        if full && small.capacity() < size {
            break;
        }
    }
    drop(small);
    // Boxed: the readiness loop's state is allocated only for directions that get here, so a connection that
    // stays in small mode (most idle ones) carries a pointer for it instead of its few hundred bytes.
    Box::pin(pump_ready(src, dst, size, count, activity)).await
}

/// The readiness mode of [`pump`], until EOF.
async fn pump_ready(
    src: &TcpStream,
    dst: &TcpStream,
    size: usize,
    count: &Count<'_>,
    activity: &Activity,
) -> io::Result<()> {
    let readiness = readiness(src);
    let mut cap = FIRST_BUFFER.clamp(SMALL_BUFFER.min(size), size);
    let mut held: Option<Vec<u8>> = None;
    // Whether the last read left its buffer part empty, i.e. the socket was drained and this wait is for new data.
    let mut drained = false;
    loop {
        let mut ready = match &readiness {
            Some(r) => Some(r.readable().await?),
            None => None,
        };
        if drained
            && let Some(guard) = ready.as_mut()
            && guard.try_io(|fd| peek(fd.get_ref())).is_err()
        {
            // Stale readiness: an edge for data that the last read already took (it came in between the wait and
            // the read). A ring read now would wait holding a buffer; `try_io` cleared the readiness, wait again.
            continue;
        }
        let mut buf = held.take().unwrap_or_else(|| pool_take(cap));
        buf.clear();
        let (res, b) = src.read(buf).await;
        buf = b;
        let n = match res {
            Ok(n) => n,
            Err(e) => {
                pool_give(buf);
                return Err(e);
            }
        };
        if n == 0 {
            pool_give(buf);
            return finish(dst);
        }
        activity.touch();
        let full = n == buf.capacity();
        drained = !full;
        if !full && let Some(ready) = ready.as_mut() {
            // Drained: wait for the next edge. (A readiness event that came in during the read moved the tick,
            // so this does not clear it and the next wait returns at once.)
            ready.clear_ready();
        }
        let (res, b) = dst.write_all(buf).await;
        buf = b;
        if let Err(e) = res {
            pool_give(buf);
            return Err(e);
        }
        count.add(n);
        activity.touch();
        if !full && readiness.is_some() {
            pool_give(buf);
        } else if full && buf.capacity() < size {
            pool_give(buf);
            cap = size;
        } else {
            held = Some(buf);
        }
    }
}

/// Readiness of `src` through the runtime's epoll, on a duplicate of its descriptor: tokio-uring's `TcpStream`
/// lends no `AsFd`, and registering a bare `RawFd` (whose lifetime tokio cannot see) is what tokio deprecated as
/// unsound; an owned duplicate stays valid for as long as the registration. It costs one descriptor per
/// direction in readiness mode. Without it (`pidfd_getfd` refused) the direction keeps its buffer while it waits,
/// as before.
fn readiness(src: &TcpStream) -> Option<AsyncFd<OwnedFd>> {
    #[allow(deprecated)] // `with_interest` on an owned descriptor is the sound use (see above).
    let registered = duplicate(src.as_raw_fd()).and_then(|fd| AsyncFd::with_interest(fd, Interest::READABLE));
    match registered {
        Ok(r) => Some(r),
        Err(e) => {
            tracing::debug!(error = %e, "no readiness for a relay direction; it keeps its buffer while idle");
            None
        }
    }
}

/// Whether the socket has anything to read (data, EOF or an error all say yes), without taking it and without
/// waiting: `WouldBlock` means no.
fn peek(fd: &OwnedFd) -> io::Result<usize> {
    use rustix::net::{RecvFlags, recv};
    let mut one = [0u8; 1];
    let (got, _) = recv(fd, &mut one[..], RecvFlags::PEEK | RecvFlags::DONTWAIT)?;
    Ok(got)
}

/// `src` read EOF: tell `dst`. The peer may be gone already (ENOTCONN): nothing left to tell it then.
fn finish(dst: &TcpStream) -> io::Result<()> {
    let _ = dst.shutdown(Shutdown::Write);
    Ok(())
}

thread_local! {
    /// Relay buffers between bursts, per core thread: a direction gives its buffer back whenever it drains, and
    /// reusing them spares the allocator a large alloc/free per burst (which may return pages to the kernel and
    /// fault them in again).
    static POOL: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// Buffers kept per core thread (at the default 64 KiB, 1 MiB).
const POOL_MAX: usize = 16;

/// An empty buffer of capacity `cap`, from the pool when it has one of that size.
fn pool_take(cap: usize) -> Vec<u8> {
    let pooled = POOL.with(|pool| {
        let mut pool = pool.borrow_mut();
        match pool.last() {
            Some(b) if b.capacity() == cap => pool.pop(),
            _ => None,
        }
    });
    pooled.unwrap_or_else(|| Vec::with_capacity(cap))
}

/// Keeps `buf` for the next burst; only the larger buffers (smaller ones are cheap to allocate).
fn pool_give(mut buf: Vec<u8>) {
    if buf.capacity() <= FIRST_BUFFER {
        return;
    }
    buf.clear();
    POOL.with(|pool| {
        let mut pool = pool.borrow_mut();
        if pool.len() < POOL_MAX {
            pool.push(buf);
        }
    });
}

fn reuseport_udp(addr: SocketAddr) -> io::Result<socket2::Socket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    Ok(socket)
}

struct UdpSession {
    id: u64,
    upstream: UdpSocket,
    backend: SocketAddr,
    start: tokio::time::Instant,
    /// When the last datagram went either way, in milliseconds since `start`.
    last_ms: Cell<u64>,
    /// The balancer generation its backend was last found in.
    checked: std::sync::atomic::AtomicU64,
    /// Ends the session (its backend left the set).
    stop: CancellationToken,
    _guard: ConnGuard,
}

impl UdpSession {
    fn touch(&self) {
        self.last_ms.set(self.last_ms.get().max(self.start.elapsed().as_millis() as u64));
    }

    fn deadline(&self, idle: Duration) -> tokio::time::Instant {
        self.start + Duration::from_millis(self.last_ms.get()) + idle
    }
}

/// This thread's sessions of one listener.
type LocalSessions = Rc<RefCell<HashMap<SocketAddr, Rc<UdpSession>>>>;

async fn upstream_udp(backend: SocketAddr) -> io::Result<UdpSocket> {
    let any: SocketAddr = if backend.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { ([0u16; 8], 0).into() };
    let socket = UdpSocket::bind(any).await?;
    socket.connect(backend).await?;
    Ok(socket)
}

async fn udp_loop(socket: Rc<UdpSocket>, shared: UdpShared, cancel: CancellationToken) {
    let sessions: LocalSessions = Rc::default();
    let mut buf: Vec<u8> = Vec::with_capacity(MAX_DATAGRAM);
    loop {
        buf.clear();
        let (res, b) = tokio::select! {
            biased;
            () = cancel.cancelled() => break,
            r = socket.recv_from(buf) => r,
        };
        buf = b;
        let (n, client) = match res {
            Ok(r) => r,
            Err(e) => {
                if cancel.is_cancelled() {
                    break;
                }
                // ICMP errors for earlier sends surface here on some kernels; the socket stays usable.
                tracing::debug!(error = %e, "udp receive failed");
                continue;
            }
        };
        if cancel.is_cancelled() {
            break;
        }
        let existing = sessions.borrow().get(&client).cloned();
        let existing = match existing {
            Some(s) if shared.backend_gone(s.backend, &s.checked) => {
                s.stop.cancel();
                sessions.borrow_mut().remove(&client);
                shared.ended(client, s.id);
                None
            }
            other => other,
        };
        let session = match existing {
            Some(s) => s,
            None => {
                let Some((pick, cfg)) = shared.new_session(client) else {
                    continue;
                };
                let upstream = match upstream_udp(pick.addr).await {
                    Ok(u) => u,
                    Err(e) => {
                        shared.send_error();
                        tracing::debug!(backend = %pick.addr, error = %e, "udp upstream socket failed");
                        continue;
                    }
                };
                let id = shared.opened(client, pick.addr);
                let session = Rc::new(UdpSession {
                    id,
                    upstream,
                    backend: pick.addr,
                    start: tokio::time::Instant::now(),
                    last_ms: Cell::new(0),
                    checked: std::sync::atomic::AtomicU64::new(shared.generation()),
                    stop: CancellationToken::new(),
                    _guard: pick.guard,
                });
                sessions.borrow_mut().insert(client, Rc::clone(&session));
                tokio_uring::spawn(udp_session(
                    Rc::clone(&session),
                    client,
                    Rc::clone(&socket),
                    cfg.idle_timeout,
                    Rc::clone(&sessions),
                    shared.clone(),
                    cancel.clone(),
                ));
                session
            }
        };
        session.touch();
        let (res, slice) = session.upstream.send(buf.slice(..n)).await;
        buf = slice.into_inner();
        shared.sent_to_backend(&res, session.backend);
    }
}

/// Relays replies of one session to its client until it has been idle for `idle` (or the listener stops).
async fn udp_session(
    session: Rc<UdpSession>,
    client: SocketAddr,
    socket: Rc<UdpSocket>,
    idle: Duration,
    sessions: LocalSessions,
    shared: UdpShared,
    cancel: CancellationToken,
) {
    let mut read = Box::pin(session.upstream.read(Vec::with_capacity(MAX_DATAGRAM)));
    let expired = loop {
        tokio::select! {
            biased;
            () = cancel.cancelled() => break false,
            () = session.stop.cancelled() => break false,
            (res, mut buf) = &mut read => {
                match res {
                    Ok(n) => {
                        session.touch();
                        let (sent, slice) = socket.send_to(buf.slice(..n), client).await;
                        buf = slice.into_inner();
                        shared.sent_to_client(&sent);
                    }
                    // An ICMP port unreachable from the backend: keep the session until it idles out.
                    Err(_) => shared.send_error(),
                }
                buf.clear();
                read.set(session.upstream.read(buf));
            }
            () = tokio::time::sleep_until(session.deadline(idle)) => {
                if tokio::time::Instant::now() >= session.deadline(idle) {
                    break true;
                }
            }
        }
    };
    // Completes the pending read, so the socket (held by it) closes.
    let _ = session.upstream.shutdown(Shutdown::Both);
    drop(read);
    {
        let mut map = sessions.borrow_mut();
        if map.get(&client).is_some_and(|s| Rc::ptr_eq(s, &session)) {
            map.remove(&client);
        }
    }
    if expired {
        shared.expired(client, session.id);
    }
}
