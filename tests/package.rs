//! The Debian package, installed on this machine as an administrator
//! would: `cargo deb` builds it from the test's own binary, `dpkg -i`
//! installs it (the petrel user, its directories, the unit, the
//! configuration), the daemon runs as the package's user without systemd,
//! a message goes in and is read back, and `dpkg --purge` leaves nothing
//! behind. Needs root, dpkg and cargo-deb: CI has them (and fails if they
//! are missing); elsewhere the test says it was skipped.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Smtp, free_port, queued_id, run_cmd};

fn ok(cmd: &mut Command) -> String {
    let out = cmd.output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn available() -> bool {
    let root = std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
    let dpkg = Path::new("/usr/bin/dpkg").exists();
    let cargo_deb = Command::new("cargo")
        .args(["deb", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if root && dpkg && cargo_deb {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI is set but root={root} dpkg={dpkg} cargo-deb={cargo_deb}: .ci/run must provide them"
    );
    eprintln!(
        "SKIPPED: the package test needs root, dpkg and cargo-deb (root={root} dpkg={dpkg} cargo-deb={cargo_deb}); the CI run does not skip this"
    );
    false
}

fn installed() -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", "petrel"])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("installed"))
}

fn user_exists(name: &str) -> bool {
    Command::new("getent")
        .args(["passwd", name])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn the_debian_package_installs_runs_as_its_user_and_purges_clean() {
    if !available() {
        return;
    }
    if installed() {
        ok(Command::new("dpkg").args(["--purge", "petrel"]));
    }
    let work = tempfile::tempdir().expect("tempdir");
    let deb = work.path().join("petrel.deb");
    // The binary under test, not a fresh release build.
    let bin = Path::new(env!("CARGO_BIN_EXE_petrel"));
    let target = bin.parent().and_then(Path::parent).expect("target dir");
    ok(Command::new("cargo")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("CARGO_TARGET_DIR", target)
        .args(["deb", "--no-build", "--profile", "dev", "--fast", "-o"])
        .arg(&deb));
    ok(Command::new("dpkg").arg("-i").arg(&deb));

    // What the package put in place.
    assert!(user_exists("petrel"), "the service user");
    for dir in ["/var/spool/petrel", "/var/lib/petrel"] {
        let m = std::fs::metadata(dir).expect(dir);
        assert!(m.is_dir());
        assert_eq!(m.mode() & 0o777, 0o750, "{dir}");
    }
    let conf = std::fs::metadata("/etc/petrel/petrel.toml").expect("conffile");
    assert_eq!(conf.mode() & 0o777, 0o640);
    ok(Command::new("/usr/bin/petrel").args(["check-config", "-c", "/etc/petrel/petrel.toml"]));
    assert!(Path::new("/usr/lib/systemd/system/petrel.service").exists());
    assert!(Path::new("/usr/lib/petrel/sendmail").exists());
    if Path::new("/usr/bin/systemd-analyze").exists() {
        ok(Command::new("systemd-analyze")
            .args(["verify", "/usr/lib/systemd/system/petrel.service"]));
    } else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must install systemd for systemd-analyze"
        );
    }

    // The installed configuration on free ports and the test's resolver;
    // the spool and store stay where the package made them.
    let (mx, sub, pop) = (free_port(), free_port(), free_port());
    let dns = common::standard_dns();
    let cfg = std::fs::read_to_string("/etc/petrel/petrel.toml")
        .expect("read conffile")
        .replace("127.0.0.1:25\"", &format!("127.0.0.1:{mx}\""))
        .replace("127.0.0.1:587\"", &format!("127.0.0.1:{sub}\""))
        .replace("127.0.0.1:110\"", &format!("127.0.0.1:{pop}\""))
        .replace("nameservers = []", &format!("nameservers = [\"{dns}\"]"))
        .replace("hostname = \"\"", "hostname = \"mail.localhost.test\"");
    let run_dir = work.path().join("run");
    std::fs::create_dir(&run_dir).expect("mkdir");
    let cfg_path = run_dir.join("petrel.toml");
    std::fs::write(&cfg_path, cfg).expect("write");
    for p in [work.path(), run_dir.as_path(), cfg_path.as_path()] {
        ok(Command::new("chmod").arg("a+rX").arg(p));
    }
    // setpriv execs the daemon itself (runuser would stay as its parent and
    // die of the SIGTERM meant for the daemon).
    let log = std::fs::File::create(work.path().join("daemon.log")).expect("log");
    let mut daemon = Command::new("setpriv")
        .args(["--reuid=petrel", "--regid=petrel", "--init-groups", "--"])
        .args(["/usr/bin/petrel", "serve", "-c"])
        .arg(&cfg_path)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start the daemon");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", mx)).is_err() {
        assert!(
            Instant::now() < deadline,
            "the packaged daemon did not listen"
        );
        assert!(daemon.try_wait().expect("wait").is_none(), "it exited");
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut s = Smtp::ready(([127, 0, 0, 1], mx).into());
    queued_id(&s.send_mail(
        "someone@partner.test",
        &["root@localhost"],
        "Subject: packaged\r\n\r\nhello from the package test\r\n",
    ));
    // The sendmail link, as a cron job on the machine would use it.
    let mut cmd = Command::new("runuser");
    cmd.args(["-u", "petrel", "--", "/usr/lib/petrel/sendmail", "-c"])
        .arg(&cfg_path)
        .arg("postmaster@localhost");
    let out = run_cmd(cmd, Some(b"Subject: via sendmail\n\nfrom cron\n"));
    assert!(out.status.success(), "{out:?}");
    let deadline = Instant::now() + Duration::from_secs(20);
    let listing = loop {
        let out = ok(Command::new("runuser")
            .args([
                "-u",
                "petrel",
                "--",
                "/usr/bin/petrel",
                "mailbox",
                "postmaster",
                "--json",
                "-c",
            ])
            .arg(&cfg_path));
        if out.lines().count() >= 2 || Instant::now() > deadline {
            break out;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(listing.lines().count(), 2, "{listing}");
    let spool_owner = std::fs::metadata("/var/spool/petrel/queue")
        .expect("queue")
        .uid();
    let petrel_uid: u32 = ok(Command::new("id").args(["-u", "petrel"]))
        .trim()
        .parse()
        .expect("uid");
    assert_eq!(
        spool_owner, petrel_uid,
        "the spool belongs to the service user"
    );
    ok(Command::new("kill")
        .arg("-TERM")
        .arg(daemon.id().to_string()));
    // The daemon exits 0 after draining.
    let status = daemon.wait().expect("wait");
    assert!(
        status.success(),
        "{status:?}: {}",
        std::fs::read_to_string(work.path().join("daemon.log")).unwrap_or_default()
    );

    ok(Command::new("dpkg").args(["--purge", "petrel"]));
    assert!(!installed());
    for gone in [
        "/usr/bin/petrel",
        "/etc/petrel",
        "/var/spool/petrel",
        "/var/lib/petrel",
        "/usr/lib/petrel",
        "/usr/lib/systemd/system/petrel.service",
        "/usr/share/doc/petrel",
    ] {
        assert!(!Path::new(gone).exists(), "{gone} left behind");
    }
    assert!(!user_exists("petrel"), "the service user left behind");
    for link in ["/usr/sbin/sendmail", "/usr/bin/mailq"] {
        if let Ok(t) = std::fs::read_link(link) {
            assert!(
                !t.starts_with("/usr/lib/petrel"),
                "{link} -> {t:?} left behind"
            );
        }
    }
}
