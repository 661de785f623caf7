//! SMTP listeners: bind, accept, enforce connection limits, and run one
//! session task per connection on the multi-threaded runtime.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

use super::SmtpShared;
use super::session::Session;
use crate::config::{Listener, TlsMode, canonical_ip};
use crate::conn::{self, Conn};
use crate::shutdown::Signal;

/// Accepts connections on `listener` until the stop begins.
pub async fn serve(listener: TcpListener, spec: Listener, shared: Arc<SmtpShared>, signal: Signal) {
    let name = spec.name.clone();
    conn::accept_until(listener, &name, signal, |stream, peer, task_signal| {
        let config = shared.config.load();
        let ip = canonical_ip(peer.ip());
        let slot = shared.connections.try_take(
            ip,
            config.inbound.max_connections,
            config.inbound.max_connections_per_client,
        );
        let (shared, spec) = (shared.clone(), spec.clone());
        tokio::spawn(async move {
            let Some(_slot) = slot else {
                return refuse_busy(stream, peer).await;
            };
            let conn = match (spec.tls, shared.tls.get()) {
                // Port 465 style (RFC 8314): TLS from the first byte.
                (TlsMode::Implicit, Some(cfg)) => match conn::implicit_tls(stream, cfg, peer).await
                {
                    Some(c) => c,
                    None => return,
                },
                (TlsMode::Implicit, None) => return,
                _ => Conn::Plain(stream),
            };
            Session::new(conn, shared, spec, peer, task_signal)
                .run()
                .await
        });
    })
    .await
}

async fn refuse_busy(mut stream: tokio::net::TcpStream, peer: SocketAddr) {
    tracing::info!(client = %format!("[{}]", peer.ip()), stage = %"connect", code = 421, reason = "too many connections", "rejected");
    let _ = stream
        .write_all(b"421 4.7.0 Error: too many connections; try again later\r\n")
        .await;
    let _ = stream.shutdown().await;
}
