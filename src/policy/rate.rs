//! Per-client rate limits (as Postfix's anvil): connections, messages and
//! recipients per client address over a sliding window of
//! `smtp.inbound.rate_limits.time_unit`.
//!
//! Each client keeps, per kind, the times of its last `limit` allowed
//! events; an event is allowed when fewer than `limit` of them fall inside
//! the window, so the limit lifts exactly one window after the oldest of
//! them. A refused attempt is not counted (it was not served). Memory is
//! bounded: at most `limit` times per client and kind, and clients idle
//! for a window are dropped when the table grows.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::RateLimits;
use crate::smtp::reply::Reply;

/// What is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Event {
    /// A new connection: `421 4.7.0` past the limit.
    Connection,
    /// A MAIL command: `450 4.7.1` past the limit.
    Message,
    /// A RCPT command: `450 4.7.1` past the limit.
    Recipient,
}

/// Clients tracked before idle ones are dropped.
const PRUNE_AT: usize = 10_000;

/// The counters of every client; shared by all sessions of the daemon.
#[derive(Default)]
pub struct RateLimiter {
    clients: Mutex<HashMap<(IpAddr, Event), VecDeque<Instant>>>,
}

impl RateLimiter {
    /// Counts one `event` of `ip` and says whether it is within `limit`
    /// per `unit` (0: no limit, always allowed and not counted).
    pub fn allow(&self, ip: IpAddr, event: Event, limit: u32, unit: Duration) -> bool {
        self.allow_at(ip, event, limit, unit, Instant::now())
    }

    fn allow_at(&self, ip: IpAddr, event: Event, limit: u32, unit: Duration, now: Instant) -> bool {
        if limit == 0 {
            return true;
        }
        let limit = limit as usize;
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        if clients.len() >= PRUNE_AT {
            clients.retain(|_, times| {
                times
                    .back()
                    .is_some_and(|t| now.saturating_duration_since(*t) < unit)
            });
        }
        let times = clients.entry((ip, event)).or_default();
        while times
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) >= unit)
        {
            times.pop_front();
        }
        let allowed = times.len() < limit;
        if allowed {
            times.push_back(now);
        }
        allowed
    }

    /// Counts `event` for `ip` against `limits`; the reply to give when
    /// the limit is passed.
    pub fn check(&self, ip: IpAddr, event: Event, limits: &RateLimits) -> Option<Reply> {
        let (limit, what) = match event {
            Event::Connection => (limits.connections_per_minute, "connection"),
            Event::Message => (limits.messages_per_minute, "message"),
            Event::Recipient => (limits.recipients_per_minute, "recipient"),
        };
        if self.allow(ip, event, limit, limits.time_unit) {
            return None;
        }
        let text = format!(
            "Error: too many {what}s from {}; try again later",
            crate::config::canonical_ip(ip)
        );
        Some(match event {
            // RFC 5321 §3.8: a server that refuses a connection says 421.
            Event::Connection => Reply::new(421, "4.7.0", text),
            _ => Reply::new(450, "4.7.1", text),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_is_reached_and_lifted_after_the_window() {
        let r = RateLimiter::default();
        let ip: IpAddr = "192.0.2.1".parse().expect("ip");
        let other: IpAddr = "192.0.2.2".parse().expect("ip");
        let unit = Duration::from_secs(60);
        let t0 = Instant::now();
        for i in 0..3 {
            assert!(r.allow_at(ip, Event::Message, 3, unit, t0 + Duration::from_secs(i)));
        }
        assert!(!r.allow_at(ip, Event::Message, 3, unit, t0 + Duration::from_secs(5)));
        assert!(r.allow_at(other, Event::Message, 3, unit, t0 + Duration::from_secs(5)));
        assert!(r.allow_at(ip, Event::Recipient, 3, unit, t0 + Duration::from_secs(5)));
        // The oldest allowed event (0 s) leaves the window at 60 s.
        assert!(!r.allow_at(
            ip,
            Event::Message,
            3,
            unit,
            t0 + Duration::from_millis(59_900)
        ));
        assert!(r.allow_at(ip, Event::Message, 3, unit, t0 + Duration::from_secs(60)));
        assert!(!r.allow_at(
            ip,
            Event::Message,
            3,
            unit,
            t0 + Duration::from_millis(60_500)
        ));
        assert!(r.allow_at(ip, Event::Message, 0, unit, t0));
    }
}
