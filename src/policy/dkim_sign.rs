//! DKIM signing at intake (RFC 6376, RFC 8463 for Ed25519).
//!
//! What is signed: a message from a trusted origin (an authenticated
//! user, `sendmail`, a `relay_from` host) with at least one recipient in a
//! remote domain, with the first `[[dkim.keys]]` key of the domain in its
//! `From:` (of the envelope sender when there is no `From:`). A message
//! already signed for that domain (an internal server's mail relayed by
//! the edge) is not signed twice. The signature is made at intake, after
//! every header petrel adds and before the message is queued, so each
//! delivery attempt sends the same signed bytes.
//!
//! Headers signed (relaxed/relaxed): `From` twice (over-signed, so no
//! second `From:` can be added), `To`, `Cc`, `Subject`, `Date`,
//! `Message-ID`, the MIME headers, `Reply-To`, `In-Reply-To`,
//! `References`; the ones a message lacks are signed as absent.
//!
//! Streaming: the signature is computed over content chunks
//! (`sign_chunks`), so a spool that keeps the content in chunks can feed
//! them without joining them; the signature is a header line to put in
//! front of the content.

use mail_auth::common::headers::HeaderWriter as _;
use mail_auth::dkim::{Canonicalization, DkimSigner};

use super::keys::{self, LoadedKey};
use crate::config::Config;
use crate::spool::Recipient;

/// Headers in `h=`; `From` twice over-signs it (RFC 6376 §8.15).
pub const SIGNED_HEADERS: &[&str] = &[
    "From",
    "From",
    "To",
    "Cc",
    "Subject",
    "Date",
    "Message-ID",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
    "Reply-To",
    "In-Reply-To",
    "References",
];

/// Why a message that should be signed could not be. Intake refuses it
/// with `451 4.7.0` (the client tries again later) unless
/// `dkim.allow_unsigned` is set, in which case it goes unsigned and the
/// log says why.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    /// The key file is missing or unreadable.
    #[error(transparent)]
    Key(#[from] keys::KeyError),
    /// The signature could not be made (e.g. no header section).
    #[error("DKIM signing with {selector}._domainkey.{domain} failed: {reason}")]
    Sign {
        /// `d=`.
        domain: String,
        /// `s=`.
        selector: String,
        /// What the library said.
        reason: String,
    },
}

/// The domain part of the first address in a `From:` value.
fn from_domain(value: &str) -> Option<String> {
    let addr = match (value.rfind('<'), value.rfind('>')) {
        (Some(a), Some(b)) if a < b => &value[a + 1..b],
        _ => value.split(',').next().unwrap_or(value),
    };
    let domain = addr.trim().rsplit_once('@')?.1.trim();
    (!domain.is_empty()).then(|| domain.trim_end_matches('.').to_ascii_lowercase())
}

/// Whether a message from this origin to these recipients may be signed
/// at all (before its content is looked at): trusted, keys configured, a
/// remote recipient.
pub fn may_sign(config: &Config, trusted: bool, recipients: &[Recipient]) -> bool {
    trusted
        && !config.dkim.keys.is_empty()
        && recipients.iter().any(|r| {
            r.address
                .rsplit_once('@')
                .is_some_and(|(_, d)| !config.domains.is_local(d))
        })
}

/// The key entry to sign with, if this message is to be signed.
pub fn key_for<'c>(
    config: &'c Config,
    trusted: bool,
    sender: &str,
    recipients: &[Recipient],
    content: &[u8],
) -> Option<&'c crate::config::DkimKey> {
    if !may_sign(config, trusted, recipients) {
        return None;
    }
    let fields = crate::headers::fields(content);
    let domain = fields
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("From"))
        .and_then(|(_, v)| from_domain(v))
        .or_else(|| from_domain(sender))?;
    let entry = config.dkim.keys.iter().find(|k| k.domain == domain)?;
    let already = fields.iter().any(|(n, v)| {
        n.eq_ignore_ascii_case("DKIM-Signature")
            && v.split(';').any(|t| {
                t.trim()
                    .strip_prefix("d=")
                    .is_some_and(|d| d.trim().eq_ignore_ascii_case(&domain))
            })
    });
    (!already).then_some(entry)
}

/// The signature of a delivery status notification petrel writes (From
/// `MAILER-DAEMON@` the server's host name) for a remote sender: the key
/// of the host name's domain or of the nearest parent domain that has one
/// (`d=example.test` for `mx.example.test` aligns under DMARC's relaxed
/// rule). `None` when no key fits or the recipients are all local. A
/// signing failure sends the report unsigned (logged): a bounce is never
/// held back for it.
pub fn sign_report(config: &Config, recipients: &[Recipient], content: &[u8]) -> Option<String> {
    if !may_sign(config, true, recipients) {
        return None;
    }
    let host = config.server.hostname.to_ascii_lowercase();
    let entry = config
        .dkim
        .keys
        .iter()
        .filter(|k| {
            let d = k.domain.to_ascii_lowercase();
            host == d || host.ends_with(&format!(".{d}"))
        })
        .max_by_key(|k| k.domain.len())?;
    match sign_with(entry, content) {
        Ok(h) => Some(h),
        Err(e) => {
            tracing::warn!(reason = %e, "dkim: report sent unsigned");
            None
        }
    }
}

/// The `DKIM-Signature:` header (ending in CRLF) over `chunks`, which
/// together are the message.
pub fn sign_chunks<'a>(
    key: &LoadedKey,
    chunks: impl IntoIterator<Item = &'a [u8]>,
) -> Result<String, SignError> {
    fn run<'a, T: mail_auth::common::crypto::SigningKey>(
        key: T,
        d: &str,
        s: &str,
        chunks: impl IntoIterator<Item = &'a [u8]>,
    ) -> mail_auth::Result<String> {
        let signer = DkimSigner::from_key(key)
            .domain(d)
            .selector(s)
            .headers(SIGNED_HEADERS.iter().copied())
            .header_canonicalization(Canonicalization::Relaxed)
            .body_canonicalization(Canonicalization::Relaxed);
        let mut stream = signer.sign_streaming();
        for c in chunks {
            stream.write(c);
        }
        Ok(stream.finish()?.to_header())
    }
    let err = |e: mail_auth::Error| SignError::Sign {
        domain: key.domain.clone(),
        selector: key.selector.clone(),
        reason: e.to_string(),
    };
    // The signer takes its key by value; the loaded key is shared, so the
    // signer borrows it through a reference wrapper.
    let header = run(ByRef(&key.key), &key.domain, &key.selector, chunks).map_err(err)?;
    Ok(if header.ends_with("\r\n") {
        header
    } else {
        format!("{header}\r\n")
    })
}

/// A signing key lent to a signer (or an ARC sealer).
pub(crate) struct ByRef<'k, K>(pub(crate) &'k K);

impl<K: mail_auth::common::crypto::SigningKey> mail_auth::common::crypto::SigningKey
    for ByRef<'_, K>
{
    type Hasher = K::Hasher;

    fn sign(&self, input: impl mail_auth::common::headers::Writable) -> mail_auth::Result<Vec<u8>> {
        self.0.sign(input)
    }

    fn algorithm(&self) -> mail_auth::common::crypto::Algorithm {
        self.0.algorithm()
    }
}

/// Signs if the message is to be signed: `Ok(Some(header))` to put in
/// front of the content, `Ok(None)` when nothing is to be signed or
/// signing failed and `dkim.allow_unsigned` lets it go unsigned (logged
/// with the reason). Runs the cryptography where it is called: async
/// callers use `sign_off_thread`.
pub fn sign(
    config: &Config,
    trusted: bool,
    sender: &str,
    recipients: &[Recipient],
    content: &[u8],
) -> Result<Option<String>, SignError> {
    let Some(entry) = key_for(config, trusted, sender, recipients, content) else {
        return Ok(None);
    };
    allow(config, sign_with(entry, content))
}

/// The signature of `content` with the key of `entry`.
fn sign_with(entry: &crate::config::DkimKey, content: &[u8]) -> Result<String, SignError> {
    keys::load(entry)
        .map_err(SignError::from)
        .and_then(|k| sign_chunks(&k, [content]))
}

fn allow(config: &Config, result: Result<String, SignError>) -> Result<Option<String>, SignError> {
    match result {
        Ok(h) => Ok(Some(h)),
        Err(e) if config.dkim.allow_unsigned => {
            tracing::warn!(reason = %e, "dkim: sending unsigned (dkim.allow_unsigned)");
            Ok(None)
        }
        Err(e) => {
            tracing::error!(reason = %e, "dkim: signing failed; message refused for now");
            Err(e)
        }
    }
}

/// `sign` with the cryptography on tokio's blocking pool (which takes
/// the content). Callers check `may_sign` first, so that only messages
/// that may be signed are copied or read back.
pub async fn sign_off_thread(
    config: &Config,
    trusted: bool,
    sender: &str,
    recipients: &[Recipient],
    owned: Vec<u8>,
) -> Result<Option<String>, SignError> {
    let Some(entry) = key_for(config, trusted, sender, recipients, &owned).cloned() else {
        return Ok(None);
    };
    let result = tokio::task::spawn_blocking(move || {
        keys::load(&entry)
            .map_err(SignError::from)
            .and_then(|k| sign_chunks(&k, [owned.as_slice()]))
    })
    .await
    .unwrap_or_else(|e| {
        Err(SignError::Sign {
            domain: String::new(),
            selector: String::new(),
            reason: format!("signing task failed: {e}"),
        })
    });
    allow(config, result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_domain_takes_the_angle_address() {
        assert_eq!(
            from_domain("Alice <alice@Example.TEST>").as_deref(),
            Some("example.test")
        );
        assert_eq!(from_domain("bob@x.test").as_deref(), Some("x.test"));
        assert_eq!(from_domain("undisclosed"), None);
    }

    #[test]
    fn signs_with_both_algorithms() {
        for alg in [keys::Algorithm::Ed25519, keys::Algorithm::Rsa2048] {
            let new = keys::generate(alg).expect("key");
            let key = LoadedKey {
                domain: "example.test".into(),
                selector: "s1".into(),
                key: keys::parse(std::path::Path::new("k"), new.pem.as_bytes()).expect("parse"),
            };
            let msg = b"From: a@example.test\r\nTo: b@partner.test\r\nSubject: x\r\n\r\nbody\r\n";
            let h = sign_chunks(&key, [&msg[..10], &msg[10..]]).expect("sign");
            assert!(h.starts_with("DKIM-Signature: v=1;"), "{h}");
            assert!(h.contains("d=example.test"), "{h}");
            assert!(h.to_ascii_lowercase().contains("from:from"), "{h}");
            assert!(h.ends_with("\r\n"));
        }
    }
}
