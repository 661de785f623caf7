//! A private Postfix instance (Debian's package) as a receiving peer on
//! loopback, started by tests/interop/postfix_peer.sh with extra main.cf
//! lines; mail for postfix.test lands in its maildir. Without Postfix the
//! caller is told to skip, unless CI is set, where that is a failure.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running Postfix peer.
pub struct PostfixPeer {
    child: Child,
    dir: tempfile::TempDir,
    /// Its SMTP port on 127.0.0.1.
    pub port: u16,
}

impl PostfixPeer {
    /// Starts Postfix with `extra` appended to its main.cf; `None` when
    /// Postfix is not installed (outside CI).
    pub fn start(extra: &str) -> Option<PostfixPeer> {
        if !std::path::Path::new("/usr/sbin/postfix").exists() {
            assert!(
                std::env::var_os("CI").is_none(),
                "Postfix is not installed, and CI is set: .ci/run must install it"
            );
            eprintln!(
                "SKIPPED: Postfix is not installed (apt-get install postfix); the CI run does not skip this"
            );
            return None;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let port = super::free_port();
        let script =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/postfix_peer.sh");
        let child = Command::new("bash")
            .arg(script)
            .arg(dir.path().join("pf"))
            .arg(port.to_string())
            .env("POSTFIX_PEER_EXTRA", extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start postfix");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "Postfix did not start listening");
            std::thread::sleep(Duration::from_millis(100));
        }
        Some(PostfixPeer { child, dir, port })
    }

    /// The messages in its maildir.
    pub fn maildir_files(&self) -> Vec<Vec<u8>> {
        let new = self.dir.path().join("pf/mail/box/new");
        std::fs::read_dir(new)
            .map(|d| {
                d.flatten()
                    .filter_map(|e| std::fs::read(e.path()).ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Waits until `n` messages are in its maildir.
    pub fn wait_maildir(&self, n: usize, limit: Duration) -> Vec<Vec<u8>> {
        let deadline = Instant::now() + limit;
        loop {
            let f = self.maildir_files();
            if f.len() >= n || Instant::now() > deadline {
                return f;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Its working directory (configuration, queue, maildir).
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }
}

impl Drop for PostfixPeer {
    fn drop(&mut self) {
        let _ = Command::new("postfix")
            .arg("-c")
            .arg(self.dir.path().join("pf/etc"))
            .arg("stop")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
