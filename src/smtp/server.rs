//! SMTP listeners: bind, accept, enforce connection limits, and run one
//! session task per connection on the multi-threaded runtime.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

use super::SmtpShared;
use super::session::Session;
use crate::config::{Listener, TlsMode, canonical_ip};
use crate::conn::{self, Conn};
use crate::shutdown::Signal;

/// Counts open sessions in total and per client address. A `Slot` holds
/// one count and gives it back on drop.
#[derive(Clone, Default)]
pub struct ConnectionCount {
    inner: Arc<Mutex<(usize, HashMap<IpAddr, usize>)>>,
}

/// One open session's place in the count; released on drop.
pub struct Slot {
    count: ConnectionCount,
    ip: IpAddr,
}

impl ConnectionCount {
    /// Takes a slot for `ip` unless a limit is reached.
    pub fn try_take(&self, ip: IpAddr, total: usize, per_client: usize) -> Option<Slot> {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let here = g.1.get(&ip).copied().unwrap_or(0);
        if g.0 >= total || here >= per_client {
            return None;
        }
        g.0 += 1;
        g.1.insert(ip, here + 1);
        Some(Slot {
            count: self.clone(),
            ip,
        })
    }

    /// Open sessions in total.
    pub fn total(&self) -> usize {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).0
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut g = self.count.inner.lock().unwrap_or_else(|e| e.into_inner());
        g.0 = g.0.saturating_sub(1);
        if let Some(n) = g.1.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                g.1.remove(&self.ip);
            }
        }
    }
}

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
