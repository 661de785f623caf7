//! The connect-time checks of an untrusted client: its rate of new
//! connections, DNS allowlists and blocklists (RFC 5782), and an optional
//! forward-confirmed reverse name.
//!
//! A look-up that fails temporarily (SERVFAIL, REFUSED, a time-out) means
//! "not listed": a broken list never refuses mail, and never holds the
//! greeting longer than `LOOKUP_TIMEOUT`; all zones are asked at once.

use std::net::IpAddr;

use hickory_resolver::TokioResolver;
use hickory_resolver::proto::rr::{RData, RecordType};

use super::LOOKUP_TIMEOUT;
use crate::config::Config;
use crate::smtp::reply::Reply;

/// The name to look up for `ip` in `zone` (RFC 5782 §2.1: reversed
/// octets; §2.4: reversed nibbles for IPv6).
pub fn query_name(ip: IpAddr, zone: &str) -> String {
    let zone = zone.trim_end_matches('.');
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{}.{}.{}.{}.{zone}.", o[3], o[2], o[1], o[0])
        }
        IpAddr::V6(v6) => {
            let mut s = String::new();
            for b in v6.octets().iter().rev() {
                s.push_str(&format!("{:x}.{:x}.", b & 0xf, b >> 4));
            }
            format!("{s}{zone}.")
        }
    }
}

/// What one list said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listing {
    /// An A record in 127.0.0.0/8 (RFC 5782 §2.1).
    Listed,
    /// NXDOMAIN, or no usable answer.
    NotListed,
    /// Time-out, SERVFAIL, REFUSED: treated as not listed.
    Unknown,
}

/// Looks `ip` up in `zone`, within `LOOKUP_TIMEOUT`.
pub async fn lookup(resolver: &TokioResolver, ip: IpAddr, zone: &str) -> Listing {
    let name = query_name(ip, zone);
    match tokio::time::timeout(
        LOOKUP_TIMEOUT,
        resolver.lookup(name.as_str(), RecordType::A),
    )
    .await
    {
        Err(_) => Listing::Unknown,
        Ok(Err(e)) if e.is_nx_domain() || e.is_no_records_found() => Listing::NotListed,
        Ok(Err(_)) => Listing::Unknown,
        Ok(Ok(answer)) => {
            let listed = answer.answers().iter().any(|r| match &r.data {
                // 127.255.255.0/24 are the lists' own error codes (e.g. a
                // query through a public resolver refused): not a listing.
                RData::A(a) => a.0.octets()[0] == 127 && a.0.octets()[1..3] != [255, 255],
                _ => false,
            });
            if listed {
                Listing::Listed
            } else {
                Listing::NotListed
            }
        }
    }
}

/// Asks every zone at once; the first zone (in configuration order) that
/// lists the client, if any, and the zones that could not be asked.
async fn first_listed(
    resolver: &TokioResolver,
    ip: IpAddr,
    zones: &[String],
) -> (Option<String>, Vec<String>) {
    let mut set = tokio::task::JoinSet::new();
    for (i, zone) in zones.iter().enumerate() {
        let (resolver, zone) = (resolver.clone(), zone.clone());
        set.spawn(async move { (i, lookup(&resolver, ip, &zone).await) });
    }
    let mut results = vec![Listing::NotListed; zones.len()];
    while let Some(r) = set.join_next().await {
        if let Ok((i, l)) = r {
            results[i] = l;
        }
    }
    let listed = results
        .iter()
        .position(|l| *l == Listing::Listed)
        .map(|i| zones[i].clone());
    let unknown = results
        .iter()
        .zip(zones)
        .filter(|(l, _)| **l == Listing::Unknown)
        .map(|(_, z)| z.clone())
        .collect();
    (listed, unknown)
}

/// Whether `ip` has a reverse name that points back to it. `None`: the
/// look-up failed temporarily (the client is then let in).
async fn forward_confirmed(resolver: &TokioResolver, ip: IpAddr) -> Option<bool> {
    let arpa = match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{}.{}.{}.{}.in-addr.arpa.", o[3], o[2], o[1], o[0])
        }
        IpAddr::V6(_) => query_name(ip, "ip6.arpa"),
    };
    let names: Vec<String> =
        match tokio::time::timeout(LOOKUP_TIMEOUT, resolver.lookup(arpa, RecordType::PTR)).await {
            Err(_) => return None,
            Ok(Err(e)) if e.is_nx_domain() || e.is_no_records_found() => return Some(false),
            Ok(Err(_)) => return None,
            Ok(Ok(l)) => l
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    RData::PTR(p) => Some(p.0.to_string()),
                    _ => None,
                })
                .collect(),
        };
    for name in names {
        let fwd = tokio::time::timeout(LOOKUP_TIMEOUT, resolver.lookup_ip(name.as_str())).await;
        match fwd {
            Ok(Ok(addrs)) if addrs.iter().any(|a| a == ip) => return Some(true),
            Ok(Ok(_)) => {}
            Ok(Err(e)) if e.is_nx_domain() || e.is_no_records_found() => {}
            _ => return None,
        }
    }
    Some(false)
}

/// The connect-time policy for an untrusted client: `Some(reply)` refuses
/// the connection (the session sends it instead of the greeting).
pub async fn at_connect(
    resolver: &TokioResolver,
    rates: &super::rate::RateLimiter,
    config: &Config,
    ip: IpAddr,
) -> Option<Reply> {
    if let Some(r) = rates.check(
        ip,
        super::rate::Event::Connection,
        &config.inbound.rate_limits,
    ) {
        return Some(r);
    }
    dns_checks(resolver, config, ip, None).await
}

/// One connect-time check and what it found, for `petrel explain`: the
/// configuration key and a line of detail.
pub struct Finding {
    pub key: &'static str,
    pub detail: String,
}

/// The DNS checks at connect, in the order a session meets them —
/// allowlists (`dnswl`), blocklists (`dnsbl`), `require_ptr` — with a line
/// per check in `trace` when one is given (a session gives none, and no
/// line is formatted). `Some(reply)` refuses.
pub async fn dns_checks(
    resolver: &TokioResolver,
    config: &Config,
    ip: IpAddr,
    mut trace: Option<&mut Vec<Finding>>,
) -> Option<Reply> {
    let mut note = |key: &'static str, detail: &dyn Fn() -> String| {
        if let Some(t) = trace.as_deref_mut() {
            t.push(Finding {
                key,
                detail: detail(),
            });
        }
    };
    let checks = &config.inbound.checks;
    let client = crate::config::canonical_ip(ip);
    let allowed = if checks.dnswl.is_empty() {
        None
    } else {
        let (listed, _) = first_listed(resolver, ip, &checks.dnswl).await;
        note("smtp.inbound.checks.dnswl", &|| match &listed {
            Some(z) => format!("listed in {z}: blocklists skipped"),
            None => format!("not listed in {}", checks.dnswl.join(", ")),
        });
        listed
    };
    if let Some(zone) = &allowed {
        tracing::debug!(client = %format!("[{client}]"), zone = %zone, "dnswl: listed; blocklists skipped");
    } else if !checks.dnsbl.is_empty() {
        let (listed, unknown) = first_listed(resolver, ip, &checks.dnsbl).await;
        for zone in &unknown {
            tracing::warn!(client = %format!("[{client}]"), zone = %zone, "dnsbl: look-up failed; counted as not listed");
        }
        let failed = || {
            if unknown.is_empty() {
                String::new()
            } else {
                format!(
                    " (no answer from {}: counted as not listed)",
                    unknown.join(", ")
                )
            }
        };
        if let Some(zone) = listed {
            note("smtp.inbound.checks.dnsbl", &|| {
                format!("listed in {zone}{}", failed())
            });
            return Some(Reply::new(
                554,
                "5.7.1",
                format!("Service unavailable; client [{client}] blocked using {zone}"),
            ));
        }
        note("smtp.inbound.checks.dnsbl", &|| {
            format!("not listed in {}{}", checks.dnsbl.join(", "), failed())
        });
    }
    if checks.require_ptr {
        let confirmed = forward_confirmed(resolver, ip).await;
        note("smtp.inbound.checks.require_ptr", &|| {
            match confirmed {
                Some(true) => "a reverse name that points back",
                Some(false) => "no reverse name that points back",
                None => "look-up failed: let in",
            }
            .to_string()
        });
        if confirmed == Some(false) {
            // RFC 7372 §3.3: 5.7.25, reverse DNS validation failed.
            return Some(Reply::new(
                550,
                "5.7.25",
                format!("Client host rejected: cannot find your hostname, [{client}]"),
            ));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_names_reverse_the_address() {
        let v4: IpAddr = "192.0.2.99".parse().expect("ip");
        assert_eq!(
            query_name(v4, "zen.dnsbl.test"),
            "99.2.0.192.zen.dnsbl.test."
        );
        let v6: IpAddr = "2001:db8::1".parse().expect("ip");
        let q = query_name(v6, "bl.test.");
        assert!(q.starts_with("1.0.0.0.0.0.0.0."), "{q}");
        assert!(q.ends_with("8.b.d.0.1.0.0.2.bl.test."), "{q}");
    }
}
