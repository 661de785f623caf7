//! The SMTP front door: listeners (`server`), one session per connection
//! (`session`), and the protocol pieces (`command`, `line`, `data`, `reply`).
//! Listeners speak the protocol and apply the inbound policy; they never
//! route, and reply `250` only after intake returns from the group commit.

pub mod command;
pub mod data;
pub mod line;
pub mod policy;
pub mod reply;
pub mod server;
pub mod session;
pub mod verify;

use std::sync::Arc;
use std::sync::atomic::AtomicU8;

use arc_swap::ArcSwap;

use crate::config::Config;
use crate::intake::Intake;

/// What every SMTP session of the daemon shares.
pub struct SmtpShared {
    /// The live configuration; a session takes a snapshot when it starts,
    /// so a reload applies to new sessions only.
    pub config: Arc<ArcSwap<Config>>,
    /// Where accepted messages go.
    pub intake: Intake,
    /// SMTP trace level (0–3), changed at run time by `petrel debug smtp`.
    pub debug: Arc<AtomicU8>,
    /// Open sessions, in total and per client address.
    pub connections: crate::session::limits::ConnectionCount,
    /// Server TLS configuration, when any listener uses TLS; replaced by a
    /// reload (renewed certificates).
    pub tls: crate::tls::ServerTls,
    /// For the client's host name, when a host pattern needs it, and the
    /// policy checks (SPF, DKIM, DMARC, DNSBL).
    pub dns: crate::delivery::dns::Dns,
    /// Relay recipients' verification at the next hop, and its cache.
    pub verify: verify::Verifier,
    /// Per-client rate counters (`[smtp.inbound.rate_limits]`).
    pub rates: crate::policy::rate::RateLimiter,
}
pub mod client;
