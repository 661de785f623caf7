//! Password hashes for the directory: made by `petrel hash-password`
//! (argon2id) and checked at login; SHA-512-crypt (`$6$`, glibc `crypt(3)`)
//! hashes imported from other servers are checked too. CPU-heavy: callers
//! on the async runtime run `verify` through `spawn_blocking`.

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use rand_core::OsRng;

/// Hashes a password with argon2id and a random salt, in PHC string form.
pub fn hash_password(password: &str) -> Result<String, String> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| format!("cannot hash password: {e}"))
}

/// SHA-crypt rounds accepted (Drepper's specification allows up to
/// 999,999,999; a login must not take minutes).
const SHA_CRYPT_MAX_ROUNDS: u64 = 10_000_000;

/// Whether `hash` is a hash a login can be checked against: an argon2 PHC
/// string or a SHA-512-crypt `$6$[rounds=N$]salt$hash`. The reason, for
/// `check-config`, when it is not.
pub fn check_hash(hash: &str) -> Result<(), String> {
    if hash.starts_with("$6$") {
        let parts: Vec<&str> = hash.split('$').collect();
        let (rounds, salt, digest) = match parts.as_slice() {
            ["", "6", r, salt, digest] if r.starts_with("rounds=") => {
                (r["rounds=".len()..].parse::<u64>().ok(), *salt, *digest)
            }
            ["", "6", salt, digest] => (Some(5000), *salt, *digest),
            _ => (None, "", ""),
        };
        let b64 = |s: &str| {
            s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'/')
        };
        return match rounds {
            Some(r) if !(1000..=SHA_CRYPT_MAX_ROUNDS).contains(&r) => Err(format!(
                "SHA-512-crypt rounds must be from 1000 to {SHA_CRYPT_MAX_ROUNDS}, not {r}"
            )),
            Some(_) if salt.len() <= 16 && digest.len() == 86 && b64(salt) && b64(digest) => Ok(()),
            _ => Err("not a SHA-512-crypt hash ($6$[rounds=N$]salt$hash)".into()),
        };
    }
    if hash.starts_with("$argon2") {
        return PasswordHash::new(hash)
            .map(|_| ())
            .map_err(|e| format!("not an argon2 hash: {e}"));
    }
    Err(
        "must be a hash from `petrel hash-password` (argon2id) or a SHA-512-crypt ($6$) hash"
            .into(),
    )
}

/// Whether `password` matches the stored `hash`. A malformed hash never
/// matches.
pub fn verify_password(password: &str, hash: &str) -> bool {
    if hash.starts_with("$6$") {
        return check_hash(hash).is_ok() && sha_crypt::sha512_check(password, hash).is_ok();
    }
    match PasswordHash::new(hash) {
        Ok(parsed) => Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok(),
        Err(_) => false,
    }
}

/// Logs a failed login: the client, the protocol and mechanism, and the
/// login name given (as Postfix's `sasl_username`), so an administrator can
/// tell a mistyped password from a guessing run. The name is the client's
/// input: control characters and non-ASCII are escaped and it is cut at
/// 256 characters, so it cannot forge or flood a log line. The password is
/// never logged.
pub fn log_failure(client: &str, protocol: &str, mechanism: &str, login: &str) {
    let shown: String = login.chars().take(256).collect();
    tracing::info!(
        client = %client,
        protocol = %protocol,
        mechanism = %mechanism,
        login = %shown.escape_default(),
        "authentication failed"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_round_trips_and_rejects_wrong_password() {
        let h = hash_password("correct horse").expect("hash");
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password("correct horse", &h));
        assert!(!verify_password("battery staple", &h));
        assert!(!verify_password("x", "not a hash"));
    }

    /// Made with `openssl passwd -6 -salt saltsalt secret` (glibc crypt).
    const SHA512: &str = "$6$saltsalt$TVLlQcbpFVof5W3Yz4DTP6gRstiNuHwwTt6GLc1E5n0U0aDehy0S5knV8wiOQSpT0Y77vwPZN.Pq.H91p5hVO1";

    #[test]
    fn sha512_crypt_hashes_are_checked() {
        assert_eq!(check_hash(SHA512), Ok(()));
        assert!(verify_password("secret", SHA512));
        assert!(!verify_password("Secret", SHA512));
        assert!(check_hash("$6$saltsalt$short").is_err());
        assert!(check_hash("$6$rounds=10$saltsalt$x").is_err());
        assert!(check_hash("$1$md5$x").is_err());
    }
}
