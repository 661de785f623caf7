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
use serde::Deserialize;

use crate::directory::Directory;

/// The shipped single-server configuration; also the built-in default used
/// when no configuration file exists (SPEC: "built-in defaults equal to that
/// file").
pub const DEFAULT_TOML: &str = include_str!("../config/petrel.toml");

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

// ---------------------------------------------------------------------------
// Raw structures: exactly the keys of the file.

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawConfig {
    server: RawServer,
    domains: RawDomains,
    listeners: Vec<RawListener>,
    tls: RawTls,
    smtp: RawSmtp,
    queue: RawQueue,
    dns: RawDns,
    log: RawLog,
    pop3: RawPop3,
    users: Vec<RawUser>,
    mailin: Vec<RawMailin>,
    aliases: Vec<RawAlias>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawServer {
    hostname: String,
    spool: String,
}

impl Default for RawServer {
    fn default() -> Self {
        RawServer {
            hostname: String::new(),
            spool: "spool".into(),
        }
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawDomains {
    primary: String,
    aliases: Vec<String>,
    relay_domains: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListener {
    name: String,
    protocol: String,
    bind: String,
    #[serde(default = "default_tls_mode")]
    tls: String,
    #[serde(default = "default_auth_mode")]
    auth: String,
}

fn default_tls_mode() -> String {
    "none".into()
}
fn default_auth_mode() -> String {
    "off".into()
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawTls {
    cert: String,
    key: String,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawSmtp {
    inbound: RawInbound,
    outbound: RawOutbound,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawInbound {
    max_message_size: String,
    max_recipients: i64,
    allow_connections_from: Vec<String>,
    deny_connections_from: Vec<String>,
    relay_from: Vec<String>,
    deny_senders: Vec<String>,
    deny_recipients: Vec<String>,
    verify_recipients: bool,
    allow_plaintext_auth: bool,
    command_timeout: String,
    data_timeout: String,
    max_connections: i64,
    max_connections_per_client: i64,
    max_errors: i64,
}

impl Default for RawInbound {
    fn default() -> Self {
        RawInbound {
            max_message_size: "25MiB".into(),
            max_recipients: 100,
            allow_connections_from: vec![],
            deny_connections_from: vec![],
            relay_from: vec!["127.0.0.0/8".into(), "::1/128".into()],
            deny_senders: vec![],
            deny_recipients: vec![],
            verify_recipients: true,
            allow_plaintext_auth: false,
            command_timeout: "5m".into(),
            data_timeout: "10m".into(),
            max_connections: 1000,
            max_connections_per_client: 50,
            max_errors: 10,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawOutbound {
    smarthost: String,
    port: i64,
    tls: String,
    routes: Vec<RawRoute>,
}

impl Default for RawOutbound {
    fn default() -> Self {
        RawOutbound {
            smarthost: String::new(),
            port: 25,
            tls: "opportunistic".into(),
            routes: vec![],
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    domain: String,
    host: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawQueue {
    retry_initial: String,
    retry_max: String,
    lifetime: String,
    warn_after: String,
    destination_concurrency: i64,
    total_concurrency: i64,
}

impl Default for RawQueue {
    fn default() -> Self {
        RawQueue {
            retry_initial: "5m".into(),
            retry_max: "1h".into(),
            lifetime: "5d".into(),
            warn_after: "4h".into(),
            destination_concurrency: 20,
            total_concurrency: 200,
        }
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawDns {
    nameservers: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawPop3 {
    allow_plaintext_auth: bool,
    idle_timeout: String,
}

impl Default for RawPop3 {
    fn default() -> Self {
        RawPop3 {
            allow_plaintext_auth: false,
            idle_timeout: "10m".into(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawLog {
    level: String,
    smtp_debug: i64,
}

impl Default for RawLog {
    fn default() -> Self {
        RawLog {
            level: "info".into(),
            smtp_debug: 0,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUser {
    name: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    addresses: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMailin {
    name: String,
    #[serde(default)]
    addresses: Vec<String>,
    #[serde(default)]
    readers: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAlias {
    address: String,
    #[serde(default)]
    members: Vec<String>,
}

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
    /// `[[users]]`, `[[mailin]]` and `[[aliases]]`.
    pub directory: Directory,
}

/// `[server]`.
#[derive(Debug, Clone)]
pub struct Server {
    /// FQDN used in greeting, HELO, Received and bounces.
    pub hostname: String,
    /// Spool directory.
    pub spool: PathBuf,
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
#[derive(Debug, Clone)]
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
}

/// `[log]`.
#[derive(Debug, Clone)]
pub struct Log {
    /// A tracing filter such as `info` or `petrel=debug`.
    pub level: String,
    /// SMTP trace level 0–3.
    pub smtp_debug: u8,
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
    /// Loads the configuration the CLI should use: `path` if given, else
    /// `$PETREL_CONFIG` (handled by clap), else `config/petrel.toml` if it
    /// exists, else the built-in defaults.
    pub fn load(path: Option<&Path>) -> Result<Config, LoadError> {
        let path = match path {
            Some(p) => Some(p.to_path_buf()),
            None => {
                let p = PathBuf::from("config/petrel.toml");
                p.exists().then_some(p)
            }
        };
        match path {
            Some(p) => {
                let text =
                    std::fs::read_to_string(&p).map_err(|e| LoadError::Read(p.clone(), e))?;
                let mut cfg = Config::parse(&text).map_err(|e| LoadError::Invalid(p.clone(), e))?;
                cfg.path = Some(p);
                Ok(cfg)
            }
            None => Config::parse(DEFAULT_TOML)
                .map_err(|e| LoadError::Invalid(PathBuf::from("<built-in>"), e)),
        }
    }

    /// Parses and checks configuration text.
    pub fn parse(text: &str) -> Result<Config, ConfigErrors> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigErrors {
            errors: vec![toml_error(text, &e)],
        })?;
        let mut c = Checker::default();
        let cfg = Config::check(raw, &mut c);
        if c.errors.is_empty() {
            Ok(cfg)
        } else {
            Err(ConfigErrors { errors: c.errors })
        }
    }

    fn check(raw: RawConfig, c: &mut Checker) -> Config {
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
            if matches!(protocol, Protocol::Imap | Protocol::Http) {
                c.error(
                    format!("{key}.protocol"),
                    format!(
                        "{:?} is not available in this version of petrel",
                        l.protocol
                    ),
                );
            }
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
            allow_plaintext_auth: ri.allow_plaintext_auth,
            command_timeout: c.duration("smtp.inbound.command_timeout", &ri.command_timeout),
            data_timeout: c.duration("smtp.inbound.data_timeout", &ri.data_timeout),
            max_connections: c.positive("smtp.inbound.max_connections", ri.max_connections),
            max_connections_per_client: c.positive(
                "smtp.inbound.max_connections_per_client",
                ri.max_connections_per_client,
            ),
            max_errors: c.positive("smtp.inbound.max_errors", ri.max_errors) as u32,
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
        let outbound = Outbound {
            smarthost,
            port,
            tls: outbound_tls,
            routes,
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

        let directory = Directory::check(
            &domains,
            raw.users
                .into_iter()
                .map(|u| (u.name, u.password, u.addresses))
                .collect(),
            raw.mailin
                .into_iter()
                .map(|m| (m.name, m.addresses, m.readers))
                .collect(),
            raw.aliases
                .into_iter()
                .map(|a| (a.address, a.members))
                .collect(),
            c,
        );

        Config {
            path: None,
            server: Server {
                hostname,
                spool: PathBuf::from(raw.server.spool.trim()),
            },
            domains,
            listeners,
            tls,
            inbound,
            outbound,
            queue,
            dns: Dns { nameservers },
            log: Log {
                level: raw.log.level,
                smtp_debug,
            },
            pop3: Pop3 {
                allow_plaintext_auth: raw.pop3.allow_plaintext_auth,
                idle_timeout: c.duration("pop3.idle_timeout", &raw.pop3.idle_timeout),
            },
            directory,
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
        Config::parse(include_str!("../config/edge.toml")).expect("config/edge.toml");
        Config::parse(include_str!("../config/internal.toml")).expect("config/internal.toml");
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
