//! Logging in: a user's name or one of its addresses and the password,
//! checked against the directory on the blocking pool (Argon2 and
//! sha-crypt are slow on purpose), and the back-off every protocol applies
//! to failures: the n-th failure of a session waits n seconds before its
//! reply, and the session is closed after `MAX_FAILURES`.

use std::time::Duration;

use crate::config::Config;
use crate::directory::User;

/// Failed logins after which a session is closed.
pub const MAX_FAILURES: u32 = 3;

/// The user whose name or address is `login`, if `password` is theirs.
pub async fn verify(config: &Config, login: &str, password: &str) -> Option<User> {
    let user = find(config, login)?.clone();
    if user.password.is_empty() {
        return None;
    }
    let (hash, pw) = (user.password.clone(), password.to_string());
    let ok = tokio::task::spawn_blocking(move || crate::auth::verify_password(&pw, &hash))
        .await
        .unwrap_or(false);
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
