//! The HTTPS accept loop: rustls handshake, then hyper (h2 or http/1.1) serving the axum router.

use std::sync::Arc;

use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use super::api;
use super::cluster::Inner;

/// Serves until the task is aborted (which also aborts every open connection).
pub(super) async fn serve(listener: TcpListener, tls: Arc<rustls::ServerConfig>, inner: Arc<Inner>) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let router = api::router(inner);
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        tracing::warn!(%error, "fake kube api: accept failed");
                        // Out of file descriptors (or a transient error): back off instead of spinning.
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let acceptor = acceptor.clone();
                let service = TowerToHyperService::new(router.clone());
                connections.spawn(async move {
                    let stream = match acceptor.accept(stream).await {
                        Ok(stream) => stream,
                        Err(error) => {
                            tracing::debug!(%peer, %error, "fake kube api: tls handshake failed");
                            return;
                        }
                    };
                    let builder = auto::Builder::new(TokioExecutor::new());
                    if let Err(error) = builder.serve_connection(TokioIo::new(stream), service).await {
                        tracing::debug!(%peer, %error, "fake kube api: connection ended with an error");
                    }
                });
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}
