//! The epoll engine's TCP relay, on tokio: connect to a backend with a timeout, then move bytes both ways until
//! each side has closed.
//!
//! - **Half-close**: when one side's read ends (FIN), the relay shuts down writing towards the other side and
//!   keeps relaying the opposite direction until it ends too.
//! - **Idle timeout**: when nothing moved either way for the timeout, both sockets are closed.
//! - **Errors**: a read or write error in either direction (a reset) ends the relay; both sockets are then
//!   closed with a reset (`SO_LINGER` 0), so the other peer learns at once instead of seeing a clean FIN.
//! - **Zero copy**: [`CopyMode::Splice`] moves bytes socket → pipe → socket with `splice(2)` (nix's safe
//!   wrapper), so payload never enters user space; [`CopyMode::Buffered`] copies through a user-space buffer.
//!   [`CopyMode::Auto`] copies small exchanges and switches a direction to splicing once a read shows bulk
//!   ([`SPLICE_AFTER`]), falling back to copying if the kernel will not splice the sockets. Copies pass through
//!   a per-thread scratch buffer and pipes come from a pool, so an idle connection holds neither: it costs no
//!   more than its two sockets.
//!
//! Counters: [`Traffic`] is updated as bytes move (a status page sees long transfers grow), and the
//! [`RelayOutcome`] repeats the totals of one relay.

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, SpliceFFlags, fcntl, splice};
use std::io;
use std::net::{Shutdown, SocketAddr};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// How bytes are moved between the two sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CopyMode {
    /// `splice(2)` where the kernel supports it for the sockets, copying otherwise.
    #[default]
    Auto,
    /// `splice(2)` only (a direction that cannot splice fails).
    Splice,
    /// Copy through a user-space buffer of [`RelayConfig::buffer_size`].
    Buffered,
}

/// How one relay behaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayConfig {
    pub connect_timeout: Duration,
    /// Close both sides when nothing moved either way for this long; `None` never.
    pub idle_timeout: Option<Duration>,
    /// The user-space buffer per direction (buffered mode) and the pipe size asked for (splice mode).
    pub buffer_size: usize,
    pub mode: CopyMode,
}

impl Default for RelayConfig {
    fn default() -> RelayConfig {
        RelayConfig {
            connect_timeout: Duration::from_secs(5),
            idle_timeout: Some(Duration::from_secs(3600)),
            buffer_size: 64 * 1024,
            mode: CopyMode::Auto,
        }
    }
}

/// Bytes moved, per direction; shared (for instance per listener or per backend) and updated live.
#[derive(Debug, Default)]
pub struct Traffic {
    /// Client → backend.
    pub to_backend: AtomicU64,
    /// Backend → client.
    pub to_client: AtomicU64,
}

/// Which way bytes were going.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    ToBackend,
    ToClient,
}

impl std::fmt::Display for Direction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Direction::ToBackend => "client to backend",
            Direction::ToClient => "backend to client",
        })
    }
}

/// Why a connect or a relay failed.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("connecting to {addr} timed out after {timeout:?}")]
    ConnectTimeout { addr: SocketAddr, timeout: Duration },
    #[error("connecting to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("relaying {direction}: {source}")]
    Io {
        direction: Direction,
        #[source]
        source: io::Error,
    },
}

impl RelayError {
    /// Whether this is a failure to reach the backend (counts as a connect error, feeds outlier detection).
    pub fn is_connect(&self) -> bool {
        matches!(self, RelayError::ConnectTimeout { .. } | RelayError::Connect { .. })
    }
}

/// How a relay ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayEnd {
    /// Both sides closed their sending direction.
    Closed,
    /// Nothing moved for the idle timeout.
    IdleTimeout,
    /// The caller's cancel future completed (drain timeout, backend removed); both sides were reset.
    Cancelled,
}

/// The totals of one relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayOutcome {
    pub to_backend: u64,
    pub to_client: u64,
    pub end: RelayEnd,
    /// Whether each direction (to backend, to client) moved its bytes with `splice(2)`.
    pub spliced: (bool, bool),
}

/// Connects to `addr`, giving up after `timeout`.
pub async fn connect(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, RelayError> {
    match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Err(_) => Err(RelayError::ConnectTimeout { addr, timeout }),
        Ok(Err(source)) => Err(RelayError::Connect { addr, source }),
        Ok(Ok(stream)) => {
            let _ = stream.set_nodelay(true);
            Ok(stream)
        }
    }
}

/// When something last moved, in milliseconds since the relay started.
#[derive(Debug)]
pub(crate) struct Activity {
    start: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    pub(crate) fn new() -> Activity {
        Activity { start: Instant::now(), last_ms: AtomicU64::new(0) }
    }

    pub(crate) fn touch(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last_ms.fetch_max(ms, Ordering::Relaxed);
    }

    /// Completes once nothing moved for `idle`.
    pub(crate) async fn idle(&self, idle: Duration) {
        loop {
            let deadline = self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed)) + idle;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

/// One direction's counters: the relay's own and the shared ones.
pub(crate) struct Count<'a> {
    pub(crate) own: AtomicU64,
    pub(crate) shared: &'a AtomicU64,
    /// The backend's own counter, when the caller keeps one.
    pub(crate) also: Option<&'a AtomicU64>,
}

impl<'a> Count<'a> {
    /// Counts into `shared` and, if given, `also`.
    pub(crate) fn new(shared: &'a AtomicU64, also: Option<&'a AtomicU64>) -> Count<'a> {
        Count { own: AtomicU64::new(0), shared, also }
    }

    pub(crate) fn add(&self, n: usize) {
        self.own.fetch_add(n as u64, Ordering::Relaxed);
        self.shared.fetch_add(n as u64, Ordering::Relaxed);
        if let Some(also) = self.also {
            also.fetch_add(n as u64, Ordering::Relaxed);
        }
    }
}

/// Relays between an accepted `client` and a connected `backend` until both directions have ended, one fails,
/// or the idle timeout passes. The sockets are closed when this returns.
pub async fn relay(
    client: TcpStream,
    backend: TcpStream,
    config: &RelayConfig,
    traffic: &Traffic,
) -> Result<RelayOutcome, RelayError> {
    relay_until(client, backend, config, traffic, std::future::pending()).await
}

/// [`relay`], also ended when `cancel` completes: both sockets are then reset and the end is
/// [`RelayEnd::Cancelled`].
pub async fn relay_until(
    client: TcpStream,
    backend: TcpStream,
    config: &RelayConfig,
    traffic: &Traffic,
    cancel: impl std::future::Future<Output = ()>,
) -> Result<RelayOutcome, RelayError> {
    relay_counting(client, backend, config, traffic, None, cancel).await
}

/// [`relay_until`], also counting into the backend's own `per_backend` traffic.
pub(crate) async fn relay_counting(
    client: TcpStream,
    backend: TcpStream,
    config: &RelayConfig,
    traffic: &Traffic,
    per_backend: Option<&Traffic>,
    cancel: impl std::future::Future<Output = ()>,
) -> Result<RelayOutcome, RelayError> {
    let _ = client.set_nodelay(true);
    let _ = backend.set_nodelay(true);
    let activity = Activity::new();
    let up_count = Count::new(&traffic.to_backend, per_backend.map(|t| &t.to_backend));
    let down_count = Count::new(&traffic.to_client, per_backend.map(|t| &t.to_client));
    // The futures are built inside `select!`/`try_join!`, not bound first: a bound future would keep its own
    // slot in this future beside the one it is moved into, and every idle connection holds this future.
    let (end, spliced) = tokio::select! {
        r = async {
            tokio::try_join!(
                async {
                    pump(&client, &backend, config, &up_count, &activity)
                        .await
                        .map_err(|source| RelayError::Io { direction: Direction::ToBackend, source })
                },
                async {
                    pump(&backend, &client, config, &down_count, &activity)
                        .await
                        .map_err(|source| RelayError::Io { direction: Direction::ToClient, source })
                },
            )
        } => match r {
            Ok(spliced) => (RelayEnd::Closed, spliced),
            Err(e) => {
                // Pass the failure on as a reset rather than a clean close.
                reset_both(&client, &backend);
                tracing::debug!(error = %e, "relay failed");
                return Err(e);
            }
        },
        () = async {
            match config.idle_timeout {
                Some(idle) => activity.idle(idle).await,
                None => std::future::pending().await,
            }
        } => (RelayEnd::IdleTimeout, (false, false)),
        () = cancel => {
            reset_both(&client, &backend);
            (RelayEnd::Cancelled, (false, false))
        }
    };
    Ok(RelayOutcome {
        to_backend: up_count.own.load(Ordering::Relaxed),
        to_client: down_count.own.load(Ordering::Relaxed),
        end,
        spliced,
    })
}

fn reset_both(client: &TcpStream, backend: &TcpStream) {
    for s in [client, backend] {
        let _ = socket2::SockRef::from(s).set_linger(Some(Duration::ZERO));
    }
}

/// A read at least this large means bulk is flowing: [`CopyMode::Auto`] switches the direction to `splice(2)`.
/// Smaller exchanges (requests, responses, interactive traffic) are copied: two syscalls per message instead of
/// four plus a pipe, the way HAProxy's `splice-auto` decides.
pub const SPLICE_AFTER: usize = 16 * 1024;

/// Empty pipes kept for the next bulk transfer (making one costs `pipe2`, closing it two `close`).
const PIPE_POOL: usize = 256;

type Pipe = (OwnedFd, OwnedFd, usize);

fn pipe_pool() -> &'static std::sync::Mutex<Vec<Pipe>> {
    static POOL: std::sync::OnceLock<std::sync::Mutex<Vec<Pipe>>> = std::sync::OnceLock::new();
    POOL.get_or_init(|| std::sync::Mutex::new(Vec::new()))
}

fn take_pipe(size: usize) -> Result<Pipe, Errno> {
    if let Some(p) = pipe_pool().lock().unwrap_or_else(|e| e.into_inner()).pop() {
        return Ok(p);
    }
    splice_pipe(size)
}

/// Gives back a pipe known to be empty.
fn return_pipe(pipe: Pipe) {
    let mut pool = pipe_pool().lock().unwrap_or_else(|e| e.into_inner());
    if pool.len() < PIPE_POOL {
        pool.push(pipe);
    }
}

/// Moves `src` → `dst` until `src`'s read side ends, then shuts down `dst`'s write side. Returns whether it
/// spliced.
async fn pump(
    src: &TcpStream,
    dst: &TcpStream,
    config: &RelayConfig,
    count: &Count<'_>,
    activity: &Activity,
) -> io::Result<bool> {
    let spliced = match config.mode {
        CopyMode::Buffered => pump_copy(src, dst, config, count, activity, false).await?,
        CopyMode::Splice => {
            pump_splice(src, dst, config.buffer_size, count, activity).await?.map_err(io::Error::from)?;
            true
        }
        CopyMode::Auto => pump_copy(src, dst, config, count, activity, true).await?,
    };
    shutdown_write(dst);
    Ok(spliced)
}

fn shutdown_write(s: &TcpStream) {
    // The peer may be gone already (ENOTCONN): nothing left to tell it.
    let _ = socket2::SockRef::from(s).shutdown(Shutdown::Write);
}

thread_local! {
    /// Where copied bytes pass through. Per thread, not per connection: a read and the write that follows it
    /// happen without an await in between, so an idle connection holds no buffer at all.
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// What one read-and-forward did.
enum Step {
    Eof,
    WouldBlock,
    /// `read` bytes came in, `written` went out; `rest` is what `dst` did not take yet.
    Moved {
        read: usize,
        written: usize,
        rest: Vec<u8>,
    },
}

/// Reads what `src` has (up to `size`) and writes as much of it to `dst` as it takes at once.
fn read_and_forward(src: &TcpStream, dst: &TcpStream, size: usize) -> io::Result<Step> {
    SCRATCH.with(|scratch| {
        let mut buf = scratch.borrow_mut();
        if buf.len() < size {
            buf.resize(size, 0);
        }
        let n = match src.try_read(&mut buf[..size]) {
            Ok(0) => return Ok(Step::Eof),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Step::WouldBlock),
            Err(e) => return Err(e),
        };
        let mut off = 0;
        while off < n {
            match dst.try_write(&buf[off..n]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(k) => off += k,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        Ok(Step::Moved { read: n, written: off, rest: buf[off..n].to_vec() })
    })
}

/// Writes all of `pending` to `dst`, then frees it.
async fn flush(dst: &TcpStream, pending: &mut Vec<u8>, count: &Count<'_>, activity: &Activity) -> io::Result<()> {
    let mut off = 0;
    while off < pending.len() {
        dst.writable().await?;
        match dst.try_write(&pending[off..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(k) => {
                off += k;
                count.add(k);
                activity.touch();
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    *pending = Vec::new();
    Ok(())
}

/// Copies through the thread's scratch buffer; with `may_splice`, switches to `splice(2)` once a read shows bulk
/// (and keeps copying if the kernel refuses to splice these sockets). Returns whether it spliced.
async fn pump_copy(
    src: &TcpStream,
    dst: &TcpStream,
    config: &RelayConfig,
    count: &Count<'_>,
    activity: &Activity,
    mut may_splice: bool,
) -> io::Result<bool> {
    let size = config.buffer_size.max(1);
    loop {
        src.readable().await?;
        let (read, written, mut rest) = match read_and_forward(src, dst, size)? {
            Step::Eof => return Ok(false),
            Step::WouldBlock => continue,
            Step::Moved { read, written, rest } => (read, written, rest),
        };
        activity.touch();
        count.add(written);
        // The rarely taken paths are boxed, so that the future every idle connection holds stays small.
        if !rest.is_empty() {
            Box::pin(flush(dst, &mut rest, count, activity)).await?;
        }
        if may_splice && read >= SPLICE_AFTER {
            match Box::pin(pump_splice(src, dst, config.buffer_size, count, activity)).await? {
                Ok(()) => return Ok(true),
                Err(errno) => {
                    tracing::debug!(%errno, "splice unavailable for this connection, copying");
                    may_splice = false;
                }
            }
        }
    }
}

/// Linux's pipe size unless asked otherwise (16 pages).
const DEFAULT_PIPE_SIZE: usize = 64 * 1024;

/// A pipe for splicing, of about `size` bytes (the kernel's default, 64 KiB, when it refuses the size).
fn splice_pipe(size: usize) -> Result<Pipe, Errno> {
    let (r, w) = nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)?;
    if size == DEFAULT_PIPE_SIZE {
        return Ok((r, w, size));
    }
    let want = i32::try_from(size).unwrap_or(i32::MAX);
    let got = fcntl(&w, FcntlArg::F_SETPIPE_SZ(want)).or_else(|_| fcntl(&w, FcntlArg::F_GETPIPE_SZ))?;
    Ok((r, w, usize::try_from(got).unwrap_or(65_536).max(4096)))
}

/// The splice pump. The outer error is an I/O failure; the inner one says splicing is not possible for these
/// sockets (no pipe, or the kernel refused the first splice), in which case nothing has moved yet.
async fn pump_splice(
    src: &TcpStream,
    dst: &TcpStream,
    pipe_size: usize,
    count: &Count<'_>,
    activity: &Activity,
) -> io::Result<Result<(), Errno>> {
    let flags = SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK;
    let mut pipe: Option<Pipe> = None;
    let mut first = true;
    loop {
        src.readable().await?;
        let (pipe_r, pipe_w, chunk) = match &pipe {
            Some(p) => p,
            None => match take_pipe(pipe_size) {
                Ok(p) => pipe.insert(p),
                Err(e) => return Ok(Err(e)),
            },
        };
        // The pipe is empty here: a would-block can only mean the socket has nothing.
        let n = match src
            .try_io(Interest::READABLE, || splice(src, None, pipe_w, None, *chunk, flags).map_err(io::Error::from))
        {
            Ok(0) => {
                if let Some(p) = pipe.take() {
                    return_pipe(p);
                }
                return Ok(Ok(()));
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e)
                if first
                    && matches!(e.raw_os_error(), Some(code) if code == Errno::EINVAL as i32 || code == Errno::ENOSYS as i32) =>
            {
                return Ok(Err(Errno::from_raw(e.raw_os_error().unwrap_or(0))));
            }
            Err(e) => return Err(e),
        };
        first = false;
        activity.touch();
        let mut left = n;
        while left > 0 {
            dst.writable().await?;
            match dst
                .try_io(Interest::WRITABLE, || splice(pipe_r, None, dst, None, left, flags).map_err(io::Error::from))
            {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(k) => {
                    left -= k.min(left);
                    count.add(k);
                    activity.touch();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
    }
}
