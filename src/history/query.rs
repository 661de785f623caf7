//! Finding a message's history: by queue id, Message-ID, sender or
//! recipient, within a time window. Each selector reads one index range;
//! the events found are grouped into one `Trace` per message, oldest
//! first, and a trace is followed by the traces of the reports (bounces,
//! delay notices) its message caused.

use std::collections::{BTreeMap, BTreeSet};

use redb::{ReadableDatabase, ReadableTable};
use serde::{Deserialize, Serialize};

use super::{
    BY_QUEUE, BY_TERM, EVENTS, Event, EventKind, History, HistoryError, decode, message_id_term,
    term_hash,
};

/// What to look for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Selector {
    /// One queue id.
    QueueId(u64),
    /// Messages with this Message-ID (angle brackets optional).
    MessageId(String),
    /// Messages from this envelope sender (and refusals of it).
    From(String),
    /// Messages to this recipient (and refusals of it).
    To(String),
    /// Messages from, and refusals of, this client (`[ip]` or `ip`).
    Client(String),
}

impl Selector {
    fn term(&self) -> Option<String> {
        let l = |p: &str, s: &str| format!("{p}{}", s.trim().to_ascii_lowercase());
        match self {
            Selector::QueueId(_) => None,
            Selector::MessageId(m) => Some(message_id_term(m)),
            Selector::From(a) => Some(l("f:", a.trim_matches(|c| c == '<' || c == '>'))),
            Selector::To(a) => Some(l("t:", a.trim_matches(|c| c == '<' || c == '>'))),
            Selector::Client(c) => {
                let c = c.trim();
                if c.starts_with('[') {
                    Some(l("c:", c))
                } else {
                    Some(l("c:", &format!("[{c}]")))
                }
            }
        }
    }
}

/// One message's history (or one refusal, with no queue id).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Trace {
    /// The queue id, if the message was queued.
    pub queue_id: Option<u64>,
    /// Its events, oldest first.
    pub events: Vec<Event>,
}

impl History {
    /// Delivery attempts at or after `since` (Unix ms), by status
    /// (`sent`, `deferred`, `bounced`, `expired`): the console's delivery
    /// rates. Reads the newest events first, at most `scan` of them, and
    /// returns the counts with the time from which they are complete:
    /// `since`, or the oldest event read when the bound was reached (the
    /// rate is then over that shorter, latest stretch).
    pub fn attempts_since(
        &self,
        since: i64,
        scan: usize,
    ) -> Result<(BTreeMap<String, u64>, i64), HistoryError> {
        let r = self.db().begin_read()?;
        let events = r.open_table(EVENTS)?;
        let mut out = BTreeMap::new();
        let mut from = since;
        for (n, item) in events.range((since.max(0) as u64, 0)..)?.rev().enumerate() {
            let (k, v) = item?;
            if n >= scan {
                from = k.value().0 as i64;
                break;
            }
            if let Some(Event {
                kind: EventKind::Attempt { status, .. },
                ..
            }) = decode(v.value())
            {
                *out.entry(status).or_insert(0) += 1;
            }
        }
        Ok((out, from))
    }

    /// The latest refusals, newest first: at most `limit` whose client,
    /// stage, code, reason, sender or recipient contains `filter` (every
    /// one when it is empty), among the latest `scan` events (so that a
    /// search of a long history stays quick).
    pub fn recent_rejections(
        &self,
        filter: &str,
        limit: usize,
        scan: usize,
    ) -> Result<Vec<Event>, HistoryError> {
        let r = self.db().begin_read()?;
        let events = r.open_table(EVENTS)?;
        let filter = filter.trim().to_lowercase();
        let mut out = Vec::new();
        for item in events.iter()?.rev().take(scan) {
            let (_, v) = item?;
            let Some(e) = decode(v.value()) else {
                continue;
            };
            if let EventKind::Rejected {
                client,
                stage,
                code,
                reason,
                sender,
                recipient,
                ..
            } = &e.kind
            {
                let hit = filter.is_empty() || {
                    let text = format!(
                        "{client} {stage} {code} {reason} {} {}",
                        sender.as_deref().unwrap_or(""),
                        recipient.as_deref().unwrap_or("")
                    );
                    text.to_lowercase().contains(&filter)
                };
                if hit {
                    out.push(e);
                    if out.len() >= limit {
                        break;
                    }
                }
            }
        }
        Ok(out)
    }

    /// The histories matching `selector` with events at or after `since`
    /// (Unix ms), at most `limit` messages, oldest first; each followed by
    /// the histories of the reports it caused.
    pub fn query(
        &self,
        selector: &Selector,
        since: i64,
        limit: usize,
    ) -> Result<Vec<Trace>, HistoryError> {
        let r = self.db().begin_read()?;
        let events = r.open_table(EVENTS)?;
        let by_queue = r.open_table(BY_QUEUE)?;
        let since = since.max(0) as u64;
        let mut ids: BTreeSet<u64> = BTreeSet::new();
        let mut refusals: Vec<Event> = Vec::new();
        match selector {
            Selector::QueueId(q) => {
                ids.insert(*q);
            }
            other => {
                // `term` is Some for every selector but QueueId.
                let term = other.term().unwrap_or_default();
                let h = term_hash(&term);
                let by_term = r.open_table(BY_TERM)?;
                for item in by_term.range((h, since, 0)..=(h, u64::MAX, u64::MAX))? {
                    let (k, _) = item?;
                    let (_, t, seq) = k.value();
                    let Some(v) = events.get((t, seq))? else {
                        continue;
                    };
                    let Some(e) = decode(v.value()) else {
                        continue;
                    };
                    // The hash only narrows the search; the event decides.
                    if !e.terms().contains(&term) {
                        continue;
                    }
                    match e.queue_id {
                        Some(q) => {
                            ids.insert(q);
                        }
                        None => refusals.push(e),
                    }
                    if ids.len() + refusals.len() >= limit {
                        break;
                    }
                }
            }
        }
        let load = |q: u64| -> Result<Vec<Event>, HistoryError> {
            let mut out = Vec::new();
            for item in by_queue.range((q, 0, 0)..=(q, u64::MAX, u64::MAX))? {
                let (k, _) = item?;
                let (_, t, seq) = k.value();
                if let Some(v) = events.get((t, seq))?
                    && let Some(e) = decode(v.value())
                {
                    out.push(e);
                }
            }
            Ok(out)
        };
        let mut by_time: BTreeMap<(i64, u64), Trace> = BTreeMap::new();
        let mut seen = BTreeSet::new();
        let mut queue: Vec<u64> = ids.into_iter().collect();
        while let Some(q) = queue.pop() {
            if !seen.insert(q) {
                continue;
            }
            let evs = load(q)?;
            if evs.is_empty() {
                continue;
            }
            for e in &evs {
                if let EventKind::Notified { report, .. } = e.kind {
                    queue.push(report);
                }
            }
            by_time.insert(
                (evs[0].time, q),
                Trace {
                    queue_id: Some(q),
                    events: evs,
                },
            );
        }
        for e in refusals {
            by_time.insert(
                (e.time, 0),
                Trace {
                    queue_id: None,
                    events: vec![e],
                },
            );
        }
        Ok(by_time.into_values().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{Event, EventKind, Limits};
    use std::time::Duration;

    fn accepted(q: u64, from: &str, to: &str, mid: &str) -> Event {
        Event::now(
            Some(q),
            EventKind::Accepted {
                client: "[192.0.2.1]".into(),
                listener: "mx".into(),
                size: 100,
                sender: from.into(),
                recipients: vec![to.into()],
                message_id: Some(mid.into()),
            },
        )
    }

    fn open(dir: &std::path::Path, max_size: u64) -> History {
        History::open(
            &dir.join("h.redb"),
            Limits {
                max_age: Duration::from_secs(3600),
                max_size,
            },
        )
        .expect("open")
    }

    #[test]
    fn finds_a_message_by_every_selector_and_follows_its_bounce() {
        let dir = tempfile::tempdir().expect("tempdir");
        let h = open(dir.path(), 1 << 30);
        h.record(accepted(
            7,
            "Alice@Example.test",
            "bob@remote.test",
            "<abc@x>",
        ));
        h.record(Event::now(
            Some(7),
            EventKind::Attempt {
                to: "bob@remote.test".into(),
                relay: "mx.remote.test[192.0.2.9]:25".into(),
                status: "bounced".into(),
                dsn: "5.1.1".into(),
                reason: "550 5.1.1 no such user".into(),
                delay: 0.5,
            },
        ));
        h.record(Event::now(
            Some(7),
            EventKind::Notified {
                action: "failed".into(),
                report: 8,
                to: "alice@example.test".into(),
            },
        ));
        h.record(accepted(8, "", "alice@example.test", "<dsn@x>"));
        h.record(accepted(
            9,
            "carol@example.test",
            "dave@remote.test",
            "<other@x>",
        ));
        h.sync();
        for sel in [
            Selector::QueueId(7),
            Selector::MessageId("abc@x".into()),
            Selector::From("alice@example.test".into()),
            Selector::To("<bob@remote.test>".into()),
        ] {
            let t = h.query(&sel, 0, 100).expect("query");
            let ids: Vec<Option<u64>> = t.iter().map(|t| t.queue_id).collect();
            assert_eq!(ids, vec![Some(7), Some(8)], "{sel:?}");
            assert_eq!(t[0].events.len(), 3);
        }
        let t = h
            .query(&Selector::To("nobody@remote.test".into()), 0, 100)
            .expect("q");
        assert!(t.is_empty());
    }

    #[test]
    fn refusals_are_found_by_client_and_address() {
        let dir = tempfile::tempdir().expect("tempdir");
        let h = open(dir.path(), 1 << 30);
        h.record(Event::now(
            None,
            EventKind::Rejected {
                client: "[203.0.113.5]".into(),
                listener: "mx".into(),
                stage: "RCPT".into(),
                code: 550,
                reason: "5.1.1 unknown".into(),
                sender: Some("spam@bad.test".into()),
                recipient: Some("nobody@example.test".into()),
            },
        ));
        h.sync();
        assert_eq!(
            h.query(&Selector::Client("203.0.113.5".into()), 0, 10)
                .expect("q")
                .len(),
            1
        );
        assert_eq!(
            h.query(&Selector::From("spam@bad.test".into()), 0, 10)
                .expect("q")
                .len(),
            1
        );
        assert_eq!(
            h.query(
                &Selector::Client("203.0.113.5".into()),
                chrono::Utc::now().timestamp_millis() + 60_000,
                10
            )
            .expect("q")
            .len(),
            0,
            "--since after the event finds nothing"
        );
    }

    #[test]
    fn the_size_bound_drops_the_oldest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let h = open(dir.path(), 200_000);
        for q in 0..5_000u64 {
            h.record(accepted(
                q,
                "a@example.test",
                "b@remote.test",
                &format!("<{q}@x>"),
            ));
        }
        h.sync();
        // One more batch runs the prune that the size asks for.
        h.record(accepted(
            99_999,
            "a@example.test",
            "b@remote.test",
            "<last@x>",
        ));
        h.sync();
        let bytes = h.stored_bytes().expect("bytes");
        assert!(bytes <= 200_000, "stored {bytes}");
        assert!(
            h.query(&Selector::QueueId(0), 0, 10).expect("q").is_empty(),
            "oldest dropped"
        );
        assert_eq!(
            h.query(&Selector::QueueId(99_999), 0, 10).expect("q").len(),
            1
        );
    }
}
