//! The L4 I/O engines and how one is chosen at start.
//!
//! An [`Engine`] owns sockets and moves bytes; everything else (balancing, limits, counters, PROXY protocol
//! decisions, reconciliation) is engine-neutral and lives in [`crate::listener`], [`crate::balance`] and
//! [`crate::proxy_protocol`]. Two engines:
//!
//! - [`EpollEngine`] — tokio (epoll readiness) on the process's runtime, `splice(2)` relay.
//! - [`UringEngine`] — one OS thread per core, each running a tokio-uring runtime with its own `SO_REUSEPORT`
//!   socket per listener (TCP and UDP), owned-buffer copy relay.
//!
//! [`select`] turns the configured [`EngineChoice`] into an engine. `Auto` takes [`AUTO_PREFERS`], the engine
//! the benchmark found better (`bench/src/bin/l4.rs`, `bench/RESULTS.md`): epoll. Were io_uring preferred, `Auto`
//! would probe it (a ring and one NOP) and fall back to epoll when it is unavailable (seccomp,
//! `kernel.io_uring_disabled`, an old kernel); an explicit `IoUring` always probes.

use crate::listener::ListenerShared;
use crate::udp::UdpShared;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

pub use crate::epoll::EpollEngine;
pub use crate::uring::UringEngine;

/// Stops a listener's accepting (closes its socket or sockets) when dropped.
pub type AcceptGuard = Box<dyn std::any::Any + Send + Sync>;

/// Which engine runs the L4 listeners (`settings.proxy.l4_engine`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EngineChoice {
    /// io_uring when the kernel lets this process use it, else epoll.
    #[default]
    Auto,
    IoUring,
    Epoll,
}

/// Which engine a running engine is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineKind {
    IoUring,
    Epoll,
}

impl EngineKind {
    pub fn name(self) -> &'static str {
        match self {
            EngineKind::IoUring => "io_uring",
            EngineKind::Epoll => "epoll",
        }
    }
}

/// One I/O engine. Methods that start listeners must be called from within a tokio runtime (the epoll engine
/// registers its sockets there; both spawn on it for UDP).
pub trait Engine: Send + Sync + std::fmt::Debug {
    fn kind(&self) -> EngineKind;

    fn name(&self) -> &'static str {
        self.kind().name()
    }

    /// Binds `addr` and accepts connections for `shared` until the returned guard is dropped. Returns the
    /// bound address (its port filled in when `addr` asked for port 0). Use [`crate::listener::TcpProxy::start`].
    fn serve_tcp(&self, addr: SocketAddr, shared: ListenerShared) -> io::Result<(SocketAddr, AcceptGuard)>;

    /// Binds a UDP listener and relays for `shared` until the returned guard is dropped (which also ends its
    /// sessions). Use [`crate::udp::UdpProxy::start`].
    fn serve_udp(&self, addr: SocketAddr, shared: UdpShared) -> io::Result<(SocketAddr, AcceptGuard)>;
}

/// Why io_uring cannot be used here.
#[derive(Debug, Clone, thiserror::Error)]
#[error("io_uring is unavailable: {0}")]
pub struct Unavailable(pub String);

/// Why the configured engine could not be started.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("l4_engine is io_uring but {0}")]
    IoUringUnavailable(Unavailable),
    #[error("starting the io_uring engine: {0}")]
    Start(#[source] io::Error),
}

/// What [`select`] decided, before anything is started: pure, so the fallback is testable without disabling
/// io_uring in the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    IoUring,
    /// Epoll; for `Auto`, with why io_uring was not chosen.
    Epoll {
        why_not_io_uring: Option<String>,
    },
}

/// The engine `auto` runs: the one the benchmark measured better on these machines. Against HAProxy and nginx
/// on one core (bench/RESULTS.md, session 3), epoll matched or beat io_uring everywhere — bulk CPU per GB
/// 0.97–1.04× HAProxy against 1.28–1.39×, UDP 1.97× nginx against 0.97×, connections/s 0.98× against 0.93×,
/// idle memory alike — because tokio-uring cannot splice and submits each operation on its own.
pub const AUTO_PREFERS: EngineKind = EngineKind::Epoll;

/// Decides from the choice and the probe's result (`probe` is only called when it matters).
pub fn decide(choice: EngineChoice, probe: impl FnOnce() -> Result<(), Unavailable>) -> Result<Decision, EngineError> {
    decide_preferring(choice, AUTO_PREFERS, probe)
}

/// [`decide`] with `auto` preferring `preferred`.
pub fn decide_preferring(
    choice: EngineChoice,
    preferred: EngineKind,
    probe: impl FnOnce() -> Result<(), Unavailable>,
) -> Result<Decision, EngineError> {
    match choice {
        EngineChoice::Auto if preferred == EngineKind::Epoll => Ok(Decision::Epoll { why_not_io_uring: None }),
        EngineChoice::Epoll => Ok(Decision::Epoll { why_not_io_uring: None }),
        EngineChoice::IoUring => match probe() {
            Ok(()) => Ok(Decision::IoUring),
            Err(why) => Err(EngineError::IoUringUnavailable(why)),
        },
        EngineChoice::Auto => match probe() {
            Ok(()) => Ok(Decision::IoUring),
            Err(why) => Ok(Decision::Epoll { why_not_io_uring: Some(why.0) }),
        },
    }
}

/// Whether this process can use io_uring: builds a tokio-uring runtime (a ring) on a scratch thread and runs
/// one NOP through it. Fails with the kernel's reason (`EPERM` under seccomp or `io_uring_disabled`, `ENOSYS`
/// on old kernels).
pub fn probe_io_uring() -> Result<(), Unavailable> {
    let disabled = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled").ok();
    let run = || -> io::Result<()> {
        let rt = tokio_uring::Runtime::new(&tokio_uring::builder())?;
        rt.block_on(tokio_uring::no_op())
    };
    // A thread of its own: the caller may be inside a tokio runtime, where block_on is not allowed.
    let result = std::thread::Builder::new()
        .name("io_uring-probe".into())
        .spawn(run)
        .map_err(|e| Unavailable(format!("cannot start the probe thread: {e}")))?
        .join()
        .map_err(|_| Unavailable("the io_uring probe panicked".into()))?;
    result.map_err(|e| {
        let sysctl = match disabled.as_deref().map(str::trim) {
            Some(v) if v != "0" => format!(" (kernel.io_uring_disabled = {v})"),
            _ => String::new(),
        };
        Unavailable(format!("{e}{sysctl}"))
    })
}

/// The engine for `choice`, and for `Auto` why io_uring was not chosen (also logged). `threads` is the io_uring
/// engine's number of core threads (`None`: one per available core).
pub fn select(choice: EngineChoice, threads: Option<usize>) -> Result<(Arc<dyn Engine>, Option<String>), EngineError> {
    select_with(choice, threads, probe_io_uring)
}

/// [`select`] with the probe injected.
pub fn select_with(
    choice: EngineChoice,
    threads: Option<usize>,
    probe: impl FnOnce() -> Result<(), Unavailable>,
) -> Result<(Arc<dyn Engine>, Option<String>), EngineError> {
    match decide(choice, probe)? {
        Decision::IoUring => {
            let threads = threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
            match UringEngine::new(threads) {
                Ok(engine) => {
                    tracing::info!(threads, "L4 engine: io_uring");
                    Ok((Arc::new(engine), None))
                }
                Err(e) if choice == EngineChoice::Auto => {
                    let why = format!("starting its threads failed: {e}");
                    tracing::warn!(why, "L4 engine: epoll (io_uring unavailable)");
                    Ok((Arc::new(EpollEngine), Some(why)))
                }
                Err(e) => Err(EngineError::Start(e)),
            }
        }
        Decision::Epoll { why_not_io_uring } => {
            match &why_not_io_uring {
                Some(why) => tracing::warn!(why, "L4 engine: epoll (io_uring unavailable)"),
                None => tracing::info!(?choice, "L4 engine: epoll"),
            }
            Ok((Arc::new(EpollEngine), why_not_io_uring))
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn unavailable() -> Result<(), Unavailable> {
        Err(Unavailable("Operation not permitted (os error 1) (kernel.io_uring_disabled = 2)".into()))
    }

    #[test]
    fn auto_runs_the_preferred_engine_and_falls_back_saying_why() {
        // Epoll preferred (the benchmark's verdict): no probe at all.
        let d = decide_preferring(EngineChoice::Auto, EngineKind::Epoll, || panic!("probed")).unwrap();
        assert_eq!(d, Decision::Epoll { why_not_io_uring: None });
        // io_uring preferred: probed, and the fallback says why.
        let d = decide_preferring(EngineChoice::Auto, EngineKind::IoUring, unavailable).unwrap();
        match d {
            Decision::Epoll { why_not_io_uring: Some(why) } => assert!(why.contains("io_uring_disabled"), "{why}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(decide_preferring(EngineChoice::Auto, EngineKind::IoUring, || Ok(())).unwrap(), Decision::IoUring);
    }

    #[test]
    fn explicit_io_uring_when_unavailable_is_an_error_naming_why() {
        let err = decide(EngineChoice::IoUring, unavailable).unwrap_err();
        assert!(err.to_string().contains("Operation not permitted"), "{err}");
        assert_eq!(decide(EngineChoice::IoUring, || Ok(())).unwrap(), Decision::IoUring);
    }

    #[test]
    fn epoll_never_probes() {
        let d = decide(EngineChoice::Epoll, || panic!("probed")).unwrap();
        assert_eq!(d, Decision::Epoll { why_not_io_uring: None });
    }

    #[test]
    fn select_with_a_failing_probe_refuses_explicit_io_uring() {
        let (engine, _) = select_with(EngineChoice::Auto, Some(1), unavailable).unwrap();
        assert_eq!(engine.kind(), AUTO_PREFERS);
        assert!(select_with(EngineChoice::IoUring, Some(1), unavailable).is_err());
    }

    #[test]
    fn explicit_io_uring_runs_where_the_kernel_allows_it() {
        // kernel.io_uring_disabled is 0 on the machines this project builds on; elsewhere only the refusal is
        // checked.
        match (select(EngineChoice::IoUring, Some(1)), probe_io_uring()) {
            (Ok((engine, why)), Ok(())) => assert_eq!((engine.kind(), why), (EngineKind::IoUring, None)),
            (Err(_), Err(_)) => {}
            (got, probe) => panic!("select and probe disagree: {:?} / {probe:?}", got.map(|(e, w)| (e.kind(), w))),
        }
        let (engine, why) = select(EngineChoice::Auto, None).unwrap();
        assert_eq!((engine.kind(), why), (EngineKind::Epoll, None), "auto runs the benchmark's choice");
    }
}
