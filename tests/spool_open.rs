//! Opening a new spool makes every file sled needs durable: the data file
//! and directories (as before) and sled's `conf`, which sled writes without
//! syncing it (after a power loss on a new spool it came back empty),
//! observed with strace.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{TestServer, base_config, free_port, standard_dns};

#[test]
fn a_new_spool_fsyncs_sleds_conf_and_its_directory_at_open() {
    if !common::strace_available() {
        return;
    }
    let dir = Arc::new(tempfile::tempdir().expect("tempdir"));
    let trace = dir.path().join("strace.txt");
    let spool = dir.path().join("spool");
    let cfg = base_config(&spool, standard_dns(), free_port(), true, true);
    let trace_arg = trace.to_str().expect("utf-8").to_string();
    let mut server = TestServer::start_wrapped(
        dir.clone(),
        &cfg,
        &["strace", "-f", "-y", "-e", "trace=fsync", "-o", &trace_arg],
    );
    // Ready: the spool was opened before the listeners were.
    let text = std::fs::read_to_string(&trace).expect("trace");
    let synced = |path: &std::path::Path| {
        let name = format!("<{}>)", path.display());
        text.lines()
            .any(|l| l.contains("fsync(") && l.contains(&name) && l.ends_with("= 0"))
    };
    let queue = spool.join("queue");
    assert!(
        synced(&queue.join("conf")),
        "queue/conf not fsynced:\n{text}"
    );
    assert!(synced(&queue), "queue/ not fsynced:\n{text}");
    assert!(synced(&queue.join("db")), "queue/db not fsynced:\n{text}");
    // Stop petrel itself (strace's child); strace exits with it.
    server.signal_wrapped("-TERM");
    assert_eq!(server.wait_exit(Duration::from_secs(60)), Some(0));
}
