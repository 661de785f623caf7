//! Interop with real clients outside Rust: Python's smtplib and swaks
//! (tests/interop/smtp_interop.py) against the real daemon, on the MX
//! listener and on a submission listener with STARTTLS and AUTH.

mod common;

use std::sync::Arc;

use common::{TestServer, base_config, free_port, standard_dns};

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
    let args = [
        "--port".to_string(),
        server.mx().port().to_string(),
        "--submission-port".to_string(),
        server.addr("submission").port().to_string(),
        "--password".to_string(),
        PASSWORD.to_string(),
    ];
    common::run_python_interop("smtp_interop.py", &args, &server, "9 passed, 0 failed");
}
