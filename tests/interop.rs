//! Interop with real clients outside Rust: Python's smtplib and swaks
//! (tests/interop/smtp_interop.py) against the real daemon, on the MX
//! listener and on a submission listener with STARTTLS and AUTH.

mod common;

use std::process::Command;
use std::sync::Arc;

use common::{TestServer, base_config, free_port, petrel_bin, run_cmd, standard_dns};

const PASSWORD: &str = "interop secret";

#[test]
fn python_smtplib_and_swaks_interop() {
    let dir = Arc::new(tempfile::tempdir().expect("tempdir"));
    let hash = petrel::auth::hash_password(PASSWORD).expect("hash");
    let base = base_config(
        &dir.path().join("spool"),
        standard_dns(),
        free_port(),
        true,
        true,
    )
    .replace(
        "addresses = [\"alice@example.test\", \"a.smith@example.org\"]",
        &format!(
            "password = \"{hash}\"\naddresses = [\"alice@example.test\", \"a.smith@example.org\"]"
        ),
    );
    let cfg = format!(
        "{base}\n[[listeners]]\nname = \"submission\"\nprotocol = \"submission\"\nbind = \"127.0.0.1:0\"\ntls = \"starttls\"\nauth = \"required\"\n\n[smtp.inbound]\nrelay_from = []\n"
    );
    let server = TestServer::start_in(dir, &cfg);
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/smtp_interop.py");
    let mut cmd = Command::new("python3");
    cmd.arg(script)
        .arg("--port")
        .arg(server.mx().port().to_string())
        .arg("--submission-port")
        .arg(server.addr("submission").port().to_string())
        .arg("--password")
        .arg(PASSWORD)
        .arg("--petrel")
        .arg(petrel_bin())
        .arg("--config")
        .arg(&server.config_path);
    let out = run_cmd(cmd, None);
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "interop failed:\n{stdout}");
    assert!(stdout.contains("9 passed, 0 failed"), "{stdout}");
}
