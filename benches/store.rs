//! Message store space reclamation at size (issue 12): fills an embedded
//! store with 2 GiB of 256 KiB messages (8 writers, each waiting for the
//! group commit as a delivery does), expunges 90 % of them, and measures
//! how long the store takes to shrink under 30 % of its size while a
//! reader keeps reading the remaining messages; then the fill rate, the
//! read latency during compaction, and the size after a reopen.
//!
//! Run: `cargo bench --bench store` or `cargo bench --bench store -- 512`
//! for a store of 512 MiB. The store is a temporary directory under
//! `$TMPDIR` (default /tmp); it needs the store's size in free disk.

use std::sync::Arc;
use std::time::{Duration, Instant};

use petrel::mime::Summary;
use petrel::store::embedded::EmbeddedStore;
use petrel::store::{Append, MailStore, NewContent};

const SIZE: usize = 256 << 10;

fn message(i: usize) -> NewContent {
    let mut raw = format!("Subject: big{i}\r\n\r\n").into_bytes();
    let fill = format!("{i:08}");
    while raw.len() < SIZE {
        raw.extend_from_slice(fill.as_bytes());
    }
    let summary = Arc::new(Summary::parse(&raw[..64]));
    NewContent {
        content: Arc::new(raw),
        summary,
    }
}

fn main() {
    let mib: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(2048);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(run(mib));
}

async fn run(mib: usize) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(EmbeddedStore::open(dir.path()).expect("open"));
    let count = mib * (1 << 20) / SIZE;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for i in (t..count).step_by(8) {
                store
                    .append(
                        "bench",
                        "INBOX",
                        Append {
                            content: message(i),
                            flags: 0,
                            keywords: Vec::new(),
                            internal_date: None,
                            queue_id: None,
                            quota: None,
                        },
                    )
                    .await
                    .expect("append");
            }
        }));
    }
    for t in tasks {
        t.await.expect("writer");
    }
    let fill = started.elapsed();
    let (full, _) = store.disk_usage().expect("usage");
    println!(
        "filled {count} × 256 KiB ({:.1} MiB on disk) in {:.1} s: {:.0} MiB/s, {:.0} appends/s",
        full as f64 / 1048576.0,
        fill.as_secs_f64(),
        full as f64 / 1048576.0 / fill.as_secs_f64(),
        count as f64 / fill.as_secs_f64()
    );
    let f = store
        .folder("bench", "INBOX")
        .await
        .expect("folder")
        .expect("INBOX");
    let gone: Vec<u32> = store
        .messages(f.id)
        .await
        .expect("messages")
        .iter()
        .map(|m| m.uid)
        .filter(|u| u % 10 != 0)
        .collect();
    let t0 = Instant::now();
    store
        .expunge(f.id, Some(&gone), false)
        .await
        .expect("expunge");
    println!(
        "expunged {} in {:.2} s",
        gone.len(),
        t0.elapsed().as_secs_f64()
    );
    let t0 = Instant::now();
    let keep: Vec<u32> = (1..=count as u32).filter(|u| u % 10 == 0).collect();
    let mut reads = Vec::new();
    let mut now = full;
    while t0.elapsed() < Duration::from_secs(120) {
        let r = Instant::now();
        let uid = keep[reads.len() % keep.len()];
        store.read(f.id, uid, None).await.expect("read");
        reads.push(r.elapsed());
        if reads.len() % 20 == 0 {
            now = store.disk_usage().expect("usage").0;
            if now * 100 < full * 30 {
                break;
            }
        }
    }
    let shrink = t0.elapsed();
    reads.sort();
    let pct = |p: f64| reads[((reads.len() as f64 * p) as usize).min(reads.len() - 1)];
    println!(
        "shrank to {:.1} MiB ({:.1} % of {:.1} MiB) in {:.1} s; {} reads meanwhile, p50 {:?}, p99 {:?}",
        now as f64 / 1048576.0,
        now as f64 * 100.0 / full as f64,
        full as f64 / 1048576.0,
        shrink.as_secs_f64(),
        reads.len(),
        pct(0.5),
        pct(0.99)
    );
    // Then until it stops shrinking for two seconds.
    let mut last = (now, Instant::now());
    while t0.elapsed() < Duration::from_secs(300) && last.1.elapsed() < Duration::from_secs(2) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let n = store.disk_usage().expect("usage").0;
        if n < last.0 {
            last = (n, Instant::now());
        }
    }
    println!(
        "settled at {:.1} MiB ({:.1} %) after {:.1} s",
        last.0 as f64 / 1048576.0,
        last.0 as f64 * 100.0 / full as f64,
        (last.1 - t0).as_secs_f64()
    );
    drop(store);
    let store = EmbeddedStore::open(dir.path()).expect("reopen");
    println!(
        "after reopen: {:.1} MiB",
        store.disk_usage().expect("usage").0 as f64 / 1048576.0
    );
}
