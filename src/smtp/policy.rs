//! The SMTP session's decisions, as pure functions of the configuration and
//! what the client said: the connection lists, the MAIL checks, the relay
//! decision and the RCPT policy. The session calls them, and so does
//! `petrel explain`, so the two cannot drift. Each answer names the
//! configuration key that decided (`Decision::key`).

use std::net::IpAddr;

use crate::config::{AuthMode, Config, HostPattern, Listener, Protocol, glob_match};
use crate::policy::denylist::DenyList;

use super::reply::Reply;

/// What decided, when something passed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The configuration key (with the entry's index where a list decided).
    pub key: String,
    /// Why, in words.
    pub detail: String,
}

/// A refusal: the reply a session sends and the key that decided.
#[derive(Debug, Clone)]
pub struct Refusal {
    /// The reply.
    pub reply: Reply,
    /// The configuration key.
    pub key: String,
    /// Why, in words.
    pub detail: String,
}

fn d(key: impl Into<String>, detail: impl Into<String>) -> Decision {
    Decision {
        key: key.into(),
        detail: detail.into(),
    }
}

/// `what, added by WHO at WHEN` for a refusal by a console entry.
fn added(what: &str, e: &crate::policy::denylist::Entry) -> String {
    let when = chrono::DateTime::from_timestamp(e.added_at, 0)
        .map(|t| t.format("%Y-%m-%d %H:%M UTC").to_string())
        .unwrap_or_default();
    format!("{what} added by {} at {when}", e.added_by)
}

fn refuse(reply: Reply, key: impl Into<String>, detail: impl Into<String>) -> Refusal {
    Refusal {
        reply,
        key: key.into(),
        detail: detail.into(),
    }
}

/// The text of a host pattern as configured.
pub fn pattern_text(p: &HostPattern) -> String {
    match p {
        HostPattern::Net(n) => n.to_string(),
        HostPattern::Name(s) => s.clone(),
    }
}

fn first_match(list: &[HostPattern], ip: IpAddr, name: Option<&str>) -> Option<usize> {
    list.iter().position(|p| p.matches(ip, name))
}

/// The connection lists: `554 5.7.1` at greeting for clients
/// `deny_connections_from` names or `allow_connections_from` (when set)
/// does not.
pub fn connection(
    cfg: &Config,
    deny: &DenyList,
    ip: IpAddr,
    name: Option<&str>,
) -> Result<Decision, Refusal> {
    let inbound = &cfg.inbound;
    let refused = || Reply::new(554, "5.7.1", "Connection refused by policy");
    if let Some(e) = deny.client(ip) {
        return Err(refuse(
            refused(),
            "deny list (console)",
            added(&format!("client {ip}"), e),
        ));
    }
    if let Some(i) = first_match(&inbound.deny_connections_from, ip, name) {
        return Err(refuse(
            refused(),
            format!("smtp.inbound.deny_connections_from[{i}]"),
            format!(
                "{ip} matches {}",
                pattern_text(&inbound.deny_connections_from[i])
            ),
        ));
    }
    if inbound.allow_connections_from.is_empty() {
        return Ok(d(
            "smtp.inbound.allow_connections_from",
            "empty: everyone may connect",
        ));
    }
    match first_match(&inbound.allow_connections_from, ip, name) {
        Some(i) => Ok(d(
            format!("smtp.inbound.allow_connections_from[{i}]"),
            format!(
                "{ip} matches {}",
                pattern_text(&inbound.allow_connections_from[i])
            ),
        )),
        None => Err(refuse(
            refused(),
            "smtp.inbound.allow_connections_from",
            format!("{ip} matches no entry"),
        )),
    }
}

/// What MAIL FROM declared, for `mail`.
#[derive(Debug, Clone, Copy, Default)]
pub struct MailParams {
    /// The session said EHLO (not HELO).
    pub esmtp: bool,
    /// SIZE=.
    pub size: Option<u64>,
    /// BODY=8BITMIME.
    pub body_8bit: bool,
    /// SMTPUTF8.
    pub smtputf8: bool,
}

/// The MAIL checks after the protocol's own (HELO first, no nested MAIL):
/// authentication the listener requires, a submission sender owned by its
/// user, parameters that need EHLO, the size limit, `deny_senders`.
pub fn mail(
    cfg: &Config,
    deny: &DenyList,
    listener: &Listener,
    user: Option<&str>,
    sender: &str,
    params: MailParams,
) -> Result<Decision, Refusal> {
    let lkey = |k: &str| format!("listeners[{}].{k}", listener.name);
    if listener.auth == AuthMode::Required && user.is_none() {
        return Err(refuse(
            Reply::new(530, "5.7.0", "Authentication required"),
            lkey("auth"),
            "the listener requires AUTH",
        ));
    }
    if listener.protocol == Protocol::Submission
        && let Some(user) = user
    {
        let owned = cfg
            .directory
            .user(user)
            .is_some_and(|u| u.addresses.iter().any(|a| a.eq_ignore_ascii_case(sender)));
        if !owned {
            return Err(refuse(
                Reply::new(
                    553,
                    "5.7.1",
                    format!("<{sender}>: Sender address rejected: not owned by user {user}"),
                ),
                format!("users[{user}].addresses"),
                format!("{sender} is not one of {user}'s addresses"),
            ));
        }
    }
    if !params.esmtp && (params.size.is_some() || params.body_8bit || params.smtputf8) {
        return Err(refuse(
            Reply::new(555, "5.5.4", "Error: parameters need EHLO"),
            "RFC 5321",
            "MAIL parameters after HELO",
        ));
    }
    if params
        .size
        .is_some_and(|s| s > cfg.inbound.max_message_size)
    {
        return Err(refuse(
            Reply::new(552, "5.3.4", "Message size exceeds fixed limit"),
            "smtp.inbound.max_message_size",
            format!("SIZE over {}", cfg.inbound.max_message_size),
        ));
    }
    let lower = sender.to_lowercase();
    if !lower.is_empty()
        && let Some(i) = cfg
            .inbound
            .deny_senders
            .iter()
            .position(|p| glob_match(p, &lower))
    {
        return Err(refuse(
            Reply::new(
                550,
                "5.7.1",
                format!("<{sender}>: Sender address rejected: Access denied"),
            ),
            format!("smtp.inbound.deny_senders[{i}]"),
            format!("{sender} matches {}", cfg.inbound.deny_senders[i]),
        ));
    }
    if let Some(e) = deny.sender(&lower) {
        return Err(refuse(
            Reply::new(
                550,
                "5.7.1",
                format!("<{sender}>: Sender address rejected: Access denied"),
            ),
            "deny list (console)",
            added(&format!("{} {}", e.kind.as_str(), e.value), e),
        ));
    }
    Ok(d(
        "smtp.inbound.deny_senders",
        if sender.is_empty() {
            "the null sender <>".to_string()
        } else {
            format!("{sender} matches no entry")
        },
    ))
}

/// Why a client may relay: its authenticated user, or its `relay_from`
/// entry. `None`: it may not.
pub fn relay_client(
    cfg: &Config,
    ip: IpAddr,
    name: Option<&str>,
    user: Option<&str>,
) -> Option<Decision> {
    if let Some(u) = user {
        return Some(d("AUTH", format!("authenticated as {u}")));
    }
    first_match(&cfg.inbound.relay_from, ip, name).map(|i| {
        d(
            format!("smtp.inbound.relay_from[{i}]"),
            format!("{ip} matches {}", pattern_text(&cfg.inbound.relay_from[i])),
        )
    })
}

/// The RCPT policy: the deny list, relay control, local recipient
/// verification. `relay`: `relay_client`'s answer. The next hop's probe
/// (`verify_relay_recipients`) comes after this and is the session's.
pub fn rcpt(cfg: &Config, address: &str, relay: Option<&Decision>) -> Result<Decision, Refusal> {
    let lower = address.to_lowercase();
    if let Some(i) = cfg
        .inbound
        .deny_recipients
        .iter()
        .position(|p| glob_match(p, &lower))
    {
        return Err(refuse(
            Reply::new(
                550,
                "5.7.1",
                format!("<{address}>: Recipient address rejected: Access denied"),
            ),
            format!("smtp.inbound.deny_recipients[{i}]"),
            format!("{address} matches {}", cfg.inbound.deny_recipients[i]),
        ));
    }
    let (local_part, domain) = address.rsplit_once('@').unwrap_or((address, ""));
    let relay_denied = || {
        refuse(
            Reply::new(554, "5.7.1", format!("<{address}>: Relay access denied")),
            "smtp.inbound.relay_from",
            "not a local or relay domain, and the client may not relay",
        )
    };
    let unknown = |key: &str, detail: &str| {
        refuse(
            Reply::new(
                550,
                "5.1.1",
                format!(
                    "<{address}>: Recipient address rejected: User unknown in local recipient table"
                ),
            ),
            key,
            detail,
        )
    };
    let routing = local_part.contains(['%', '!', '@']);
    if !cfg.domains.is_local(domain) {
        // Relay domains (an edge's organisation domains) are accepted
        // from anyone, but never with routing characters.
        if cfg.domains.is_relay(domain) && !routing {
            return Ok(d(
                "domains.relay_domains",
                format!("{domain} is a relay domain"),
            ));
        }
        return match relay {
            Some(r) => Ok(r.clone()),
            None => Err(relay_denied()),
        };
    }
    // Routing characters in a local part (RFC 5321 §3.6.1: `%`, `!`, a
    // quoted `@`) are old relay tricks: never a local mailbox.
    if routing {
        return if relay.is_some() {
            Err(unknown(
                "RFC 5321 §3.6.1",
                "routing characters in a local part",
            ))
        } else {
            Err(relay_denied())
        };
    }
    if !cfg.inbound.verify_recipients {
        return Ok(d(
            "smtp.inbound.verify_recipients",
            format!("{domain} is local; recipients are not verified"),
        ));
    }
    let targets = cfg.directory.expand(address, &cfg.domains);
    if targets.is_empty() {
        return Err(unknown(
            "smtp.inbound.verify_recipients",
            "no user, alias or mail-in box has this address",
        ));
    }
    Ok(d(
        "smtp.inbound.verify_recipients",
        format!("{domain} is local; expands to {}", targets.join(", ")),
    ))
}
