//! The http listeners (`protocol = "http"`): one actix-web server per
//! listener, started from the daemon's actix System, plain (`tls = "none"`)
//! or HTTPS (`tls = "implicit"`, the `[tls]` certificate through rustls).
//!
//! `app` is the application factory: the shared state and the routes
//! (`routes`): the webmail (`mail`) under `/`, Prometheus at `/metrics`
//! (clients in `web.metrics_from`). Every answer carries the security
//! headers (`security_headers`: a Content-Security-Policy without inline
//! script, no framing, no referrer, no sniffing, no caching of pages).

pub mod admin;
pub mod compose;
pub mod form;
pub mod mail;
pub mod message;
pub mod sessions;

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use arc_swap::ArcSwap;

use crate::config::{Config, Listener, MessageStore, TlsMode};
use crate::intake::Intake;
use crate::shutdown::Signal;
use crate::spool::{Spool, now_ms};
use crate::store::MailStore;
use crate::tls::ServerTls;

/// The OpenMetrics text format that `prometheus-client` writes (Prometheus
/// reads it).
pub const METRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// How long requests in flight get when the listener stops.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// What the web handlers share.
pub struct WebShared {
    /// The live configuration.
    pub config: Arc<ArcSwap<Config>>,
    /// The spool (queue age for `/metrics`).
    pub spool: Arc<Spool>,
    /// The server certificate, for `tls = "implicit"`.
    pub tls: ServerTls,
    /// The message store (webmail).
    pub store: Arc<dyn MailStore>,
    /// Where the webmail's messages enter the queue.
    pub intake: Intake,
    /// Browser sessions and the login throttle.
    pub sessions: sessions::Sessions,
    /// The message lists last shown.
    pub lists: mail::ListCache,
    /// The daemon, for the console (set once it exists; weak, since the
    /// daemon holds this).
    pub daemon: std::sync::OnceLock<std::sync::Weak<crate::daemon::Daemon>>,
}

/// What a handler needs to know of its listener.
pub struct Listening {
    /// TLS (`tls = "implicit"`): cookies are `Secure`.
    pub secure: bool,
}

/// The static files, compiled in.
const CSS: &str = include_str!("static/petrel.css");
const JS: &str = include_str!("static/petrel.js");

/// The routes of the web server.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/metrics", web::get().to(metrics))
        .route("/static/petrel.css", web::get().to(css))
        .route("/static/petrel.js", web::get().to(js))
        .route("/login", web::get().to(mail::login_form))
        .route("/login", web::post().to(mail::login_submit))
        .route("/logout", web::post().to(mail::logout))
        .route("/", web::get().to(mail::list))
        .route("/read", web::get().to(mail::read))
        .route("/attachment", web::get().to(mail::attachment))
        .route("/inline", web::get().to(mail::inline))
        .route("/act", web::post().to(mail::act))
        .route("/compose", web::get().to(mail::compose_form))
        .route("/send", web::post().to(mail::send))
        .route("/events", web::get().to(mail::events))
        .route("/admin", web::get().to(admin::overview))
        .route("/admin/trace", web::post().to(admin::trace))
        .route("/admin/queue", web::get().to(admin::queue))
        .route("/admin/queue/act", web::post().to(admin::queue_act))
        .route("/admin/message", web::get().to(admin::message))
        .route("/admin/deny", web::get().to(admin::deny_list))
        .route("/admin/deny/add", web::post().to(admin::deny_add))
        .route("/admin/deny/remove", web::post().to(admin::deny_remove))
        .route("/admin/rejections", web::get().to(admin::rejections))
        .default_service(web::to(|| async {
            mail::error(actix_web::http::StatusCode::NOT_FOUND, "No such page.")
        }));
}

async fn css() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/css; charset=utf-8")
        .insert_header(("Cache-Control", "public, max-age=3600"))
        .body(CSS)
}

async fn js() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/javascript; charset=utf-8")
        .insert_header(("Cache-Control", "public, max-age=3600"))
        .body(JS)
}

/// The headers every answer carries unless its handler set them (the
/// reading page sets its own Content-Security-Policy).
fn security_headers() -> actix_web::middleware::DefaultHeaders {
    actix_web::middleware::DefaultHeaders::new()
        .add(("Content-Security-Policy", mail::csp(false)))
        .add(("X-Content-Type-Options", "nosniff"))
        .add(("X-Frame-Options", "DENY"))
        .add(("Referrer-Policy", "no-referrer"))
        .add(("Cache-Control", "no-store"))
}

/// The application: shared state and routes, one per server worker.
pub fn app(
    shared: web::Data<WebShared>,
    secure: bool,
) -> App<
    impl actix_web::dev::ServiceFactory<
        actix_web::dev::ServiceRequest,
        Config = (),
        Response = actix_web::dev::ServiceResponse,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    let limit = shared.config.load().inbound.max_message_size as usize;
    App::new()
        .wrap(security_headers())
        .app_data(shared)
        .app_data(web::Data::new(Listening { secure }))
        // Login and action forms are small; uploads go through multipart.
        .app_data(web::FormConfig::default().limit(64 * 1024))
        .app_data(web::PayloadConfig::new(limit.max(64 * 1024)))
        .configure(routes)
}

/// Whether `ip` may read `/metrics` (`web.metrics_from`; an empty list
/// lets no one).
fn metrics_allowed(config: &Config, ip: IpAddr) -> bool {
    config.web.metrics_from.iter().any(|p| p.matches(ip, None))
}

async fn metrics(req: HttpRequest, shared: web::Data<WebShared>) -> HttpResponse {
    let config = shared.config.load();
    let allowed = req
        .peer_addr()
        .is_some_and(|a| metrics_allowed(&config, a.ip()));
    if !allowed {
        return HttpResponse::Forbidden()
            .content_type("text/plain; charset=utf-8")
            .body("403 not in web.metrics_from\n");
    }
    let m = crate::metrics::get();
    let spool = shared.spool.clone();
    let store = match &config.store {
        MessageStore::Embedded { path } => Some(path.clone()),
        _ => None,
    };
    // One record read and one directory listing: off the async threads.
    let (oldest, bytes) = tokio::task::spawn_blocking(move || {
        let oldest = spool.oldest_arrival().ok().flatten();
        let bytes = store.as_deref().map(dir_bytes);
        (oldest, bytes)
    })
    .await
    .unwrap_or((None, None));
    m.oldest_age
        .set(oldest.map_or(0, |a| ((now_ms() - a) / 1000).max(0)));
    if let Some(b) = bytes {
        m.store_bytes.set(b as i64);
    }
    HttpResponse::Ok()
        .content_type(METRICS_CONTENT_TYPE)
        .body(m.render())
}

/// Octets of the files under `dir` (the store's segments and index: a
/// handful of files).
fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// Stops the server when dropped (a reload aborting the listener's task).
struct StopOnDrop(actix_web::dev::ServerHandle);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        // The command is sent at once; the future only waits for it.
        drop(self.0.stop(false));
    }
}

/// Serves one http listener until the daemon stops.
pub async fn serve(
    listener: tokio::net::TcpListener,
    spec: Listener,
    shared: Arc<WebShared>,
    mut signal: Signal,
) {
    let server = match start(listener, &spec, shared) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(listener = %spec.name, error = %e, "http listener cannot start");
            return;
        }
    };
    let handle = StopOnDrop(server.handle());
    let running = tokio::spawn(server);
    signal.triggered().await;
    handle.0.stop(true).await;
    let _ = running.await;
}

fn start(
    listener: tokio::net::TcpListener,
    spec: &Listener,
    shared: Arc<WebShared>,
) -> std::io::Result<actix_web::dev::Server> {
    let tcp = listener.into_std()?;
    let tls = match spec.tls {
        TlsMode::Implicit => Some(shared.tls.get().ok_or_else(|| {
            std::io::Error::other("tls = \"implicit\" needs a certificate ([tls])")
        })?),
        _ => None,
    };
    let data = web::Data::from(shared);
    let secure = tls.is_some();
    let server = HttpServer::new(move || app(data.clone(), secure))
        .workers(1)
        .disable_signals()
        .shutdown_timeout(STOP_GRACE.as_secs());
    let server = match tls {
        Some(cfg) => server.listen_rustls_0_23(tcp, (*cfg).clone())?,
        None => server.listen(tcp)?,
    };
    Ok(server.run())
}
