//! `petrel track (QUEUE-ID | --message-id ID | --from ADDR | --to ADDR |
//! --client IP) [--since DURATION] [--json]`: the life of a message from
//! the message history, also after it left the queue — accepted, each
//! delivery attempt, where it was delivered, the reports it caused — and
//! the refusals of a sender, recipient or client.

use std::io::Write;

use super::request;
use crate::config::{Config, parse_duration};
use crate::control::{Item, Request};
use crate::history::{Event, EventKind, Selector};
use crate::spool::QueueId;

/// The command's arguments.
///
/// One of the selectors is required; `--since`, `--limit` and `--json` go
/// with any of them (a struct-level `#[group]` would take them in too).
#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("what").required(true).multiple(false)))]
pub struct Args {
    /// A queue id.
    #[arg(group = "what")]
    queue_id: Option<String>,
    /// Messages with this Message-ID.
    #[arg(long, group = "what")]
    message_id: Option<String>,
    /// Messages from this envelope sender.
    #[arg(long, group = "what")]
    from: Option<String>,
    /// Messages to this recipient.
    #[arg(long, group = "what")]
    to: Option<String>,
    /// Messages from, and refusals of, this client address.
    #[arg(long, group = "what")]
    client: Option<String>,
    /// Only what happened in this last stretch of time ("2h", "7d").
    #[arg(long)]
    since: Option<String>,
    /// At most this many messages.
    #[arg(long, default_value_t = 100)]
    limit: usize,
    /// One JSON object per message.
    #[arg(long)]
    json: bool,
}

/// Runs `petrel track`.
pub fn run(config: &Config, args: &Args) -> Result<(), String> {
    let selector = if let Some(q) = &args.queue_id {
        Selector::QueueId(q.parse::<QueueId>().map_err(|e| e.to_string())?.0)
    } else if let Some(m) = &args.message_id {
        Selector::MessageId(m.clone())
    } else if let Some(f) = &args.from {
        Selector::From(f.clone())
    } else if let Some(t) = &args.to {
        Selector::To(t.clone())
    } else if let Some(c) = &args.client {
        Selector::Client(c.clone())
    } else {
        return Err("say what to track: a queue id, --message-id, --from, --to or --client".into());
    };
    let since = match &args.since {
        Some(d) => {
            let d = parse_duration(d).map_err(|e| format!("--since: {e}"))?;
            chrono::Utc::now().timestamp_millis() - d.as_millis() as i64
        }
        None => 0,
    };
    let mut out = std::io::stdout().lock();
    let mut found = 0usize;
    let mut err = None;
    request(
        config,
        Request::Track {
            selector,
            since,
            limit: args.limit,
        },
        Vec::new(),
        |item| {
            let Some(v) = item_json(item) else { return };
            found += 1;
            let r = if args.json {
                writeln!(out, "{v}")
            } else {
                write_trace(&mut out, &v)
            };
            if let Err(e) = r {
                err = Some(e.to_string());
            }
        },
    )?;
    if let Some(e) = err {
        return Err(e);
    }
    if found == 0 && !args.json {
        writeln!(out, "No history found").map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn item_json(item: Item) -> Option<serde_json::Value> {
    item.into_json()
}

fn write_trace(out: &mut impl Write, v: &serde_json::Value) -> std::io::Result<()> {
    let id = v["queue_id"]
        .as_u64()
        .map(|q| QueueId(q).to_string())
        .unwrap_or_else(|| "(refused)".into());
    let events: Vec<Event> = v["events"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|e| serde_json::from_value(e.clone()).ok())
                .collect()
        })
        .unwrap_or_default();
    for (i, e) in events.iter().enumerate() {
        let when = chrono::DateTime::from_timestamp_millis(e.time)
            .map(|t| {
                t.with_timezone(&chrono::Local)
                    .format("%Y-%m-%d %H:%M:%S%.3f")
                    .to_string()
            })
            .unwrap_or_default();
        let head = if i == 0 { id.as_str() } else { "" };
        writeln!(out, "{head:<12}  {when}  {}", describe(&e.kind))?;
    }
    writeln!(out)
}

/// One event as a line, in Postfix's field names where there are some.
fn describe(k: &EventKind) -> String {
    match k {
        EventKind::Accepted {
            client,
            listener,
            size,
            sender,
            recipients,
            message_id,
        } => format!(
            "accepted from=<{sender}> size={size} nrcpt={} client={client} listener={listener} message-id={} to={}",
            recipients.len(),
            message_id.as_deref().unwrap_or("-"),
            recipients
                .iter()
                .map(|r| format!("<{r}>"))
                .collect::<Vec<_>>()
                .join(",")
        ),
        EventKind::Attempt {
            to,
            relay,
            status,
            dsn,
            reason,
            delay,
        } => format!("{status:<8} to=<{to}> relay={relay} delay={delay:.2} dsn={dsn} ({reason})"),
        EventKind::Notified { action, report, to } => format!(
            "notified action={action} to=<{to}> report={}",
            QueueId(*report)
        ),
        EventKind::Removed { reason } => format!("removed ({reason})"),
        EventKind::Rejected {
            client,
            listener,
            stage,
            code,
            reason,
            sender,
            recipient,
        } => format!(
            "rejected client={client} listener={listener} stage={stage} code={code} from=<{}> to=<{}> ({reason})",
            sender.as_deref().unwrap_or(""),
            recipient.as_deref().unwrap_or("")
        ),
        EventKind::Admin { op, by } => {
            format!("admin {op} by={}", by.as_deref().unwrap_or("cli"))
        }
    }
}
