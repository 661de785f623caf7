//! A private PostgreSQL server (Debian's `postgresql` package) for tests:
//! `initdb` into a temporary directory, the server on a loopback port as
//! an unprivileged user (`postgres` when the tests run as root), stopped
//! on drop. Without PostgreSQL the caller is told to skip, unless CI is
//! set, where that is a failure.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A running PostgreSQL server.
pub struct PgServer {
    dir: tempfile::TempDir,
    bin: PathBuf,
    /// Its port on 127.0.0.1.
    pub port: u16,
}

/// The directory of PostgreSQL's programs, if installed.
fn pg_bin() -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|p| p.join("initdb").exists())
        .collect();
    found.sort();
    found.pop()
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

impl PgServer {
    /// Starts a fresh server; `None` when PostgreSQL is not installed
    /// (outside CI).
    pub fn start() -> Option<PgServer> {
        let Some(bin) = pg_bin() else {
            assert!(
                std::env::var_os("CI").is_none(),
                "PostgreSQL is not installed, and CI is set: .ci/run must install it"
            );
            eprintln!(
                "SKIPPED: PostgreSQL is not installed (apt-get install postgresql); the CI run does not skip this"
            );
            return None;
        };
        let dir = tempfile::tempdir().expect("tempdir");
        if is_root() {
            // initdb refuses root: the data belongs to `postgres`.
            let ok = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .expect("chown")
                .success();
            assert!(ok, "chown the data directory to postgres");
        }
        let mut server = PgServer {
            dir,
            bin,
            port: super::free_port(),
        };
        let data = server.data();
        let out = server.run(
            "initdb",
            &[
                "-D",
                data.to_str().expect("path"),
                "-U",
                "petrel",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-instructions",
            ],
        );
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // The port was free a moment ago; another test may take it first.
        for _ in 0..5 {
            match server.try_start() {
                Ok(()) => return Some(server),
                Err(log) if log.contains("Address already in use") => {
                    server.port = super::free_port();
                }
                Err(log) => panic!("pg_ctl start: {log}"),
            }
        }
        panic!("PostgreSQL found no free port in five tries")
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Runs one of PostgreSQL's programs as the unprivileged user.
    fn run(&self, program: &str, args: &[&str]) -> Output {
        let exe = self.bin.join(program);
        let mut cmd = if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(exe);
            c
        } else {
            Command::new(exe)
        };
        cmd.args(args)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .output()
            .expect("run a PostgreSQL program")
    }

    /// Starts the server again (after `stop_server`) on its port.
    pub fn start_server(&self) {
        if let Err(log) = self.try_start() {
            panic!("pg_ctl start: {log}");
        }
    }

    /// Starts the server and waits until it answers; the error is the
    /// server's log.
    fn try_start(&self) -> Result<(), String> {
        let data = self.data();
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=200",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("server.log");
        let out = self.run(
            "pg_ctl",
            &[
                "-D",
                data.to_str().expect("path"),
                "-o",
                &opts,
                "-l",
                log.to_str().expect("path"),
                "-w",
                "-t",
                "60",
                "start",
            ],
        );
        if !out.status.success() {
            return Err(format!(
                "{} {}",
                String::from_utf8_lossy(&out.stderr),
                std::fs::read_to_string(&log).unwrap_or_default()
            ));
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "PostgreSQL did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// Stops the server (`immediate`: as a crash would, no checkpoint).
    pub fn stop_server(&self, immediate: bool) {
        let data = self.data();
        let _ = self.run(
            "pg_ctl",
            &[
                "-D",
                data.to_str().expect("path"),
                "-m",
                if immediate { "immediate" } else { "fast" },
                "-w",
                "stop",
            ],
        );
    }

    /// Makes a database and gives its URL.
    pub fn database(&self, name: &str) -> String {
        let out = self.psql("postgres", &format!("CREATE DATABASE {name}"));
        assert!(
            out.status.success(),
            "CREATE DATABASE {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.url(name)
    }

    /// The URL of a database on this server.
    pub fn url(&self, name: &str) -> String {
        format!("postgres://petrel@127.0.0.1:{}/{name}", self.port)
    }

    /// Runs SQL with psql; stdout holds the unaligned result.
    pub fn psql(&self, db: &str, sql: &str) -> Output {
        let port = self.port.to_string();
        self.run(
            "psql",
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-U",
                "petrel",
                "-d",
                db,
                "-At",
                "-c",
                sql,
            ],
        )
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// Its directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.stop_server(true);
    }
}
