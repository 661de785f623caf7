//! Sender authentication and abuse limits: the inbound checks of a session
//! and the DKIM signature of what leaves.
//!
//! - `keys` loads `[[dkim.keys]]` (PEM, RSA or Ed25519) and makes new ones
//!   (`petrel dkim keygen`).
//! - `dkim_sign` signs at intake (RFC 6376, RFC 8463).
//! - `auth_results` runs SPF (at MAIL), DKIM, DMARC and ARC (after DATA),
//!   writes the one `Authentication-Results:` header (RFC 8601), seals ARC
//!   on an edge, and says whether the message is refused or quarantined.
//! - `dnsbl` looks the client up in DNS block and allow lists at connect.
//! - `denylist` holds the senders, domains and clients refused from the
//!   console (data the daemon owns, in the spool).
//! - `rate` counts connections, messages and recipients per client and
//!   minute (as Postfix's anvil).
//!
//! Nothing here writes to the spool or replies to a client: each function
//! returns a decision (a `Reply` to send, a header to add) and the SMTP
//! session or intake acts on it. DNS comes from the daemon's hickory
//! resolver (its cache is shared); cryptography runs on tokio's blocking
//! pool, never on a runtime worker.

pub mod auth_results;
pub mod denylist;
pub mod dkim_sign;
pub mod dnsbl;
pub mod keys;
pub mod rate;

use std::time::Duration;

/// The longest any single policy look-up (a DNSBL zone, the client's PTR)
/// may hold a session: the resolver's own time-out. A look-up that takes
/// longer counts as "not listed".
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// The header petrel adds when DMARC asks for quarantine (`p=quarantine`,
/// enforced): local delivery files the message in the recipient's Junk
/// folder. Removed from every message that arrives from an untrusted
/// client, so only petrel's own verdict is ever seen.
pub const JUNK_HEADER: &str = "X-Petrel-Junk";

/// Whether the header section of `content` carries petrel's quarantine
/// verdict (`X-Petrel-Junk:`), for local delivery to file it in Junk.
pub fn is_junk(content: &[u8]) -> bool {
    crate::headers::count(content, JUNK_HEADER) > 0
}
