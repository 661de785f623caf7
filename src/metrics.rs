//! Prometheus metrics: counters, gauges and histograms updated where things
//! happen (a session accepted, a delivery finished, a commit flushed),
//! never computed by a scan. `/metrics` on an http listener renders them
//! (OpenMetrics text, which Prometheus reads).
//!
//! One process-wide registry (`get()`): every part of the daemon updates its
//! metrics without having them passed around, and the cost of an update is
//! an atomic add (plus a label look-up for families).

use std::sync::OnceLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// `{listener}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabel {
    /// Listener name.
    pub listener: String,
}

/// `{stage, code}` of a refusal.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RejectLabels {
    /// `connect`, `HELO`, `MAIL`, `RCPT`, `DATA`, `AUTH`, `LOGIN`.
    pub stage: String,
    /// The reply code.
    pub code: u16,
}

/// `{status, via}` of a delivery attempt.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeliveryLabels {
    /// `sent`, `deferred`, `bounced`, `expired`.
    pub status: String,
    /// `local` (a mailbox) or `smtp`.
    pub via: String,
}

/// `{protocol}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProtocolLabel {
    /// `smtp`, `submission`, `pop3`, `imap`, `http`.
    pub protocol: String,
}

/// `{state}` of queued messages.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    /// `active`, `deferred`, `hold`.
    pub state: String,
}

/// `{kind}` of a DNS look-up.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LookupLabel {
    /// `mx`, `address`, `ptr`, `txt`, `dnsbl`.
    pub kind: String,
}

/// Every metric of the daemon.
pub struct Metrics {
    registry: Registry,
    /// Messages queued, by listener.
    pub accepted: Family<ListenerLabel, Counter>,
    /// Refusals, by stage and code.
    pub rejected: Family<RejectLabels, Counter>,
    /// Delivery attempts per recipient, by outcome.
    pub deliveries: Family<DeliveryLabels, Counter>,
    /// Messages in the queue, by state (kept as the queue changes).
    pub queue: Family<StateLabel, Gauge>,
    /// Age of the oldest queued message, seconds (set when rendered).
    pub oldest_age: Gauge,
    /// Writers answered per group commit.
    pub commit_batch: Histogram,
    /// Duration of a group commit (flush and fdatasync), seconds.
    pub commit_seconds: Histogram,
    /// Sessions opened, by protocol.
    pub sessions: Family<ProtocolLabel, Counter>,
    /// Sessions open now, by protocol.
    pub sessions_active: Family<ProtocolLabel, Gauge>,
    /// Sessions that used TLS, by protocol.
    pub tls_sessions: Family<ProtocolLabel, Counter>,
    /// DNS look-up durations, seconds.
    pub dns_seconds: Family<LookupLabel, Histogram>,
    /// Octets the message store holds on disk.
    pub store_bytes: Gauge,
    /// History events dropped because its writer fell behind.
    pub history_dropped: Counter,
}

fn dns_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 14))
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::with_prefix("petrel");
        let m = Metrics {
            accepted: Family::default(),
            rejected: Family::default(),
            deliveries: Family::default(),
            queue: Family::default(),
            oldest_age: Gauge::default(),
            commit_batch: Histogram::new(exponential_buckets(1.0, 2.0, 10)),
            commit_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            sessions: Family::default(),
            sessions_active: Family::default(),
            tls_sessions: Family::default(),
            dns_seconds: Family::new_with_constructor(dns_histogram),
            store_bytes: Gauge::default(),
            history_dropped: Counter::default(),
            registry: Registry::default(),
        };
        registry.register("messages_accepted", "Messages queued", m.accepted.clone());
        registry.register(
            "messages_rejected",
            "Refusals by stage and reply code",
            m.rejected.clone(),
        );
        registry.register(
            "deliveries",
            "Delivery attempts per recipient by outcome",
            m.deliveries.clone(),
        );
        registry.register(
            "queue_messages",
            "Messages in the queue by state",
            m.queue.clone(),
        );
        registry.register(
            "queue_oldest_message_age_seconds",
            "Age of the oldest queued message",
            m.oldest_age.clone(),
        );
        registry.register(
            "commit_batch_size",
            "Writers answered per group commit",
            m.commit_batch.clone(),
        );
        registry.register(
            "commit_duration_seconds",
            "Duration of a group commit (flush and fdatasync)",
            m.commit_seconds.clone(),
        );
        registry.register(
            "sessions",
            "Sessions opened by protocol",
            m.sessions.clone(),
        );
        registry.register(
            "sessions_active",
            "Sessions open now by protocol",
            m.sessions_active.clone(),
        );
        registry.register(
            "tls_sessions",
            "Sessions that used TLS by protocol",
            m.tls_sessions.clone(),
        );
        registry.register(
            "dns_lookup_duration_seconds",
            "DNS look-up durations by kind",
            m.dns_seconds.clone(),
        );
        registry.register(
            "store_bytes",
            "Octets the message store holds on disk",
            m.store_bytes.clone(),
        );
        registry.register(
            "history_events_dropped",
            "History events dropped because the writer fell behind",
            m.history_dropped.clone(),
        );
        Metrics { registry, ..m }
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Counts a refusal.
    pub fn reject(&self, stage: &str, code: u16) {
        self.rejected
            .get_or_create(&RejectLabels {
                stage: stage.to_string(),
                code,
            })
            .inc();
    }

    /// Counts one delivery attempt's outcome.
    pub fn delivery(&self, status: &str, via: &str) {
        self.deliveries
            .get_or_create(&DeliveryLabels {
                status: status.to_string(),
                via: via.to_string(),
            })
            .inc();
    }

    /// Counts a session and returns a guard that keeps it in
    /// `sessions_active` until dropped.
    /// `tls`: the session is TLS from its start (`tls = "implicit"`).
    pub fn session(&'static self, protocol: &str, tls: bool) -> SessionGauge {
        let label = ProtocolLabel {
            protocol: protocol.to_string(),
        };
        self.sessions.get_or_create(&label).inc();
        self.sessions_active.get_or_create(&label).inc();
        if tls {
            self.tls_sessions.get_or_create(&label).inc();
        }
        SessionGauge {
            metrics: self,
            label,
        }
    }

    /// Counts a session that turned to TLS (STARTTLS, STLS).
    pub fn tls_session(&self, protocol: &str) {
        self.tls_sessions
            .get_or_create(&ProtocolLabel {
                protocol: protocol.to_string(),
            })
            .inc();
    }

    /// Times a DNS look-up of `kind`.
    pub fn dns(&self, kind: &str, took: std::time::Duration) {
        self.dns_seconds
            .get_or_create(&LookupLabel {
                kind: kind.to_string(),
            })
            .observe(took.as_secs_f64());
    }
}

/// Keeps a session counted as active; drops the count when dropped.
pub struct SessionGauge {
    metrics: &'static Metrics,
    label: ProtocolLabel,
}

impl SessionGauge {
    /// Counts the session as one that used TLS.
    pub fn tls(&self) {
        self.metrics.tls_sessions.get_or_create(&self.label).inc();
    }
}

impl Drop for SessionGauge {
    fn drop(&mut self) {
        self.metrics
            .sessions_active
            .get_or_create(&self.label)
            .dec();
    }
}

/// The process's metrics.
pub fn get() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_with_labels() {
        let m = get();
        m.reject("RCPT", 550);
        m.delivery("sent", "smtp");
        {
            let s = m.session("imap", false);
            s.tls();
        }
        let text = m.render();
        assert!(
            text.contains("petrel_messages_rejected_total{stage=\"RCPT\",code=\"550\"}"),
            "{text}"
        );
        assert!(
            text.contains("petrel_sessions_active{protocol=\"imap\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("petrel_tls_sessions_total{protocol=\"imap\"} 1"),
            "{text}"
        );
    }
}
