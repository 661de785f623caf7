//! The webmail: logging in and out, the folder list, a folder's messages
//! (paging, sorting, search), reading, attachments, flags, moving and
//! deleting, composing (reply, reply-all, forward, drafts, attachments),
//! and new mail without a reload (server-sent events at `/events`).
//!
//! Every page is rendered on the server (askama templates under
//! `templates/web`) and works without JavaScript. Messages are named by
//! folder and UID within the logged-in user's own view (their folders and
//! `Shared/<box>` for the mail-in boxes they read), so another user's
//! message cannot be named at all: asking for it is a 404.
//! Sending goes through `Intake` like a submission: the sender must be one
//! of the user's addresses, the size and recipient limits hold, and the
//! message is DKIM-signed where any trusted submission is.

// A handler's early answer (the login page, 403, 404) travels as the
// `Err` of these helpers: it is the whole response of the request, made
// once, so its size does not matter.
#![allow(clippy::result_large_err)]

use std::sync::Arc;
use std::time::Duration;

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use askama::Template;
use futures_util::StreamExt;
use serde::Deserialize;

use super::compose::{self, Draft, Upload};
use super::form::{Form, with_notice};
use super::message::{self, Body, Links, View, encode};
use super::sessions::{COOKIE, WebSession, same_token};
use super::{Listening, WebShared};
use crate::config::Config;
use crate::directory::User;
use crate::intake::{Envelope, EnvelopeRcpt};
use crate::mime::Summary;
use crate::session::login;
use crate::store::{
    Append, FlagChange, FlagOp, FolderInfo, MessageMeta, NewContent, SpecialUse, StoreError, flags,
};

/// Messages per page of the list.
pub const PAGE: usize = 50;

/// The name under which mail-in boxes appear (as in IMAP).
const SHARED: &str = "Shared";

/// A logged-in request: the session and the user as configured now.
pub struct Authed {
    /// The session.
    pub session: WebSession,
    /// The user.
    pub user: User,
    /// The configuration of this request.
    pub config: Arc<Config>,
}

/// The session of a request, or the answer to give instead (to the login
/// page for pages, 403 for state changes).
pub fn authed(req: &HttpRequest, shared: &WebShared) -> Result<Authed, HttpResponse> {
    let config = shared.config.load_full();
    let session = req
        .cookie(COOKIE)
        .and_then(|c| shared.sessions.get(c.value()));
    let Some(session) = session else {
        return Err(to_login());
    };
    // A user removed from the directory (a reload) is logged out.
    let Some(user) = config.directory.user(&session.user).cloned() else {
        return Err(to_login());
    };
    Ok(Authed {
        session,
        user,
        config,
    })
}

fn to_login() -> HttpResponse {
    see_other("/login")
}

/// A 303 to `to`.
pub fn see_other(to: &str) -> HttpResponse {
    HttpResponse::SeeOther()
        .insert_header((header::LOCATION, to))
        .finish()
}

/// `Err(403)` unless `token` is the session's CSRF token.
pub fn check_csrf(a: &Authed, token: Option<&str>) -> Result<(), HttpResponse> {
    match token {
        Some(t) if same_token(t, &a.session.csrf) => Ok(()),
        _ => Err(error(
            actix_web::http::StatusCode::FORBIDDEN,
            "The form is out of date or did not come from this site; reload the page and try again.",
        )),
    }
}

/// A rendered page.
pub fn page(t: &impl Template) -> HttpResponse {
    match t.render() {
        Ok(html) => HttpResponse::Ok()
            .content_type("text/html; charset=utf-8")
            .body(html),
        Err(e) => {
            tracing::error!(error = %e, "a web page did not render");
            HttpResponse::InternalServerError().finish()
        }
    }
}

#[derive(Template)]
#[template(path = "web/error.html")]
struct ErrorPage<'a> {
    status: u16,
    message: &'a str,
}

/// An error page with a status.
pub fn error(status: actix_web::http::StatusCode, message: &str) -> HttpResponse {
    let html = ErrorPage {
        status: status.as_u16(),
        message,
    }
    .render()
    .unwrap_or_default();
    HttpResponse::build(status)
        .content_type("text/html; charset=utf-8")
        .body(html)
}

fn not_found() -> HttpResponse {
    error(
        actix_web::http::StatusCode::NOT_FOUND,
        "No such folder or message.",
    )
}

fn store_failed(e: StoreError) -> HttpResponse {
    tracing::warn!(error = %e, "webmail: store error");
    match e {
        StoreError::OverQuota(_) => error(
            actix_web::http::StatusCode::INSUFFICIENT_STORAGE,
            "Your mailbox is over its quota.",
        ),
        _ => error(
            actix_web::http::StatusCode::SERVICE_UNAVAILABLE,
            "The message store is not available just now; try again in a moment.",
        ),
    }
}

// ---------------------------------------------------------------- login

#[derive(Template)]
#[template(path = "web/login.html")]
struct LoginPage<'a> {
    error: Option<&'a str>,
    username: &'a str,
}

/// `GET /login`.
pub async fn login_form(req: HttpRequest, shared: web::Data<WebShared>) -> HttpResponse {
    if authed(&req, &shared).is_ok() {
        return see_other("/");
    }
    page(&LoginPage {
        error: None,
        username: "",
    })
}

/// The login form's fields.
#[derive(Deserialize)]
pub struct LoginForm {
    username: String,
    password: String,
}

/// `POST /login`: a user's name or address and password.
pub async fn login_submit(
    req: HttpRequest,
    shared: web::Data<WebShared>,
    listening: web::Data<Listening>,
    form: web::Form<LoginForm>,
) -> HttpResponse {
    let config = shared.config.load_full();
    let ip = req
        .peer_addr()
        .map(|a| a.ip())
        .unwrap_or(std::net::IpAddr::from([0, 0, 0, 0]));
    let name = form.username.trim();
    match login::verify(&config, name, &form.password).await {
        Some(user) => {
            shared.sessions.succeeded(ip);
            for account in
                std::iter::once(user.name.clone()).chain(login::readable(&config, &user.name))
            {
                if let Err(e) = shared.store.ensure_account(&account).await {
                    return store_failed(e);
                }
            }
            let id = shared
                .sessions
                .open(&user.name, config.web.session_lifetime);
            tracing::info!(client = %ip, user = %user.name, "webmail login");
            let cookie = actix_web::cookie::Cookie::build(COOKIE, id)
                .path("/")
                .http_only(true)
                .secure(listening.secure)
                .same_site(actix_web::cookie::SameSite::Strict)
                .max_age(actix_web::cookie::time::Duration::seconds(
                    config.web.session_lifetime.as_secs() as i64,
                ))
                .finish();
            HttpResponse::SeeOther()
                .insert_header((header::LOCATION, "/"))
                .cookie(cookie)
                .finish()
        }
        None => {
            let wait = shared.sessions.failed(ip);
            crate::auth::log_failure(&format!("[{ip}]"), "http", "form", name);
            tokio::time::sleep(wait).await;
            let html = LoginPage {
                error: Some("The name or the password is not right."),
                username: name,
            }
            .render()
            .unwrap_or_default();
            HttpResponse::Unauthorized()
                .content_type("text/html; charset=utf-8")
                .body(html)
        }
    }
}

/// A form with only the CSRF token.
#[derive(Deserialize)]
pub struct TokenForm {
    csrf: Option<String>,
}

/// `POST /logout`.
pub async fn logout(
    req: HttpRequest,
    shared: web::Data<WebShared>,
    form: web::Form<TokenForm>,
) -> HttpResponse {
    let a = match authed(&req, &shared) {
        Ok(a) => a,
        Err(r) => return r,
    };
    if let Err(r) = check_csrf(&a, form.csrf.as_deref()) {
        return r;
    }
    if let Some(c) = req.cookie(COOKIE) {
        shared.sessions.close(c.value());
    }
    let mut gone = actix_web::cookie::Cookie::build(COOKIE, "")
        .path("/")
        .finish();
    gone.make_removal();
    HttpResponse::SeeOther()
        .insert_header((header::LOCATION, "/login"))
        .cookie(gone)
        .finish()
}

// -------------------------------------------------------------- folders

/// A folder in the side list.
pub struct FolderLink {
    /// Its name as the user sees it.
    pub name: String,
    /// The name, percent-encoded for a URL.
    pub link: String,
    /// Unread messages.
    pub unseen: u32,
    /// Whether it is the folder shown.
    pub current: bool,
    /// Whether the shown folder's messages may move here (same mailbox).
    pub movable: bool,
}

/// Every folder the user sees: (name as shown, account, info), INBOX first.
async fn visible(
    shared: &WebShared,
    config: &Config,
    user: &str,
) -> Result<Vec<(String, String, FolderInfo)>, StoreError> {
    let mut all = Vec::new();
    let mut own = shared.store.folders(user).await?;
    own.sort_by_key(|f| (f.name != "INBOX", f.special_use.is_none(), f.name.clone()));
    for f in own {
        all.push((f.name.clone(), user.to_string(), f));
    }
    for m in login::readable(config, user) {
        // Made at login; a mail-in box added by a reload since is made here.
        let mut theirs = match shared.store.folders(&m).await {
            Ok(f) if !f.is_empty() => f,
            _ => {
                shared.store.ensure_account(&m).await?;
                shared.store.folders(&m).await?
            }
        };
        theirs.sort_by_key(|f| (f.name != "INBOX", f.special_use.is_none(), f.name.clone()));
        for f in theirs {
            let shown = if f.name == "INBOX" {
                format!("{SHARED}/{m}")
            } else {
                format!("{SHARED}/{m}/{}", f.name)
            };
            all.push((shown, m.clone(), f));
        }
    }
    Ok(all)
}

/// The account and folder a shown name refers to, if the user may see it.
fn locate(config: &Config, user: &str, shown: &str) -> Option<(String, String)> {
    let shown = shown.trim_matches('/');
    if shown.is_empty() || shown == SHARED {
        return None;
    }
    if let Some(rest) = shown.strip_prefix("Shared/") {
        let (box_, sub) = rest.split_once('/').unwrap_or((rest, "INBOX"));
        if !login::may_read(config, user, box_) {
            return None;
        }
        return Some((box_.to_string(), canonical_inbox(sub)));
    }
    Some((user.to_string(), canonical_inbox(shown)))
}

fn canonical_inbox(name: &str) -> String {
    if name.eq_ignore_ascii_case("INBOX") {
        "INBOX".into()
    } else {
        name.to_string()
    }
}

/// What every page inside the mailbox shows around its own part (the
/// header, the folder list, the live-update hooks): `templates/web/chrome.html`.
pub struct Chrome {
    user: String,
    admin: bool,
    csrf: String,
    folders: Vec<FolderLink>,
    /// The folder shown (empty on the compose page).
    folder: String,
    /// Its HIGHESTMODSEQ when the page was made (for `/events`).
    modseq: u64,
    notice: Option<&'static str>,
}

async fn chrome(
    shared: &WebShared,
    a: &Authed,
    current: &str,
    modseq: u64,
    notice: Option<&'static str>,
) -> Result<Chrome, StoreError> {
    let all = visible(shared, &a.config, &a.user.name).await?;
    let here = all
        .iter()
        .find(|(shown, _, _)| shown == current)
        .map(|(_, account, _)| account.clone());
    let folders = all
        .iter()
        .map(|(shown, account, f)| FolderLink {
            name: shown.clone(),
            link: encode(shown),
            unseen: f.unseen,
            current: shown == current,
            movable: shown != current && here.as_ref() == Some(account),
        })
        .collect();
    Ok(Chrome {
        user: a.user.name.clone(),
        admin: a.user.admin,
        csrf: a.session.csrf.clone(),
        folders,
        folder: current.to_string(),
        modseq,
        notice,
    })
}

/// The folder a request names: its shown name and its info.
async fn open_folder(
    shared: &WebShared,
    a: &Authed,
    shown: &str,
) -> Result<(String, FolderInfo), HttpResponse> {
    let Some((account, name)) = locate(&a.config, &a.user.name, shown) else {
        return Err(not_found());
    };
    match shared.store.folder(&account, &name).await {
        Ok(Some(f)) => {
            let shown = if account == a.user.name {
                f.name.clone()
            } else if f.name == "INBOX" {
                format!("{SHARED}/{account}")
            } else {
                format!("{SHARED}/{account}/{}", f.name)
            };
            Ok((shown, f))
        }
        Ok(None) => Err(not_found()),
        Err(e) => Err(store_failed(e)),
    }
}

// ----------------------------------------------------------------- list

/// A row of the message list.
pub struct Row {
    uid: u32,
    from: String,
    subject: String,
    preview: String,
    date: String,
    size: String,
    seen: bool,
    flagged: bool,
    attachments: bool,
}

/// A sortable column heading.
pub struct Column {
    label: &'static str,
    link: String,
    active: bool,
    arrow: &'static str,
    aria: &'static str,
}

#[derive(Template)]
#[template(path = "web/list.html")]
struct ListPage {
    c: Chrome,
    link: String,
    total: usize,
    unseen: u32,
    matched: usize,
    searching: bool,
    q: String,
    field: String,
    fields: Vec<(&'static str, &'static str)>,
    since: String,
    before: String,
    back: String,
    columns: Vec<Column>,
    rows: Vec<Row>,
    page: usize,
    pages: usize,
    prev: Option<String>,
    next: Option<String>,
    is_trash: bool,
}

/// The list's query.
#[derive(Deserialize, Default, Clone)]
pub struct ListQuery {
    f: Option<String>,
    page: Option<usize>,
    sort: Option<String>,
    order: Option<String>,
    q: Option<String>,
    #[serde(rename = "in")]
    field: Option<String>,
    since: Option<String>,
    before: Option<String>,
    notice: Option<String>,
}

/// How the list is sorted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sort {
    Date,
    From,
    Subject,
    Size,
}

impl Sort {
    fn parse(s: Option<&str>) -> Sort {
        match s {
            Some("from") => Sort::From,
            Some("subject") => Sort::Subject,
            Some("size") => Sort::Size,
            _ => Sort::Date,
        }
    }
    fn name(self) -> &'static str {
        match self {
            Sort::Date => "date",
            Sort::From => "from",
            Sort::Subject => "subject",
            Sort::Size => "size",
        }
    }
}

/// The notices a redirect may ask for (fixed texts: nothing from the URL
/// is shown).
fn notice(code: Option<&str>) -> Option<&'static str> {
    Some(match code? {
        "sent" => "Message sent.",
        "draft" => "Draft saved.",
        "moved" => "Moved.",
        "deleted" => "Deleted.",
        "emptied" => "Trash emptied.",
        "changed" => "Done.",
        _ => return None,
    })
}

/// Midnight UTC of a `YYYY-MM-DD` date, Unix seconds.
fn day(s: &str) -> Option<i64> {
    let d = chrono::NaiveDate::parse_from_str(s.trim(), "%Y-%m-%d").ok()?;
    Some(d.and_hms_opt(0, 0, 0)?.and_utc().timestamp())
}

fn list_url(folder: &str, q: &ListQuery, sort: Sort, desc: bool, page: usize) -> String {
    let mut u = format!(
        "/?f={}&sort={}&order={}",
        encode(folder),
        sort.name(),
        if desc { "desc" } else { "asc" }
    );
    for (k, v) in [
        ("q", &q.q),
        ("in", &q.field),
        ("since", &q.since),
        ("before", &q.before),
    ] {
        if let Some(v) = v.as_deref().filter(|v| !v.is_empty()) {
            u.push_str(&format!("&{k}={}", encode(v)));
        }
    }
    if page > 1 {
        u.push_str(&format!("&page={page}"));
    }
    u
}

/// The first sender's name (or address) of a summary.
fn sender(s: &Summary) -> String {
    s.envelope
        .from
        .iter()
        .find(|a| a.host.is_some())
        .map(|a| match &a.name {
            Some(n) if !n.is_empty() => String::from_utf8_lossy(n).into_owned(),
            _ => format!(
                "{}@{}",
                String::from_utf8_lossy(a.mailbox.as_deref().unwrap_or_default()),
                String::from_utf8_lossy(a.host.as_deref().unwrap_or_default())
            ),
        })
        .unwrap_or_default()
}

/// Every address and name of `From:`, for search.
fn from_text(s: &Summary) -> String {
    let mut out = String::new();
    for a in &s.envelope.from {
        for part in [&a.name, &a.mailbox, &a.host].into_iter().flatten() {
            out.push_str(&String::from_utf8_lossy(part));
            out.push(' ');
        }
        if let (Some(m), Some(h)) = (&a.mailbox, &a.host) {
            out.push_str(&format!(
                "{}@{} ",
                String::from_utf8_lossy(m),
                String::from_utf8_lossy(h)
            ));
        }
    }
    out.to_lowercase()
}

fn subject(s: &Summary) -> String {
    s.envelope
        .subject
        .as_deref()
        .map(crate::mime::decode_words)
        .unwrap_or_default()
}

fn size_text(n: u64) -> String {
    match n {
        n if n < 1024 => format!("{n} B"),
        n if n < 1024 * 1024 => format!("{:.0} KiB", n as f64 / 1024.0),
        n => format!("{:.1} MiB", n as f64 / 1048576.0),
    }
}

fn date_text(t: i64) -> String {
    chrono::DateTime::from_timestamp(t, 0)
        .map(|d| d.format("%Y-%m-%d %H:%M").to_string())
        .unwrap_or_default()
}

/// What a list page shows of a folder: the folder as it is now (its
/// MODSEQ changes with every flag, arrival and expunge), the order and
/// the filters. Equal keys give the same ordered selection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListKey {
    folder: crate::store::FolderId,
    modseq: u64,
    sort: Sort,
    desc: bool,
    words: String,
    field: &'static str,
    since: Option<i64>,
    before: Option<i64>,
}

/// The folder's copies selected and ordered as `key` asks: all of them
/// (metas), the summaries only when a search or a sort needs them.
async fn select(shared: &WebShared, key: &ListKey) -> Result<Vec<MessageMeta>, StoreError> {
    let mut metas = shared.store.messages(key.folder).await?;
    // Date range: INTERNALDATE, the day `before` included.
    if key.since.is_some() || key.before.is_some() {
        metas.retain(|m| {
            key.since.is_none_or(|s| m.internal_date >= s)
                && key.before.is_none_or(|b| m.internal_date < b)
        });
    }
    let words = key.words.as_str();
    let field = key.field;
    let need_all =
        !words.is_empty() && field != "body" || matches!(key.sort, Sort::From | Sort::Subject);
    let mut summaries: Vec<Option<Arc<Summary>>> = Vec::new();
    if need_all {
        let blobs: Vec<_> = metas.iter().map(|m| m.blob).collect();
        summaries = shared.store.summaries(&blobs).await?;
    }
    if !words.is_empty() {
        let mut keep = Vec::with_capacity(metas.len());
        let mut kept_sums = Vec::new();
        for (i, m) in metas.iter().enumerate() {
            let s = summaries.get(i).cloned().flatten();
            let head = s.as_deref().is_some_and(|s| match field {
                "from" => from_text(s).contains(words),
                "subject" => subject(s).to_lowercase().contains(words),
                "any" => from_text(s).contains(words) || subject(s).to_lowercase().contains(words),
                _ => false,
            });
            let hit = head
                || (field == "body" || field == "any") && {
                    match shared.store.read(key.folder, m.uid, None).await {
                        Ok(raw) => crate::mime::searchable_text(&raw, false)
                            .to_lowercase()
                            .contains(words),
                        Err(_) => false,
                    }
                };
            if hit {
                keep.push(m.clone());
                kept_sums.push(s);
            }
        }
        metas = keep;
        if need_all {
            summaries = kept_sums;
        }
    }
    // Sort an index so that the summaries stay with their messages.
    let mut order: Vec<usize> = (0..metas.len()).collect();
    let key_text = |i: usize, f: fn(&Summary) -> String| -> String {
        summaries
            .get(i)
            .and_then(|s| s.as_deref().map(f))
            .unwrap_or_default()
            .to_lowercase()
    };
    match key.sort {
        Sort::Date => order.sort_by_key(|&i| (metas[i].internal_date, metas[i].uid)),
        Sort::Size => order.sort_by_key(|&i| (metas[i].size, metas[i].uid)),
        Sort::From | Sort::Subject => {
            let f: fn(&Summary) -> String = if key.sort == Sort::From {
                sender
            } else {
                subject
            };
            let keys: Vec<String> = (0..metas.len()).map(|i| key_text(i, f)).collect();
            order.sort_by(|&x, &y| keys[x].cmp(&keys[y]).then(metas[x].uid.cmp(&metas[y].uid)));
        }
    }
    if key.desc {
        order.reverse();
    }
    let mut slots: Vec<Option<MessageMeta>> = metas.into_iter().map(Some).collect();
    Ok(order.into_iter().filter_map(|i| slots[i].take()).collect())
}

/// The latest ordered selections, so that paging, returning to the list
/// and many users of one shared folder cost a page's worth of reads. An
/// entry is only ever found for the folder's current MODSEQ, so it is
/// never stale; old ones fall out.
#[derive(Default)]
pub struct ListCache {
    entries: std::sync::Mutex<std::collections::VecDeque<(ListKey, Arc<Vec<MessageMeta>>)>>,
}

/// Selections kept, and copies in them at most.
const CACHE_ENTRIES: usize = 64;
const CACHE_COPIES: usize = 1_000_000;

impl ListCache {
    fn get(&self, key: &ListKey) -> Option<Arc<Vec<MessageMeta>>> {
        let mut e = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let i = e.iter().position(|(k, _)| k == key)?;
        let hit = e.remove(i)?;
        let v = hit.1.clone();
        e.push_front(hit);
        Some(v)
    }

    fn put(&self, key: ListKey, v: Vec<MessageMeta>) -> Arc<Vec<MessageMeta>> {
        let v = Arc::new(v);
        let mut e = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        // A newer MODSEQ of the same folder replaces the older selections.
        e.retain(|(k, _)| !(k.folder == key.folder && k.modseq < key.modseq));
        e.push_front((key, v.clone()));
        while e.len() > CACHE_ENTRIES
            || e.len() > 1 && e.iter().map(|(_, v)| v.len()).sum::<usize>() > CACHE_COPIES
        {
            e.pop_back();
        }
        v
    }
}

/// `GET /`: a folder's messages.
pub async fn list(
    req: HttpRequest,
    shared: web::Data<WebShared>,
    query: web::Query<ListQuery>,
) -> HttpResponse {
    let a = match authed(&req, &shared) {
        Ok(a) => a,
        Err(r) => return r,
    };
    let q = query.into_inner();
    let shown = q.f.clone().unwrap_or_else(|| "INBOX".into());
    let (shown, folder) = match open_folder(&shared, &a, &shown).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let chrome = match chrome(
        &shared,
        &a,
        &shown,
        folder.highest_modseq,
        notice(q.notice.as_deref()),
    )
    .await
    {
        Ok(c) => c,
        Err(e) => return store_failed(e),
    };
    let since = q.since.as_deref().and_then(day);
    let before = q.before.as_deref().and_then(day).map(|t| t + 86_400);
    let words = q.q.as_deref().unwrap_or("").trim().to_lowercase();
    let field: &'static str = match q.field.as_deref() {
        Some("from") => "from",
        Some("subject") => "subject",
        Some("body") => "body",
        _ => "any",
    };
    let sort = Sort::parse(q.sort.as_deref());
    let desc = q.order.as_deref() != Some("asc");
    let key = ListKey {
        folder: folder.id,
        modseq: folder.highest_modseq,
        sort,
        desc,
        words: words.clone(),
        field,
        since,
        before,
    };
    let ordered = match shared.lists.get(&key) {
        Some(o) => o,
        None => match select(&shared, &key).await {
            Ok(o) => shared.lists.put(key, o),
            Err(e) => return store_failed(e),
        },
    };
    let total = folder.exists as usize;
    let matched = ordered.len();
    let pages = matched.div_ceil(PAGE).max(1);
    let page_no = q.page.unwrap_or(1).clamp(1, pages);
    let on_page: Vec<&MessageMeta> = ordered
        .iter()
        .skip((page_no - 1) * PAGE)
        .take(PAGE)
        .collect();
    let blobs: Vec<_> = on_page.iter().map(|m| m.blob).collect();
    let page_sums = match shared.store.summaries(&blobs).await {
        Ok(s) => s,
        Err(e) => return store_failed(e),
    };
    let rows = on_page
        .iter()
        .zip(page_sums)
        .map(|(m, s)| row(m, s.as_deref()))
        .collect();
    let columns = [
        ("From", Sort::From),
        ("Subject", Sort::Subject),
        ("Date", Sort::Date),
        ("Size", Sort::Size),
    ]
    .into_iter()
    .map(|(label, s)| {
        let active = s == sort;
        // A click on the active column turns its order round; a new one
        // starts newest/largest/Z first for date and size, A first else.
        let next_desc = if active {
            !desc
        } else {
            matches!(s, Sort::Date | Sort::Size)
        };
        Column {
            label,
            link: list_url(&shown, &q, s, next_desc, 1),
            active,
            arrow: if desc { "↓" } else { "↑" },
            aria: if desc { "descending" } else { "ascending" },
        }
    })
    .collect();
    let link = encode(&shown);
    page(&ListPage {
        c: chrome,
        link,
        total,
        unseen: folder.unseen,
        matched,
        searching: !words.is_empty() || since.is_some() || before.is_some(),
        q: q.q.clone().unwrap_or_default(),
        field: field.to_string(),
        fields: vec![
            ("any", "sender, subject or text"),
            ("from", "sender"),
            ("subject", "subject"),
            ("body", "text"),
        ],
        since: q.since.clone().unwrap_or_default(),
        before: q.before.clone().unwrap_or_default(),
        back: list_url(&shown, &q, sort, desc, page_no),
        columns,
        rows,
        page: page_no,
        pages,
        prev: (page_no > 1).then(|| list_url(&shown, &q, sort, desc, page_no - 1)),
        next: (page_no < pages).then(|| list_url(&shown, &q, sort, desc, page_no + 1)),
        is_trash: folder.special_use == Some(SpecialUse::Trash),
    })
}

fn row(m: &MessageMeta, s: Option<&Summary>) -> Row {
    Row {
        uid: m.uid,
        from: s.map(sender).unwrap_or_default(),
        subject: s
            .map(subject)
            .filter(|x| !x.is_empty())
            .unwrap_or_else(|| "(no subject)".into()),
        preview: s
            .map(|s| s.preview.chars().take(100).collect())
            .unwrap_or_default(),
        date: date_text(s.and_then(|s| s.sent).unwrap_or(m.internal_date)),
        size: size_text(m.size),
        seen: m.flags & flags::SEEN != 0,
        flagged: m.flags & flags::FLAGGED != 0,
        attachments: s.is_some_and(|s| s.has_attachments),
    }
}

// ----------------------------------------------------------------- read

#[derive(Template)]
#[template(path = "web/read.html")]
struct ReadPage {
    c: Chrome,
    link: String,
    uid: u32,
    flagged: bool,
    back: String,
    v: View,
}

/// A message's address in a query.
#[derive(Deserialize)]
pub struct MessageQuery {
    f: String,
    uid: u32,
    images: Option<u8>,
    a: Option<usize>,
    cid: Option<String>,
}

/// The message a query names: its folder (shown name, info), meta and
/// stored octets.
async fn fetch(
    shared: &WebShared,
    a: &Authed,
    q: &MessageQuery,
) -> Result<(String, FolderInfo, MessageMeta, Vec<u8>), HttpResponse> {
    let (shown, folder) = open_folder(shared, a, &q.f).await?;
    let meta = match shared.store.metas(folder.id, &[q.uid]).await {
        Ok(m) => m.into_iter().next().ok_or_else(not_found)?,
        Err(e) => return Err(store_failed(e)),
    };
    let raw = match shared.store.read(folder.id, q.uid, None).await {
        Ok(r) => r,
        Err(StoreError::NotFound(_)) => return Err(not_found()),
        Err(e) => return Err(store_failed(e)),
    };
    Ok((shown, folder, meta, raw))
}

/// The Content-Security-Policy of every page: this site's script and
/// style files only, no inline script, images from here (and, for a
/// message whose reader asked, from anywhere).
pub fn csp(remote_images: bool) -> String {
    format!(
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:{}; \
         connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        if remote_images { " https: http:" } else { "" }
    )
}

/// `GET /read`: one message; marks it read.
pub async fn read(
    req: HttpRequest,
    shared: web::Data<WebShared>,
    query: web::Query<MessageQuery>,
) -> HttpResponse {
    let a = match authed(&req, &shared) {
        Ok(a) => a,
        Err(r) => return r,
    };
    let (shown, folder, meta, raw) = match fetch(&shared, &a, &query).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let remote = query.images == Some(1);
    let links = Links {
        cid_prefix: format!("/inline?f={}&uid={}&cid=", encode(&shown), meta.uid),
        remote,
    };
    let mut v = match tokio::task::spawn_blocking(move || message::view(&raw, &links)).await {
        Ok(v) => v,
        Err(_) => return HttpResponse::InternalServerError().finish(),
    };
    if v.date.is_empty() {
        v.date = date_text(meta.internal_date);
    }
    if meta.flags & flags::SEEN == 0 {
        let change = FlagChange {
            op: FlagOp::Add,
            flags: flags::SEEN,
            keywords: Vec::new(),
            unchanged_since: None,
        };
        if let Err(e) = shared
            .store
            .store_flags(folder.id, &[meta.uid], change)
            .await
        {
            tracing::warn!(error = %e, "webmail: cannot mark a message read");
        }
    }
    let chrome = match chrome(&shared, &a, &shown, folder.highest_modseq, None).await {
        Ok(c) => c,
        Err(e) => return store_failed(e),
    };
    let link = encode(&shown);
    let html = ReadPage {
        c: chrome,
        back: format!("/?f={link}"),
        link,
        uid: meta.uid,
        flagged: meta.flags & flags::FLAGGED != 0,
        v,
    }
    .render();
    match html {
        Ok(html) => HttpResponse::Ok()
            .content_type("text/html; charset=utf-8")
            .insert_header(("Content-Security-Policy", csp(remote)))
            .body(html),
        Err(_) => HttpResponse::InternalServerError().finish(),
    }
}

/// `Content-Disposition` for a download: the name as an RFC 6266/5987
/// parameter, never a path.
fn disposition(kind: &str, name: &str) -> String {
    let clean: String = name
        .chars()
        .filter(|c| !c.is_control())
        .map(|c| if c == '/' || c == '\\' { '_' } else { c })
        .collect();
    let clean = clean.trim_start_matches('.').to_string();
    let clean = if clean.is_empty() {
        "attachment".into()
    } else {
        clean
    };
    let ascii: String = clean
        .chars()
        .map(|c| {
            if c.is_ascii() && c != '"' && c != '%' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!(
        "{kind}; filename=\"{ascii}\"; filename*=UTF-8''{}",
        encode(&clean)
    )
}

/// `GET /attachment`: an attachment's decoded octets, always as a
/// download (`application/octet-stream`, `nosniff`).
pub async fn attachment(
    req: HttpRequest,
    shared: web::Data<WebShared>,
    query: web::Query<MessageQuery>,
) -> HttpResponse {
    let a = match authed(&req, &shared) {
        Ok(a) => a,
        Err(r) => return r,
    };
    let Some(index) = query.a else {
        return not_found();
    };
    let (_, _, _, raw) = match fetch(&shared, &a, &query).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    match tokio::task::spawn_blocking(move || message::attachment(&raw, index)).await {
        Ok(Some((info, bytes))) => HttpResponse::Ok()
            .content_type("application/octet-stream")
            .insert_header((
                header::CONTENT_DISPOSITION,
                disposition("attachment", &info.name),
            ))
            .body(bytes),
        _ => not_found(),
    }
}

/// `GET /inline`: an image an HTML body refers to by `cid:`. Only raster
/// image types are served as themselves; anything else is a download.
pub async fn inline(
    req: HttpRequest,
    shared: web::Data<WebShared>,
    query: web::Query<MessageQuery>,
) -> HttpResponse {
    let a = match authed(&req, &shared) {
        Ok(a) => a,
        Err(r) => return r,
    };
    let Some(cid) = query.cid.clone() else {
        return not_found();
    };
    let (_, _, _, raw) = match fetch(&shared, &a, &query).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    match tokio::task::spawn_blocking(move || message::by_content_id(&raw, &cid)).await {
        Ok(Some((ct, bytes))) => {
            let safe = matches!(
                ct.as_str(),
                "image/png" | "image/jpeg" | "image/gif" | "image/webp"
            );
            HttpResponse::Ok()
                .content_type(if safe {
                    ct.as_str()
                } else {
                    "application/octet-stream"
                })
                .insert_header((header::CONTENT_DISPOSITION, "inline"))
                .body(bytes)
        }
        _ => not_found(),
    }
}

// -------------------------------------------------------------- actions

/// `POST /act`: flags, move, delete, empty Trash, on the selected UIDs.
pub async fn act(req: HttpRequest, shared: web::Data<WebShared>, body: web::Bytes) -> HttpResponse {
    let a = match authed(&req, &shared) {
        Ok(a) => a,
        Err(r) => return r,
    };
    let p = Form::parse(&body);
    if let Err(r) = check_csrf(&a, p.get("csrf")) {
        return r;
    }
    let (shown, folder) = match open_folder(&shared, &a, p.get("f").unwrap_or("INBOX")).await {
        Ok(x) => x,
        Err(r) => return r,
    };
    let back = p.back("/", &format!("/?f={}", encode(&shown)));
    let uids: Vec<u32> = p.all("uid").filter_map(|v| v.parse().ok()).collect();
    let op = p.get("op").unwrap_or("");
    let (account, _) = locate(&a.config, &a.user.name, &shown).unwrap_or_default();
    let flag_change = match op {
        "read" => Some((FlagOp::Add, flags::SEEN)),
        "unread" => Some((FlagOp::Remove, flags::SEEN)),
        "flag" => Some((FlagOp::Add, flags::FLAGGED)),
        "unflag" => Some((FlagOp::Remove, flags::FLAGGED)),
        _ => None,
    };
    let result = if let Some((op, f)) = flag_change {
        let change = FlagChange {
            op,
            flags: f,
            keywords: Vec::new(),
            unchanged_since: None,
        };
        shared
            .store
            .store_flags(folder.id, &uids, change)
            .await
            .map(|_| "changed")
    } else {
        match op {
            "delete" if folder.special_use == Some(SpecialUse::Trash) => shared
                .store
                .expunge(folder.id, Some(&uids), false)
                .await
                .map(|_| "deleted"),
            "delete" => match shared.store.folder(&account, "Trash").await {
                Ok(Some(trash)) => shared
                    .store
                    .copy(folder.id, &uids, trash.id, true, None)
                    .await
                    .map(|_| "deleted"),
                Ok(None) => shared
                    .store
                    .expunge(folder.id, Some(&uids), false)
                    .await
                    .map(|_| "deleted"),
                Err(e) => Err(e),
            },
            "empty" if folder.special_use == Some(SpecialUse::Trash) => shared
                .store
                .expunge(folder.id, None, false)
                .await
                .map(|_| "emptied"),
            "move" => {
                let to = p.get("to").unwrap_or("");
                let Some((to_account, to_name)) = locate(&a.config, &a.user.name, to) else {
                    return not_found();
                };
                if to_account != account {
                    return error(
                        actix_web::http::StatusCode::BAD_REQUEST,
                        "Messages move between folders of one mailbox; copy them to a shared mailbox over IMAP.",
                    );
                }
                match shared.store.folder(&to_account, &to_name).await {
                    Ok(Some(target)) if target.id != folder.id => shared
                        .store
                        .copy(folder.id, &uids, target.id, true, None)
                        .await
                        .map(|_| "moved"),
                    Ok(Some(_)) => Ok("changed"),
                    Ok(None) => return not_found(),
                    Err(e) => Err(e),
                }
            }
            _ => {
                return error(actix_web::http::StatusCode::BAD_REQUEST, "Unknown action.");
            }
        }
    };
    match result {
        Ok(code) => {
            // A message moved away from its own page goes back to the list.
            let back = if back.starts_with("/read") && matches!(code, "moved" | "deleted") {
                format!("/?f={}", encode(&shown))
            } else {
                back
            };
            see_other(&with_notice(&back, code))
        }
        Err(e) => store_failed(e),
    }
}

// -------------------------------------------------------------- compose

#[derive(Template)]
#[template(path = "web/compose.html")]
struct ComposePage {
    c: Chrome,
    heading: &'static str,
    error: Option<String>,
    addresses: Vec<String>,
    from: String,
    to: String,
    cc: String,
    bcc: String,
    subject: String,
    body: String,
    in_reply_to: String,
    references: String,
    /// `UID:folder` of a message being forwarded, or empty.
    forward: String,
}

/// The compose query: a reply, reply-all or forward of a message.
#[derive(Deserialize)]
pub struct ComposeQuery {
    mode: Option<String>,
    f: Option<String>,
    uid: Option<u32>,
    to: Option<String>,
}

/// A message's body as text (HTML with its tags taken out), for quoting
/// and forwarding.
fn plain(v: &View) -> String {
    match &v.body {
        Body::Text(t) => t.clone(),
        Body::Html(h) => strip_tags(h),
    }
}

fn quoted(v: &View) -> String {
    let text = plain(v);
    let mut out = format!("\n\nOn {}, {} wrote:\n", v.date, v.from);
    for line in text.lines() {
        out.push_str("> ");
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// Text of sanitised HTML, for quoting.
fn strip_tags(html: &str) -> String {
    let mut out = String::new();
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => in_tag = true,
            '>' => in_tag = false,
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    out.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&amp;", "&")
}

fn prefixed(prefix: &str, subject: &str) -> String {
    let lower = subject.to_lowercase();
    if lower.starts_with(&prefix.to_lowercase()) {
        subject.to_string()
    } else {
        format!("{prefix} {subject}")
    }
}

/// `GET /compose`.
pub async fn compose_form(
    req: HttpRequest,
    shared: web::Data<WebShared>,
    query: web::Query<ComposeQuery>,
) -> HttpResponse {
    let a = match authed(&req, &shared) {
        Ok(a) => a,
        Err(r) => return r,
    };
    let mut form = ComposeFields {
        to: query.to.clone().unwrap_or_default(),
        ..ComposeFields::default()
    };
    let mut heading = "New message";
    if let (Some(mode), Some(f), Some(uid)) = (query.mode.as_deref(), &query.f, query.uid) {
        let mq = MessageQuery {
            f: f.clone(),
            uid,
            images: None,
            a: None,
            cid: None,
        };
        let (_, _, _, raw) = match fetch(&shared, &a, &mq).await {
            Ok(x) => x,
            Err(r) => return r,
        };
        let links = Links {
            cid_prefix: String::new(),
            remote: false,
        };
        let v = message::view(&raw, &links);
        let mine = |x: &String| a.user.addresses.iter().any(|m| m.eq_ignore_ascii_case(x));
        match mode {
            "forward" => {
                heading = "Forward";
                form.subject = prefixed("Fwd:", &v.subject);
                let text = plain(&v);
                form.body = format!(
                    "\n\n---------- Forwarded message ----------\nFrom: {}\nDate: {}\nSubject: {}\nTo: {}\n\n{text}",
                    v.from, v.date, v.subject, v.to
                );
                form.forward = Some((f.clone(), uid));
            }
            _ => {
                heading = if mode == "all" {
                    "Reply to all"
                } else {
                    "Reply"
                };
                form.subject = prefixed("Re:", &v.subject);
                form.to = v.reply_to.join(", ");
                if mode == "all" {
                    let cc: Vec<String> = v
                        .all_recipients
                        .iter()
                        .filter(|x| !mine(x) && !v.reply_to.contains(x))
                        .cloned()
                        .collect();
                    form.cc = cc.join(", ");
                }
                form.body = quoted(&v);
                form.in_reply_to = v.message_id.clone().unwrap_or_default();
                form.references = v.references.join(" ");
            }
        }
    }
    compose_page(&shared, &a, heading, None, form).await
}

/// The compose form's fields as typed.
#[derive(Default, Debug)]
struct ComposeFields {
    csrf: Option<String>,
    action: String,
    from: String,
    to: String,
    cc: String,
    bcc: String,
    subject: String,
    body: String,
    in_reply_to: String,
    references: String,
    forward: Option<(String, u32)>,
    files: Vec<Upload>,
}

async fn compose_page(
    shared: &WebShared,
    a: &Authed,
    heading: &'static str,
    error: Option<String>,
    f: ComposeFields,
) -> HttpResponse {
    let chrome = match chrome(shared, a, "", 0, None).await {
        Ok(c) => c,
        Err(e) => return store_failed(e),
    };
    let status = if error.is_some() {
        actix_web::http::StatusCode::BAD_REQUEST
    } else {
        actix_web::http::StatusCode::OK
    };
    let from = if f.from.is_empty() {
        a.user.addresses.first().cloned().unwrap_or_default()
    } else {
        f.from
    };
    let t = ComposePage {
        c: chrome,
        heading,
        error,
        addresses: a.user.addresses.clone(),
        from,
        to: f.to,
        cc: f.cc,
        bcc: f.bcc,
        subject: f.subject,
        body: f.body,
        in_reply_to: f.in_reply_to,
        references: f.references,
        // The forwarded message travels with the form, as its attachment.
        forward: f
            .forward
            .map(|(folder, uid)| format!("{uid}:{folder}"))
            .unwrap_or_default(),
    };
    match t.render() {
        Ok(html) => HttpResponse::build(status)
            .content_type("text/html; charset=utf-8")
            .body(html),
        Err(_) => HttpResponse::InternalServerError().finish(),
    }
}

/// Reads the multipart compose form, holding at most `limit` octets of
/// fields and files together.
async fn read_compose(
    mut mp: actix_multipart::Multipart,
    limit: u64,
) -> Result<ComposeFields, &'static str> {
    let mut f = ComposeFields::default();
    let mut used: u64 = 0;
    while let Some(field) = mp.next().await {
        let mut field = field.map_err(|_| "The form could not be read.")?;
        let name = field.name().unwrap_or("").to_string();
        let filename = field
            .content_disposition()
            .and_then(|d| d.get_filename().map(str::to_string));
        let ctype = field.content_type().map(|m| m.essence_str().to_string());
        let mut data = Vec::new();
        while let Some(chunk) = field.next().await {
            let chunk = chunk.map_err(|_| "The form could not be read.")?;
            used += chunk.len() as u64;
            if used > limit {
                return Err("The message and its attachments are larger than the server accepts.");
            }
            data.extend_from_slice(&chunk);
        }
        if name == "files" {
            if let Some(filename) = filename.filter(|n| !n.is_empty()) {
                f.files.push(Upload {
                    name: filename,
                    content_type: ctype.unwrap_or_else(|| "application/octet-stream".into()),
                    content: data,
                });
            }
            continue;
        }
        let text = String::from_utf8_lossy(&data).into_owned();
        match name.as_str() {
            "csrf" => f.csrf = Some(text),
            "action" => f.action = text,
            "from" => f.from = text,
            "to" => f.to = text,
            "cc" => f.cc = text,
            "bcc" => f.bcc = text,
            "subject" => f.subject = text,
            "body" => f.body = text,
            "in_reply_to" => f.in_reply_to = text,
            "references" => f.references = text,
            "forward" => {
                f.forward = text
                    .split_once(':')
                    .and_then(|(uid, folder)| Some((folder.to_string(), uid.parse().ok()?)))
            }
            _ => {}
        }
    }
    Ok(f)
}

/// `POST /send`: sends the message (or saves it to Drafts).
pub async fn send(
    req: HttpRequest,
    shared: web::Data<WebShared>,
    mp: actix_multipart::Multipart,
) -> HttpResponse {
    let a = match authed(&req, &shared) {
        Ok(a) => a,
        Err(r) => return r,
    };
    let limit = a.config.inbound.max_message_size;
    let mut f = match read_compose(mp, limit).await {
        Ok(f) => f,
        Err(msg) => return error(actix_web::http::StatusCode::PAYLOAD_TOO_LARGE, msg),
    };
    if let Err(r) = check_csrf(&a, f.csrf.as_deref()) {
        return r;
    }
    let heading = "New message";
    if !a
        .user
        .addresses
        .iter()
        .any(|x| x.eq_ignore_ascii_case(f.from.trim()))
    {
        let from = f.from.clone();
        return compose_page(
            &shared,
            &a,
            heading,
            Some(format!("{from} is not one of your addresses.")),
            f,
        )
        .await;
    }
    let parsed = (|| {
        Ok::<_, String>((
            compose::addresses(&f.to)?,
            compose::addresses(&f.cc)?,
            compose::addresses(&f.bcc)?,
        ))
    })();
    let (to, cc, bcc) = match parsed {
        Ok(x) => x,
        Err(bad) => {
            return compose_page(
                &shared,
                &a,
                heading,
                Some(format!("\u{201c}{bad}\u{201d} is not an address.")),
                f,
            )
            .await;
        }
    };
    let draft = f.action == "draft";
    let count = to.len() + cc.len() + bcc.len();
    if !draft && count == 0 {
        return compose_page(&shared, &a, heading, Some("Add a recipient.".into()), f).await;
    }
    if count > a.config.inbound.max_recipients {
        let max = a.config.inbound.max_recipients;
        return compose_page(
            &shared,
            &a,
            heading,
            Some(format!("At most {max} recipients.")),
            f,
        )
        .await;
    }
    let mut attachments = std::mem::take(&mut f.files);
    if let Some((folder, uid)) = &f.forward {
        let mq = MessageQuery {
            f: folder.clone(),
            uid: *uid,
            images: None,
            a: None,
            cid: None,
        };
        if let Ok((_, _, _, raw)) = fetch(&shared, &a, &mq).await {
            attachments.push(Upload {
                name: "forwarded.eml".into(),
                content_type: "message/rfc822".into(),
                content: raw,
            });
        }
    }
    let hostname = a.config.server.hostname.clone();
    let id = format!("{}@{hostname}", &super::sessions::token()[..24]);
    let d = Draft {
        from: f.from.trim().to_string(),
        to,
        cc,
        bcc: bcc.clone(),
        subject: f.subject.clone(),
        body: f.body.clone(),
        in_reply_to: Some(f.in_reply_to.trim().to_string()).filter(|s| !s.is_empty()),
        references: f
            .references
            .split_whitespace()
            .map(|s| s.trim_matches(|c| c == '<' || c == '>').to_string())
            .collect(),
        attachments,
    };
    let date = chrono::Utc::now().to_rfc2822();
    let content = compose::build(&d, &id, &date);
    if content.len() as u64 > limit {
        return error(
            actix_web::http::StatusCode::PAYLOAD_TOO_LARGE,
            "The message and its attachments are larger than the server accepts.",
        );
    }
    let quota = a.user.quota;
    let append = |content: Vec<u8>, fl: u16| Append {
        content: NewContent::parse(content),
        flags: fl,
        keywords: Vec::new(),
        internal_date: None,
        quota,
        queue_id: None,
    };
    if draft {
        return match shared
            .store
            .append(
                &a.user.name,
                "Drafts",
                append(content, flags::DRAFT | flags::SEEN),
            )
            .await
        {
            Ok(_) => see_other("/?f=Drafts&notice=draft"),
            Err(e) => store_failed(e),
        };
    }
    let recipients: Vec<EnvelopeRcpt> =
        d.to.iter()
            .chain(&d.cc)
            .chain(&d.bcc)
            .map(EnvelopeRcpt::plain)
            .collect();
    let client = req
        .peer_addr()
        .map(|p| format!("[{}] webmail", p.ip()))
        .unwrap_or_else(|| "webmail".into());
    let env = Envelope {
        id: None,
        sender: d.from.clone(),
        recipients,
        client,
        listener: "web".into(),
        envid: None,
        ret: None,
        body_8bit: false,
        smtputf8: false,
        trusted: true,
    };
    match shared.intake.accept(&a.config, env, &content).await {
        Ok(msg) => {
            tracing::info!(user = %a.user.name, queue_id = %msg.id, "webmail: message sent");
        }
        Err(e) => {
            tracing::warn!(user = %a.user.name, error = %e, "webmail: message not queued");
            return error(
                actix_web::http::StatusCode::SERVICE_UNAVAILABLE,
                "The message could not be queued just now; nothing was sent. Try again in a moment.",
            );
        }
    }
    // Filed in Sent; the message is on its way whatever happens here.
    if let Err(e) = shared
        .store
        .append(&a.user.name, "Sent", append(content, flags::SEEN))
        .await
    {
        tracing::warn!(user = %a.user.name, error = %e, "webmail: sent message not filed in Sent");
    }
    see_other("/?f=INBOX&notice=sent")
}

// --------------------------------------------------------------- events

/// The events query: the folder the page shows and its MODSEQ then.
#[derive(Deserialize)]
pub struct EventsQuery {
    f: Option<String>,
    modseq: Option<u64>,
}

/// How often an idle event stream sends a comment (proxies close silent
/// connections; it also notices a browser that left).
const KEEPALIVE: Duration = Duration::from_secs(20);

/// `GET /events`: server-sent events, one `changed` event (the folder's
/// shown name and unread count) for each change to the user's folders.
pub async fn events(
    req: HttpRequest,
    shared: web::Data<WebShared>,
    query: web::Query<EventsQuery>,
) -> HttpResponse {
    let a = match authed(&req, &shared) {
        Ok(a) => a,
        Err(r) => return r,
    };
    // Subscribe first, then look: nothing falls between the two.
    let rx = shared.store.watch();
    let all = match visible(&shared, &a.config, &a.user.name).await {
        Ok(v) => v,
        Err(e) => return store_failed(e),
    };
    let mut initial = Vec::new();
    if let (Some(f), Some(seen)) = (&query.f, query.modseq)
        && let Some((shown, _, info)) = all.iter().find(|(s, _, _)| s == f)
        && info.highest_modseq > seen
    {
        initial.push(event(shown, info.unseen));
    }
    let names: Vec<(u64, crate::store::FolderId, String)> = all
        .iter()
        .map(|(shown, account, info)| (crate::store::account_hash(account), info.id, shown.clone()))
        .collect();
    let store = shared.store.clone();
    let state = (rx, names, store, initial);
    let stream =
        futures_util::stream::unfold(state, |(mut rx, names, store, mut queued)| async move {
            loop {
                if let Some(e) = queued.pop() {
                    return Some((
                        Ok::<_, actix_web::Error>(web::Bytes::from(e)),
                        (rx, names, store, queued),
                    ));
                }
                match tokio::time::timeout(KEEPALIVE, rx.recv()).await {
                    Err(_) => {
                        return Some((
                            Ok(web::Bytes::from_static(b": keepalive\n\n")),
                            (rx, names, store, queued),
                        ));
                    }
                    Ok(Ok(ev)) => {
                        let Some((_, id, shown)) = names
                            .iter()
                            .find(|(h, id, _)| *h == ev.account_hash && *id == ev.folder)
                        else {
                            continue;
                        };
                        let unseen = store.folder_info(*id).await.map(|i| i.unseen).unwrap_or(0);
                        queued.push(event(shown, unseen));
                    }
                    Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => continue,
                    Ok(Err(_)) => return None,
                }
            }
        });
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(stream)
}

fn event(folder: &str, unseen: u32) -> String {
    let data = serde_json::json!({ "folder": folder, "unseen": unseen });
    format!("event: changed\ndata: {data}\n\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn download_names_never_become_paths() {
        let d = disposition("attachment", "../../etc/passwd");
        assert!(
            d.starts_with("attachment; filename=\"_.._etc_passwd\""),
            "{d}"
        );
        let d = disposition("attachment", "Bericht €.pdf");
        assert!(d.contains("filename=\"Bericht _.pdf\""), "{d}");
        assert!(
            d.contains("filename*=UTF-8''Bericht%20%E2%82%AC.pdf"),
            "{d}"
        );
        assert_eq!(
            disposition("attachment", "\r\n"),
            "attachment; filename=\"attachment\"; filename*=UTF-8''attachment"
        );
    }
}
