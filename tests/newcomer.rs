//! What a new administrator trips over, tried as a newcomer would: the CLI
//! run from another directory, relative paths in a configuration file,
//! every configuration error at once, and refused reloads in the log.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{TestServer, petrel_bin, run_cmd};

fn petrel_in(dir: &std::path::Path) -> Command {
    let mut cmd = Command::new(petrel_bin());
    cmd.current_dir(dir).env_remove("PETREL_CONFIG");
    cmd
}

#[test]
fn sendmail_with_no_configuration_and_no_daemon_strands_nothing() {
    // As from cron in a directory with no configuration: the built-in
    // defaults name a spool no daemon serves. sendmail must fail loudly
    // (EX_CONFIG) and create nothing, not queue into a new ./spool.
    let cwd = tempfile::tempdir().expect("tempdir");
    let mut cmd = petrel_in(cwd.path());
    cmd.args(["sendmail", "bob@example.test"]);
    let out = run_cmd(cmd, Some(b"Subject: cron\n\nstranded?\n"));
    assert_eq!(out.status.code(), Some(78), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("PETREL_CONFIG"), "tells what to do: {err}");
    let left: Vec<_> = std::fs::read_dir(cwd.path())
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert!(left.is_empty(), "created {left:?}");
}

#[test]
fn relative_paths_follow_the_file_and_the_cli_finds_its_daemon_from_anywhere() {
    // A configuration with a relative spool, started from its own
    // directory; the CLI run from elsewhere with PETREL_CONFIG finds the
    // same spool, so the same daemon.
    let dir = std::sync::Arc::new(tempfile::tempdir().expect("tempdir"));
    let cfg = common::base_config(
        std::path::Path::new("spool-relative"),
        common::standard_dns(),
        25,
        true,
        false,
    );
    let server = TestServer::start_in(dir.clone(), &cfg);
    assert!(
        server.wait_log(&["configuration loaded"], Duration::from_secs(5)),
        "serve logs the file it loaded: {}",
        server.log()
    );
    assert!(dir.path().join("spool-relative").is_dir());
    let elsewhere = tempfile::tempdir().expect("tempdir");
    let mut cmd = petrel_in(elsewhere.path());
    cmd.env("PETREL_CONFIG", &server.config_path)
        .args(["status", "--json"]);
    let out = run_cmd(cmd, None);
    assert!(out.status.success(), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["daemon"], serde_json::json!(true), "{v}");
    let mut cmd = petrel_in(elsewhere.path());
    cmd.env("PETREL_CONFIG", &server.config_path)
        .args(["sendmail", "bob@example.test"]);
    let out = run_cmd(cmd, Some(b"Subject: from elsewhere\n\nhi\n"));
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        server.wait_mailbox("bob", 1, Duration::from_secs(10)).len(),
        1
    );
    assert!(
        std::fs::read_dir(elsewhere.path())
            .expect("dir")
            .next()
            .is_none(),
        "nothing created in the working directory"
    );
}

#[test]
fn serve_warns_about_the_sample_users() {
    // The shipped configuration's users, on test ports.
    let shipped = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/petrel.toml"),
    )
    .expect("shipped config");
    let hash = shipped
        .lines()
        .find_map(|l| l.trim().strip_prefix("password = "))
        .expect("a sample password hash")
        .to_string();
    let dir = std::sync::Arc::new(tempfile::tempdir().expect("tempdir"));
    let cfg = common::base_config(
        &dir.path().join("spool"),
        common::standard_dns(),
        25,
        true,
        false,
    )
    .replace(
        "name = \"alice\"\n",
        &format!("name = \"alice\"\npassword = {hash}\n"),
    );
    let server = TestServer::start_in(dir, &cfg);
    assert!(
        server.wait_log(&["WARN", "SAMPLE USERS"], Duration::from_secs(5)),
        "{}",
        server.log()
    );
}

#[test]
fn check_config_reports_every_error_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = format!(
        "{}\n[smtp.inbound]\nmax_recipients = \"many\"\nno_such_key = 1\n[pop3]\ncolour = \"blue\"\n",
        common::base_config(&dir.path().join("spool"), common::standard_dns(), 25, false, false)
    )
    .replace("[server]\n", "[server]\nhostnme = \"typo\"\n");
    let path = dir.path().join("petrel.toml");
    std::fs::write(&path, cfg).expect("write");
    let out = common::cli_with(&path, &["check-config"], None);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for key in [
        "server.hostnme",
        "smtp.inbound.no_such_key",
        "pop3.colour",
        "smtp.inbound.max_recipients",
    ] {
        assert!(err.contains(key), "{key} missing from: {err}");
    }
}

#[test]
fn a_refused_reload_is_answered_and_logged_by_the_daemon() {
    let server = TestServer::start("");
    let good = std::fs::read_to_string(&server.config_path).expect("cfg");
    std::fs::write(
        &server.config_path,
        good.replace("[smtp.inbound]\n", "[smtp.inbound]\nmax_recipients = -3\n"),
    )
    .expect("write");
    let out = server.cli(&["reload"]);
    assert!(!out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("smtp.inbound.max_recipients"),
        "{out:?}"
    );
    assert!(
        server.wait_log(&["reload refused"], Duration::from_secs(5)),
        "{}",
        server.log()
    );
    assert!(
        server.log().contains("smtp.inbound.max_recipients"),
        "the log names the key: {}",
        server.log()
    );
}
