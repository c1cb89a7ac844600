//! Serves the router over plain HTTP or TLS, with graceful shutdown: stop accepting, let requests in flight
//! finish (up to a deadline), then return.

use crate::{ClientAddr, Tls};
use axum::Router;
use axum::extract::Request;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// How long requests in flight may take to finish after shutdown starts.
const DRAIN: Duration = Duration::from_secs(10);
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

pub async fn serve(listener: TcpListener, tls: Option<Arc<ServerConfig>>, router: Router, shutdown: CancellationToken) {
    let acceptor = tls.map(TlsAcceptor::from);
    let graceful = GracefulShutdown::new();
    let local = listener.local_addr().ok();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and similar: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        let is_tls = acceptor.is_some();
        let service = router.clone().map_request(move |mut req: Request<Incoming>| {
            req.extensions_mut().insert(ClientAddr(peer));
            req.extensions_mut().insert(Tls(is_tls));
            req
        });
        let service = TowerToHyperService::new(service);
        let watcher = graceful.watcher();
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let builder = auto::Builder::new(TokioExecutor::new());
            let result = match acceptor {
                Some(acceptor) => match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(tls_stream)) => {
                        let conn =
                            builder.serve_connection_with_upgrades(TokioIo::new(tls_stream), service).into_owned();
                        watcher.watch(conn).await
                    }
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "TLS handshake timed out");
                        return;
                    }
                },
                None => {
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service).into_owned();
                    watcher.watch(conn).await
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tracing::info!(listener = ?local, "stopped accepting; draining requests in flight");
    if tokio::time::timeout(DRAIN, graceful.shutdown()).await.is_err() {
        tracing::warn!(listener = ?local, "requests still in flight after {DRAIN:?}; closing them");
    }
}
