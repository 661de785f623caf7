//! Logging in: a user's name or one of its addresses and the password,
//! checked against the directory on the blocking pool (Argon2 and
//! sha-crypt are slow on purpose), and the back-off every protocol applies
//! to failures: the n-th failure of a session waits n seconds before its
//! reply, and the session is closed after `MAX_FAILURES`.
//!
//! Two things keep password checks from costing more than they must. At
//! most one check per core runs at a time (`CHECKS`): an Argon2 check takes
//! 19 MiB and tens of milliseconds of a core, so a hundred clients logging
//! in together would otherwise hold 1.9 GiB for nothing but a queue on two
//! cores. And a login accepted in the last `ACCEPTED_FOR` is accepted again
//! without the hash (`Accepted`; Dovecot's auth cache does the same), since
//! mail clients open several connections and reconnect all day. Only
//! successes are kept, under an HMAC with a key made at start, of the
//! stored hash and the password: a changed password (a reload) no longer
//! matches, and a wrong one always pays the whole check.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use crate::config::Config;
use crate::directory::User;

/// Failed logins after which a session is closed.
pub const MAX_FAILURES: u32 = 3;

/// How long an accepted login is accepted again without the hash.
pub const ACCEPTED_FOR: Duration = Duration::from_secs(300);
/// Accepted logins remembered at most.
const ACCEPTED_MAX: usize = 10_000;

/// Password checks running at once.
fn checks() -> &'static Semaphore {
    static CHECKS: OnceLock<Semaphore> = OnceLock::new();
    CHECKS
        .get_or_init(|| Semaphore::new(std::thread::available_parallelism().map_or(2, |n| n.get())))
}

/// Logins accepted recently: HMAC(stored hash, 0, password) → until when.
struct Accepted {
    key: ring::hmac::Key,
    until: Mutex<HashMap<Vec<u8>, Instant>>,
}

impl Accepted {
    fn get() -> &'static Accepted {
        static ACCEPTED: OnceLock<Accepted> = OnceLock::new();
        ACCEPTED.get_or_init(|| Accepted {
            key: ring::hmac::Key::generate(
                ring::hmac::HMAC_SHA256,
                &ring::rand::SystemRandom::new(),
            )
            .expect("the system's random source works"),
            until: Mutex::new(HashMap::new()),
        })
    }

    fn digest(&self, hash: &str, password: &str) -> Vec<u8> {
        let mut ctx = ring::hmac::Context::with_key(&self.key);
        ctx.update(hash.as_bytes());
        ctx.update(&[0]);
        ctx.update(password.as_bytes());
        ctx.sign().as_ref().to_vec()
    }

    fn holds(&self, digest: &[u8]) -> bool {
        let map = self.until.lock().unwrap_or_else(|e| e.into_inner());
        map.get(digest).is_some_and(|&t| t > Instant::now())
    }

    fn remember(&self, digest: Vec<u8>) {
        let mut map = self.until.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if map.len() >= ACCEPTED_MAX {
            map.retain(|_, t| *t > now);
            if map.len() >= ACCEPTED_MAX {
                map.clear();
            }
        }
        map.insert(digest, now + ACCEPTED_FOR);
    }
}

/// The user whose name or address is `login`, if `password` is theirs.
pub async fn verify(config: &Config, login: &str, password: &str) -> Option<User> {
    let user = find(config, login)?.clone();
    if user.password.is_empty() {
        return None;
    }
    let accepted = Accepted::get();
    let digest = accepted.digest(&user.password, password);
    if accepted.holds(&digest) {
        return Some(user);
    }
    let _permit = checks().acquire().await.ok()?;
    let (hash, pw) = (user.password.clone(), password.to_string());
    let ok = tokio::task::spawn_blocking(move || crate::auth::verify_password(&pw, &hash))
        .await
        .unwrap_or(false);
    if ok {
        accepted.remember(digest);
    }
    ok.then_some(user)
}

/// The user a login names: a user's name, or one of its addresses.
pub fn find<'a>(config: &'a Config, login: &str) -> Option<&'a User> {
    config
        .directory
        .users
        .iter()
        .find(|u| u.name == login || u.addresses.iter().any(|a| a.eq_ignore_ascii_case(login)))
}

/// Whether `user` may read the mail-in mailbox `mailin`.
pub fn may_read(config: &Config, user: &str, mailin: &str) -> bool {
    config
        .directory
        .mailin
        .iter()
        .any(|m| m.name == mailin && m.readers.iter().any(|r| r == user))
}

/// The mail-in mailboxes `user` reads, by name.
pub fn readable(config: &Config, user: &str) -> Vec<String> {
    config
        .directory
        .mailin
        .iter()
        .filter(|m| m.readers.iter().any(|r| r == user))
        .map(|m| m.name.clone())
        .collect()
}

/// A session's failed logins.
#[derive(Debug, Default)]
pub struct Backoff {
    failures: u32,
}

impl Backoff {
    /// Records a failure: logs it (for fail2ban), waits, and says whether
    /// the session must now be closed.
    pub async fn failed(
        &mut self,
        client: &str,
        protocol: &str,
        mechanism: &str,
        login: &str,
    ) -> bool {
        self.failures += 1;
        crate::auth::log_failure(client, protocol, mechanism, login);
        tokio::time::sleep(Duration::from_secs(u64::from(self.failures))).await;
        self.failures >= MAX_FAILURES
    }
}
