//! `check-config`, `hash-password`, `reload`, `debug smtp`, `mailbox`.

use std::io::{Read, Write};
use std::path::Path;

use super::request;
use crate::config::{Config, LoadError};
use crate::control::{Item, Request};

/// `petrel check-config`: every error with its key, exit 1 on error.
pub fn check_config(path: Option<&Path>) -> i32 {
    match Config::load(path) {
        Ok(c) => {
            let source = c
                .path
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "built-in defaults".into());
            println!("{source}: configuration is valid");
            0
        }
        Err(LoadError::Invalid(p, errs)) => {
            for e in &errs.errors {
                eprintln!("{}: {}: {}", p.display(), e.key, e.reason);
            }
            1
        }
        Err(e) => {
            eprintln!("petrel: {e}");
            1
        }
    }
}

/// `petrel hash-password`: password on stdin (one line), hash on stdout.
pub fn hash_password() -> i32 {
    let mut input = String::new();
    if let Err(e) = std::io::stdin().read_to_string(&mut input) {
        eprintln!("petrel: cannot read the password: {e}");
        return 1;
    }
    let password = input.strip_suffix('\n').unwrap_or(&input);
    let password = password.strip_suffix('\r').unwrap_or(password);
    if password.is_empty() {
        eprintln!("petrel: empty password");
        return 1;
    }
    match crate::auth::hash_password(password) {
        Ok(h) => {
            println!("{h}");
            0
        }
        Err(e) => {
            eprintln!("petrel: {e}");
            1
        }
    }
}

/// Requests that need the daemon and print one line on success.
pub fn simple(config: &Config, req: Request, done: &str) -> Result<(), String> {
    request(config, req, Vec::new(), |_| {})?;
    println!("petrel: {done}");
    Ok(())
}

/// `reload` of a file that fails its check: the daemon it names is asked
/// anyway, so that it logs the refusal (and keeps running on the old
/// configuration) where the administrator looks.
pub fn reload_invalid(path: Option<&std::path::Path>) {
    let path = path.map(std::path::Path::to_path_buf).or_else(|| {
        Config::SEARCH_PATH
            .iter()
            .map(std::path::PathBuf::from)
            .find(|p| p.exists())
    });
    let Some(spool) = path.as_deref().and_then(Config::spool_of) else {
        return;
    };
    match crate::control::call(&spool, &Request::Reload, &[], |_| {}) {
        Err(crate::control::CallError::Failed(_)) => {
            eprintln!("petrel: the daemon refused the reload and runs on; its log says why")
        }
        Ok(()) => eprintln!("petrel: the daemon reloaded (its view of the file differs)"),
        Err(_) => {}
    }
}

/// `petrel reload`: what the daemon changed on stdout; what it could not
/// change on stderr, and then exit 1, so that a script notices.
pub fn reload(config: &Config) -> Result<(), String> {
    let mut report = crate::daemon::ReloadReport::default();
    request(config, Request::Reload, Vec::new(), |item| {
        if let Some(v) = item.into_json()
            && let Some(r) = v.get("reload")
            && let Ok(r) = serde_json::from_value(r.clone())
        {
            report = r;
        }
    })?;
    println!("petrel: configuration reloaded");
    for a in &report.applied {
        println!("petrel: applied: {a}");
    }
    for n in &report.not_applied {
        eprintln!("petrel: not applied: {n}");
    }
    match report.not_applied.len() {
        0 => Ok(()),
        n => Err(format!(
            "{n} change(s) not applied; the daemon runs with the rest (see above)"
        )),
    }
}

/// `petrel mailbox NAME [--uid N]`.
pub fn mailbox(
    config: &Config,
    name: String,
    uid: Option<u64>,
    folder: Option<String>,
    json: bool,
) -> Result<(), String> {
    let mut out = std::io::stdout().lock();
    let mut first = true;
    request(
        config,
        Request::Mailbox { name, uid, folder },
        Vec::new(),
        |item| match item {
            Item::Raw(b) => {
                let _ = out.write_all(&b);
            }
            Item::Line(l) if json => {
                let _ = writeln!(out, "{l}");
            }
            Item::Json(v) if json => {
                let _ = writeln!(out, "{v}");
            }
            other => {
                let Some(v) = other.into_json() else { return };
                if first {
                    let _ = writeln!(out, "     UID       SIZE QUEUE-ID     MESSAGE-ID");
                    first = false;
                }
                let _ = writeln!(
                    out,
                    "{:>8} {:>10} {:<12} {}",
                    v["uid"].as_u64().unwrap_or(0),
                    v["size"].as_u64().unwrap_or(0),
                    v["queue_id"].as_str().unwrap_or(""),
                    v["message_id"].as_str().unwrap_or("-")
                );
            }
        },
    )?;
    Ok(())
}

/// `petrel config show [--changed]`: the effective configuration as TOML,
/// with every default filled in, or only what differs from the defaults.
pub fn config_show(config: &Config, changed: bool) -> Result<(), String> {
    use crate::config::schema;
    let effective = schema::to_table(&config.raw);
    let table = if changed {
        schema::changed(&effective, &schema::defaults())
    } else {
        effective
    };
    let source = config
        .path
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "built-in defaults".into());
    let text =
        toml::to_string(&table).map_err(|e| format!("cannot print the configuration: {e}"))?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "# {source}").map_err(|e| e.to_string())?;
    out.write_all(text.as_bytes()).map_err(|e| e.to_string())
}
