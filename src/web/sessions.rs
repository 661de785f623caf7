//! Browser sessions: the cookie that names a login, kept on the server
//! with its expiry (`web.session_lifetime`) and its CSRF token, and the
//! login throttle.
//!
//! The cookie holds 32 random octets (hex) and nothing else; the server
//! maps them to the user. It is `HttpOnly`, `SameSite=Strict`, `Path=/`,
//! and `Secure` on a TLS listener. Every state change (a POST) carries the
//! session's CSRF token in a form field, compared in constant time.
//! Sessions live in memory: a restart logs everyone out.
//!
//! Failed logins are throttled per client address as SMTP AUTH and POP3
//! are (`session::login::Backoff`): the n-th failure in the last quarter
//! hour waits n seconds (at most `MAX_WAIT`) before its answer, and each is
//! logged for fail2ban.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ring::rand::SecureRandom;

/// The cookie's name.
pub const COOKIE: &str = "petrel_session";

/// Sessions kept at most; beyond, expired ones are dropped, then the
/// oldest.
const MAX_SESSIONS: usize = 100_000;

/// How long failed logins count against an address.
const FAILURE_WINDOW: Duration = Duration::from_secs(15 * 60);

/// The longest pause before answering a failed login.
const MAX_WAIT: Duration = Duration::from_secs(5);

/// One logged-in browser.
#[derive(Debug, Clone)]
pub struct WebSession {
    /// The user's name.
    pub user: String,
    /// The token every form must carry.
    pub csrf: String,
    /// When it ends, whatever happens.
    pub expires: Instant,
}

/// Every live session, and the login failures by client address.
#[derive(Default)]
pub struct Sessions {
    live: Mutex<HashMap<String, WebSession>>,
    failures: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

/// 32 random octets, hex.
pub fn token() -> String {
    let mut b = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .expect("the system's random source works");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Whether two tokens are equal, in time independent of where they differ.
pub fn same_token(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

impl Sessions {
    /// Starts a session for `user`; returns its cookie value.
    pub fn open(&self, user: &str, lifetime: Duration) -> String {
        let id = token();
        let s = WebSession {
            user: user.to_string(),
            csrf: token(),
            expires: Instant::now() + lifetime,
        };
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        if live.len() >= MAX_SESSIONS {
            let now = Instant::now();
            live.retain(|_, s| s.expires > now);
            if live.len() >= MAX_SESSIONS
                && let Some(oldest) = live
                    .iter()
                    .min_by_key(|(_, s)| s.expires)
                    .map(|(k, _)| k.clone())
            {
                live.remove(&oldest);
            }
        }
        live.insert(id.clone(), s);
        id
    }

    /// The live session a cookie names.
    pub fn get(&self, id: &str) -> Option<WebSession> {
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        match live.get(id) {
            Some(s) if s.expires > Instant::now() => Some(s.clone()),
            Some(_) => {
                live.remove(id);
                None
            }
            None => None,
        }
    }

    /// Ends a session (logout).
    pub fn close(&self, id: &str) {
        self.live
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }

    /// Records a failed login from `ip`; returns how long to wait before
    /// answering.
    pub fn failed(&self, ip: IpAddr) -> Duration {
        let mut f = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if f.len() > 10_000 {
            f.retain(|_, (_, at)| now.duration_since(*at) < FAILURE_WINDOW);
        }
        let e = f.entry(ip).or_insert((0, now));
        if now.duration_since(e.1) >= FAILURE_WINDOW {
            *e = (0, now);
        }
        e.0 += 1;
        e.1 = now;
        Duration::from_secs(u64::from(e.0)).min(MAX_WAIT)
    }

    /// Forgets the failures of `ip` after a good login.
    pub fn succeeded(&self, ip: IpAddr) {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&ip);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_ends_at_its_expiry_and_at_logout() {
        let s = Sessions::default();
        let a = s.open("alice", Duration::from_secs(60));
        assert_eq!(s.get(&a).unwrap().user, "alice");
        s.close(&a);
        assert!(s.get(&a).is_none());
        let b = s.open("bob", Duration::ZERO);
        assert!(s.get(&b).is_none());
        assert!(s.get("not-a-session").is_none());
    }

    #[test]
    fn failures_wait_longer_each_time_up_to_the_cap() {
        let s = Sessions::default();
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let waits: Vec<u64> = (0..7).map(|_| s.failed(ip).as_secs()).collect();
        assert_eq!(waits, vec![1, 2, 3, 4, 5, 5, 5]);
        s.succeeded(ip);
        assert_eq!(s.failed(ip).as_secs(), 1);
    }

    #[test]
    fn tokens_compare_whole() {
        let t = token();
        assert_eq!(t.len(), 64);
        assert!(same_token(&t, &t.clone()));
        assert!(!same_token(&t, &token()));
        assert!(!same_token(&t, &t[..63]));
    }
}
