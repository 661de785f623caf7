//! The directory: users, mail-in (shared) mailboxes and alias groups from the
//! configuration, and the resolution of a local address to mailboxes or
//! forwarding addresses. Pure data; no I/O.

pub mod book;

use std::collections::{BTreeSet, HashMap};

use crate::config::raw::{RawAlias, RawMailin, RawUser};
use crate::config::{Checker, Domains, parse_size};

/// How deep alias groups may nest before expansion stops (a loop guard).
const MAX_ALIAS_DEPTH: usize = 10;

/// A user who can log in and owns a mailbox of the same name.
#[derive(Debug, Clone)]
pub struct User {
    /// Login and mailbox name.
    pub name: String,
    /// Password hash (`$argon2id$…`); empty: cannot log in.
    pub password: String,
    /// Addresses delivered to this user's mailbox, lower case.
    pub addresses: Vec<String>,
    /// May use the administrator's console (`/admin`).
    pub admin: bool,
    /// Storage quota in octets (IMAP QUOTA); `None`: unlimited.
    pub quota: Option<u64>,
}

/// A shared mailbox.
#[derive(Debug, Clone)]
pub struct Mailin {
    /// Mailbox name.
    pub name: String,
    /// Addresses delivered here, lower case.
    pub addresses: Vec<String>,
    /// Users who may read it.
    pub readers: Vec<String>,
}

/// The checked directory.
#[derive(Debug, Clone, Default)]
pub struct Directory {
    /// Users, in file order.
    pub users: Vec<User>,
    /// Shared mailboxes, in file order.
    pub mailin: Vec<Mailin>,
    /// Alias address → members, lower case.
    aliases: HashMap<String, Vec<String>>,
    /// Address → mailbox name, for users and mail-in.
    mailbox_of: HashMap<String, String>,
    /// `server.postmaster`: where `postmaster@<every local domain>` goes
    /// when no entry names that address itself (RFC 5321 §4.5.1).
    pub(crate) postmaster: Option<String>,
}

impl Directory {
    /// Builds the directory from raw entries, reporting problems to `c`.
    pub(crate) fn check(
        domains: &Domains,
        users: Vec<RawUser>,
        mailin: Vec<RawMailin>,
        aliases: Vec<RawAlias>,
        c: &mut Checker,
    ) -> Directory {
        let mut d = Directory::default();
        let mut names = BTreeSet::new();
        let claim = |d: &mut Directory, c: &mut Checker, key: String, addr: &str, mailbox: &str| {
            let addr = addr.trim().to_ascii_lowercase();
            match addr.rsplit_once('@') {
                Some((local, domain)) if !local.is_empty() && domains.is_local(domain) => {}
                _ => {
                    c.error(key, format!("{addr:?} is not an address in a local domain"));
                    return None;
                }
            }
            if d.mailbox_of.contains_key(&addr) {
                c.error(key, format!("{addr:?} is already given to another mailbox"));
                return None;
            }
            d.mailbox_of.insert(addr.clone(), mailbox.to_string());
            Some(addr)
        };
        for (i, u) in users.into_iter().enumerate() {
            let RawUser {
                name,
                password,
                addresses,
                admin,
                quota,
            } = u;
            let quota = if quota.trim().is_empty() {
                None
            } else {
                match parse_size(&quota) {
                    Ok(q) => Some(q),
                    Err(e) => {
                        c.error(format!("users[{i}].quota"), e);
                        None
                    }
                }
            };
            if !valid_mailbox_name(&name) {
                c.error(
                    format!("users[{i}].name"),
                    format!("{name:?} must be letters, digits, '.', '-' or '_'"),
                );
            } else if !names.insert(name.clone()) {
                c.error(
                    format!("users[{i}].name"),
                    format!("{name:?} is used twice"),
                );
            }
            if !password.is_empty()
                && let Err(e) = crate::auth::check_hash(&password)
            {
                c.error(format!("users[{i}].password"), e);
            }
            let addrs = addresses
                .iter()
                .enumerate()
                .filter_map(|(j, a)| {
                    claim(&mut d, c, format!("users[{i}].addresses[{j}]"), a, &name)
                })
                .collect();
            d.users.push(User {
                name,
                password,
                addresses: addrs,
                admin,
                quota,
            });
        }
        for (i, m) in mailin.into_iter().enumerate() {
            let RawMailin {
                name,
                addresses,
                readers,
            } = m;
            if !valid_mailbox_name(&name) {
                c.error(
                    format!("mailin[{i}].name"),
                    format!("{name:?} must be letters, digits, '.', '-' or '_'"),
                );
            } else if !names.insert(name.clone()) {
                c.error(
                    format!("mailin[{i}].name"),
                    format!("{name:?} is already a user or mail-in name"),
                );
            }
            let addrs = addresses
                .iter()
                .enumerate()
                .filter_map(|(j, a)| {
                    claim(&mut d, c, format!("mailin[{i}].addresses[{j}]"), a, &name)
                })
                .collect();
            d.mailin.push(Mailin {
                name,
                addresses: addrs,
                readers,
            });
        }
        for (i, m) in d.mailin.iter().enumerate() {
            for (j, r) in m.readers.iter().enumerate() {
                if !d.users.iter().any(|u| &u.name == r) {
                    c.error(
                        format!("mailin[{i}].readers[{j}]"),
                        format!("{r:?} is not a user"),
                    );
                }
            }
        }
        for (i, a) in aliases.into_iter().enumerate() {
            let RawAlias { address, members } = a;
            let addr = address.trim().to_ascii_lowercase();
            let local = addr
                .rsplit_once('@')
                .is_some_and(|(l, dom)| !l.is_empty() && domains.is_local(dom));
            if !local {
                c.error(
                    format!("aliases[{i}].address"),
                    format!("{addr:?} is not an address in a local domain"),
                );
                continue;
            }
            if d.mailbox_of.contains_key(&addr) || d.aliases.contains_key(&addr) {
                c.error(
                    format!("aliases[{i}].address"),
                    format!("{addr:?} is already a mailbox or alias address"),
                );
                continue;
            }
            if members.is_empty() {
                c.error(
                    format!("aliases[{i}].members"),
                    "must name at least one address",
                );
            }
            let mut list = Vec::new();
            for (j, m) in members.iter().enumerate() {
                let m = m.trim().to_ascii_lowercase();
                if m.rsplit_once('@')
                    .is_none_or(|(l, dom)| l.is_empty() || dom.is_empty())
                {
                    c.error(
                        format!("aliases[{i}].members[{j}]"),
                        format!("{m:?} is not an address"),
                    );
                } else {
                    list.push(m);
                }
            }
            d.aliases.insert(addr, list);
        }
        d
    }

    /// Expands a recipient in a local domain into the addresses that
    /// receive it: the address itself for a user or mail-in box, alias
    /// members (recursively) otherwise. Local results are deduplicated by
    /// mailbox, remote ones by address. Empty: the address is unknown.
    pub fn expand(&self, address: &str, domains: &Domains) -> Vec<String> {
        let mut out = Vec::new();
        let mut mailboxes = BTreeSet::new();
        self.expand_into(
            &normalize(&domains.canonical(address)),
            domains,
            0,
            &mut mailboxes,
            &mut out,
        );
        out
    }

    fn expand_into(
        &self,
        addr: &str,
        domains: &Domains,
        depth: usize,
        seen: &mut BTreeSet<String>,
        out: &mut Vec<String>,
    ) {
        let addr = &self.resolve(addr, domains);
        if let Some(mailbox) = self.mailbox_of.get(addr) {
            if seen.insert(mailbox.clone()) {
                out.push(addr.to_string());
            }
        } else if let Some(members) = self.aliases.get(addr) {
            if depth >= MAX_ALIAS_DEPTH {
                return;
            }
            for m in members {
                let is_local = m.rsplit_once('@').is_some_and(|(_, d)| domains.is_local(d));
                if is_local {
                    self.expand_into(&normalize(m), domains, depth + 1, seen, out);
                } else if !out.contains(m) {
                    out.push(m.clone());
                }
            }
        } else if let Some(target) = self.postmaster_target(addr, domains) {
            if depth >= MAX_ALIAS_DEPTH {
                return;
            }
            let is_local = target
                .rsplit_once('@')
                .is_some_and(|(_, d)| domains.is_local(d));
            if is_local {
                self.expand_into(&normalize(target), domains, depth + 1, seen, out);
            } else if !out.iter().any(|o| o == target) {
                out.push(target.to_string());
            }
        }
    }

    /// The entry an address in a local domain names: the address itself
    /// when the directory has it; for an alternate domain (`domains.aliases`,
    /// Domino's "alternate Internet domain aliases") without an entry of its
    /// own, the same local part in the primary domain.
    fn resolve(&self, addr: &str, domains: &Domains) -> String {
        if self.mailbox_of.contains_key(addr) || self.aliases.contains_key(addr) {
            return addr.to_string();
        }
        match addr.rsplit_once('@') {
            Some((local, domain))
                if !domains.primary.is_empty()
                    && !domain.eq_ignore_ascii_case(&domains.primary)
                    && domains.is_local(domain) =>
            {
                let primary = format!("{local}@{}", domains.primary);
                if self.mailbox_of.contains_key(&primary) || self.aliases.contains_key(&primary) {
                    primary
                } else {
                    addr.to_string()
                }
            }
            _ => addr.to_string(),
        }
    }

    /// `server.postmaster` for `postmaster@<a local domain>` (any case)
    /// that no entry names, and for the bare `postmaster`.
    fn postmaster_target(&self, addr: &str, domains: &Domains) -> Option<&str> {
        let target = self.postmaster.as_deref()?;
        let is_postmaster = match addr.rsplit_once('@') {
            Some((local, domain)) => {
                local.eq_ignore_ascii_case("postmaster") && domains.is_local(domain)
            }
            None => addr.eq_ignore_ascii_case("postmaster"),
        };
        (is_postmaster && !addr.eq_ignore_ascii_case(target)).then_some(target)
    }

    /// The mailbox that receives mail for a local address.
    pub fn mailbox_for(&self, address: &str, domains: &Domains) -> Option<&str> {
        self.mailbox_of
            .get(&self.resolve(&normalize(address), domains))
            .map(String::as_str)
    }

    /// The user with this login name.
    pub fn user(&self, name: &str) -> Option<&User> {
        self.users.iter().find(|u| u.name == name)
    }

    /// Whether a mailbox of this name exists (user or mail-in).
    pub fn has_mailbox(&self, name: &str) -> bool {
        self.users.iter().any(|u| u.name == name) || self.mailin.iter().any(|m| m.name == name)
    }
}

/// Lower-cases and removes a trailing dot from the domain.
fn normalize(addr: &str) -> String {
    match addr.rsplit_once('@') {
        Some((l, d)) => format!("{}@{}", l, d.trim_end_matches('.')).to_ascii_lowercase(),
        None => addr.to_ascii_lowercase(),
    }
}

fn valid_mailbox_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    fn config() -> Config {
        Config::parse(
            r#"
[server]
postmaster = "alice@example.test"
[domains]
primary = "example.test"
aliases = ["example.org"]
[[users]]
name = "alice"
addresses = ["alice@example.test", "a.smith@example.org"]
[[users]]
name = "bob"
addresses = ["bob@example.test"]
[[mailin]]
name = "support"
addresses = ["support@example.test"]
readers = ["alice"]
[[aliases]]
address = "team@example.test"
members = ["alice@example.test", "Bob@Example.Test", "dave@partner.test", "all@example.test"]
[[aliases]]
address = "all@example.test"
members = ["team@example.test", "support@example.test"]
"#,
        )
        .expect("valid")
    }

    #[test]
    fn users_mailin_and_nested_aliases_expand() {
        let c = config();
        let d = &c.directory;
        assert_eq!(
            d.expand("A.Smith@EXAMPLE.ORG", &c.domains),
            vec!["a.smith@example.org"]
        );
        assert_eq!(
            d.mailbox_for("A.Smith@example.org.", &c.domains),
            Some("alice")
        );
        assert_eq!(
            d.expand("support@example.test", &c.domains),
            vec!["support@example.test"]
        );
        assert_eq!(
            d.expand("team@example.test", &c.domains),
            vec![
                "alice@example.test",
                "bob@example.test",
                "dave@partner.test",
                "support@example.test"
            ]
        );
        assert!(d.expand("nobody@example.test", &c.domains).is_empty());
    }

    #[test]
    fn duplicate_address_is_refused_with_key() {
        let errs = Config::parse(
            r#"
[server]
postmaster = "alice@example.test"
[domains]
primary = "example.test"
[[users]]
name = "alice"
addresses = ["alice@example.test"]
[[users]]
name = "alice2"
addresses = ["alice@example.test", "x@elsewhere.test"]
"#,
        )
        .unwrap_err()
        .errors;
        let keys: Vec<_> = errs.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, vec!["users[1].addresses[0]", "users[1].addresses[1]"]);
    }
}
