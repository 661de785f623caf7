//! A real SMTP peer for tests: accepts, defers or refuses per recipient
//! (by local part: `defer…` → 450, `reject…` → 550, else 250), optionally
//! offers STARTTLS (rcgen certificate) and DSN, and records what it got.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One message as the sink received it.
#[derive(Debug, Clone)]
pub struct Received {
    /// MAIL FROM line.
    pub mail: String,
    /// RCPT TO lines that were accepted (addresses).
    pub rcpts: Vec<String>,
    /// All RCPT TO lines as sent.
    pub rcpt_lines: Vec<String>,
    /// Content, dot-unstuffed.
    pub data: Vec<u8>,
    /// Whether the session was under TLS.
    pub tls: bool,
    /// The client's address (petrel's source address).
    pub peer: Option<SocketAddr>,
}

/// How the sink behaves.
#[derive(Clone, Default)]
pub struct SinkOptions {
    /// Offer STARTTLS.
    pub starttls: bool,
    /// Offer DSN.
    pub dsn: bool,
    /// Greeting code other than 220 (e.g. 421 for a busy host).
    pub greeting: Option<u16>,
    /// Offer neither 8BITMIME nor SMTPUTF8.
    pub seven_bit: bool,
    /// Wait this long before answering the end of DATA (a slow peer).
    pub data_delay: Option<std::time::Duration>,
}

/// A running sink.
pub struct Sink {
    /// Where it listens.
    pub addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
    connections: Arc<Mutex<usize>>,
    /// Connections open now, and the most open at once.
    open: Arc<Mutex<(usize, usize)>>,
}

trait Stream: Read + Write + Send {}
impl<T: Read + Write + Send> Stream for T {}

impl Sink {
    /// Starts a sink on `bind` (e.g. "127.0.0.2:0").
    pub fn start(bind: &str, opts: SinkOptions) -> Sink {
        let listener = TcpListener::bind(bind).expect("bind sink");
        let addr = listener.local_addr().expect("addr");
        let received = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(Mutex::new(0));
        let tls = opts.starttls.then(|| {
            let cert =
                rcgen::generate_simple_self_signed(vec!["mx.tls.test".to_string()]).expect("cert");
            let key = rustls::pki_types::PrivateKeyDer::try_from(cert.signing_key.serialize_der())
                .expect("key");
            let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(vec![cert.cert.der().clone()], key)
            .expect("server config");
            Arc::new(cfg)
        });
        let open = Arc::new(Mutex::new((0usize, 0usize)));
        {
            let received = received.clone();
            let connections = connections.clone();
            let open = open.clone();
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    let Ok(stream) = stream else { continue };
                    *connections.lock().expect("lock") += 1;
                    {
                        let mut o = open.lock().expect("lock");
                        o.0 += 1;
                        o.1 = o.1.max(o.0);
                    }
                    let (received, opts, tls, open) =
                        (received.clone(), opts.clone(), tls.clone(), open.clone());
                    std::thread::spawn(move || {
                        let _ = serve(stream, received, opts, tls);
                        open.lock().expect("lock").0 -= 1;
                    });
                }
            });
        }
        Sink {
            addr,
            received,
            connections,
            open,
        }
    }

    /// Messages received so far.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().expect("lock").clone()
    }

    /// The most connections that were open at once.
    pub fn peak_open(&self) -> usize {
        self.open.lock().expect("lock").1
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        *self.connections.lock().expect("lock")
    }

    /// Waits until `n` messages arrived.
    pub fn wait(&self, n: usize, limit: Duration) -> Vec<Received> {
        let deadline = std::time::Instant::now() + limit;
        loop {
            let r = self.received();
            if r.len() >= n || std::time::Instant::now() > deadline {
                return r;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn serve(
    tcp: TcpStream,
    received: Arc<Mutex<Vec<Received>>>,
    opts: SinkOptions,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> std::io::Result<()> {
    tcp.set_read_timeout(Some(Duration::from_secs(30)))?;
    let peer = tcp.peer_addr().ok();
    let mut stream: Box<dyn Stream> = Box::new(tcp.try_clone()?);
    let mut under_tls = false;
    if let Some(code) = opts.greeting {
        stream.write_all(format!("{code} 4.3.2 busy, try later\r\n").as_bytes())?;
        return Ok(());
    }
    stream.write_all(b"220 sink.test ESMTP test sink\r\n")?;
    let mut reader = BufReader::new(stream);
    let mut mail = String::new();
    let mut rcpts = Vec::new();
    let mut rcpt_lines = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let cmd = line.trim_end().to_string();
        let upper = cmd.to_ascii_uppercase();
        let w = reader.get_mut();
        if upper.starts_with("EHLO") {
            let mut ext = vec!["sink.test", "PIPELINING", "SIZE 10000000"];
            if !opts.seven_bit {
                ext.push("8BITMIME");
                ext.push("SMTPUTF8");
            }
            if tls.is_some() && !under_tls {
                ext.push("STARTTLS");
            }
            if opts.dsn {
                ext.push("DSN");
            }
            let n = ext.len();
            for (i, e) in ext.iter().enumerate() {
                w.write_all(
                    format!("250{}{e}\r\n", if i + 1 == n { ' ' } else { '-' }).as_bytes(),
                )?;
            }
        } else if upper.starts_with("HELO") {
            w.write_all(b"250 sink.test\r\n")?;
        } else if upper == "STARTTLS" && tls.is_some() && !under_tls {
            w.write_all(b"220 2.0.0 go ahead\r\n")?;
            let conn = rustls::ServerConnection::new(tls.clone().expect("tls"))
                .map_err(std::io::Error::other)?;
            let plain = tcp.try_clone()?;
            reader = BufReader::new(Box::new(rustls::StreamOwned::new(conn, plain)));
            under_tls = true;
        } else if upper.starts_with("MAIL FROM:") {
            mail = cmd.clone();
            rcpts.clear();
            rcpt_lines.clear();
            w.write_all(b"250 2.1.0 ok\r\n")?;
        } else if upper.starts_with("RCPT TO:") {
            rcpt_lines.push(cmd.clone());
            let addr = cmd[8..]
                .split('>')
                .next()
                .unwrap_or("")
                .trim_start_matches('<')
                .to_string();
            let local = addr.split('@').next().unwrap_or("").to_ascii_lowercase();
            if local.starts_with("defer") {
                w.write_all(b"450 4.2.0 mailbox busy, try later\r\n")?;
            } else if local.starts_with("reject") {
                w.write_all(b"550 5.1.1 no such user here\r\n")?;
            } else {
                rcpts.push(addr);
                w.write_all(b"250 2.1.5 ok\r\n")?;
            }
        } else if upper == "DATA" {
            if rcpts.is_empty() {
                w.write_all(b"554 5.5.1 no valid recipients\r\n")?;
                continue;
            }
            w.write_all(b"354 go on\r\n")?;
            let mut data = Vec::new();
            loop {
                let mut l = Vec::new();
                if reader.read_until(b'\n', &mut l)? == 0 {
                    return Ok(());
                }
                if l == b".\r\n" {
                    break;
                }
                let l = if l.starts_with(b"..") {
                    &l[1..]
                } else {
                    &l[..]
                };
                data.extend_from_slice(l);
            }
            if let Some(d) = opts.data_delay {
                std::thread::sleep(d);
            }
            received.lock().expect("lock").push(Received {
                mail: mail.clone(),
                rcpts: rcpts.clone(),
                rcpt_lines: rcpt_lines.clone(),
                data,
                tls: under_tls,
                peer,
            });
            reader
                .get_mut()
                .write_all(b"250 2.0.0 queued at the sink\r\n")?;
        } else if upper == "RSET" {
            mail.clear();
            rcpts.clear();
            w.write_all(b"250 2.0.0 ok\r\n")?;
        } else if upper == "QUIT" {
            w.write_all(b"221 2.0.0 bye\r\n")?;
            return Ok(());
        } else if upper == "NOOP" {
            w.write_all(b"250 2.0.0 ok\r\n")?;
        } else {
            w.write_all(b"500 5.5.2 what?\r\n")?;
        }
        reader.get_mut().flush()?;
    }
}
