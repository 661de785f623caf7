//! Spool enqueue-and-commit throughput with 1, 16 and 64 concurrent
//! writers: each writer writes a 4 KiB message and waits for the group
//! commit (flush + fsync), as an SMTP session does before its `250`.
//!
//! Run: `cargo bench --bench spool`

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use petrel::spool::{NewMessage, Recipient, Spool};

fn message() -> NewMessage {
    NewMessage {
        id: None,
        sender: "load@partner.test".into(),
        recipients: vec![Recipient::new("alice@example.test".into(), None)],
        client: "bench".into(),
        listener: "bench".into(),
        message_id: None,
        envid: None,
        ret: None,
        body_8bit: false,
        smtputf8: false,
    }
}

fn enqueue_and_commit(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let spool = Arc::new(Spool::open(dir.path()).expect("spool"));
    let content: Arc<Vec<u8>> = Arc::new(
        b"0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwx\r\n".repeat(57),
    );
    let mut group = c.benchmark_group("spool_enqueue_commit_4KiB");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(8));
    for writers in [1usize, 16, 64] {
        group.throughput(Throughput::Elements(1));
        group.bench_with_input(
            BenchmarkId::from_parameter(writers),
            &writers,
            |b, &writers| {
                b.to_async(&rt).iter_custom(|iters| {
                    let spool = spool.clone();
                    let content = content.clone();
                    async move {
                        let per = (iters as usize).div_ceil(writers);
                        let start = Instant::now();
                        let tasks: Vec<_> = (0..writers)
                            .map(|_| {
                                let spool = spool.clone();
                                let content = content.clone();
                                tokio::spawn(async move {
                                    for _ in 0..per {
                                        spool.enqueue(message(), &content).await.expect("enqueue");
                                    }
                                })
                            })
                            .collect();
                        for t in tasks {
                            t.await.expect("writer");
                        }
                        // Scale to the iterations criterion asked for.
                        start
                            .elapsed()
                            .mul_f64(iters as f64 / (per * writers) as f64)
                    }
                });
            },
        );
    }
    group.finish();
}

criterion_group!(benches, enqueue_and_commit);
criterion_main!(benches);
