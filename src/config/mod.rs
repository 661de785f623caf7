//! Configuration: the raw TOML structures (close to the file, every key of
//! SPEC.md), then a checked `Config` that the rest of the daemon uses.
//!
//! Checking collects every error with its dotted key, so `petrel
//! check-config` and `petrel serve` can show them all at once. This module
//! never opens sockets or the spool; it only reads the file.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;

use crate::directory::Directory;

/// The shipped single-server configuration; also the built-in default used
/// when no configuration file exists (SPEC: "built-in defaults equal to that
/// file").
pub const DEFAULT_TOML: &str = include_str!("../../config/petrel.toml");

/// The hash of the sample users' published password (`petrel-example`)
/// in the shipped configurations; the daemon warns when it is in use.
pub const SAMPLE_PASSWORD_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$+39//gHRQuRxifQbi6R4Hg$n1seErHwGgLqUQYSuYj+as/s6zS+gVVewyOwtVRKOxA";

/// One configuration problem, named by its dotted key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted key, e.g. `queue.retry_initial` or `listeners[1].bind`.
    pub key: String,
    /// What is wrong with it, as a sentence fragment.
    pub reason: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.key, self.reason)
    }
}

/// All problems found in one file.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}", .errors.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
pub struct ConfigErrors {
    /// Every problem, in file order where known.
    pub errors: Vec<ConfigError>,
}

pub(crate) mod raw;
pub mod schema;

use raw::*;

// ---------------------------------------------------------------------------
// Checked configuration.

/// The whole checked configuration. Cheap to share behind an `Arc`; a reload
/// builds a new one and swaps it in whole.
#[derive(Debug, Clone)]
pub struct Config {
    /// File it came from; `None` for the built-in defaults.
    pub path: Option<PathBuf>,
    /// `[server]`.
    pub server: Server,
    /// `[domains]`.
    pub domains: Domains,
    /// `[[listeners]]`.
    pub listeners: Vec<Listener>,
    /// `[tls]`.
    pub tls: Tls,
    /// `[smtp.inbound]`.
    pub inbound: Inbound,
    /// `[smtp.outbound]`.
    pub outbound: Outbound,
    /// `[queue]`.
    pub queue: Queue,
    /// `[dns]`.
    pub dns: Dns,
    /// `[log]`.
    pub log: Log,
    /// `[pop3]`.
    pub pop3: Pop3,
    /// `[imap]`.
    pub imap: Imap,
    /// `[web]`.
    pub web: Web,
    /// `[store]`.
    pub store: MessageStore,
    /// `[directory] backend`: where users, aliases and mail-in boxes live.
    pub directory_backend: DirectoryBackend,
    /// `[dkim]`.
    pub dkim: Dkim,
    /// `[history]`.
    pub history: History,
    /// `[[users]]`, `[[mailin]]` and `[[aliases]]`.
    pub directory: Directory,
    /// The file as read, defaults filled in (for `config show`).
    pub raw: RawConfig,
}

/// `[server]`.
#[derive(Debug, Clone)]
pub struct Server {
    /// FQDN used in greeting, HELO, Received and bounces.
    pub hostname: String,
    /// Spool directory (absolute when the file's directory is known).
    pub spool: PathBuf,
    /// Where mail for `postmaster@<every local domain>` and `<Postmaster>`
    /// goes (RFC 5321 §4.5.1); `None` only when an alias or mailbox for
    /// `postmaster@<primary>` exists.
    pub postmaster: Option<String>,
}

/// `[domains]`: which domains are local.
#[derive(Debug, Clone)]
pub struct Domains {
    /// Primary domain, lower case.
    pub primary: String,
    /// Alternate domains, lower case.
    pub aliases: Vec<String>,
    /// Domain literals accepted as local (`"[192.0.2.10]"` in `aliases`).
    pub literals: Vec<IpAddr>,
    /// Domains accepted from anyone but not delivered here: forwarded by
    /// route, smarthost or MX (an edge gateway's organisation domains).
    pub relay_domains: Vec<String>,
}

impl Domains {
    /// The address with a local domain literal (`user@[192.0.2.10]`)
    /// replaced by the primary domain: a literal names this host, so its
    /// local parts are the primary domain's.
    pub fn canonical(&self, address: &str) -> String {
        match address.rsplit_once('@') {
            Some((local, domain)) if domain.starts_with('[') && self.is_local(domain) => {
                format!("{local}@{}", self.primary)
            }
            _ => address.to_string(),
        }
    }

    /// Whether mail for `domain` is accepted from anyone to be forwarded.
    pub fn is_relay(&self, domain: &str) -> bool {
        let d = domain.trim_end_matches('.');
        self.relay_domains.iter().any(|r| d.eq_ignore_ascii_case(r))
    }

    /// Whether `domain` (any case, without brackets for names) is local.
    pub fn is_local(&self, domain: &str) -> bool {
        let d = domain.trim_end_matches('.');
        if let Some(lit) = d.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
            let lit = lit.strip_prefix("IPv6:").unwrap_or(lit);
            return lit
                .parse::<IpAddr>()
                .map(|ip| self.literals.contains(&ip))
                .unwrap_or(false);
        }
        d.eq_ignore_ascii_case(&self.primary)
            || self.aliases.iter().any(|a| d.eq_ignore_ascii_case(a))
    }
}

/// Protocol a listener speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// Port 25 style ESMTP.
    Smtp,
    /// RFC 6409 message submission.
    Submission,
    /// RFC 1939.
    Pop3,
    /// RFC 9051.
    Imap,
    /// Web access.
    Http,
}

impl Protocol {
    /// The name used in the configuration file.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Smtp => "smtp",
            Protocol::Submission => "submission",
            Protocol::Pop3 => "pop3",
            Protocol::Imap => "imap",
            Protocol::Http => "http",
        }
    }
}

/// TLS mode of a listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// Plain text only.
    None,
    /// Plain text with an upgrade command.
    Starttls,
    /// TLS from the first byte.
    Implicit,
}

/// AUTH mode of a listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    /// AUTH not offered.
    Off,
    /// AUTH offered, not required.
    Optional,
    /// Mail only after AUTH.
    Required,
}

/// One `[[listeners]]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    /// Name used in logs.
    pub name: String,
    /// Protocol spoken.
    pub protocol: Protocol,
    /// Address to bind; port 0 picks a free port.
    pub bind: SocketAddr,
    /// TLS mode.
    pub tls: TlsMode,
    /// AUTH mode.
    pub auth: AuthMode,
}

/// `[tls]`.
#[derive(Debug, Clone, Default)]
pub struct Tls {
    /// Certificate chain (PEM); `None`: self-signed in `<spool>/tls`.
    pub cert: Option<PathBuf>,
    /// Private key (PEM).
    pub key: Option<PathBuf>,
}

/// A client host pattern: a network, or a host name (matched against the
/// client's verified reverse name; exact or `*.suffix`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    /// An address range.
    Net(IpNet),
    /// A host name pattern, lower case.
    Name(String),
}

impl HostPattern {
    /// Whether matching needs the client's host name.
    pub fn needs_name(&self) -> bool {
        matches!(self, HostPattern::Name(_))
    }

    /// Whether the client matches; `name` is its verified host name, if any.
    pub fn matches(&self, ip: IpAddr, name: Option<&str>) -> bool {
        match self {
            HostPattern::Net(net) => net.contains(&canonical_ip(ip)),
            HostPattern::Name(pat) => {
                name.is_some_and(|n| glob_match(pat, &n.to_ascii_lowercase()))
            }
        }
    }
}

/// IPv4-mapped IPv6 addresses are matched as IPv4.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// Matches `text` against a pattern where `*` stands for any run of
/// characters. Both are expected in lower case.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let p = pattern.as_bytes();
    let t = text.as_bytes();
    let (mut pi, mut ti) = (0usize, 0usize);
    let (mut star, mut mark) = (None::<usize>, 0usize);
    while ti < t.len() {
        if pi < p.len() && p[pi] != b'*' && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == b'*' {
        pi += 1;
    }
    pi == p.len()
}

/// `[smtp.inbound]`.
#[derive(Debug, Clone)]
pub struct Inbound {
    /// Largest message accepted, in octets.
    pub max_message_size: u64,
    /// Most recipients per message.
    pub max_recipients: usize,
    /// Empty: everyone may connect.
    pub allow_connections_from: Vec<HostPattern>,
    /// Clients refused at connect.
    pub deny_connections_from: Vec<HostPattern>,
    /// Clients that may relay.
    pub relay_from: Vec<HostPattern>,
    /// Envelope senders refused (lower-case glob patterns).
    pub deny_senders: Vec<String>,
    /// Envelope recipients refused (lower-case glob patterns).
    pub deny_recipients: Vec<String>,
    /// Refuse unknown local recipients at RCPT.
    pub verify_recipients: bool,
    /// Recipients in relay domains are verified at RCPT by asking the
    /// domain's next hop (a probe without DATA), with a cache.
    pub verify_relay_recipients: bool,
    /// How long a recipient the next hop accepted stays known.
    pub verify_positive_ttl: Duration,
    /// How long a recipient the next hop refused (5xx) stays refused.
    pub verify_negative_ttl: Duration,
    /// Time allowed for one probe (connect, EHLO, TLS, MAIL, RCPT).
    pub verify_timeout: Duration,
    /// Allow AUTH without TLS.
    pub allow_plaintext_auth: bool,
    /// Idle time allowed between commands (RFC 5321 §4.5.3.2.7: 5 minutes).
    pub command_timeout: Duration,
    /// Time allowed for one DATA block to arrive (RFC 5321 §4.5.3.2.6: 3 minutes per block).
    pub data_timeout: Duration,
    /// Simultaneous SMTP sessions in total.
    pub max_connections: usize,
    /// Simultaneous SMTP sessions per client address.
    pub max_connections_per_client: usize,
    /// Errors after which a session is closed.
    pub max_errors: u32,
    /// `[smtp.inbound.checks]`.
    pub checks: Checks,
    /// `[smtp.inbound.rate_limits]`.
    pub rate_limits: RateLimits,
}

/// Outbound TLS policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutboundTls {
    /// Never STARTTLS.
    Off,
    /// STARTTLS where offered, without verifying.
    Opportunistic,
    /// Verified TLS or defer.
    Required,
}

/// A next-hop host: `[literal-or-name]:port` (brackets: no MX lookup) or
/// `name:port`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NextHop {
    /// Host name or IP address text.
    pub host: String,
    /// Port.
    pub port: u16,
    /// Whether MX lookup is suppressed (the host was in brackets).
    pub no_mx: bool,
}

/// `[[smtp.outbound.routes]]`.
#[derive(Debug, Clone)]
pub struct Route {
    /// Exact domain or `*.suffix`, lower case.
    pub domain: String,
    /// Where to send.
    pub host: NextHop,
}

/// `[smtp.outbound]`.
#[derive(Debug, Clone)]
pub struct Outbound {
    /// Relay everything here when set.
    pub smarthost: Option<NextHop>,
    /// Port for hosts found by MX/A lookup.
    pub port: u16,
    /// STARTTLS policy.
    pub tls: OutboundTls,
    /// Per-domain routes.
    pub routes: Vec<Route>,
    /// Local address outbound connections are made from.
    pub source_address: Option<IpAddr>,
}

/// `[queue]`.
#[derive(Debug, Clone)]
pub struct Queue {
    /// First retry interval.
    pub retry_initial: Duration,
    /// Longest retry interval.
    pub retry_max: Duration,
    /// Time after which undelivered recipients bounce.
    pub lifetime: Duration,
    /// Time after which the sender gets a delay notice.
    pub warn_after: Duration,
    /// Parallel deliveries to one destination.
    pub destination_concurrency: usize,
    /// Parallel deliveries in total.
    pub total_concurrency: usize,
}

/// `[dns]`.
#[derive(Debug, Clone, Default)]
pub struct Dns {
    /// Empty: the system resolver.
    pub nameservers: Vec<SocketAddr>,
}

/// `[pop3]`.
#[derive(Debug, Clone)]
pub struct Pop3 {
    /// Allow USER/PASS and AUTH without TLS.
    pub allow_plaintext_auth: bool,
    /// Idle time before a session is closed (RFC 1939 §3: at least 10 minutes).
    pub idle_timeout: Duration,
    /// Simultaneous POP3 sessions in total.
    pub max_connections: usize,
    /// Simultaneous POP3 sessions per client address.
    pub max_connections_per_client: usize,
}

/// `[imap]`.
#[derive(Debug, Clone)]
pub struct Imap {
    /// Allow LOGIN and AUTHENTICATE without TLS.
    pub allow_plaintext_auth: bool,
    /// Idle time of an authenticated session before it is closed (RFC 9051
    /// §5.4: at least 30 minutes).
    pub idle_timeout: Duration,
    /// Time a session may stay unauthenticated.
    pub login_timeout: Duration,
    /// Simultaneous IMAP sessions in total.
    pub max_connections: usize,
    /// Simultaneous IMAP sessions per client address.
    pub max_connections_per_client: usize,
    /// Simultaneous IMAP sessions per user.
    pub max_connections_per_user: usize,
}

/// `[web]`.
#[derive(Debug, Clone)]
pub struct Web {
    /// How long a webmail login lasts.
    pub session_lifetime: Duration,
    /// Clients that may read `/metrics`.
    pub metrics_from: Vec<HostPattern>,
}

/// `[store]`: where the message store lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MessageStore {
    /// The embedded store in this directory (absolute when the file's
    /// directory is known).
    Embedded {
        /// The store's directory.
        path: PathBuf,
    },
    /// A shared PostgreSQL database.
    Postgres {
        /// `postgres://user@host:port/db`.
        url: String,
        /// Connections in the pool.
        pool_size: usize,
    },
}

/// `[directory] backend`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirectoryBackend {
    /// `[[users]]`, `[[aliases]]` and `[[mailin]]` of this file.
    Config,
    /// Tables in the store's PostgreSQL database, changed with `petrel
    /// user` and `petrel alias`.
    Postgres,
}

/// One `[[dkim.keys]]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DkimKey {
    /// The signing domain (`d=`), lower case.
    pub domain: String,
    /// The selector (`s=`).
    pub selector: String,
    /// The private key file (PEM, from `petrel dkim keygen`).
    pub key: PathBuf,
}

/// `[dkim]`.
#[derive(Debug, Clone, Default)]
pub struct Dkim {
    /// Send a message unsigned (with a log line saying why) when signing
    /// fails, instead of deferring it.
    pub allow_unsigned: bool,
    /// Signing keys; several per domain for rotation (the first is used).
    pub keys: Vec<DkimKey>,
}

/// `[history]`: how much message history `petrel track` keeps.
#[derive(Debug, Clone)]
pub struct History {
    /// Entries older than this are dropped.
    pub max_age: Duration,
    /// The history is kept under this many octets.
    pub max_size: u64,
}

/// `log.format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// One human-readable line per event.
    Text,
    /// One JSON object per event.
    Json,
}

/// `[log]`.
#[derive(Debug, Clone)]
pub struct Log {
    /// A tracing filter such as `info` or `petrel=debug`.
    pub level: String,
    /// SMTP trace level 0–3.
    pub smtp_debug: u8,
    /// Line format.
    pub format: LogFormat,
}

/// Policy of one inbound authentication check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckMode {
    /// Not checked.
    Off,
    /// Checked; the result goes into `Authentication-Results:` only.
    Tag,
    /// Checked and enforced.
    Enforce,
}

/// `[smtp.inbound.checks]`.
#[derive(Debug, Clone)]
pub struct Checks {
    /// SPF (RFC 7208).
    pub spf: CheckMode,
    /// DKIM (RFC 6376).
    pub dkim: CheckMode,
    /// DMARC (RFC 7489).
    pub dmarc: CheckMode,
    /// ARC (RFC 8617).
    pub arc: CheckMode,
    /// DNS blocklist zones.
    pub dnsbl: Vec<String>,
    /// DNS allowlist zones.
    pub dnswl: Vec<String>,
    /// Refuse clients without a forward-confirmed reverse name.
    pub require_ptr: bool,
}

/// `[smtp.inbound.rate_limits]`: per client address; 0 is no limit.
#[derive(Debug, Clone, Copy, Default)]
pub struct RateLimits {
    /// The window the counts are kept over (Postfix's
    /// `anvil_rate_time_unit`); a minute unless tests shorten it.
    pub time_unit: Duration,
    /// Connections per minute.
    pub connections_per_minute: u32,
    /// Messages per minute.
    pub messages_per_minute: u32,
    /// Recipients per minute.
    pub recipients_per_minute: u32,
}

/// The address book's entries kept in the database (`[directory] backend =
/// "postgres"`), added to the file's own.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct SharedEntries {
    /// Users.
    pub users: Vec<RawUser>,
    /// Mail-in boxes.
    pub mailin: Vec<RawMailin>,
    /// Alias groups.
    pub aliases: Vec<RawAlias>,
}

impl Config {
    /// This configuration with the database's address book added to the
    /// file's entries, checked together (an address given twice, a bad
    /// name): the errors name the database's entries by name.
    pub(crate) fn with_shared_directory(&self, shared: &SharedEntries) -> Result<Config, String> {
        let mut c = Checker::default();
        let file = (
            self.raw.users.len(),
            self.raw.mailin.len(),
            self.raw.aliases.len(),
        );
        let users: Vec<RawUser> = self
            .raw
            .users
            .iter()
            .chain(&shared.users)
            .cloned()
            .collect();
        let mailin: Vec<RawMailin> = self
            .raw
            .mailin
            .iter()
            .chain(&shared.mailin)
            .cloned()
            .collect();
        let aliases: Vec<RawAlias> = self
            .raw
            .aliases
            .iter()
            .chain(&shared.aliases)
            .cloned()
            .collect();
        let mut directory = Directory::check(&self.domains, users, mailin, aliases, &mut c);
        if !c.errors.is_empty() {
            let named = |key: &str| -> String {
                let entry = |list: &str, first: usize, name: &dyn Fn(usize) -> Option<String>| {
                    let rest = key.strip_prefix(list)?.strip_prefix('[')?;
                    let (i, tail) = rest.split_once(']')?;
                    let i: usize = i.parse().ok()?;
                    if i < first {
                        return None;
                    }
                    Some(format!(
                        "database {} {:?}{tail}",
                        &list[..list.len() - 1],
                        name(i - first)?
                    ))
                };
                entry("users", file.0, &|i| {
                    shared.users.get(i).map(|u| u.name.clone())
                })
                .or_else(|| {
                    entry("mailin", file.1, &|i| {
                        shared.mailin.get(i).map(|m| m.name.clone())
                    })
                })
                .or_else(|| {
                    entry("aliases", file.2, &|i| {
                        shared.aliases.get(i).map(|a| a.address.clone())
                    })
                })
                .unwrap_or_else(|| key.to_string())
            };
            return Err(c
                .errors
                .iter()
                .map(|e| format!("{}: {}", named(&e.key), e.reason))
                .collect::<Vec<_>>()
                .join("; "));
        }
        directory.postmaster = self.server.postmaster.clone();
        let mut cfg = self.clone();
        cfg.directory = directory;
        Ok(cfg)
    }
}

/// Collects errors with their keys while checking.
#[derive(Default)]
pub(crate) struct Checker {
    errors: Vec<ConfigError>,
}

impl Checker {
    pub(crate) fn error(&mut self, key: impl Into<String>, reason: impl Into<String>) {
        self.errors.push(ConfigError {
            key: key.into(),
            reason: reason.into(),
        });
    }

    fn duration(&mut self, key: &str, text: &str) -> Duration {
        parse_duration(text).unwrap_or_else(|e| {
            self.error(key, e);
            Duration::from_secs(1)
        })
    }

    fn check_mode(&mut self, key: &str, v: &str) -> CheckMode {
        match v {
            "off" => CheckMode::Off,
            "tag" => CheckMode::Tag,
            "enforce" => CheckMode::Enforce,
            other => {
                self.error(key, format!("{other:?} is not one of off, tag, enforce"));
                CheckMode::Off
            }
        }
    }

    /// A count that may be 0 (no limit).
    fn count(&mut self, key: &str, v: i64) -> u32 {
        u32::try_from(v).unwrap_or_else(|_| {
            self.error(key, format!("must be 0 (no limit) or more, not {v}"));
            0
        })
    }

    /// DNS zone names, lower case, without a trailing dot.
    fn zones(&mut self, key: &str, list: &[String]) -> Vec<String> {
        let mut out = Vec::new();
        for (i, z) in list.iter().enumerate() {
            let z = z.trim().trim_end_matches('.').to_ascii_lowercase();
            if valid_domain(&z) {
                out.push(z);
            } else {
                self.error(format!("{key}[{i}]"), format!("{z:?} is not a DNS zone"));
            }
        }
        out
    }

    fn positive(&mut self, key: &str, v: i64) -> usize {
        if v < 1 {
            self.error(key, format!("must be at least 1, not {v}"));
            1
        } else {
            v as usize
        }
    }

    fn host_patterns(&mut self, key: &str, list: &[String]) -> Vec<HostPattern> {
        let mut out = Vec::new();
        for (i, item) in list.iter().enumerate() {
            match parse_host_pattern(item) {
                Ok(p) => out.push(p),
                Err(e) => self.error(format!("{key}[{i}]"), e),
            }
        }
        out
    }
}

/// Parses `"90s"`, `"5m"`, `"4h"`, `"5d"`, `"2w"` (or a bare number of
/// seconds).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| {
        format!("{text:?} is not a duration such as \"90s\", \"5m\", \"4h\" or \"5d\"")
    })?;
    let mult = match unit.trim() {
        "" | "s" => 1,
        "ms" => return Ok(Duration::from_millis(n)),
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        "w" => 7 * 86400,
        other => {
            return Err(format!(
                "unknown duration unit {other:?} in {text:?}; use s, m, h, d or w"
            ));
        }
    };
    Ok(Duration::from_secs(n.saturating_mul(mult)))
}

/// Parses `"25MiB"`, `"10MB"`, `"512KiB"`, `"1000"` (octets).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{text:?} is not a size such as \"25MiB\""))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1000,
        "kib" => 1024,
        "m" | "mb" => 1000 * 1000,
        "mib" => 1024 * 1024,
        "g" | "gb" => 1000 * 1000 * 1000,
        "gib" => 1024 * 1024 * 1024,
        other => {
            return Err(format!(
                "unknown size unit {other:?} in {text:?}; use KiB, MiB or GiB"
            ));
        }
    };
    Ok(n.saturating_mul(mult))
}

fn parse_host_pattern(text: &str) -> Result<HostPattern, String> {
    let t = text.trim();
    if let Ok(net) = t.parse::<IpNet>() {
        return Ok(HostPattern::Net(net.trunc()));
    }
    if let Ok(ip) = t.parse::<IpAddr>() {
        return Ok(HostPattern::Net(IpNet::from(ip)));
    }
    let name = t.to_ascii_lowercase();
    let valid = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '*');
    if valid {
        Ok(HostPattern::Name(name))
    } else {
        Err(format!(
            "{text:?} is neither a CIDR network, an IP address nor a host name pattern"
        ))
    }
}

/// Parses `"[relay.example.test]:25"`, `"mail.example.test:2525"`,
/// `"[10.1.2.3]"` (port `default_port`).
pub fn parse_next_hop(text: &str, default_port: u16) -> Result<NextHop, String> {
    let t = text.trim();
    let bad = || {
        format!(
            "{text:?} is not a host such as \"[relay.example.test]:25\" or \"mail.example.test:25\""
        )
    };
    let (host, rest, no_mx) = if let Some(inner) = t.strip_prefix('[') {
        let end = inner.find(']').ok_or_else(bad)?;
        (&inner[..end], &inner[end + 1..], true)
    } else {
        match t.rfind(':') {
            Some(i) if !t[..i].contains(':') => (&t[..i], &t[i..], false),
            _ => (t, "", false),
        }
    };
    let port = match rest.strip_prefix(':') {
        Some(p) => p.parse::<u16>().map_err(|_| bad())?,
        None if rest.is_empty() => default_port,
        None => return Err(bad()),
    };
    if host.is_empty() || host.contains(char::is_whitespace) {
        return Err(bad());
    }
    Ok(NextHop {
        host: host.to_ascii_lowercase(),
        port,
        no_mx,
    })
}

fn valid_domain(d: &str) -> bool {
    !d.is_empty()
        && d.len() <= 253
        && d.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

impl Config {
    /// Where the configuration is looked for when neither `-c` nor
    /// `$PETREL_CONFIG` names one (in this order; then the built-in
    /// defaults).
    pub const SEARCH_PATH: [&'static str; 2] = ["config/petrel.toml", "/etc/petrel/petrel.toml"];

    /// Loads the configuration the CLI and the daemon use: `path` if given
    /// (`-c` or `$PETREL_CONFIG`, handled by clap), else the first file of
    /// `SEARCH_PATH` that exists, else the built-in defaults. Relative
    /// paths in a file are resolved against the file's directory; those of
    /// the built-in defaults against `./config`, as if the shipped file
    /// were there.
    pub fn load(path: Option<&Path>) -> Result<Config, LoadError> {
        let path = match path {
            Some(p) => Some(p.to_path_buf()),
            None => Self::SEARCH_PATH
                .iter()
                .map(PathBuf::from)
                .find(|p| p.exists()),
        };
        match path {
            Some(p) => {
                let text =
                    std::fs::read_to_string(&p).map_err(|e| LoadError::Read(p.clone(), e))?;
                let abs = std::path::absolute(&p).unwrap_or_else(|_| p.clone());
                let base = abs.parent().map(Path::to_path_buf).unwrap_or_default();
                let mut cfg =
                    Config::parse_in(&text, &base).map_err(|e| LoadError::Invalid(p.clone(), e))?;
                cfg.path = Some(abs);
                Ok(cfg)
            }
            None => {
                let base =
                    std::path::absolute("config").unwrap_or_else(|_| PathBuf::from("config"));
                Config::parse_in(DEFAULT_TOML, &base)
                    .map_err(|e| LoadError::Invalid(PathBuf::from("<built-in>"), e))
            }
        }
    }

    /// The spool a configuration file names, read leniently from a file
    /// that may not pass its check: `reload` of a broken file still
    /// reaches the daemon, which logs the refusal.
    pub fn spool_of(path: &Path) -> Option<PathBuf> {
        let text = std::fs::read_to_string(path).ok()?;
        let file: toml::Table = toml::from_str(&text).ok()?;
        let spool = match file.get("server").and_then(|s| s.get("spool")) {
            Some(v) => v.as_str()?.to_string(),
            None => raw::RawServer::default().spool,
        };
        let p = Path::new(spool.trim());
        if p.is_absolute() {
            return Some(p.to_path_buf());
        }
        let abs = std::path::absolute(path).ok()?;
        Some(lexical_clean(&abs.parent()?.join(p)))
    }

    /// Parses and checks configuration text; relative paths stay relative.
    pub fn parse(text: &str) -> Result<Config, ConfigErrors> {
        Self::parse_in(text, Path::new(""))
    }

    /// Parses and checks configuration text, resolving relative paths
    /// against `base`. Every problem is reported: each unknown key, each
    /// section whose values have the wrong type, and each value that fails
    /// its check.
    pub fn parse_in(text: &str, base: &Path) -> Result<Config, ConfigErrors> {
        let file: toml::Table = toml::from_str(text).map_err(|e| ConfigErrors {
            errors: vec![toml_error(text, &e)],
        })?;
        let mut c = Checker::default();
        let raw = schema::read(file, &mut c.errors);
        let cfg = Config::check(raw, base, &mut c);
        if c.errors.is_empty() {
            Ok(cfg)
        } else {
            Err(ConfigErrors { errors: c.errors })
        }
    }

    /// Whether the users' passwords include the shipped sample hash (whose
    /// password is published in the README).
    pub fn has_sample_passwords(&self) -> bool {
        self.directory
            .users
            .iter()
            .any(|u| u.password == SAMPLE_PASSWORD_HASH)
    }

    fn check(raw: RawConfig, base: &Path, c: &mut Checker) -> Config {
        let resolve = |p: &str| -> PathBuf {
            let p = Path::new(p.trim());
            if p.is_absolute() || base.as_os_str().is_empty() {
                p.to_path_buf()
            } else {
                lexical_clean(&base.join(p))
            }
        };
        let kept = raw.clone();
        let hostname = if raw.server.hostname.is_empty() {
            system_hostname()
        } else {
            raw.server.hostname.trim().to_ascii_lowercase()
        };
        if !valid_domain(&hostname) {
            c.error(
                "server.hostname",
                format!("{hostname:?} is not a valid host name"),
            );
        }
        if raw.server.spool.trim().is_empty() {
            c.error("server.spool", "must not be empty");
        }

        let primary = raw
            .domains
            .primary
            .trim()
            .trim_end_matches('.')
            .to_ascii_lowercase();
        if primary.is_empty() {
            c.error(
                "domains.primary",
                "must be set to the organisation's mail domain",
            );
        } else if !valid_domain(&primary) {
            c.error(
                "domains.primary",
                format!("{primary:?} is not a valid domain"),
            );
        }
        let mut aliases = Vec::new();
        let mut literals = Vec::new();
        for (i, a) in raw.domains.aliases.iter().enumerate() {
            let a = a.trim().trim_end_matches('.').to_ascii_lowercase();
            if let Some(lit) = a.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
                match lit.strip_prefix("ipv6:").unwrap_or(lit).parse::<IpAddr>() {
                    Ok(ip) => literals.push(ip),
                    Err(_) => c.error(
                        format!("domains.aliases[{i}]"),
                        format!("{a:?} is not a domain literal such as \"[192.0.2.10]\""),
                    ),
                }
            } else if valid_domain(&a) {
                aliases.push(a);
            } else {
                c.error(
                    format!("domains.aliases[{i}]"),
                    format!("{a:?} is not a valid domain"),
                );
            }
        }
        let mut relay_domains = Vec::new();
        for (i, r) in raw.domains.relay_domains.iter().enumerate() {
            let r = r.trim().trim_end_matches('.').to_ascii_lowercase();
            if !valid_domain(&r) {
                c.error(
                    format!("domains.relay_domains[{i}]"),
                    format!("{r:?} is not a valid domain"),
                );
            } else if r == primary || aliases.contains(&r) {
                c.error(
                    format!("domains.relay_domains[{i}]"),
                    format!(
                        "{r:?} is also a local domain; a domain is either delivered here or relayed"
                    ),
                );
            } else {
                relay_domains.push(r);
            }
        }
        let domains = Domains {
            primary,
            aliases,
            literals,
            relay_domains,
        };

        let mut listeners = Vec::new();
        let mut names = HashSet::new();
        for (i, l) in raw.listeners.iter().enumerate() {
            let key = format!("listeners[{i}]");
            if l.name.trim().is_empty() {
                c.error(format!("{key}.name"), "must not be empty");
            } else if !names.insert(l.name.clone()) {
                c.error(
                    format!("{key}.name"),
                    format!("{:?} is used by another listener", l.name),
                );
            }
            let protocol = match l.protocol.as_str() {
                "smtp" => Protocol::Smtp,
                "submission" => Protocol::Submission,
                "pop3" => Protocol::Pop3,
                "imap" => Protocol::Imap,
                "http" => Protocol::Http,
                other => {
                    c.error(
                        format!("{key}.protocol"),
                        format!("{other:?} is not one of smtp, submission, pop3, imap, http"),
                    );
                    Protocol::Smtp
                }
            };
            let bind = l.bind.parse::<SocketAddr>().unwrap_or_else(|_| {
                c.error(
                    format!("{key}.bind"),
                    format!("{:?} is not an address such as \"127.0.0.1:2525\"", l.bind),
                );
                SocketAddr::from(([127, 0, 0, 1], 0))
            });
            let tls = match l.tls.as_str() {
                "none" => TlsMode::None,
                "starttls" => TlsMode::Starttls,
                "implicit" => TlsMode::Implicit,
                other => {
                    c.error(
                        format!("{key}.tls"),
                        format!("{other:?} is not one of none, starttls, implicit"),
                    );
                    TlsMode::None
                }
            };
            let auth = match l.auth.as_str() {
                "off" => AuthMode::Off,
                "optional" => AuthMode::Optional,
                "required" => AuthMode::Required,
                other => {
                    c.error(
                        format!("{key}.auth"),
                        format!("{other:?} is not one of off, optional, required"),
                    );
                    AuthMode::Off
                }
            };
            if auth != AuthMode::Off && !matches!(protocol, Protocol::Smtp | Protocol::Submission) {
                c.error(
                    format!("{key}.auth"),
                    "only smtp and submission listeners take auth; the others always authenticate",
                );
            }
            listeners.push(Listener {
                name: l.name.clone(),
                protocol,
                bind,
                tls,
                auth,
            });
        }

        let path_opt = |s: &str| (!s.trim().is_empty()).then(|| PathBuf::from(s.trim()));
        let tls = Tls {
            cert: path_opt(&raw.tls.cert),
            key: path_opt(&raw.tls.key),
        };
        if tls.cert.is_some() != tls.key.is_some() {
            c.error(
                if tls.cert.is_some() {
                    "tls.key"
                } else {
                    "tls.cert"
                },
                "cert and key must be set together",
            );
        }

        let ri = &raw.smtp.inbound;
        let max_message_size = parse_size(&ri.max_message_size).unwrap_or_else(|e| {
            c.error("smtp.inbound.max_message_size", e);
            0
        });
        let patterns = |c: &mut Checker, key: &str, list: &[String]| -> Vec<String> {
            list.iter()
                .enumerate()
                .filter_map(|(i, p)| {
                    let p = p.trim().to_ascii_lowercase();
                    if p.is_empty() {
                        c.error(format!("{key}[{i}]"), "empty pattern");
                        None
                    } else {
                        Some(p)
                    }
                })
                .collect()
        };
        let inbound = Inbound {
            max_message_size,
            max_recipients: c.positive("smtp.inbound.max_recipients", ri.max_recipients),
            allow_connections_from: c.host_patterns(
                "smtp.inbound.allow_connections_from",
                &ri.allow_connections_from,
            ),
            deny_connections_from: c.host_patterns(
                "smtp.inbound.deny_connections_from",
                &ri.deny_connections_from,
            ),
            relay_from: c.host_patterns("smtp.inbound.relay_from", &ri.relay_from),
            deny_senders: patterns(c, "smtp.inbound.deny_senders", &ri.deny_senders),
            deny_recipients: patterns(c, "smtp.inbound.deny_recipients", &ri.deny_recipients),
            verify_recipients: ri.verify_recipients,
            verify_relay_recipients: ri.verify_relay_recipients,
            verify_positive_ttl: c
                .duration("smtp.inbound.verify_positive_ttl", &ri.verify_positive_ttl),
            verify_negative_ttl: c
                .duration("smtp.inbound.verify_negative_ttl", &ri.verify_negative_ttl),
            verify_timeout: c.duration("smtp.inbound.verify_timeout", &ri.verify_timeout),
            allow_plaintext_auth: ri.allow_plaintext_auth,
            command_timeout: c.duration("smtp.inbound.command_timeout", &ri.command_timeout),
            data_timeout: c.duration("smtp.inbound.data_timeout", &ri.data_timeout),
            max_connections: c.positive("smtp.inbound.max_connections", ri.max_connections),
            max_connections_per_client: c.positive(
                "smtp.inbound.max_connections_per_client",
                ri.max_connections_per_client,
            ),
            max_errors: c.positive("smtp.inbound.max_errors", ri.max_errors) as u32,
            checks: Checks {
                spf: c.check_mode("smtp.inbound.checks.spf", &ri.checks.spf),
                dkim: c.check_mode("smtp.inbound.checks.dkim", &ri.checks.dkim),
                dmarc: c.check_mode("smtp.inbound.checks.dmarc", &ri.checks.dmarc),
                arc: c.check_mode("smtp.inbound.checks.arc", &ri.checks.arc),
                dnsbl: c.zones("smtp.inbound.checks.dnsbl", &ri.checks.dnsbl),
                dnswl: c.zones("smtp.inbound.checks.dnswl", &ri.checks.dnswl),
                require_ptr: ri.checks.require_ptr,
            },
            rate_limits: RateLimits {
                connections_per_minute: c.count(
                    "smtp.inbound.rate_limits.connections_per_minute",
                    ri.rate_limits.connections_per_minute,
                ),
                messages_per_minute: c.count(
                    "smtp.inbound.rate_limits.messages_per_minute",
                    ri.rate_limits.messages_per_minute,
                ),
                recipients_per_minute: c.count(
                    "smtp.inbound.rate_limits.recipients_per_minute",
                    ri.rate_limits.recipients_per_minute,
                ),
                time_unit: c.duration(
                    "smtp.inbound.rate_limits.time_unit",
                    &ri.rate_limits.time_unit,
                ),
            },
        };

        let ro = &raw.smtp.outbound;
        let port = u16::try_from(ro.port)
            .ok()
            .filter(|p| *p > 0)
            .unwrap_or_else(|| {
                c.error(
                    "smtp.outbound.port",
                    format!("{} is not a port number", ro.port),
                );
                25
            });
        let smarthost = if ro.smarthost.trim().is_empty() {
            None
        } else {
            parse_next_hop(&ro.smarthost, 25)
                .map_err(|e| c.error("smtp.outbound.smarthost", e))
                .ok()
        };
        let outbound_tls = match ro.tls.as_str() {
            "off" => OutboundTls::Off,
            "opportunistic" => OutboundTls::Opportunistic,
            "required" => OutboundTls::Required,
            other => {
                c.error(
                    "smtp.outbound.tls",
                    format!("{other:?} is not one of off, opportunistic, required"),
                );
                OutboundTls::Opportunistic
            }
        };
        let mut routes = Vec::new();
        for (i, r) in ro.routes.iter().enumerate() {
            let key = format!("smtp.outbound.routes[{i}]");
            let domain = r.domain.trim().trim_end_matches('.').to_ascii_lowercase();
            if !valid_domain(domain.strip_prefix("*.").unwrap_or(&domain)) {
                c.error(
                    format!("{key}.domain"),
                    format!("{domain:?} is not a domain or \"*.domain\""),
                );
            }
            match parse_next_hop(&r.host, 25) {
                Ok(host) => routes.push(Route { domain, host }),
                Err(e) => c.error(format!("{key}.host"), e),
            }
        }
        let source_address = if ro.source_address.trim().is_empty() {
            None
        } else {
            match ro.source_address.trim().parse::<IpAddr>() {
                Ok(ip) => Some(ip),
                Err(_) => {
                    c.error(
                        "smtp.outbound.source_address",
                        format!(
                            "{:?} is not an IP address such as \"127.0.0.2\"",
                            ro.source_address
                        ),
                    );
                    None
                }
            }
        };
        let outbound = Outbound {
            smarthost,
            port,
            tls: outbound_tls,
            routes,
            source_address,
        };

        let rq = &raw.queue;
        let queue = Queue {
            retry_initial: c.duration("queue.retry_initial", &rq.retry_initial),
            retry_max: c.duration("queue.retry_max", &rq.retry_max),
            lifetime: c.duration("queue.lifetime", &rq.lifetime),
            warn_after: c.duration("queue.warn_after", &rq.warn_after),
            destination_concurrency: c
                .positive("queue.destination_concurrency", rq.destination_concurrency),
            total_concurrency: c.positive("queue.total_concurrency", rq.total_concurrency),
        };
        if queue.retry_max < queue.retry_initial {
            c.error(
                "queue.retry_max",
                "must not be shorter than queue.retry_initial",
            );
        }
        if queue.retry_initial.is_zero() {
            c.error("queue.retry_initial", "must be longer than zero");
        }

        let mut nameservers = Vec::new();
        for (i, ns) in raw.dns.nameservers.iter().enumerate() {
            let parsed = ns
                .parse::<SocketAddr>()
                .or_else(|_| ns.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)));
            match parsed {
                Ok(a) => nameservers.push(a),
                Err(_) => c.error(
                    format!("dns.nameservers[{i}]"),
                    format!("{ns:?} is not an address such as \"127.0.0.1:5353\""),
                ),
            }
        }

        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&raw.log.level) {
            c.error(
                "log.level",
                format!("{:?} is not a log level or filter: {e}", raw.log.level),
            );
        }
        let smtp_debug = u8::try_from(raw.log.smtp_debug)
            .ok()
            .filter(|l| *l <= 3)
            .unwrap_or_else(|| {
                c.error(
                    "log.smtp_debug",
                    format!("{} is not a level from 0 to 3", raw.log.smtp_debug),
                );
                0
            });

        let log_format = match raw.log.format.as_str() {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => {
                c.error("log.format", format!("{other:?} is not one of text, json"));
                LogFormat::Text
            }
        };

        let rp = &raw.pop3;
        let pop3 = Pop3 {
            allow_plaintext_auth: rp.allow_plaintext_auth,
            idle_timeout: c.duration("pop3.idle_timeout", &rp.idle_timeout),
            max_connections: c.positive("pop3.max_connections", rp.max_connections),
            max_connections_per_client: c.positive(
                "pop3.max_connections_per_client",
                rp.max_connections_per_client,
            ),
        };
        let rim = &raw.imap;
        let imap = Imap {
            allow_plaintext_auth: rim.allow_plaintext_auth,
            idle_timeout: c.duration("imap.idle_timeout", &rim.idle_timeout),
            login_timeout: c.duration("imap.login_timeout", &rim.login_timeout),
            max_connections: c.positive("imap.max_connections", rim.max_connections),
            max_connections_per_client: c.positive(
                "imap.max_connections_per_client",
                rim.max_connections_per_client,
            ),
            max_connections_per_user: c.positive(
                "imap.max_connections_per_user",
                rim.max_connections_per_user,
            ),
        };
        let web = Web {
            session_lifetime: c.duration("web.session_lifetime", &raw.web.session_lifetime),
            metrics_from: c.host_patterns("web.metrics_from", &raw.web.metrics_from),
        };

        let rs = &raw.store;
        let store = match rs.backend.as_str() {
            "embedded" => {
                if rs.path.trim().is_empty() {
                    c.error("store.path", "must not be empty");
                }
                MessageStore::Embedded {
                    path: resolve(&rs.path),
                }
            }
            "postgres" => {
                if !(rs.url.starts_with("postgres://") || rs.url.starts_with("postgresql://")) {
                    c.error(
                        "store.url",
                        format!(
                            "{:?} is not a URL such as \"postgres://petrel@127.0.0.1:5432/petrel\"",
                            rs.url
                        ),
                    );
                }
                MessageStore::Postgres {
                    url: rs.url.clone(),
                    pool_size: c.positive("store.pool_size", rs.pool_size),
                }
            }
            other => {
                c.error(
                    "store.backend",
                    format!("{other:?} is not one of embedded, postgres"),
                );
                MessageStore::Embedded {
                    path: resolve(&rs.path),
                }
            }
        };
        let directory_backend = match raw.directory.backend.as_str() {
            "config" => DirectoryBackend::Config,
            "postgres" => {
                if !matches!(store, MessageStore::Postgres { .. }) {
                    c.error(
                        "directory.backend",
                        "\"postgres\" keeps the directory in the store's database: set store.backend = \"postgres\" too",
                    );
                }
                DirectoryBackend::Postgres
            }
            other => {
                c.error(
                    "directory.backend",
                    format!("{other:?} is not one of config, postgres"),
                );
                DirectoryBackend::Config
            }
        };

        let mut dkim_keys = Vec::new();
        for (i, k) in raw.dkim.keys.iter().enumerate() {
            let key = format!("dkim.keys[{i}]");
            let domain = k.domain.trim().trim_end_matches('.').to_ascii_lowercase();
            if !valid_domain(&domain) {
                c.error(
                    format!("{key}.domain"),
                    format!("{:?} is not a domain", k.domain),
                );
            }
            let selector = k.selector.trim().to_string();
            if selector.is_empty()
                || !selector.split('.').all(|l| {
                    !l.is_empty()
                        && l.chars()
                            .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_')
                })
            {
                c.error(
                    format!("{key}.selector"),
                    format!(
                        "{:?} is not a DKIM selector (letters, digits, '-', '_', '.')",
                        k.selector
                    ),
                );
            }
            if k.key.trim().is_empty() {
                c.error(format!("{key}.key"), "must name the private key file");
            }
            dkim_keys.push(DkimKey {
                domain,
                selector,
                key: resolve(&k.key),
            });
        }
        let dkim = Dkim {
            allow_unsigned: raw.dkim.allow_unsigned,
            keys: dkim_keys,
        };
        let history = History {
            max_age: c.duration("history.max_age", &raw.history.max_age),
            max_size: parse_size(&raw.history.max_size).unwrap_or_else(|e| {
                c.error("history.max_size", e);
                0
            }),
        };

        let mut directory = Directory::check(&domains, raw.users, raw.mailin, raw.aliases, c);

        for (i, r) in outbound.routes.iter().enumerate() {
            let d = r.domain.strip_prefix("*.").unwrap_or(&r.domain);
            if domains.is_local(d) {
                c.error(
                    format!("smtp.outbound.routes[{i}].domain"),
                    format!(
                        "{:?} is a local domain (domains.primary or domains.aliases): its mail is delivered here and this route would never be used",
                        r.domain
                    ),
                );
            }
        }
        if let Some(h) = &outbound.smarthost
            && (h.host == hostname || domains.is_local(&h.host))
        {
            c.error(
                "smtp.outbound.smarthost",
                format!(
                    "{:?} names this server or a local domain: mail would be sent to itself",
                    h.host
                ),
            );
        }

        let postmaster = raw.server.postmaster.trim().to_ascii_lowercase();
        let postmaster = if postmaster.is_empty() && domains.primary.is_empty() {
            None
        } else if postmaster.is_empty() {
            let fallback = format!("postmaster@{}", domains.primary);
            if directory_backend == DirectoryBackend::Config
                && directory.expand(&fallback, &domains).is_empty()
            {
                c.error(
                    "server.postmaster",
                    format!(
                        "must be set: mail for postmaster@<every local domain> must go somewhere (RFC 5321 §4.5.1), and {fallback} is no user, mail-in or alias address"
                    ),
                );
            }
            None
        } else {
            match postmaster.rsplit_once('@') {
                Some((l, d)) if !l.is_empty() && !d.is_empty() => {
                    if directory_backend == DirectoryBackend::Config
                        && domains.is_local(d)
                        && directory.expand(&postmaster, &domains).is_empty()
                    {
                        c.error(
                            "server.postmaster",
                            format!("{postmaster:?} is in a local domain but no user, mail-in or alias address"),
                        );
                    }
                }
                _ => c.error(
                    "server.postmaster",
                    format!("{postmaster:?} is not an address"),
                ),
            }
            Some(postmaster)
        };
        directory.postmaster = postmaster.clone();

        Config {
            path: None,
            server: Server {
                hostname,
                spool: resolve(&raw.server.spool),
                postmaster,
            },
            domains,
            listeners,
            tls: Tls {
                cert: tls.cert.map(|p| resolve(&p.to_string_lossy())),
                key: tls.key.map(|p| resolve(&p.to_string_lossy())),
            },
            inbound,
            outbound,
            queue,
            dns: Dns { nameservers },
            log: Log {
                level: raw.log.level,
                smtp_debug,
                format: log_format,
            },
            pop3,
            imap,
            web,
            store,
            directory_backend,
            dkim,
            history,
            directory,
            raw: kept,
        }
    }
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("cannot read {0}: {1}")]
    Read(PathBuf, #[source] std::io::Error),
    /// The file has errors.
    #[error("{0}: {1}")]
    Invalid(PathBuf, ConfigErrors),
}

/// Turns a TOML syntax or type error into a keyed error: the key is the
/// dotted path when toml names it, else `line N`.
fn toml_error(text: &str, e: &toml::de::Error) -> ConfigError {
    let line = e
        .span()
        .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
    let msg = e.message().trim().to_string();
    let key = line
        .map(|l| key_at_line(text, l))
        .unwrap_or_else(|| "(file)".into());
    ConfigError {
        key,
        reason: match line {
            Some(l) => format!("{msg} (line {l})"),
            None => msg,
        },
    }
}

/// Best-effort dotted key for a line: the last table header above it plus
/// the key on that line.
fn key_at_line(text: &str, line: usize) -> String {
    let mut table = String::new();
    let mut key = String::new();
    for (i, l) in text.lines().enumerate().take(line) {
        let t = l.trim();
        if t.starts_with('[') {
            table = t.trim_matches(|c| c == '[' || c == ']').trim().to_string();
            key.clear();
        } else if i + 1 == line
            && let Some((k, _)) = t.split_once('=')
        {
            key = k.trim().to_string();
        }
    }
    match (table.is_empty(), key.is_empty()) {
        (true, true) => format!("line {line}"),
        (true, false) => key,
        (false, true) => table,
        (false, false) => format!("{table}.{key}"),
    }
}

/// `a/b/../c` as `a/c`, without touching the file system (so that paths
/// in messages read as the administrator expects).
fn lexical_clean(p: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// The kernel's host name, as a fallback for `server.hostname`.
fn system_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_ascii_lowercase())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_sizes_parse() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("4h"), Ok(Duration::from_secs(14400)));
        assert_eq!(parse_duration("5d"), Ok(Duration::from_secs(432000)));
        assert!(parse_duration("5 parsecs").is_err());
        assert_eq!(parse_size("25MiB"), Ok(25 * 1024 * 1024));
        assert_eq!(parse_size("1000"), Ok(1000));
        assert!(parse_size("big").is_err());
    }

    #[test]
    fn shipped_configurations_are_valid() {
        Config::parse(DEFAULT_TOML).expect("config/petrel.toml");
        Config::parse(include_str!("../../config/edge.toml")).expect("config/edge.toml");
        Config::parse(include_str!("../../config/internal.toml")).expect("config/internal.toml");
    }

    #[test]
    fn errors_name_their_keys() {
        let text = r#"
[server]
hostname = "mx.example.test"
[domains]
primary = "example.test"
[queue]
retry_initial = "soon"
[[listeners]]
name = "mx"
protocol = "smtp"
bind = "nowhere"
[smtp.inbound]
max_message_size = "lots"
relay_from = ["not a net"]
"#;
        let errs = Config::parse(text).unwrap_err().errors;
        let keys: Vec<&str> = errs.iter().map(|e| e.key.as_str()).collect();
        assert!(keys.contains(&"queue.retry_initial"), "{keys:?}");
        assert!(keys.contains(&"listeners[0].bind"), "{keys:?}");
        assert!(keys.contains(&"smtp.inbound.max_message_size"), "{keys:?}");
        assert!(keys.contains(&"smtp.inbound.relay_from[0]"), "{keys:?}");
    }

    #[test]
    fn every_key_the_parser_knows_is_documented() {
        let doc = include_str!("../../docs/configuration.md");
        let missing: Vec<String> = schema::known_keys()
            .into_iter()
            .filter(|k| !doc.contains(&format!("`{k}`")))
            .collect();
        assert!(
            missing.is_empty(),
            "keys missing from docs/configuration.md: {missing:?}"
        );
    }

    #[test]
    fn every_error_is_reported_not_just_the_first() {
        let text = r#"
[server]
hostnme = "typo"
[queue]
retry_initial = "soon"
retry_inital = "5m"
destination_concurrency = "many"
[[listeners]]
name = "mx"
protocol = "smtp"
bind = "nowhere"
"#;
        let errs = Config::parse(text).unwrap_err().errors;
        let keys: Vec<&str> = errs.iter().map(|e| e.key.as_str()).collect();
        for want in [
            "server.hostnme",
            "queue.retry_inital",
            "queue.retry_initial",
            "queue.destination_concurrency",
            "listeners[0].bind",
            "domains.primary",
        ] {
            assert!(keys.contains(&want), "{want} not in {keys:?}");
        }
    }

    #[test]
    fn relative_paths_are_resolved_against_the_files_directory() {
        let c = Config::parse_in(
            "[server]\nspool = \"../spool\"\npostmaster = \"x@remote.test\"\n[domains]\nprimary = \"example.test\"\n[tls]\ncert = \"/abs/cert.pem\"\nkey = \"tls/key.pem\"\n",
            Path::new("/etc/petrel"),
        )
        .expect("valid");
        assert_eq!(c.server.spool, Path::new("/etc/spool"));
        assert_eq!(c.tls.cert.as_deref(), Some(Path::new("/abs/cert.pem")));
        assert_eq!(
            c.tls.key.as_deref(),
            Some(Path::new("/etc/petrel/tls/key.pem"))
        );
        assert_eq!(
            c.store,
            MessageStore::Embedded {
                path: PathBuf::from("/etc/petrel/store")
            }
        );
    }

    #[test]
    fn postmaster_needs_somewhere_to_go_and_routes_never_name_local_domains() {
        let errs = Config::parse(
            "[domains]\nprimary = \"example.test\"\naliases = [\"example.org\"]\n[[smtp.outbound.routes]]\ndomain = \"example.org\"\nhost = \"[10.0.0.2]:25\"\n",
        )
        .unwrap_err()
        .errors;
        let keys: Vec<&str> = errs.iter().map(|e| e.key.as_str()).collect();
        assert!(keys.contains(&"server.postmaster"), "{keys:?}");
        assert!(keys.contains(&"smtp.outbound.routes[0].domain"), "{keys:?}");
    }

    #[test]
    fn unknown_key_is_named() {
        let errs = Config::parse("[queue]\nretry_inital = \"5m\"\n")
            .unwrap_err()
            .errors;
        assert_eq!(errs[0].key, "queue.retry_inital", "{errs:?}");
    }

    #[test]
    fn next_hops_parse() {
        assert_eq!(
            parse_next_hop("[relay.example.test]:2525", 25),
            Ok(NextHop {
                host: "relay.example.test".into(),
                port: 2525,
                no_mx: true
            })
        );
        assert_eq!(
            parse_next_hop("mail.example.test", 25),
            Ok(NextHop {
                host: "mail.example.test".into(),
                port: 25,
                no_mx: false
            })
        );
        assert!(parse_next_hop("[oops:25", 25).is_err());
    }

    #[test]
    fn glob_matches() {
        assert!(glob_match("*@spam.test", "joe@spam.test"));
        assert!(glob_match("*.bad.test", "x.y.bad.test"));
        assert!(!glob_match("*.bad.test", "bad.test"));
        assert!(glob_match("*", "anything"));
        assert!(!glob_match("a*b", "ac"));
    }
}
