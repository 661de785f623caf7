//! `mailq`, `show`, `status`, and the queue operations `requeue`, `hold`,
//! `release`, `delete`.

use std::io::Write;

use super::request;
use crate::config::Config;
use crate::control::{Item, Request, Selection};
use crate::queue_report::{self, MailqEntry, ShowReport, StatusReport};
use crate::scheduler::AdminOp;

/// `petrel mailq`: streams entries; text is printed entry by entry.
pub fn mailq(
    config: &Config,
    json: bool,
    domain: Option<String>,
    state: Option<String>,
) -> Result<(), String> {
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let (mut count, mut bytes) = (0usize, 0u64);
    let mut write_err = None;
    request(
        config,
        Request::Mailq { domain, state },
        Vec::new(),
        |item| {
            let line = if json {
                match item {
                    Item::Line(mut l) => {
                        l.push('\n');
                        l
                    }
                    other => match other.into_json() {
                        Some(v) => format!("{v}\n"),
                        None => return,
                    },
                }
            } else {
                let Some(v) = item.into_json() else { return };
                let Ok(e) = serde_json::from_value::<MailqEntry>(v) else {
                    return;
                };
                let mut s = String::new();
                if count == 0 {
                    s.push_str(queue_report::MAILQ_HEADER);
                }
                count += 1;
                bytes += e.message_size;
                s.push_str(&queue_report::mailq_entry_text(&e));
                s
            };
            if let Err(e) = out.write_all(line.as_bytes()) {
                write_err.get_or_insert(e);
            }
        },
    )?;
    if !json {
        let _ = out.write_all(queue_report::mailq_footer(count, bytes).as_bytes());
    }
    let _ = out.flush();
    match write_err {
        Some(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.to_string()),
        _ => Ok(()),
    }
}

/// `petrel show`.
pub fn show(config: &Config, id: String, body: bool, json: bool) -> Result<(), String> {
    let mut out = std::io::stdout().lock();
    request(
        config,
        Request::Show { id, body },
        Vec::new(),
        |item| match item {
            Item::Raw(b) => {
                let _ = out.write_all(b"\n");
                let _ = out.write_all(&b);
            }
            other => {
                let Some(v) = other.into_json() else { return };
                let text = if json {
                    format!("{v}\n")
                } else {
                    serde_json::from_value::<ShowReport>(v)
                        .map(|r| queue_report::show_text(&r))
                        .unwrap_or_default()
                };
                let _ = out.write_all(text.as_bytes());
            }
        },
    )?;
    Ok(())
}

/// `petrel status`.
pub fn status(config: &Config, json: bool) -> Result<(), String> {
    let mut report = None;
    request(config, Request::Status, Vec::new(), |item| {
        if let Some(v) = item.into_json() {
            report = Some(v);
        }
    })?;
    let v = report.ok_or("no status was returned")?;
    if json {
        println!("{v}");
    } else {
        let r: StatusReport = serde_json::from_value(v).map_err(|e| e.to_string())?;
        print!("{}", queue_report::status_text(&r));
    }
    Ok(())
}

/// `requeue`, `hold`, `release`, `delete`.
pub fn admin(config: &Config, op: AdminOp, select: Selection) -> Result<(), String> {
    let mut result = None;
    request(config, Request::Admin { op, select }, Vec::new(), |item| {
        if let Some(v) = item.into_json() {
            result = Some(v);
        }
    })?;
    let v = result.ok_or("no answer was returned")?;
    let done = v.get("done").and_then(|d| d.as_u64()).unwrap_or(0);
    let missing: Vec<String> = v
        .get("missing")
        .and_then(|m| serde_json::from_value(m.clone()).ok())
        .unwrap_or_default();
    let verb = match op {
        AdminOp::Requeue => "requeued",
        AdminOp::Hold => "held",
        AdminOp::Release => "released",
        AdminOp::Delete => "deleted",
    };
    println!(
        "petrel: {verb} {done} message{}",
        if done == 1 { "" } else { "s" }
    );
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "no such message in the queue: {}",
            missing.join(" ")
        ))
    }
}
