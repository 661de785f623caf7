//! DNS for outbound delivery (RFC 5321 §5.1): MX records by preference,
//! implicit MX (A/AAAA of the domain itself), null MX (RFC 7505), and the
//! addresses of each host. Answers are cached by hickory within their TTL.
//! NXDOMAIN is permanent; SERVFAIL, REFUSED and timeouts are temporary.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig};
use hickory_resolver::net::NetError;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::{RData, RecordType};

/// Why a name could not be resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DnsError {
    /// The domain does not exist (NXDOMAIN): bounce, `5.1.2`.
    NoSuchDomain(String),
    /// The domain says it accepts no mail (RFC 7505): bounce, `5.1.10`.
    NullMx(String),
    /// The domain exists but has no usable host: bounce, `5.4.4`.
    NoHost(String),
    /// A temporary failure: defer, `4.4.3`.
    Temporary(String),
}

impl DnsError {
    /// The DSN status and text of this failure.
    pub fn reason(&self) -> String {
        match self {
            DnsError::NoSuchDomain(d) => {
                format!("5.1.2 Host or domain name not found: {d}: NXDOMAIN")
            }
            DnsError::NullMx(d) => format!("5.1.10 Domain {d} does not accept mail (null MX)"),
            DnsError::NoHost(d) => format!("5.4.4 No mail host found for {d}"),
            DnsError::Temporary(e) => format!("4.4.3 DNS lookup failed: {e}"),
        }
    }

    /// Whether this failure is permanent.
    pub fn is_permanent(&self) -> bool {
        !matches!(self, DnsError::Temporary(_))
    }
}

/// One mail host with its MX preference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailHost {
    /// Host name without the trailing dot.
    pub name: String,
    /// MX preference; lower is tried first.
    pub preference: u16,
}

/// The resolver used by delivery.
#[derive(Clone)]
pub struct Dns {
    /// Replaced whole when a reload changes the name servers; every clone
    /// sees the new one.
    resolver: Arc<arc_swap::ArcSwap<TokioResolver>>,
}

fn fqdn(name: &str) -> String {
    if name.ends_with('.') {
        name.to_string()
    } else {
        format!("{name}.")
    }
}

fn classify(name: &str, e: &NetError) -> DnsError {
    if e.is_nx_domain() {
        DnsError::NoSuchDomain(name.to_string())
    } else {
        DnsError::Temporary(format!("{name}: {e}"))
    }
}

/// A hickory resolver over `nameservers`, or the system's when empty.
fn resolver(nameservers: &[SocketAddr]) -> Result<TokioResolver, String> {
    let builder = if nameservers.is_empty() {
        TokioResolver::builder_tokio()
            .map_err(|e| format!("cannot read the system resolver configuration: {e}"))?
    } else {
        let servers = nameservers
            .iter()
            .map(|ns| {
                let mut udp = ConnectionConfig::udp();
                udp.port = ns.port();
                let mut tcp = ConnectionConfig::tcp();
                tcp.port = ns.port();
                NameServerConfig::new(ns.ip(), true, vec![udp, tcp])
            })
            .collect();
        TokioResolver::builder_with_config(
            ResolverConfig::from_parts(None, vec![], servers),
            TokioRuntimeProvider::default(),
        )
    };
    let mut builder = builder;
    if !nameservers.is_empty() {
        // Configured name servers are the whole truth: no /etc/hosts.
        builder.options_mut().use_hosts_file = ResolveHosts::Never;
    }
    builder.options_mut().attempts = 2;
    builder.options_mut().timeout = std::time::Duration::from_secs(5);
    // "No such name" answers without an SOA (some forwarders drop it) would
    // otherwise not be cached at all: DMARC's walk up the tree asked for
    // `_dmarc.<tld>` once per message (benches/compare.sh, AUTH=verify).
    builder.options_mut().negative_min_ttl = Some(std::time::Duration::from_secs(30));
    builder
        .build()
        .map_err(|e| format!("cannot start the resolver: {e}"))
}

impl Dns {
    /// A resolver over `nameservers`, or the system's when empty.
    pub fn new(nameservers: &[SocketAddr]) -> Result<Dns, String> {
        Ok(Dns {
            resolver: Arc::new(arc_swap::ArcSwap::from_pointee(resolver(nameservers)?)),
        })
    }

    /// Uses `nameservers` (empty: the system's) from now on (reload).
    /// Look-ups under way finish with the old ones.
    pub fn set_nameservers(&self, nameservers: &[SocketAddr]) -> Result<(), String> {
        self.resolver.store(Arc::new(resolver(nameservers)?));
        Ok(())
    }

    /// The current hickory resolver, for the policy checks (SPF, DKIM,
    /// DMARC, DNSBL); it shares the cache of every other user.
    pub fn resolver(&self) -> Arc<TokioResolver> {
        self.resolver.load_full()
    }

    /// The mail hosts of `domain` in preference order (equal preferences in
    /// the order received). No MX records: the domain itself (implicit MX).
    pub async fn mail_hosts(&self, domain: &str) -> Result<Vec<MailHost>, DnsError> {
        let started = std::time::Instant::now();
        let answer = self
            .resolver
            .load()
            .lookup(fqdn(domain), RecordType::MX)
            .await;
        crate::metrics::get().dns("mx", started.elapsed());
        match answer {
            Ok(lookup) => {
                let mut hosts: Vec<MailHost> = lookup
                    .answers()
                    .iter()
                    .filter_map(|r| match &r.data {
                        RData::MX(mx) => Some(MailHost {
                            name: mx
                                .exchange
                                .to_string()
                                .trim_end_matches('.')
                                .to_ascii_lowercase(),
                            preference: mx.preference,
                        }),
                        _ => None,
                    })
                    .collect();
                if hosts.len() == 1 && hosts[0].name.is_empty() {
                    return Err(DnsError::NullMx(domain.to_string()));
                }
                hosts.retain(|h| !h.name.is_empty());
                if hosts.is_empty() {
                    return Ok(vec![MailHost {
                        name: domain.to_string(),
                        preference: 0,
                    }]);
                }
                hosts.sort_by_key(|h| h.preference);
                Ok(hosts)
            }
            Err(e) if e.is_no_records_found() && !e.is_nx_domain() => Ok(vec![MailHost {
                name: domain.to_string(),
                preference: 0,
            }]),
            Err(e) => Err(classify(domain, &e)),
        }
    }

    /// The client's host name, if its PTR record names a host whose
    /// addresses include it again (forward-confirmed reverse DNS).
    pub async fn verified_name(&self, ip: IpAddr) -> Option<String> {
        let arpa = match ip {
            IpAddr::V4(v4) => {
                let o = v4.octets();
                format!("{}.{}.{}.{}.in-addr.arpa.", o[3], o[2], o[1], o[0])
            }
            IpAddr::V6(v6) => {
                let mut s = String::new();
                for b in v6.octets().iter().rev() {
                    s.push_str(&format!("{:x}.{:x}.", b & 0xf, b >> 4));
                }
                s.push_str("ip6.arpa.");
                s
            }
        };
        let started = std::time::Instant::now();
        let lookup = self.resolver.load().lookup(arpa, RecordType::PTR).await;
        crate::metrics::get().dns("ptr", started.elapsed());
        let lookup = lookup.ok()?;
        let mut names: Vec<String> = lookup
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                RData::PTR(p) => Some(p.0.to_string().trim_end_matches('.').to_ascii_lowercase()),
                _ => None,
            })
            .collect();
        // Several PTR records come in no fixed order: take the first name,
        // in sorted order, that points back.
        names.sort();
        for name in names {
            if self.addresses(&name).await.is_ok_and(|a| a.contains(&ip)) {
                return Some(name);
            }
        }
        None
    }

    /// The addresses of a host (IPv4 first, then IPv6).
    pub async fn addresses(&self, host: &str) -> Result<Vec<IpAddr>, DnsError> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(vec![ip]);
        }
        let started = std::time::Instant::now();
        let answer = self.resolver.load().lookup_ip(fqdn(host)).await;
        crate::metrics::get().dns("address", started.elapsed());
        match answer {
            Ok(ips) => {
                let mut v: Vec<IpAddr> = ips.iter().collect();
                v.sort_by_key(|ip| ip.is_ipv6());
                if v.is_empty() {
                    Err(DnsError::NoHost(host.to_string()))
                } else {
                    Ok(v)
                }
            }
            Err(e) if e.is_no_records_found() && !e.is_nx_domain() => {
                Err(DnsError::NoHost(host.to_string()))
            }
            Err(e) => Err(classify(host, &e)),
        }
    }
}
