//! A network connection that may be plain or TLS, server or client side,
//! and can change from plain to TLS in place (STARTTLS, STLS). `Closed` only
//! stands in while the socket is moved into a handshake.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

use crate::shutdown::Signal;

mod deflate;
pub use deflate::Deflate;

/// Time allowed for a TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// Accepts connections until the stop begins, handing each (with
/// TCP_NODELAY set) to `handle`. Accept errors (EMFILE and friends) back off
/// briefly instead of spinning.
pub async fn accept_until(
    listener: TcpListener,
    name: &str,
    mut signal: Signal,
    mut handle: impl FnMut(TcpStream, SocketAddr, Signal),
) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = signal.triggered() => break,
        };
        match accepted {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                handle(stream, peer, signal.clone());
            }
            Err(e) => {
                tracing::warn!(listener = %name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// The TLS handshake of an implicit-TLS listener (RFC 8314); `None` when it
/// fails or times out (logged).
pub async fn implicit_tls(
    stream: TcpStream,
    config: Arc<rustls::ServerConfig>,
    peer: SocketAddr,
) -> Option<Conn> {
    accept_tls(stream, config, &format!("[{}]", peer.ip())).await
}

/// The server side of a TLS handshake on an accepted socket, for implicit
/// TLS and for the upgrade in place of every protocol (SMTP STARTTLS,
/// POP3 STLS, IMAP STARTTLS); `None` when it fails or times out (logged
/// with `client`). The caller builds a new reader on the result, so input
/// the client pipelined before the handshake is dropped, never read as if
/// it came inside TLS (CVE-2011-0411).
pub async fn accept_tls(
    stream: TcpStream,
    config: Arc<rustls::ServerConfig>,
    client: &str,
) -> Option<Conn> {
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => Some(Conn::ServerTls(Box::new(tls))),
        Ok(Err(e)) => {
            tracing::info!(client = %client, error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::info!(client = %client, "TLS handshake timed out");
            None
        }
    }
}

/// A plain or TLS TCP connection.
pub enum Conn {
    /// No TLS.
    Plain(TcpStream),
    /// TLS, we are the server.
    ServerTls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    /// TLS, we are the client.
    ClientTls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    /// Compressed (IMAP COMPRESS=DEFLATE) over a plain or TLS connection.
    Deflate(Box<Deflate>),
    /// Moved out for a handshake.
    Closed,
}

impl Conn {
    /// Whether the connection is encrypted.
    pub fn is_tls(&self) -> bool {
        match self {
            Conn::ServerTls(_) | Conn::ClientTls(_) => true,
            Conn::Deflate(d) => d.inner().is_tls(),
            _ => false,
        }
    }

    /// Whether traffic is compressed.
    pub fn is_compressed(&self) -> bool {
        matches!(self, Conn::Deflate(_))
    }

    /// Starts compressing in both directions (RFC 4978), from the next
    /// octet read or written.
    pub fn start_deflate(&mut self) {
        let inner = std::mem::replace(self, Conn::Closed);
        *self = Conn::Deflate(Box::new(Deflate::new(inner)));
    }

    /// Takes the plain socket out for a TLS handshake.
    pub fn take_plain(&mut self) -> Option<TcpStream> {
        match std::mem::replace(self, Conn::Closed) {
            Conn::Plain(s) => Some(s),
            other => {
                *self = other;
                None
            }
        }
    }

    /// The negotiated TLS version and cipher suite, for logs and
    /// `Received:` (RFC 8314 §4.3 asks for them).
    pub fn tls_summary(&self) -> Option<String> {
        let (v, c) = match self {
            Conn::ServerTls(s) => (
                s.get_ref().1.protocol_version(),
                s.get_ref().1.negotiated_cipher_suite(),
            ),
            Conn::ClientTls(s) => (
                s.get_ref().1.protocol_version(),
                s.get_ref().1.negotiated_cipher_suite(),
            ),
            Conn::Deflate(d) => return d.inner().tls_summary(),
            _ => return None,
        };
        Some(format!(
            "{} {}",
            v.map(|v| format!("{v:?}")).unwrap_or_default(),
            c.map(|c| format!("{:?}", c.suite())).unwrap_or_default()
        ))
    }
}

fn closed() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::NotConnected, "connection closed")
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Conn::ServerTls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Conn::ClientTls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Conn::Deflate(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Conn::Closed => Poll::Ready(Err(closed())),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Conn::ServerTls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Conn::ClientTls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Conn::Deflate(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Conn::Closed => Poll::Ready(Err(closed())),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_flush(cx),
            Conn::ServerTls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Conn::ClientTls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Conn::Deflate(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Conn::Closed => Poll::Ready(Err(closed())),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Conn::ServerTls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Conn::ClientTls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Conn::Deflate(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Conn::Closed => Poll::Ready(Ok(())),
        }
    }
}
