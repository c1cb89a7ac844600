//! Shared by the integration tests: the engines every case runs against, and an echo backend.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::print_stdout)]

use portico_proxy::engine::{Engine, EpollEngine, UringEngine, probe_io_uring};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

/// The epoll engine, and the io_uring engine (two core threads, to exercise `SO_REUSEPORT` spreading even on
/// one core) where this kernel allows it.
pub fn engines() -> Vec<Arc<dyn Engine>> {
    let mut out: Vec<Arc<dyn Engine>> = vec![Arc::new(EpollEngine)];
    match probe_io_uring() {
        Ok(()) => out.push(Arc::new(UringEngine::new(2).expect("io_uring engine"))),
        // CI on these machines has io_uring (kernel.io_uring_disabled = 0); say so loudly where it is not.
        Err(e) => println!("io_uring engine skipped: {e}"),
    }
    out
}

/// A backend that echoes every connection (half-close aware: after the client's FIN it finishes and closes).
pub async fn echo_backend() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    addr
}
