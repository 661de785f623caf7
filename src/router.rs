//! Where a recipient goes: a local mailbox, a remote domain, or nowhere.
//! Pure: no I/O, no state; the scheduler asks it for each recipient.

use std::net::IpAddr;

use crate::config::{Config, NextHop};

/// Where one recipient's copy goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// A local mailbox, by name.
    Mailbox(String),
    /// A remote domain (lower case, no trailing dot), to be reached over SMTP.
    Remote(String),
    /// A local address the directory does not know.
    Unknown,
}

/// How a remote domain is reached, in SPEC order: a per-domain route, then
/// the smarthost, then DNS (MX, or A/AAAA when there is no MX). A domain
/// literal goes to its address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum NextHopPlan {
    /// A route or smarthost host (`[name]` or `[ip]`: no MX lookup).
    Host(NextHop),
    /// MX lookup of the domain; hosts on `smtp.outbound.port`.
    Mx(String),
    /// An address literal; `smtp.outbound.port`.
    Literal(IpAddr),
}

impl NextHopPlan {
    /// The destination's name: one delivery actor per name.
    pub fn key(&self) -> String {
        match self {
            NextHopPlan::Host(h) if h.no_mx => format!("[{}]:{}", h.host, h.port),
            NextHopPlan::Host(h) => format!("{}:{}", h.host, h.port),
            NextHopPlan::Mx(d) => d.clone(),
            NextHopPlan::Literal(ip) => format!("[{ip}]"),
        }
    }
}

/// The next hop for a remote domain.
pub fn next_hop(config: &Config, domain: &str) -> NextHopPlan {
    let d = domain.trim_end_matches('.').to_ascii_lowercase();
    let route = config
        .outbound
        .routes
        .iter()
        .find(|r| match r.domain.strip_prefix("*.") {
            Some(suffix) => d.ends_with(&format!(".{suffix}")),
            None => r.domain == d,
        });
    if let Some(r) = route {
        return NextHopPlan::Host(r.host.clone());
    }
    if let Some(h) = &config.outbound.smarthost {
        return NextHopPlan::Host(h.clone());
    }
    if let Some(lit) = d.strip_prefix('[').and_then(|x| x.strip_suffix(']')) {
        let lit = lit.strip_prefix("ipv6:").unwrap_or(lit);
        if let Ok(ip) = lit.parse::<IpAddr>() {
            return NextHopPlan::Literal(ip);
        }
    }
    NextHopPlan::Mx(d)
}

/// Routes one (already alias-expanded) recipient address.
pub fn route(config: &Config, address: &str) -> Destination {
    let Some((_, domain)) = address.rsplit_once('@') else {
        return Destination::Unknown;
    };
    if config.domains.is_local(domain) {
        match config
            .directory
            .mailbox_for(&config.domains.canonical(address), &config.domains)
        {
            Some(mailbox) => Destination::Mailbox(mailbox.to_string()),
            None => Destination::Unknown,
        }
    } else {
        Destination::Remote(domain.trim_end_matches('.').to_ascii_lowercase())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_remote_and_unknown() {
        let c = Config::parse(
            r#"
[server]
postmaster = "alice@example.test"
[domains]
primary = "example.test"
aliases = ["[192.0.2.10]"]
[[users]]
name = "alice"
addresses = ["alice@example.test"]
"#,
        )
        .expect("valid");
        assert_eq!(
            route(&c, "Alice@Example.Test"),
            Destination::Mailbox("alice".into())
        );
        assert_eq!(route(&c, "bob@example.test"), Destination::Unknown);
        assert_eq!(route(&c, "bob@[192.0.2.10]"), Destination::Unknown);
        assert_eq!(
            route(&c, "alice@[192.0.2.10]"),
            Destination::Mailbox("alice".into())
        );
        assert_eq!(
            route(&c, "dave@Partner.Test."),
            Destination::Remote("partner.test".into())
        );
    }
}
