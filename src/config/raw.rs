//! The raw configuration: structures that mirror the TOML file key for key,
//! with the built-in default of every key. Nothing here is checked; `mod.rs`
//! turns a `RawConfig` into the checked `Config`.
//!
//! Every structure is `Serialize` as well, for two reasons: `petrel config
//! show` prints the effective configuration from it, and `schema` derives
//! the set of known keys from the serialised defaults, so unknown keys are
//! reported with their dotted names, all of them at once, and
//! docs/configuration.md can be checked against the parser.

use serde::{Deserialize, Serialize};

/// The whole file.
#[derive(Debug, Clone, Deserialize, Serialize, Default, PartialEq)]
#[serde(default)]
pub struct RawConfig {
    pub server: RawServer,
    pub domains: RawDomains,
    pub listeners: Vec<RawListener>,
    pub tls: RawTls,
    pub smtp: RawSmtp,
    pub queue: RawQueue,
    pub dns: RawDns,
    pub log: RawLog,
    pub pop3: RawPop3,
    pub imap: RawImap,
    pub web: RawWeb,
    pub store: RawStore,
    pub directory: RawDirectory,
    pub dkim: RawDkim,
    pub history: RawHistory,
    pub users: Vec<RawUser>,
    pub mailin: Vec<RawMailin>,
    pub aliases: Vec<RawAlias>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct RawServer {
    pub hostname: String,
    pub spool: String,
    pub postmaster: String,
}

impl Default for RawServer {
    fn default() -> Self {
        RawServer {
            hostname: String::new(),
            spool: "spool".into(),
            postmaster: String::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, Default, PartialEq)]
#[serde(default)]
pub struct RawDomains {
    pub primary: String,
    pub aliases: Vec<String>,
    pub relay_domains: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct RawListener {
    pub name: String,
    pub protocol: String,
    pub bind: String,
    pub tls: String,
    pub auth: String,
}

impl Default for RawListener {
    fn default() -> Self {
        RawListener {
            name: String::new(),
            protocol: String::new(),
            bind: String::new(),
            tls: "none".into(),
            auth: "off".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, Default, PartialEq)]
#[serde(default)]
pub struct RawTls {
    pub cert: String,
    pub key: String,
}

#[derive(Debug, Clone, Deserialize, Serialize, Default, PartialEq)]
#[serde(default)]
pub struct RawSmtp {
    pub inbound: RawInbound,
    pub outbound: RawOutbound,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct RawInbound {
    pub max_message_size: String,
    pub max_recipients: i64,
    pub allow_connections_from: Vec<String>,
    pub deny_connections_from: Vec<String>,
    pub relay_from: Vec<String>,
    pub deny_senders: Vec<String>,
    pub deny_recipients: Vec<String>,
    pub verify_recipients: bool,
    pub verify_relay_recipients: bool,
    pub verify_positive_ttl: String,
    pub verify_negative_ttl: String,
    pub verify_timeout: String,
    pub allow_plaintext_auth: bool,
    pub command_timeout: String,
    pub data_timeout: String,
    pub max_connections: i64,
    pub max_connections_per_client: i64,
    pub max_errors: i64,
    pub checks: RawChecks,
    pub rate_limits: RawRateLimits,
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
            verify_relay_recipients: false,
            verify_positive_ttl: "1h".into(),
            verify_negative_ttl: "10m".into(),
            verify_timeout: "15s".into(),
            allow_plaintext_auth: false,
            command_timeout: "5m".into(),
            data_timeout: "10m".into(),
            max_connections: 1000,
            max_connections_per_client: 50,
            max_errors: 10,
            checks: RawChecks::default(),
            rate_limits: RawRateLimits::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct RawChecks {
    pub spf: String,
    pub dkim: String,
    pub dmarc: String,
    pub arc: String,
    pub dnsbl: Vec<String>,
    pub dnswl: Vec<String>,
    pub require_ptr: bool,
}

impl Default for RawChecks {
    fn default() -> Self {
        RawChecks {
            spf: "tag".into(),
            dkim: "tag".into(),
            dmarc: "tag".into(),
            arc: "tag".into(),
            dnsbl: vec![],
            dnswl: vec![],
            require_ptr: false,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct RawRateLimits {
    pub connections_per_minute: i64,
    pub messages_per_minute: i64,
    pub recipients_per_minute: i64,
    pub time_unit: String,
}

impl Default for RawRateLimits {
    fn default() -> Self {
        RawRateLimits {
            connections_per_minute: 0,
            messages_per_minute: 0,
            recipients_per_minute: 0,
            time_unit: "60s".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct RawOutbound {
    pub smarthost: String,
    pub port: i64,
    pub tls: String,
    pub source_address: String,
    pub routes: Vec<RawRoute>,
}

impl Default for RawOutbound {
    fn default() -> Self {
        RawOutbound {
            smarthost: String::new(),
            port: 25,
            tls: "opportunistic".into(),
            source_address: String::new(),
            routes: vec![],
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, Default, PartialEq)]
#[serde(default)]
pub struct RawRoute {
    pub domain: String,
    pub host: String,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct RawQueue {
    pub retry_initial: String,
    pub retry_max: String,
    pub lifetime: String,
    pub warn_after: String,
    pub destination_concurrency: i64,
    pub total_concurrency: i64,
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

#[derive(Debug, Clone, Deserialize, Serialize, Default, PartialEq)]
#[serde(default)]
pub struct RawDns {
    pub nameservers: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct RawPop3 {
    pub allow_plaintext_auth: bool,
    pub idle_timeout: String,
    pub max_connections: i64,
    pub max_connections_per_client: i64,
}

impl Default for RawPop3 {
    fn default() -> Self {
        RawPop3 {
            allow_plaintext_auth: false,
            idle_timeout: "10m".into(),
            max_connections: 1000,
            max_connections_per_client: 50,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct RawImap {
    pub allow_plaintext_auth: bool,
    pub idle_timeout: String,
    pub login_timeout: String,
    pub max_connections: i64,
    pub max_connections_per_client: i64,
    pub max_connections_per_user: i64,
}

impl Default for RawImap {
    fn default() -> Self {
        RawImap {
            allow_plaintext_auth: false,
            idle_timeout: "30m".into(),
            login_timeout: "60s".into(),
            max_connections: 1000,
            max_connections_per_client: 50,
            max_connections_per_user: 20,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct RawWeb {
    pub session_lifetime: String,
    pub metrics_from: Vec<String>,
}

impl Default for RawWeb {
    fn default() -> Self {
        RawWeb {
            session_lifetime: "12h".into(),
            metrics_from: vec!["127.0.0.0/8".into(), "::1/128".into()],
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct RawStore {
    pub backend: String,
    pub path: String,
    pub url: String,
    pub pool_size: i64,
}

impl Default for RawStore {
    fn default() -> Self {
        RawStore {
            backend: "embedded".into(),
            path: "store".into(),
            url: String::new(),
            pool_size: 16,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct RawDirectory {
    pub backend: String,
}

impl Default for RawDirectory {
    fn default() -> Self {
        RawDirectory {
            backend: "config".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, Default, PartialEq)]
#[serde(default)]
pub struct RawDkim {
    pub allow_unsigned: bool,
    pub keys: Vec<RawDkimKey>,
}

#[derive(Debug, Clone, Deserialize, Serialize, Default, PartialEq)]
#[serde(default)]
pub struct RawDkimKey {
    pub domain: String,
    pub selector: String,
    pub key: String,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct RawHistory {
    pub max_age: String,
    pub max_size: String,
}

impl Default for RawHistory {
    fn default() -> Self {
        RawHistory {
            max_age: "30d".into(),
            max_size: "1GiB".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct RawLog {
    pub level: String,
    pub smtp_debug: i64,
    pub format: String,
}

impl Default for RawLog {
    fn default() -> Self {
        RawLog {
            level: "info".into(),
            smtp_debug: 0,
            format: "text".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, Default, PartialEq)]
#[serde(default)]
pub struct RawUser {
    pub name: String,
    pub password: String,
    pub addresses: Vec<String>,
    pub admin: bool,
    pub quota: String,
}

#[derive(Debug, Clone, Deserialize, Serialize, Default, PartialEq)]
#[serde(default)]
pub struct RawMailin {
    pub name: String,
    pub addresses: Vec<String>,
    pub readers: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, Default, PartialEq)]
#[serde(default)]
pub struct RawAlias {
    pub address: String,
    pub members: Vec<String>,
}
