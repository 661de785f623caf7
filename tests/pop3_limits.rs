//! POP3 connection limits (`pop3.max_connections`,
//! `pop3.max_connections_per_client`) and SHA-512-crypt (`$6$`) password
//! hashes, against the real daemon.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Smtp, TestServer, base_config, free_port, queued_id, standard_dns};

const WAIT: Duration = Duration::from_secs(15);

/// `openssl passwd -6 -salt saltsalt secret` (glibc's crypt(3) format).
const SHA512_SECRET: &str = "$6$saltsalt$TVLlQcbpFVof5W3Yz4DTP6gRstiNuHwwTt6GLc1E5n0U0aDehy0S5knV8wiOQSpT0Y77vwPZN.Pq.H91p5hVO1";

fn config(dir: &std::path::Path, pop3: &str, alice_hash: &str) -> String {
    let base = base_config(&dir.join("spool"), standard_dns(), free_port(), true, true).replace(
        "addresses = [\"alice@example.test\", \"a.smith@example.org\"]",
        &format!(
            "password = \"{alice_hash}\"\naddresses = [\"alice@example.test\", \"a.smith@example.org\"]"
        ),
    );
    format!(
        "{base}\n[[listeners]]\nname = \"pop3\"\nprotocol = \"pop3\"\nbind = \"127.0.0.1:0\"\n\n\
         [pop3]\nallow_plaintext_auth = true\n{pop3}\n"
    )
}

/// A POP3 connection from `source`; `first` is the server's first line.
struct Pop {
    r: BufReader<TcpStream>,
    w: TcpStream,
    first: String,
}

impl Pop {
    fn connect_from(addr: SocketAddr, source: IpAddr) -> Pop {
        let sock = socket_from(addr, source);
        sock.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        let mut p = Pop {
            r: BufReader::new(sock.try_clone().expect("clone")),
            w: sock,
            first: String::new(),
        };
        p.first = p.line();
        p
    }
    fn line(&mut self) -> String {
        let mut l = String::new();
        let _ = self.r.read_line(&mut l);
        l
    }
    fn cmd(&mut self, c: &str) -> String {
        self.w
            .write_all(format!("{c}\r\n").as_bytes())
            .expect("write");
        self.line()
    }
    fn closed(&mut self) -> bool {
        self.line().is_empty()
    }
}

fn socket_from(addr: SocketAddr, source: IpAddr) -> TcpStream {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let s = rt.block_on(async {
        let sock = tokio::net::TcpSocket::new_v4().expect("socket");
        sock.bind(SocketAddr::new(source, 0)).expect("bind source");
        sock.connect(addr).await.expect("connect")
    });
    let s = s.into_std().expect("std");
    s.set_nonblocking(false).expect("blocking");
    s
}

fn client(n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, n))
}

#[test]
fn pop3_sessions_are_limited_per_client_and_in_total() {
    let dir = Arc::new(tempfile::tempdir().expect("tempdir"));
    let cfg = config(
        dir.path(),
        "max_connections = 3\nmax_connections_per_client = 2\n",
        SHA512_SECRET,
    );
    let server = TestServer::start_in(dir, &cfg);
    let addr = server.addr("pop3");

    let mut a1 = Pop::connect_from(addr, client(21));
    let a2 = Pop::connect_from(addr, client(21));
    assert!(a1.first.starts_with("+OK") && a2.first.starts_with("+OK"));
    let mut a3 = Pop::connect_from(addr, client(21));
    assert!(
        a3.first.starts_with("-ERR [SYS/TEMP]"),
        "third from one client: {:?}",
        a3.first
    );
    assert!(a3.closed());
    assert!(server.wait_log(&["rejected", "pop3", "too many connections"], WAIT));

    // Another client still gets in, up to the total of 3.
    let b1 = Pop::connect_from(addr, client(22));
    assert!(b1.first.starts_with("+OK"), "{:?}", b1.first);
    let mut c1 = Pop::connect_from(addr, client(23));
    assert!(
        c1.first.starts_with("-ERR [SYS/TEMP]"),
        "fourth in total: {:?}",
        c1.first
    );
    assert!(c1.closed());

    // A session that ends gives its place back.
    assert!(a1.cmd("QUIT").starts_with("+OK"));
    assert!(a1.closed());
    let deadline = Instant::now() + WAIT;
    loop {
        let p = Pop::connect_from(addr, client(21));
        if p.first.starts_with("+OK") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "place not given back: {:?}",
            p.first
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    drop((a2, b1));
}

#[test]
fn sha512_crypt_hashes_log_in_over_pop3_and_smtp() {
    let dir = Arc::new(tempfile::tempdir().expect("tempdir"));
    let cfg = config(dir.path(), "", SHA512_SECRET).replace(
        "[[listeners]]\nname = \"pop3\"",
        "[[listeners]]\nname = \"sub\"\nprotocol = \"submission\"\nbind = \"127.0.0.1:0\"\nauth = \"required\"\n\n[[listeners]]\nname = \"pop3\"",
    ) + "[smtp.inbound]\nallow_plaintext_auth = true\n";
    let server = TestServer::start_in(dir, &cfg);
    let mut s = Smtp::ready(server.mx());
    queued_id(&s.send_mail(
        "x@partner.test",
        &["alice@example.test"],
        "Subject: for alice\r\n\r\nhi\r\n",
    ));
    assert_eq!(server.wait_mailbox("alice", 1, WAIT).len(), 1);

    let mut p = Pop::connect_from(server.addr("pop3"), client(1));
    assert!(p.cmd("USER alice").starts_with("+OK"));
    let r = p.cmd("PASS secret");
    assert!(r.starts_with("+OK 1 message"), "{r:?}");
    assert!(p.cmd("QUIT").starts_with("+OK"));

    let mut p = Pop::connect_from(server.addr("pop3"), client(1));
    assert!(p.cmd("USER alice").starts_with("+OK"));
    assert!(p.cmd("PASS Secret").starts_with("-ERR"));

    // SMTP AUTH PLAIN with the same hash (base64 of "\0alice\0secret").
    let mut s = Smtp::ready(server.addr("sub"));
    let r = s.cmd("AUTH PLAIN AGFsaWNlAHNlY3JldA==");
    assert_eq!(r.0, 235, "{r:?}");
}

#[test]
fn check_config_refuses_a_malformed_sha512_crypt_hash_naming_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("petrel.toml");
    std::fs::write(&path, config(dir.path(), "", "$6$saltsalt$not-a-digest")).expect("write");
    let out = Command::new(common::petrel_bin())
        .arg("-c")
        .arg(&path)
        .arg("check-config")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("users[0].password"), "{err}");
    assert!(err.contains("SHA-512-crypt"), "{err}");

    std::fs::write(&path, config(dir.path(), "", SHA512_SECRET)).expect("write");
    let out = Command::new(common::petrel_bin())
        .arg("-c")
        .arg(&path)
        .arg("check-config")
        .output()
        .expect("run");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
