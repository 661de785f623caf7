//! What keys the configuration has, derived from the raw structures'
//! defaults, and what that buys: every unknown key reported with its dotted
//! name (not just the first), each section read on its own so that one bad
//! value does not hide the errors of the others, `petrel config show`, and
//! the list of keys that docs/configuration.md must document.

use toml::{Table, Value};

use super::ConfigError;
use super::raw::*;

/// The default of every key, with one default item in each array of
/// tables (so that `listeners[].bind` is known, too).
pub fn defaults() -> Table {
    let mut raw = RawConfig::default();
    raw.listeners.push(RawListener::default());
    raw.smtp.outbound.routes.push(RawRoute::default());
    raw.dkim.keys.push(RawDkimKey::default());
    raw.users.push(RawUser::default());
    raw.mailin.push(RawMailin::default());
    raw.aliases.push(RawAlias::default());
    to_table(&raw)
}

/// A raw value as a TOML table.
pub fn to_table<T: serde::Serialize>(v: &T) -> Table {
    match Value::try_from(v) {
        Ok(Value::Table(t)) => t,
        // The raw structures are plain structs of strings, numbers,
        // booleans and lists: they always serialise to a table.
        _ => Table::new(),
    }
}

/// Every known key as a dotted name (`smtp.inbound.max_recipients`,
/// `listeners[].bind`), sorted.
pub fn known_keys() -> Vec<String> {
    let mut out = Vec::new();
    collect_keys(&defaults(), "", &mut out);
    out.sort();
    out
}

fn collect_keys(t: &Table, prefix: &str, out: &mut Vec<String>) {
    for (k, v) in t {
        let name = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            Value::Table(sub) => collect_keys(sub, &name, out),
            Value::Array(items) if matches!(items.first(), Some(Value::Table(_))) => {
                if let Some(Value::Table(item)) = items.first() {
                    collect_keys(item, &format!("{name}[]"), out);
                }
            }
            _ => out.push(name),
        }
    }
}

/// Removes unknown keys from `file`, reporting each with its dotted name
/// (`listeners[2].bnid`), so that the rest can still be read and checked.
pub fn strip_unknown(file: &mut Table, errors: &mut Vec<ConfigError>) {
    strip(file, &defaults(), "", errors);
}

fn strip(file: &mut Table, schema: &Table, prefix: &str, errors: &mut Vec<ConfigError>) {
    let keys: Vec<String> = file.keys().cloned().collect();
    for k in keys {
        let name = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        let Some(known) = schema.get(&k) else {
            errors.push(ConfigError {
                key: name,
                reason: "unknown key".into(),
            });
            file.remove(&k);
            continue;
        };
        match (file.get_mut(&k), known) {
            (Some(Value::Table(sub)), Value::Table(sub_schema)) => {
                strip(sub, sub_schema, &name, errors)
            }
            (Some(Value::Array(items)), Value::Array(schema_items)) => {
                if let Some(Value::Table(item_schema)) = schema_items.first() {
                    for (i, item) in items.iter_mut().enumerate() {
                        if let Value::Table(t) = item {
                            strip(t, item_schema, &format!("{name}[{i}]"), errors);
                        }
                    }
                }
            }
            _ => {}
        }
    }
}

/// Reads one section (or one item of an array of tables) on its own, so a
/// wrong type in it is reported with the section's key and the others are
/// still read. Falls back to the section's defaults.
pub fn section<T>(value: Option<Value>, key: &str, errors: &mut Vec<ConfigError>) -> T
where
    T: serde::de::DeserializeOwned + Default,
{
    let Some(v) = value else {
        return T::default();
    };
    if let Ok(t) = T::deserialize(v.clone()) {
        return t;
    }
    // Find the keys at fault one by one, so each is named and the others
    // keep their values.
    let Value::Table(mut table) = v else {
        errors.push(ConfigError {
            key: key.to_string(),
            reason: "must be a table".into(),
        });
        return T::default();
    };
    let names: Vec<String> = table.keys().cloned().collect();
    for k in names {
        let mut one = Table::new();
        if let Some(val) = table.get(&k) {
            one.insert(k.clone(), val.clone());
        }
        if let Err(e) = T::deserialize(Value::Table(one)) {
            errors.push(ConfigError {
                key: format!("{key}.{k}"),
                reason: e.message().trim().to_string(),
            });
            table.remove(&k);
        }
    }
    match T::deserialize(Value::Table(table)) {
        Ok(t) => t,
        Err(e) => {
            errors.push(ConfigError {
                key: key.to_string(),
                reason: e.message().trim().to_string(),
            });
            T::default()
        }
    }
}

/// Reads an array of tables item by item.
pub fn items<T>(value: Option<Value>, key: &str, errors: &mut Vec<ConfigError>) -> Vec<T>
where
    T: serde::de::DeserializeOwned + Default,
{
    match value {
        None => Vec::new(),
        Some(Value::Array(list)) => list
            .into_iter()
            .enumerate()
            .map(|(i, v)| section(Some(v), &format!("{key}[{i}]"), errors))
            .collect(),
        Some(_) => {
            errors.push(ConfigError {
                key: key.to_string(),
                reason: format!("must be an array of tables ([[{key}]])"),
            });
            Vec::new()
        }
    }
}

/// Reads the raw configuration from a parsed file, collecting every
/// unknown key and every wrongly typed section.
pub fn read(mut file: Table, errors: &mut Vec<ConfigError>) -> RawConfig {
    strip_unknown(&mut file, errors);
    let mut take = |k: &str| file.remove(k);
    let mut smtp = take("smtp").and_then(|v| match v {
        Value::Table(t) => Some(t),
        _ => None,
    });
    let mut smtp_part = |k: &str| smtp.as_mut().and_then(|t| t.remove(k));
    let inbound = smtp_part("inbound");
    let outbound = smtp_part("outbound");
    RawConfig {
        server: section(take("server"), "server", errors),
        domains: section(take("domains"), "domains", errors),
        listeners: items(take("listeners"), "listeners", errors),
        tls: section(take("tls"), "tls", errors),
        smtp: RawSmtp {
            inbound: section(inbound, "smtp.inbound", errors),
            outbound: section(outbound, "smtp.outbound", errors),
        },
        queue: section(take("queue"), "queue", errors),
        dns: section(take("dns"), "dns", errors),
        log: section(take("log"), "log", errors),
        pop3: section(take("pop3"), "pop3", errors),
        imap: section(take("imap"), "imap", errors),
        web: section(take("web"), "web", errors),
        store: section(take("store"), "store", errors),
        directory: section(take("directory"), "directory", errors),
        dkim: section(take("dkim"), "dkim", errors),
        history: section(take("history"), "history", errors),
        users: items(take("users"), "users", errors),
        mailin: items(take("mailin"), "mailin", errors),
        aliases: items(take("aliases"), "aliases", errors),
    }
}

/// The keys of `effective` whose value differs from the built-in default
/// (for `config show --changed`, as `postconf -n`). Arrays of tables are
/// kept whole when they are not empty, with each item reduced to its
/// changed keys.
pub fn changed(effective: &Table, defaults: &Table) -> Table {
    let mut out = Table::new();
    for (k, v) in effective {
        match (v, defaults.get(k)) {
            (Value::Table(sub), Some(Value::Table(dsub))) => {
                let c = changed(sub, dsub);
                if !c.is_empty() {
                    out.insert(k.clone(), Value::Table(c));
                }
            }
            (Value::Array(items), Some(Value::Array(ditems)))
                if items.is_empty() && matches!(ditems.first(), Some(Value::Table(_))) => {}
            (Value::Array(items), Some(Value::Array(ditems)))
                if matches!(items.first(), Some(Value::Table(_))) =>
            {
                let item_default = match ditems.first() {
                    Some(Value::Table(t)) => t.clone(),
                    _ => Table::new(),
                };
                let reduced: Vec<Value> = items
                    .iter()
                    .map(|i| match i {
                        Value::Table(t) => Value::Table(changed(t, &item_default)),
                        other => other.clone(),
                    })
                    .collect();
                out.insert(k.clone(), Value::Array(reduced));
            }
            (v, Some(d)) if v == d => {}
            (v, _) => {
                out.insert(k.clone(), v.clone());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_unknown_key_is_reported_with_its_path() {
        let mut t: Table = toml::from_str(
            "[queue]\nretry_inital = \"5m\"\n[[listeners]]\nname = \"a\"\nbnid = \"x\"\n[nope]\nx = 1\n",
        )
        .expect("toml");
        let mut errors = Vec::new();
        strip_unknown(&mut t, &mut errors);
        let keys: Vec<&str> = errors.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(
            keys,
            vec!["listeners[0].bnid", "nope", "queue.retry_inital"]
        );
    }

    #[test]
    fn known_keys_include_nested_and_array_items() {
        let k = known_keys();
        for want in [
            "server.postmaster",
            "listeners[].bind",
            "smtp.inbound.checks.dnsbl",
            "smtp.outbound.routes[].host",
            "dkim.keys[].selector",
            "users[].quota",
        ] {
            assert!(k.iter().any(|x| x == want), "{want} missing from {k:?}");
        }
    }
}
