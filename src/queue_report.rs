//! Read-only views of the queue for the CLI: `mailq` entries (the SPEC's
//! JSON, which the text format is printed from), `show` and `status`.
//! Built from an open spool, in the daemon or in the CLI alike.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::spool::{QueueName, QueuedMessage, Spool, StoreError, now_ms};

/// One recipient line of `mailq --json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MailqRecipient {
    /// Recipient address.
    pub address: String,
    /// Why it is still queued, if it was tried.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delay_reason: Option<String>,
    /// Unix seconds of the next attempt, if deferred.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_attempt: Option<i64>,
}

/// One line of `mailq --json` (as Postfix's `postqueue -j`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MailqEntry {
    /// `active`, `deferred` or `hold`.
    pub queue_name: String,
    /// Queue id.
    pub queue_id: String,
    /// Unix seconds.
    pub arrival_time: i64,
    /// Octets.
    pub message_size: u64,
    /// Envelope sender (empty for `<>`).
    pub sender: String,
    /// Recipients not yet final.
    pub recipients: Vec<MailqRecipient>,
}

/// Whether any recipient not yet final is in `domain`.
pub fn has_domain(msg: &QueuedMessage, domain: &str) -> bool {
    let d = domain.trim_end_matches('.');
    msg.recipients.iter().any(|r| {
        !r.state.is_final()
            && r.address
                .rsplit_once('@')
                .is_some_and(|(_, rd)| rd.eq_ignore_ascii_case(d))
    })
}

/// The `mailq` entry of a message, if it passes the filters.
pub fn mailq_entry(
    msg: &QueuedMessage,
    active: bool,
    domain: Option<&str>,
    state: Option<QueueName>,
) -> Option<MailqEntry> {
    if domain.is_some_and(|d| !has_domain(msg, d)) {
        return None;
    }
    let name = QueueName::of(msg, active);
    if state.is_some_and(|s| s != name) {
        return None;
    }
    Some(MailqEntry {
        queue_name: name.as_str().into(),
        queue_id: msg.id.to_string(),
        arrival_time: msg.arrival / 1000,
        message_size: msg.size,
        sender: msg.sender.clone(),
        recipients: msg
            .recipients
            .iter()
            .filter(|r| !r.state.is_final())
            .map(|r| MailqRecipient {
                address: r.address.clone(),
                delay_reason: r.last_error.clone(),
                next_attempt: (r.attempts > 0).then_some(r.next_attempt / 1000),
            })
            .collect(),
    })
}

/// The column header of `mailq` text.
pub const MAILQ_HEADER: &str =
    "-Queue ID-       --Size-- ----Arrival Time---- -Sender/Recipient-------\n";

/// One entry of `mailq` text, with its trailing blank line.
pub fn mailq_entry_text(e: &MailqEntry) -> String {
    let mark = match e.queue_name.as_str() {
        "active" => "*",
        "hold" => "!",
        _ => "",
    };
    let when = chrono::DateTime::from_timestamp(e.arrival_time, 0)
        .map(|t| {
            t.with_timezone(&chrono::Local)
                .format("%a %b %e %H:%M:%S")
                .to_string()
        })
        .unwrap_or_default();
    let sender = if e.sender.is_empty() {
        "MAILER-DAEMON"
    } else {
        &e.sender
    };
    let mut out = format!(
        "{:<17}{:>8} {:<19}  {}\n",
        format!("{}{}", e.queue_id, mark),
        e.message_size,
        when,
        sender
    );
    let mut last_reason: Option<&str> = None;
    for r in &e.recipients {
        if let Some(reason) = r.delay_reason.as_deref()
            && last_reason != Some(reason)
        {
            out.push_str(&format!("{:20}({})\n", "", reason));
            last_reason = Some(reason);
        }
        out.push_str(&format!("{:47}{}\n", "", r.address));
    }
    out.push('\n');
    out
}

/// The closing line of `mailq` text (or the empty-queue line).
pub fn mailq_footer(count: usize, bytes: u64) -> String {
    if count == 0 {
        return "Mail queue is empty\n".into();
    }
    format!(
        "-- {} Kbytes in {count} Request{}.\n",
        bytes.div_ceil(1024),
        if count == 1 { "" } else { "s" }
    )
}

/// `petrel show`: one recipient.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShowRecipient {
    /// Address delivered to.
    pub address: String,
    /// Original recipient, when alias expansion changed it.
    pub orcpt: Option<String>,
    /// pending, deferred, delivered, bounced.
    pub state: String,
    /// Attempts so far.
    pub attempts: u32,
    /// Unix seconds of the next attempt, if deferred.
    pub next_attempt: Option<i64>,
    /// Last error.
    pub last_error: Option<String>,
}

/// `petrel show`: the whole envelope.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShowReport {
    /// Queue id.
    pub queue_id: String,
    /// Queue name.
    pub queue_name: String,
    /// Unix seconds.
    pub arrival_time: i64,
    /// Octets.
    pub size: u64,
    /// Envelope sender.
    pub sender: String,
    /// Submitting client.
    pub client: String,
    /// Listener.
    pub listener: String,
    /// Message-ID header.
    pub message_id: Option<String>,
    /// Every recipient with its state.
    pub recipients: Vec<ShowRecipient>,
}

/// Builds the `show` report of a message.
pub fn show(spool: &Spool, msg: &QueuedMessage) -> Result<ShowReport, StoreError> {
    Ok(ShowReport {
        queue_id: msg.id.to_string(),
        queue_name: QueueName::of(msg, spool.is_active(msg.id)?).as_str().into(),
        arrival_time: msg.arrival / 1000,
        size: msg.size,
        sender: msg.sender.clone(),
        client: msg.client.clone(),
        listener: msg.listener.clone(),
        message_id: msg.message_id.clone(),
        recipients: msg
            .recipients
            .iter()
            .map(|r| ShowRecipient {
                address: r.address.clone(),
                orcpt: r.orcpt.clone(),
                state: r.state.as_str().into(),
                attempts: r.attempts,
                next_attempt: (!r.state.is_final() && r.attempts > 0)
                    .then_some(r.next_attempt / 1000),
                last_error: r.last_error.clone(),
            })
            .collect(),
    })
}

/// Formats a `show` report for people.
pub fn show_text(r: &ShowReport) -> String {
    let time = |t: i64| {
        chrono::DateTime::from_timestamp(t, 0)
            .map(|t| t.with_timezone(&chrono::Local).to_rfc2822())
            .unwrap_or_default()
    };
    let mut out = format!(
        "queue_id: {}\nqueue: {}\narrival: {}\nsize: {}\nsender: <{}>\nclient: {}\nlistener: {}\nmessage_id: {}\n",
        r.queue_id,
        r.queue_name,
        time(r.arrival_time),
        r.size,
        r.sender,
        r.client,
        r.listener,
        r.message_id.as_deref().unwrap_or("-"),
    );
    for rc in &r.recipients {
        out.push_str(&format!(
            "recipient: <{}> state={} attempts={}",
            rc.address, rc.state, rc.attempts
        ));
        if let Some(o) = &rc.orcpt {
            out.push_str(&format!(" orcpt=<{o}>"));
        }
        if let Some(n) = rc.next_attempt {
            out.push_str(&format!(" next_attempt=\"{}\"", time(n)));
        }
        out.push('\n');
        if let Some(e) = &rc.last_error {
            out.push_str(&format!("  last_error: {e}\n"));
        }
    }
    out
}

/// `petrel status`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct StatusReport {
    /// Messages in the queue.
    pub messages: u64,
    /// Counts by queue name.
    pub by_state: BTreeMap<String, u64>,
    /// Recipients not yet final, by destination domain.
    pub by_destination: BTreeMap<String, u64>,
    /// Age of the oldest message, seconds.
    pub oldest_age: Option<i64>,
    /// Whether a daemon answered (false: read from the spool directly).
    pub daemon: bool,
    /// Group commits since the daemon started.
    pub commits: u64,
    /// Writers answered by those commits.
    pub commit_waiters: u64,
    /// Open SMTP sessions.
    pub sessions: u64,
}

/// Builds the `status` report (a scan of the queue).
pub fn status(spool: &Spool) -> Result<StatusReport, StoreError> {
    let mut r = StatusReport::default();
    for name in ["active", "deferred", "hold"] {
        r.by_state.insert(name.into(), 0);
    }
    let now = now_ms();
    if let Some(c) = spool.counts() {
        // The daemon keeps the counts as the queue changes: O(1) here.
        r.messages = c.messages();
        r.by_state.insert("active".into(), c.active);
        r.by_state.insert("deferred".into(), c.deferred);
        r.by_state.insert("hold".into(), c.hold);
        r.by_destination = c.by_destination.into_iter().collect();
        r.oldest_age = spool.oldest_arrival()?.map(|a| (now - a) / 1000);
        let stats = spool.commit_stats();
        r.commits = stats.commits.load(std::sync::atomic::Ordering::Relaxed);
        r.commit_waiters = stats.waiters.load(std::sync::atomic::Ordering::Relaxed);
        return Ok(r);
    }
    let active = spool.active_set()?;
    for msg in spool.messages() {
        let msg = msg?;
        r.messages += 1;
        *r.by_state
            .entry(
                QueueName::of(&msg, active.contains(&msg.id))
                    .as_str()
                    .into(),
            )
            .or_default() += 1;
        for rc in msg.recipients.iter().filter(|rc| !rc.state.is_final()) {
            let d = rc
                .address
                .rsplit_once('@')
                .map(|(_, d)| d.to_ascii_lowercase())
                .unwrap_or_default();
            *r.by_destination.entry(d).or_default() += 1;
        }
        let age = (now - msg.arrival) / 1000;
        r.oldest_age = Some(r.oldest_age.map_or(age, |a| a.max(age)));
    }
    let stats = spool.commit_stats();
    r.commits = stats.commits.load(std::sync::atomic::Ordering::Relaxed);
    r.commit_waiters = stats.waiters.load(std::sync::atomic::Ordering::Relaxed);
    Ok(r)
}

/// Formats a status report for people.
pub fn status_text(r: &StatusReport) -> String {
    let mut out = format!(
        "daemon: {}\nmessages: {}\n",
        if r.daemon { "running" } else { "not running" },
        r.messages
    );
    for (k, v) in &r.by_state {
        out.push_str(&format!("  {k}: {v}\n"));
    }
    out.push_str(&format!(
        "oldest: {}\n",
        r.oldest_age
            .map(|a| format!("{a}s"))
            .unwrap_or_else(|| "-".into())
    ));
    if !r.by_destination.is_empty() {
        out.push_str("recipients by destination:\n");
        for (k, v) in &r.by_destination {
            out.push_str(&format!("  {k}: {v}\n"));
        }
    }
    if r.daemon {
        out.push_str(&format!(
            "sessions: {}\ngroup commits: {} for {} writers\n",
            r.sessions, r.commits, r.commit_waiters
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Formats entries as Postfix's `mailq` text.
    fn mailq_text(entries: &[MailqEntry]) -> String {
        if entries.is_empty() {
            return mailq_footer(0, 0);
        }
        let mut out = String::from(MAILQ_HEADER);
        for e in entries {
            out.push_str(&mailq_entry_text(e));
        }
        out.push_str(&mailq_footer(
            entries.len(),
            entries.iter().map(|e| e.message_size).sum(),
        ));
        out
    }

    #[test]
    fn mailq_text_matches_postfix_layout() {
        let e = MailqEntry {
            queue_name: "deferred".into(),
            queue_id: "01JD4X2K9QPA".into(),
            arrival_time: 1_732_356_005,
            message_size: 2048,
            sender: "carol@example.test".into(),
            recipients: vec![MailqRecipient {
                address: "dave@partner.test".into(),
                delay_reason: Some(
                    "connect to mx.partner.test[192.0.2.7]:25: Connection refused".into(),
                ),
                next_attempt: Some(1),
            }],
        };
        let text = mailq_text(&[e]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "-Queue ID-       --Size-- ----Arrival Time---- -Sender/Recipient-------"
        );
        assert!(
            lines[1].starts_with("01JD4X2K9QPA         2048 "),
            "{}",
            lines[1]
        );
        assert!(lines[1].ends_with("  carol@example.test"), "{}", lines[1]);
        assert_eq!(lines[1].find("carol"), Some(47));
        assert_eq!(
            lines[2],
            "                    (connect to mx.partner.test[192.0.2.7]:25: Connection refused)"
        );
        assert_eq!(lines[3], format!("{:47}dave@partner.test", ""));
        assert_eq!(lines[5], "-- 2 Kbytes in 1 Request.");
        assert_eq!(mailq_text(&[]), "Mail queue is empty\n");
    }
}
