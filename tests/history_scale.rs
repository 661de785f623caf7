//! The message history at a week of 100,000 messages a day: 700,000
//! messages of three events each (accepted, a delivery attempt, removed),
//! spread over seven days, built with `History` directly (not through
//! SMTP), then searched by queue id, Message-ID, sender and recipient.
//!
//! A measurement, not a check of behaviour: ignored by default. Run it
//! with `cargo test --test history_scale -- --ignored --nocapture`; the
//! figures are in docs/benchmarks.md.

use std::time::{Duration, Instant};

use petrel::history::{Event, EventKind, History, Limits, Selector};

const DAYS: u64 = 7;
const PER_DAY: u64 = 100_000;
/// `record` drops events past the writer's channel: wait for the writer
/// this often.
const SYNC_EVERY: u64 = 10_000;

#[test]
#[ignore = "a measurement: 2.1 M events, minutes in a debug build"]
fn a_week_of_100k_messages_a_day_is_searched_in_under_a_second() {
    let dir = tempfile::tempdir().expect("tempdir");
    let h = History::open(
        &dir.path().join("history.redb"),
        Limits {
            max_age: Duration::from_secs(30 * 86_400),
            max_size: 1 << 40,
        },
    )
    .expect("open");
    let total = DAYS * PER_DAY;
    let now = chrono::Utc::now().timestamp_millis();
    let start = now - (DAYS * 86_400_000) as i64;
    let step = (DAYS * 86_400_000) as f64 / total as f64;
    let built = Instant::now();
    for n in 0..total {
        let t = start + (n as f64 * step) as i64;
        let q = 1_000_000 + n;
        // 5,000 senders, 50,000 recipients: realistic repetition.
        let from = format!("user{}@sender{}.test", n % 5_000, n % 50);
        let to = format!("rcpt{}@example.test", n % 50_000);
        let ev = |time, kind| Event {
            time,
            queue_id: Some(q),
            kind,
        };
        h.record(ev(
            t,
            EventKind::Accepted {
                client: format!("[192.0.2.{}]", n % 250),
                listener: "mx".into(),
                size: 4_000 + n % 10_000,
                sender: from,
                recipients: vec![to.clone()],
                message_id: Some(format!("<{n}.scale@sender.test>")),
            },
        ));
        h.record(ev(
            t + 300,
            EventKind::Attempt {
                to,
                relay: "mx1.example.test[192.0.2.25]:25".into(),
                status: "sent".into(),
                dsn: "2.0.0".into(),
                reason: "host mx1.example.test[192.0.2.25]:25 said: 250 2.0.0 Ok".into(),
                delay: 0.3,
            },
        ));
        h.record(ev(
            t + 310,
            EventKind::Removed {
                reason: "done".into(),
            },
        ));
        if n % SYNC_EVERY == SYNC_EVERY - 1 {
            h.sync();
        }
    }
    h.sync();
    assert_eq!(h.dropped.load(std::sync::atomic::Ordering::Relaxed), 0);
    let size = std::fs::metadata(dir.path().join("history.redb"))
        .map(|m| m.len())
        .unwrap_or(0);
    println!(
        "built {} messages ({} events) in {:.1?}; file {:.0} MiB",
        total,
        total * 3,
        built.elapsed(),
        size as f64 / 1_048_576.0
    );
    let probe = total / 2 + 12_345;
    let cases = [
        ("queue id", Selector::QueueId(1_000_000 + probe), 1),
        (
            "message-id",
            Selector::MessageId(format!("{probe}.scale@sender.test")),
            1,
        ),
        // 140 messages from one sender over the week; the first 100.
        (
            "from",
            Selector::From(format!("user{}@sender{}.test", probe % 5_000, probe % 50)),
            100,
        ),
        // 14 messages to one recipient over the week.
        (
            "to",
            Selector::To(format!("rcpt{}@example.test", probe % 50_000)),
            14,
        ),
    ];
    let mut worst = Duration::ZERO;
    for (name, sel, want) in cases {
        let t = Instant::now();
        let found = h.query(&sel, 0, 100).expect("query");
        let took = t.elapsed();
        worst = worst.max(took);
        println!("{name:<10} {} traces in {took:.1?}", found.len());
        assert_eq!(found.len(), want, "{name}");
        assert!(found.iter().all(|t| t.events.len() == 3), "{name}");
    }
    assert!(worst < Duration::from_secs(1), "slowest search {worst:?}");
}
