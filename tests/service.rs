//! The daemon speaks systemd's notify protocol (the unit's `Type=notify`
//! and `WatchdogSec=`), observed on a datagram socket the test binds as
//! `$NOTIFY_SOCKET`: `READY=1` once the listeners accept connections, the
//! watchdog fed at half its period, `STOPPING=1` at SIGTERM.

mod common;

use std::os::unix::net::UnixDatagram;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Smtp, TestServer, base_config, standard_dns};

fn next(sock: &UnixDatagram) -> String {
    let mut buf = [0u8; 4096];
    let n = sock
        .recv(&mut buf)
        .expect("a notification before the timeout");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[test]
fn ready_watchdog_and_stopping_reach_the_service_manager() {
    let dir = Arc::new(tempfile::tempdir().expect("tempdir"));
    let path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&path).expect("bind");
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let cfg = base_config(&dir.path().join("spool"), standard_dns(), 25, true, false);
    let notify = format!("NOTIFY_SOCKET={}", path.display());
    // A 1 s watchdog: pings every half second.
    let mut server = TestServer::start_wrapped(
        dir.clone(),
        &cfg,
        &["env", &notify, "WATCHDOG_USEC=1000000"],
    );
    let first = next(&sock);
    assert!(first.contains("READY=1"), "{first:?}");
    // Ready means ready: a client is served at once.
    let mut s = Smtp::ready(server.mx());
    assert_eq!(s.cmd("QUIT").0, 221);

    let started = Instant::now();
    let mut pings = 0;
    while pings < 4 {
        if next(&sock).contains("WATCHDOG=1") {
            pings += 1;
        }
    }
    // Four pings at half a second: 1.5 s after the first, give or take.
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1200) && took <= Duration::from_secs(4),
        "4 watchdog pings took {took:?}"
    );

    server.signal(common::libc_sig::TERM);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let m = next(&sock);
        if m.contains("STOPPING=1") {
            break;
        }
        assert!(Instant::now() < deadline, "no STOPPING=1");
    }
    assert_eq!(server.wait_exit(Duration::from_secs(30)), Some(0));
}
