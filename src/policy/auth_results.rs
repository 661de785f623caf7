//! Inbound sender authentication of mail from untrusted clients: SPF at
//! MAIL FROM (RFC 7208; the HELO identity for `<>`), then after DATA DKIM
//! (RFC 6376, RFC 8463), DMARC (RFC 7489) and ARC (RFC 8617), written into
//! one `Authentication-Results:` header (RFC 8601) whose authserv-id is
//! `server.hostname`.
//!
//! Before the checks, every `Authentication-Results:` header that claims
//! petrel's authserv-id and every `X-Petrel-Junk:` header is removed from
//! the message (RFC 8601 §5: a forged result must not be believed). On an
//! edge (a message for a relay domain) with a DKIM key for that domain,
//! the message is ARC-sealed so the internal server, or any later hop,
//! can see what the edge found.
//!
//! Policy (`smtp.inbound.checks`): `tag` only writes the result;
//! `enforce` for SPF refuses a `fail` at MAIL with `550 5.7.23`; for DMARC
//! a `fail` under `p=reject` gets `550 5.7.1` and under `p=quarantine`
//! the `X-Petrel-Junk:` header (local delivery files it in Junk); for
//! DKIM a message whose signatures all fail (none passes, none
//! temporarily unverifiable) gets `550 5.7.20`. ARC is recorded, never
//! enforced: petrel keeps no list of sealers to trust.
//!
//! The verification runs on tokio's blocking pool (RSA and hashing are
//! CPU work) and drives its DNS look-ups from there on the daemon's
//! resolver, whose cache it shares. It needs the whole message: with a
//! content stream spooled in chunks, the chunks are read back into one
//! buffer on that pool (the size is bounded by `max_message_size`);
//! only the header section is rewritten.

use std::net::IpAddr;

use mail_auth::arc::{ArcSealer, ArcSet};
use mail_auth::common::headers::HeaderWriter as _;
use mail_auth::dkim::Canonicalization;
use mail_auth::dmarc::Policy;
use mail_auth::dmarc::verify::DmarcParameters;
use mail_auth::spf::verify::SpfParameters;
use mail_auth::{
    ArcOutput, AuthenticatedMessage, AuthenticationResults, DkimOutput, DkimResult, DmarcResult,
    MessageAuthenticator, SpfOutput, SpfResult,
};

use super::{JUNK_HEADER, LOOKUP_TIMEOUT};
use crate::config::{CheckMode, Config};
use crate::smtp::reply::Reply;

/// The client side of a transaction, as the checks need it.
#[derive(Debug, Clone)]
pub struct Client {
    /// The client's address.
    pub ip: IpAddr,
    /// The HELO/EHLO name.
    pub helo: String,
    /// MAIL FROM; empty for `<>`.
    pub sender: String,
}

/// SPF at MAIL FROM. `None` when neither SPF nor DMARC is checked.
pub async fn spf(
    resolver: &hickory_resolver::TokioResolver,
    config: &Config,
    client: &Client,
) -> Option<SpfOutput> {
    let checks = &config.inbound.checks;
    if checks.spf == CheckMode::Off && checks.dmarc == CheckMode::Off {
        return None;
    }
    let auth = MessageAuthenticator(resolver.clone());
    let host = config.server.hostname.as_str();
    let params = if client.sender.is_empty() {
        SpfParameters::verify_ehlo(client.ip, &client.helo, host)
    } else {
        SpfParameters::verify_mail_from(client.ip, &client.helo, host, &client.sender)
    };
    // RFC 7208 §4.6.4 bounds the look-ups; this bounds the time.
    match tokio::time::timeout(2 * LOOKUP_TIMEOUT, auth.verify_spf(params)).await {
        Ok(out) => Some(out),
        Err(_) => {
            Some(SpfOutput::new(spf_domain(client).to_string()).with_result(SpfResult::TempError))
        }
    }
}

fn spf_domain(client: &Client) -> &str {
    client
        .sender
        .rsplit_once('@')
        .map_or(client.helo.as_str(), |(_, d)| d)
}

/// The reply to MAIL when SPF is enforced and failed (`-all`).
pub fn spf_refusal(config: &Config, client: &Client, out: &SpfOutput) -> Option<Reply> {
    (config.inbound.checks.spf == CheckMode::Enforce && out.result() == SpfResult::Fail).then(
        || {
            Reply::new(
                550,
                "5.7.23",
                format!(
                    "SPF validation failed: {} does not designate {} as permitted sender",
                    spf_domain(client),
                    crate::config::canonical_ip(client.ip)
                ),
            )
        },
    )
}

/// What the checks after DATA decided.
#[derive(Debug, Default)]
pub struct Verdict {
    /// Refuse the message with this reply (DMARC `p=reject`, DKIM).
    pub refusal: Option<Reply>,
    /// DMARC asked for quarantine: the `X-Petrel-Junk:` header is among
    /// the added headers.
    pub junk: bool,
    /// The `Authentication-Results:` header as added, for logs and tests.
    pub results: String,
    /// Every header to put in front of the message (ending in CRLF).
    pub headers: String,
}

/// Removes from the header section every `Authentication-Results:` field
/// whose authserv-id is `hostname` and every `X-Petrel-Junk:` field.
pub fn strip_own_results(content: &[u8], hostname: &str) -> Option<Vec<u8>> {
    strip(content, hostname, true)
}

/// For a trusted client (an authenticated user, `relay_from`): only the
/// `Authentication-Results:` fields claiming `hostname` go; an edge's
/// `X-Petrel-Junk:` verdict stays for local delivery. `None`: unchanged.
pub fn strip_forged_results(content: &[u8], hostname: &str) -> Option<Vec<u8>> {
    strip(content, hostname, false)
}

fn strip(content: &[u8], hostname: &str, junk_too: bool) -> Option<Vec<u8>> {
    let head_len = crate::headers::section(content).len();
    let head = &content[..head_len];
    // Fields as byte ranges: a field starts at a line not beginning with
    // white space and runs to the next such line.
    let mut starts = vec![0usize];
    let mut i = 0;
    while let Some(p) = memchr::memchr(b'\n', &head[i..]) {
        let next = i + p + 1;
        if next < head.len() && !matches!(head[next], b' ' | b'\t') {
            starts.push(next);
        }
        i = next;
    }
    starts.push(head.len());
    let mut drop_any = false;
    let keep: Vec<bool> = starts
        .windows(2)
        .map(|w| {
            let field = &head[w[0]..w[1]];
            let (name, value) = match memchr::memchr(b':', field) {
                Some(c) => (&field[..c], &field[c + 1..]),
                None => return true,
            };
            let name = String::from_utf8_lossy(name);
            let name = name.trim();
            let ours = if name.eq_ignore_ascii_case("Authentication-Results") {
                // RFC 8601 §2.2: authserv-id, then optional version, then ';'.
                let v = String::from_utf8_lossy(value);
                let id = v
                    .split(';')
                    .next()
                    .unwrap_or("")
                    .split_whitespace()
                    .next()
                    .unwrap_or("");
                id.eq_ignore_ascii_case(hostname)
            } else {
                junk_too && name.eq_ignore_ascii_case(JUNK_HEADER)
            };
            drop_any |= ours;
            !ours
        })
        .collect();
    if !drop_any {
        return None;
    }
    let mut out = Vec::with_capacity(content.len());
    for (w, keep) in starts.windows(2).zip(keep) {
        if keep {
            out.extend_from_slice(&head[w[0]..w[1]]);
        }
    }
    out.extend_from_slice(&content[head_len..]);
    Some(out)
}

/// The key to ARC-seal with: on an edge, a message from outside for a
/// relay domain that has a `[[dkim.keys]]` entry.
fn seal_key<'c>(config: &'c Config, recipients: &[String]) -> Option<&'c crate::config::DkimKey> {
    recipients.iter().find_map(|r| {
        let d = r.rsplit_once('@')?.1.to_ascii_lowercase();
        if !config.domains.is_relay(&d) {
            return None;
        }
        config.dkim.keys.iter().find(|k| k.domain == d)
    })
}

/// The checks after DATA for an untrusted client over `content` (the
/// whole message as it will be queued, forged results already removed:
/// `strip_own_results`), on the blocking pool. The verdict carries the
/// headers to put in front: `Authentication-Results:`, an ARC set on an
/// edge, `X-Petrel-Junk:` for quarantine.
pub async fn inbound(
    resolver: &hickory_resolver::TokioResolver,
    config: std::sync::Arc<Config>,
    client: Client,
    spf: Option<SpfOutput>,
    recipients: Vec<String>,
    content: Vec<u8>,
) -> Verdict {
    let resolver = resolver.clone();
    let handle = tokio::runtime::Handle::current();
    let job = tokio::task::spawn_blocking(move || {
        handle.block_on(check(
            &MessageAuthenticator(resolver),
            &config,
            &client,
            spf.as_ref(),
            &recipients,
            &content,
        ))
    });
    match job.await {
        Ok(v) => v,
        // The checks panicked: refused for now rather than queued
        // unchecked.
        Err(e) => {
            tracing::error!(error = %e, "authentication checks failed");
            Verdict {
                refusal: Some(Reply::new(
                    451,
                    "4.3.0",
                    "Error: internal error; try again later",
                )),
                ..Verdict::default()
            }
        }
    }
}

async fn check(
    auth: &MessageAuthenticator,
    config: &Config,
    client: &Client,
    spf: Option<&SpfOutput>,
    recipients: &[String],
    content: &[u8],
) -> Verdict {
    let checks = &config.inbound.checks;
    let hostname = config.server.hostname.as_str();
    let mut verdict = Verdict::default();
    let Some(msg) = AuthenticatedMessage::parse(content) else {
        let ar = AuthenticationResults::new(hostname).to_header();
        verdict.results = ar.clone();
        verdict.headers = ar;
        return verdict;
    };
    let limit = 2 * LOOKUP_TIMEOUT;
    let dkim: Vec<DkimOutput> = if checks.dkim != CheckMode::Off || checks.dmarc != CheckMode::Off {
        tokio::time::timeout(limit, auth.verify_dkim(&msg))
            .await
            .unwrap_or_else(|_| {
                vec![DkimOutput::temp_err(mail_auth::Error::Io(
                    "DNS time-out".into(),
                ))]
            })
    } else {
        Vec::new()
    };
    let arc: ArcOutput = if checks.arc != CheckMode::Off {
        tokio::time::timeout(limit, auth.verify_arc(&msg))
            .await
            .unwrap_or_default()
    } else {
        ArcOutput::default()
    };
    let from = msg.from.first().map(|s| s.as_str()).unwrap_or("");
    let mut ar = AuthenticationResults::new(hostname);
    if checks.dkim != CheckMode::Off {
        ar = ar.with_dkim_results(&dkim, from);
    }
    if let (Some(spf), true) = (spf, checks.spf != CheckMode::Off) {
        ar = if client.sender.is_empty() {
            ar.with_spf_ehlo_result(spf, client.ip, &client.helo)
        } else {
            ar.with_spf_mailfrom_result(spf, client.ip, &client.sender, &client.helo)
        };
    }
    if checks.arc != CheckMode::Off {
        ar = ar.with_arc_result(&arc, client.ip);
    }
    if checks.dmarc != CheckMode::Off {
        let none = SpfOutput::new(String::new());
        let spf = spf.unwrap_or(&none);
        let mail_from_domain = spf_domain(client).to_string();
        let dmarc = tokio::time::timeout(
            limit,
            auth.verify_dmarc(DmarcParameters::new(&msg, &dkim, &mail_from_domain, spf)),
        )
        .await
        .ok();
        if let Some(dmarc) = dmarc {
            ar = ar.with_dmarc_result(&dmarc);
            let failed = matches!(dmarc.result(), DmarcResult::Fail(_));
            if failed && checks.dmarc == CheckMode::Enforce {
                match dmarc.policy() {
                    Policy::Reject => {
                        verdict.refusal = Some(Reply::new(
                            550,
                            "5.7.1",
                            format!(
                                "Delivery not authorized, message refused: DMARC policy of {} is reject",
                                dmarc.domain()
                            ),
                        ))
                    }
                    Policy::Quarantine => verdict.junk = true,
                    Policy::None | Policy::Unspecified => {}
                }
            }
        }
    }
    if checks.dkim == CheckMode::Enforce && verdict.refusal.is_none() {
        let any_fail = dkim.iter().any(|d| {
            // mail-auth reports a body hash mismatch as neutral.
            matches!(
                d.result(),
                DkimResult::Fail(_) | DkimResult::PermError(_) | DkimResult::Neutral(_)
            )
        });
        let any_ok = dkim
            .iter()
            .any(|d| matches!(d.result(), DkimResult::Pass | DkimResult::TempError(_)));
        if any_fail && !any_ok {
            verdict.refusal = Some(Reply::new(550, "5.7.20", "No passing DKIM signature found"));
        }
    }
    let mut ar_header = ar.to_header();
    if checks.dkim != CheckMode::Off && dkim.is_empty() {
        // RFC 8601 §2.7.1: "none", the message was not signed; mail-auth
        // writes nothing for an empty list.
        let at = "Authentication-Results: ".len() + hostname.len();
        if ar_header.get(at..at + 1) == Some(";") {
            ar_header.insert_str(at, ";\r\n\tdkim=none");
        } else if ar_header.get(at..).is_some_and(|t| t.starts_with("; none")) {
            ar_header.replace_range(at.., ";\r\n\tdkim=none\r\n");
        }
    }
    verdict.results = ar_header.clone();
    let mut prefix = String::new();
    if verdict.refusal.is_none()
        && checks.arc != CheckMode::Off
        && arc.can_be_sealed()
        && let Some(entry) = seal_key(config, recipients)
    {
        match seal(entry, &msg, &ar, &arc) {
            Ok(set) => prefix.push_str(&set),
            Err(e) => tracing::warn!(reason = %e, "arc: message not sealed"),
        }
    }
    prefix.push_str(&ar_header);
    if verdict.junk {
        prefix.push_str(&format!(
            "{JUNK_HEADER}: dmarc=fail policy.dmarc=quarantine header.from={}\r\n",
            from.rsplit_once('@').map_or(from, |(_, d)| d)
        ));
    }
    verdict.headers = prefix;
    verdict
}

/// The ARC set (ARC-Seal, ARC-Message-Signature,
/// ARC-Authentication-Results) sealing `msg` with `entry`'s key.
fn seal(
    entry: &crate::config::DkimKey,
    msg: &AuthenticatedMessage<'_>,
    ar: &AuthenticationResults<'_>,
    arc: &ArcOutput<'_>,
) -> Result<String, String> {
    let key = super::keys::load(entry).map_err(|e| e.to_string())?;
    let sealer = ArcSealer::from_key(super::dkim_sign::ByRef(&key.key))
        .domain(key.domain.clone())
        .selector(key.selector.clone())
        .headers(
            super::dkim_sign::SIGNED_HEADERS
                .iter()
                .copied()
                .chain(["DKIM-Signature"]),
        )
        .header_canonicalization(Canonicalization::Relaxed)
        .body_canonicalization(Canonicalization::Relaxed);
    let set: ArcSet = sealer.seal(msg, ar, arc).map_err(|e| e.to_string())?;
    Ok(set.to_header())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_results_are_stripped_and_others_kept() {
        let m = b"Received: x\r\nAuthentication-Results: MX.example.test;\r\n\tdkim=pass\r\nAuthentication-Results: other.test; spf=pass\r\nX-Petrel-Junk: yes\r\nSubject: s\r\n\r\nAuthentication-Results: mx.example.test; body\r\n";
        let out = strip_own_results(m, "mx.example.test").expect("changed");
        assert_eq!(
            String::from_utf8_lossy(&out),
            "Received: x\r\nAuthentication-Results: other.test; spf=pass\r\nSubject: s\r\n\r\nAuthentication-Results: mx.example.test; body\r\n"
        );
        assert!(strip_own_results(b"Subject: s\r\n\r\nb\r\n", "mx.example.test").is_none());
        let kept = strip_forged_results(m, "mx.example.test").expect("changed");
        assert!(String::from_utf8_lossy(&kept).contains("X-Petrel-Junk: yes\r\n"));
    }
}
