//! The administrator's console under `/admin`, for users with
//! `admin = true` (others get 403): the queue at a glance (counts by state
//! and destination), the queue itself (filters, pages that seek from the
//! last id shown, so a page costs the same with a million queued), one
//! message (envelope, recipients with their last errors, header, body on
//! request), hold / release / retry / delete of a selection or of
//! everything a filter matches — through `control::execute`, the code the
//! CLI's `hold`, `release`, `requeue` and `delete` run —, the seed's spam
//! routine in one click (deny this sender, its domain, its client:
//! `policy::denylist`), recent rejections, and the SMTP trace level.

// As in `mail`: an early answer is the request's whole response.
#![allow(clippy::result_large_err)]

use std::sync::Arc;

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use askama::Template;
use serde::Deserialize;

use super::WebShared;
use super::form::{Form, with_notice};
use super::mail::{Authed, authed, check_csrf, error, page, see_other};
use crate::control::{Backend, Item, Request, Selection};
use crate::daemon::Daemon;
use crate::policy::denylist::{self, Kind};
use crate::queue_report;
use crate::scheduler::AdminOp;
use crate::spool::{QueueId, QueueName};

/// Queue entries per page.
const PAGE: usize = 50;
/// Messages one page looks at, at most, to fill itself under a filter.
const SCAN_LIMIT: usize = 50_000;
/// History events the delivery rates read at most (newest first).
const RATE_SCAN: usize = 100_000;

/// The console's request: an admin's session and the daemon.
struct Console {
    a: Authed,
    daemon: Arc<Daemon>,
}

/// What every console page shows in its header
/// (`templates/web/admin_chrome.html`).
pub struct Bar {
    user: String,
    csrf: String,
    notice: Option<&'static str>,
}

impl Console {
    /// The header of a page, with the notice a redirect asked for.
    fn bar(&self, code: Option<&str>) -> Bar {
        Bar {
            user: self.a.user.name.clone(),
            csrf: self.a.session.csrf.clone(),
            notice: notice(code),
        }
    }
}

fn console(req: &HttpRequest, shared: &WebShared) -> Result<Console, HttpResponse> {
    let a = authed(req, shared)?;
    if !a.user.admin {
        return Err(error(
            StatusCode::FORBIDDEN,
            "The console is for administrators (admin = true in the user's entry).",
        ));
    }
    let daemon = shared
        .daemon
        .get()
        .and_then(std::sync::Weak::upgrade)
        .ok_or_else(|| error(StatusCode::SERVICE_UNAVAILABLE, "The daemon is stopping."))?;
    Ok(Console { a, daemon })
}

fn time_text(t: i64) -> String {
    chrono::DateTime::from_timestamp(t, 0)
        .map(|d| d.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_default()
}

/// Fixed notices after a redirect.
fn notice(code: Option<&str>) -> Option<&'static str> {
    Some(match code? {
        "done" => "Done.",
        "denied" => "Added to the deny list: new sessions are refused.",
        "removed" => "Removed from the deny list.",
        "trace" => "Trace level set.",
        _ => return None,
    })
}

/// The notice query every console page takes.
#[derive(Deserialize)]
pub struct NoticeQuery {
    notice: Option<String>,
}

// ------------------------------------------------------------ overview

#[derive(Template)]
#[template(path = "web/admin_overview.html")]
struct Overview {
    b: Bar,
    hostname: String,
    active: u64,
    deferred: u64,
    hold: u64,
    destinations: Vec<(String, u64)>,
    rates: Vec<(&'static str, String)>,
    trace: u8,
    levels: Vec<(u8, &'static str)>,
}

/// `GET /admin`.
pub async fn overview(
    req: HttpRequest,
    shared: web::Data<WebShared>,
    q: web::Query<NoticeQuery>,
) -> HttpResponse {
    let c = match console(&req, &shared) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let counts = c.daemon.spool.counts().unwrap_or_default();
    let mut destinations: Vec<(String, u64)> = counts
        .by_destination
        .iter()
        .map(|(d, n)| (d.clone(), *n))
        .collect();
    destinations.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    destinations.truncate(20);
    // Delivery attempts per minute over the last 5 minutes and hour, from
    // the message history (a time-ordered table: one range read each).
    let history = c.daemon.history.clone();
    let now = crate::spool::now_ms();
    let windows = tokio::task::spawn_blocking(move || {
        history.sync();
        [5i64, 60].map(|m| {
            history
                .attempts_since(now - m * 60_000, RATE_SCAN)
                .unwrap_or_default()
        })
    })
    .await
    .unwrap_or_default();
    let rates = [("last 5 minutes", 5i64), ("last hour", 60)]
        .iter()
        .zip(windows.iter())
        .map(|(&(label, m), (counts, from))| {
            let partial = *from > now - m * 60_000;
            let minutes = ((now - from) as f64 / 60_000.0).max(1.0 / 60.0);
            let per = |k: &str| counts.get(k).copied().unwrap_or(0) as f64 / minutes;
            let note = if partial {
                format!(" (over the latest {minutes:.1} minutes: the newest {RATE_SCAN} events)")
            } else {
                String::new()
            };
            (
                label,
                format!(
                    "{:.1} delivered, {:.1} deferred, {:.1} bounced per minute{note}",
                    per("sent"),
                    per("deferred"),
                    per("bounced") + per("expired"),
                ),
            )
        })
        .collect();
    page(&Overview {
        b: c.bar(q.notice.as_deref()),
        hostname: c.a.config.server.hostname.clone(),
        active: counts.active,
        deferred: counts.deferred,
        hold: counts.hold,
        destinations,
        rates,
        trace: c
            .daemon
            .smtp
            .debug
            .load(std::sync::atomic::Ordering::Relaxed),
        levels: vec![
            (0, "off"),
            (1, "sessions"),
            (2, "commands and replies"),
            (3, "every line"),
        ],
    })
}

/// A console POST: the admin's session, and the form once its CSRF token
/// has been checked.
fn console_form(
    req: &HttpRequest,
    shared: &WebShared,
    body: &[u8],
) -> Result<(Console, Form), HttpResponse> {
    let c = console(req, shared)?;
    let p = Form::parse(body);
    check_csrf(&c.a, p.get("csrf"))?;
    Ok((c, p))
}

/// `POST /admin/trace`: `debug smtp LEVEL`.
pub async fn trace(
    req: HttpRequest,
    shared: web::Data<WebShared>,
    body: web::Bytes,
) -> HttpResponse {
    let (c, p) = match console_form(&req, &shared, &body) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let Some(level) = p.get("level").and_then(|l| l.parse::<u8>().ok()) else {
        return error(StatusCode::BAD_REQUEST, "The level is 0, 1, 2 or 3.");
    };
    match run(&c.daemon, Request::DebugSmtp { level }).await {
        Ok(_) => {
            tracing::info!(by = %c.a.user.name, level, "smtp_debug set from the console");
            see_other("/admin?notice=trace")
        }
        Err(e) => error(StatusCode::BAD_REQUEST, &e),
    }
}

/// Runs a control request as the CLI would; returns its JSON answers.
async fn run(d: &Arc<Daemon>, req: Request) -> Result<Vec<serde_json::Value>, String> {
    let (tx, mut rx) = tokio::sync::mpsc::channel(64);
    let backend = Backend::Daemon(d.clone());
    let collect = async {
        let mut out = Vec::new();
        while let Some(item) = rx.recv().await {
            if let Item::Json(v) = item {
                out.push(v);
            }
        }
        out
    };
    let work = async move {
        let r = crate::control::execute(req, &backend, Vec::new(), &tx).await;
        drop(tx);
        r
    };
    let (r, answers) = tokio::join!(work, collect);
    r?;
    Ok(answers)
}

// --------------------------------------------------------------- queue

/// The queue filter.
#[derive(Deserialize, Default, Clone)]
pub struct QueueQuery {
    state: Option<String>,
    domain: Option<String>,
    sender: Option<String>,
    rcpt: Option<String>,
    after: Option<String>,
    notice: Option<String>,
}

/// A filter ready to apply.
struct Filter {
    state: Option<QueueName>,
    domain: Option<String>,
    sender: String,
    rcpt: String,
}

impl Filter {
    fn of(
        state: Option<&str>,
        domain: Option<&str>,
        sender: Option<&str>,
        rcpt: Option<&str>,
    ) -> Filter {
        let clean = |s: Option<&str>| s.map(str::trim).unwrap_or("").to_lowercase();
        Filter {
            state: state.and_then(QueueName::parse),
            domain: domain
                .map(str::trim)
                .filter(|d| !d.is_empty())
                .map(str::to_string),
            sender: clean(sender),
            rcpt: clean(rcpt),
        }
    }

    fn entry(
        &self,
        msg: &crate::spool::QueuedMessage,
        active: bool,
    ) -> Option<queue_report::MailqEntry> {
        if !self.sender.is_empty() && !msg.sender.to_lowercase().contains(&self.sender) {
            return None;
        }
        if !self.rcpt.is_empty()
            && !msg
                .recipients
                .iter()
                .any(|r| !r.state.is_final() && r.address.to_lowercase().contains(&self.rcpt))
        {
            return None;
        }
        queue_report::mailq_entry(msg, active, self.domain.as_deref(), self.state)
    }

    fn is_set(&self) -> bool {
        self.state.is_some()
            || self.domain.is_some()
            || !self.sender.is_empty()
            || !self.rcpt.is_empty()
    }
}

/// A queue row.
pub struct QueueRow {
    id: String,
    state: String,
    arrived: String,
    size: u64,
    sender: String,
    recipients: Vec<(String, Option<String>)>,
}

#[derive(Template)]
#[template(path = "web/admin_queue.html")]
struct QueuePage {
    b: Bar,
    states: Vec<&'static str>,
    state: String,
    domain: String,
    sender: String,
    rcpt: String,
    entries: Vec<QueueRow>,
    filtered: bool,
    first: String,
    next: Option<String>,
    scanned_out: bool,
    scan_limit: usize,
}

fn queue_url(q: &QueueQuery, after: Option<&str>) -> String {
    let mut u = String::from("/admin/queue?");
    for (k, v) in [
        ("state", &q.state),
        ("domain", &q.domain),
        ("sender", &q.sender),
        ("rcpt", &q.rcpt),
    ] {
        if let Some(v) = v.as_deref().filter(|v| !v.is_empty()) {
            u.push_str(&format!("{k}={}&", super::message::encode(v)));
        }
    }
    if let Some(a) = after {
        u.push_str(&format!("after={a}"));
    }
    u.trim_end_matches(['&', '?']).to_string()
}

/// `GET /admin/queue`.
pub async fn queue(
    req: HttpRequest,
    shared: web::Data<WebShared>,
    q: web::Query<QueueQuery>,
) -> HttpResponse {
    let c = match console(&req, &shared) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let q = q.into_inner();
    let filter = Filter::of(
        q.state.as_deref(),
        q.domain.as_deref(),
        q.sender.as_deref(),
        q.rcpt.as_deref(),
    );
    let after: Option<QueueId> = q.after.as_deref().and_then(|a| a.parse().ok());
    let spool = c.daemon.spool.clone();
    // One seek and at most SCAN_LIMIT records: off the async threads.
    let scan = tokio::task::spawn_blocking(move || {
        let active = spool.active_set().unwrap_or_default();
        let mut rows = Vec::new();
        let mut last = None;
        let mut looked = 0usize;
        let mut more = false;
        for msg in spool.messages_after(after) {
            let Ok(msg) = msg else { continue };
            looked += 1;
            last = Some(msg.id);
            if let Some(e) = filter.entry(&msg, active.contains(&msg.id)) {
                if rows.len() == PAGE {
                    more = true;
                    break;
                }
                rows.push(e);
            }
            if looked >= SCAN_LIMIT {
                more = true;
                break;
            }
        }
        (rows, last, more, looked >= SCAN_LIMIT, filter.is_set())
    })
    .await;
    let Ok((entries, last, more, scanned_out, filtered)) = scan else {
        return HttpResponse::InternalServerError().finish();
    };
    // The next page starts after the last row shown (or the last record
    // looked at when the page did not fill).
    let next_after = if scanned_out {
        last.map(|l| l.to_string())
    } else {
        entries.last().map(|e| e.queue_id.clone())
    };
    let entries = entries
        .into_iter()
        .map(|e| QueueRow {
            id: e.queue_id,
            state: e.queue_name,
            arrived: time_text(e.arrival_time),
            size: e.message_size,
            sender: e.sender,
            recipients: e
                .recipients
                .into_iter()
                .map(|r| (r.address, r.delay_reason))
                .collect(),
        })
        .collect();
    page(&QueuePage {
        b: c.bar(q.notice.as_deref()),
        states: vec!["", "active", "deferred", "hold"],
        state: q.state.clone().unwrap_or_default(),
        domain: q.domain.clone().unwrap_or_default(),
        sender: q.sender.clone().unwrap_or_default(),
        rcpt: q.rcpt.clone().unwrap_or_default(),
        entries,
        filtered,
        first: queue_url(&q, None),
        next: more.then(|| queue_url(&q, next_after.as_deref())),
        scanned_out,
        scan_limit: SCAN_LIMIT,
    })
}

/// `POST /admin/queue/act`: hold, release, requeue or delete the ticked
/// messages, or (`all`) everything the filter matches.
pub async fn queue_act(
    req: HttpRequest,
    shared: web::Data<WebShared>,
    body: web::Bytes,
) -> HttpResponse {
    let (c, p) = match console_form(&req, &shared, &body) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let op = match p.get("op") {
        Some("hold") => AdminOp::Hold,
        Some("release") => AdminOp::Release,
        Some("requeue") => AdminOp::Requeue,
        Some("delete") => AdminOp::Delete,
        _ => return error(StatusCode::BAD_REQUEST, "Unknown operation."),
    };
    let mut ids: Vec<String> = p.all("id").map(str::to_string).collect();
    if p.get("all") == Some("1") {
        let filter = Filter::of(
            p.get("state"),
            p.get("domain"),
            p.get("sender"),
            p.get("rcpt"),
        );
        let spool = c.daemon.spool.clone();
        ids = match tokio::task::spawn_blocking(move || {
            let active = spool.active_set().unwrap_or_default();
            spool
                .messages()
                .filter_map(Result::ok)
                .filter(|m| filter.entry(m, active.contains(&m.id)).is_some())
                .map(|m| m.id.to_string())
                .collect::<Vec<_>>()
        })
        .await
        {
            Ok(ids) => ids,
            Err(_) => return HttpResponse::InternalServerError().finish(),
        };
    }
    if ids.is_empty() {
        return error(
            StatusCode::BAD_REQUEST,
            "Tick the messages first, or ask for every message the filter matches.",
        );
    }
    let n = ids.len();
    match run(
        &c.daemon,
        Request::Admin {
            op,
            select: Selection::Ids(ids),
        },
    )
    .await
    {
        Ok(_) => {
            tracing::info!(by = %c.a.user.name, op = ?op, messages = n, "queue changed from the console");
            let back = p.back("/admin", "/admin/queue");
            let back = if op == AdminOp::Delete && back.starts_with("/admin/message") {
                "/admin/queue".to_string()
            } else {
                back
            };
            see_other(&with_notice(&back, "done"))
        }
        Err(e) => error(StatusCode::BAD_REQUEST, &e),
    }
}

// ------------------------------------------------------------- message

#[derive(Template)]
#[template(path = "web/admin_message.html")]
struct MessagePage {
    b: Bar,
    r: queue_report::ShowReport,
    arrived: String,
    recipients: Vec<(String, String, u32, String, String)>,
    headers: String,
    body: Option<String>,
    deny: Vec<(&'static str, String, String)>,
}

/// The message query.
#[derive(Deserialize)]
pub struct MessageQuery {
    id: String,
    body: Option<u8>,
    notice: Option<String>,
}

/// The IP address in a client description (`host [192.0.2.1]`).
fn client_ip(client: &str) -> Option<String> {
    let inner = client.rsplit_once('[')?.1.split_once(']')?.0;
    let inner = inner.strip_prefix("IPv6:").unwrap_or(inner);
    inner
        .parse::<std::net::IpAddr>()
        .ok()
        .map(|ip| ip.to_string())
}

/// The one-click deny buttons for a sender and client.
fn deny_buttons(sender: &str, client: &str) -> Vec<(&'static str, String, String)> {
    let mut out = Vec::new();
    if let Some((_, domain)) = sender.rsplit_once('@') {
        out.push((
            "sender",
            sender.to_string(),
            format!("Deny this sender ({sender})"),
        ));
        out.push((
            "domain",
            domain.to_string(),
            format!("Deny the domain {domain}"),
        ));
    }
    if let Some(ip) = client_ip(client) {
        out.push(("client", ip.clone(), format!("Deny the client {ip}")));
    }
    out
}

/// `GET /admin/message`.
pub async fn message(
    req: HttpRequest,
    shared: web::Data<WebShared>,
    q: web::Query<MessageQuery>,
) -> HttpResponse {
    let c = match console(&req, &shared) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let Ok(id) = q.id.parse::<QueueId>() else {
        return error(StatusCode::NOT_FOUND, "No such message in the queue.");
    };
    let spool = c.daemon.spool.clone();
    let want_body = q.body == Some(1);
    let found = tokio::task::spawn_blocking(move || {
        let msg = spool.get(id).ok().flatten()?;
        let report = queue_report::show(&spool, &msg).ok()?;
        let content = spool.content(&msg).ok()?;
        Some((report, content))
    })
    .await
    .ok()
    .flatten();
    let Some((r, content)) = found else {
        return error(
            StatusCode::NOT_FOUND,
            "No such message in the queue (delivered or deleted).",
        );
    };
    let head = crate::headers::section(&content);
    let headers = String::from_utf8_lossy(head).into_owned();
    let body = want_body.then(|| String::from_utf8_lossy(&content[head.len()..]).into_owned());
    let recipients = r
        .recipients
        .iter()
        .map(|x| {
            (
                x.address.clone(),
                x.state.clone(),
                x.attempts,
                x.next_attempt.map(time_text).unwrap_or_default(),
                x.last_error.clone().unwrap_or_default(),
            )
        })
        .collect();
    page(&MessagePage {
        b: c.bar(q.notice.as_deref()),
        arrived: time_text(r.arrival_time),
        recipients,
        headers,
        body,
        deny: deny_buttons(&r.sender, &r.client),
        r,
    })
}

// ----------------------------------------------------------- deny list

#[derive(Template)]
#[template(path = "web/admin_deny.html")]
struct DenyPage {
    b: Bar,
    entries: Vec<(&'static str, String, String, String)>,
}

/// `GET /admin/deny`.
pub async fn deny_list(
    req: HttpRequest,
    shared: web::Data<WebShared>,
    q: web::Query<NoticeQuery>,
) -> HttpResponse {
    let c = match console(&req, &shared) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let entries = denylist::current()
        .entries
        .iter()
        .map(|e| {
            (
                e.kind.as_str(),
                e.value.clone(),
                e.added_by.clone(),
                time_text(e.added_at),
            )
        })
        .collect();
    page(&DenyPage {
        b: c.bar(q.notice.as_deref()),
        entries,
    })
}

/// `POST /admin/deny/add` and `/admin/deny/remove`.
async fn deny_change(
    req: HttpRequest,
    shared: web::Data<WebShared>,
    body: web::Bytes,
    adding: bool,
) -> HttpResponse {
    let (c, p) = match console_form(&req, &shared, &body) {
        Ok(x) => x,
        Err(r) => return r,
    };
    let Some(kind) = p.get("kind").and_then(Kind::parse) else {
        return error(
            StatusCode::BAD_REQUEST,
            "The kind is sender, domain or client.",
        );
    };
    let value = p.get("value").unwrap_or("").to_string();
    let by = c.a.user.name.clone();
    let done = tokio::task::spawn_blocking(move || {
        if adding {
            denylist::add(kind, &value, &by).map(|_| ())
        } else {
            denylist::remove(kind, &value, &by)
        }
    })
    .await
    .unwrap_or_else(|_| Err("interrupted".into()));
    match done {
        Ok(()) => {
            let back = p.back("/admin", "/admin/deny");
            see_other(&with_notice(
                &back,
                if adding { "denied" } else { "removed" },
            ))
        }
        Err(e) => error(StatusCode::BAD_REQUEST, &e),
    }
}

/// `POST /admin/deny/add`.
pub async fn deny_add(
    req: HttpRequest,
    shared: web::Data<WebShared>,
    body: web::Bytes,
) -> HttpResponse {
    deny_change(req, shared, body, true).await
}

/// `POST /admin/deny/remove`.
pub async fn deny_remove(
    req: HttpRequest,
    shared: web::Data<WebShared>,
    body: web::Bytes,
) -> HttpResponse {
    deny_change(req, shared, body, false).await
}

// ---------------------------------------------------------- rejections

/// A rejection row.
pub struct RejectionRow {
    when: String,
    client: String,
    stage: String,
    code: u16,
    reason: String,
    sender: String,
    recipient: String,
    deny: Vec<(&'static str, String, String)>,
}

#[derive(Template)]
#[template(path = "web/admin_rejections.html")]
struct RejectionsPage {
    b: Bar,
    q: String,
    rows: Vec<RejectionRow>,
}

/// The rejections query.
#[derive(Deserialize)]
pub struct RejectionsQuery {
    q: Option<String>,
    notice: Option<String>,
}

/// `GET /admin/rejections`: the latest 200 refusals (matching the search).
pub async fn rejections(
    req: HttpRequest,
    shared: web::Data<WebShared>,
    q: web::Query<RejectionsQuery>,
) -> HttpResponse {
    let c = match console(&req, &shared) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let history = c.daemon.history.clone();
    let filter = q.q.clone().unwrap_or_default();
    let found = tokio::task::spawn_blocking(move || {
        history.sync();
        history.recent_rejections(&filter, 200, 500_000)
    })
    .await;
    let events = match found {
        Ok(Ok(e)) => e,
        _ => Vec::new(),
    };
    let rows = events
        .into_iter()
        .filter_map(|e| match e.kind {
            crate::history::EventKind::Rejected {
                client,
                stage,
                code,
                reason,
                sender,
                recipient,
                ..
            } => Some(RejectionRow {
                when: time_text(e.time / 1000),
                deny: deny_buttons(sender.as_deref().unwrap_or(""), &client),
                client,
                stage,
                code,
                reason,
                sender: sender.unwrap_or_default(),
                recipient: recipient.unwrap_or_default(),
            }),
            _ => None,
        })
        .collect();
    page(&RejectionsPage {
        b: c.bar(q.notice.as_deref()),
        q: q.q.clone().unwrap_or_default(),
        rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_client_address_comes_out_of_its_description() {
        assert_eq!(client_ip("[192.0.2.1]").as_deref(), Some("192.0.2.1"));
        assert_eq!(
            client_ip("mx.example [192.0.2.1]").as_deref(),
            Some("192.0.2.1")
        );
        assert_eq!(
            client_ip("[IPv6:2001:db8::1]").as_deref(),
            Some("2001:db8::1")
        );
        assert_eq!(client_ip("sendmail"), None);
        assert_eq!(deny_buttons("", "sendmail"), vec![]);
    }
}
