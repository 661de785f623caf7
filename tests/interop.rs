//! Interop with real clients outside Rust: Python's smtplib
//! (tests/interop/smtp_interop.py) against the real daemon.

mod common;

use std::process::Command;

use common::{TestServer, petrel_bin, run_cmd};

#[test]
fn python_smtplib_interop() {
    let server = TestServer::start("relay_from = []");
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/smtp_interop.py");
    let mut cmd = Command::new("python3");
    cmd.arg(script)
        .arg("--port")
        .arg(server.mx().port().to_string())
        .arg("--petrel")
        .arg(petrel_bin())
        .arg("--config")
        .arg(&server.config_path);
    let out = run_cmd(cmd, None);
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "smtplib interop failed:\n{stdout}");
    assert!(stdout.contains("7 passed, 0 failed"), "{stdout}");
}
