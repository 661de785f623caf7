//! Queue counts kept as the queue changes: messages by state and
//! undelivered recipients by destination domain. `petrel status` and the
//! `petrel_queue_messages` gauges read them instead of scanning the queue.
//!
//! One scan at daemon start (`Spool::init_counts`) sets them; from then on
//! every spool method that writes or removes a message record adjusts them
//! under one lock, from the record as stored before and after the change
//! (so concurrent changes to one message — a hold during its delivery —
//! count right). A reopened database (writes lost) counts again.

use std::collections::BTreeMap;

use super::{QueueName, QueuedMessage};

/// What one message contributes to the counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Summary {
    state: QueueName,
    domains: Vec<String>,
}

impl Summary {
    pub(crate) fn of(msg: &QueuedMessage, active: bool) -> Summary {
        Summary {
            state: QueueName::of(msg, active),
            domains: msg
                .recipients
                .iter()
                .filter(|r| !r.state.is_final())
                .map(|r| {
                    r.address
                        .rsplit_once('@')
                        .map(|(_, d)| d.to_ascii_lowercase())
                        .unwrap_or_default()
                })
                .collect(),
        }
    }
}

/// Messages by state, recipients by destination.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    /// Messages being delivered or not tried yet.
    pub active: u64,
    /// Messages waiting for a retry.
    pub deferred: u64,
    /// Messages held by the administrator.
    pub hold: u64,
    /// Undelivered recipients by destination domain.
    pub by_destination: BTreeMap<String, u64>,
}

impl Counts {
    /// Messages in the queue.
    pub fn messages(&self) -> u64 {
        self.active + self.deferred + self.hold
    }

    fn state(&mut self, s: QueueName) -> &mut u64 {
        match s {
            QueueName::Active => &mut self.active,
            QueueName::Deferred => &mut self.deferred,
            QueueName::Hold => &mut self.hold,
        }
    }

    pub(crate) fn add(&mut self, s: &Summary) {
        *self.state(s.state) += 1;
        for d in &s.domains {
            *self.by_destination.entry(d.clone()).or_default() += 1;
        }
    }

    pub(crate) fn sub(&mut self, s: &Summary) {
        let n = self.state(s.state);
        *n = n.saturating_sub(1);
        for d in &s.domains {
            if let Some(n) = self.by_destination.get_mut(d) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.by_destination.remove(d);
                }
            }
        }
    }

    /// Sets the `petrel_queue_messages{state}` gauges.
    pub(crate) fn publish(&self) {
        let m = crate::metrics::get();
        for (name, n) in [
            ("active", self.active),
            ("deferred", self.deferred),
            ("hold", self.hold),
        ] {
            m.queue
                .get_or_create(&crate::metrics::StateLabel { state: name.into() })
                .set(n as i64);
        }
    }
}
