//! The http listeners (`protocol = "http"`): one actix-web server per
//! listener, started from the daemon's actix System, plain (`tls = "none"`)
//! or HTTPS (`tls = "implicit"`, the `[tls]` certificate through rustls).
//!
//! `app` is the application factory: the shared state and the routes
//! (`routes`). Today it serves `GET /metrics` (Prometheus, clients in
//! `web.metrics_from`); webmail and the console add their routes there.

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use arc_swap::ArcSwap;

use crate::config::{Config, Listener, MessageStore, TlsMode};
use crate::shutdown::Signal;
use crate::spool::{Spool, now_ms};
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
}

/// The routes of the web server.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/metrics", web::get().to(metrics));
}

/// The application: shared state and routes, one per server worker.
pub fn app(
    shared: web::Data<WebShared>,
) -> App<
    impl actix_web::dev::ServiceFactory<
        actix_web::dev::ServiceRequest,
        Config = (),
        Response = actix_web::dev::ServiceResponse,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    App::new().app_data(shared).configure(routes)
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
    let server = HttpServer::new(move || app(data.clone()))
        .workers(1)
        .disable_signals()
        .shutdown_timeout(STOP_GRACE.as_secs());
    let server = match tls {
        Some(cfg) => server.listen_rustls_0_23(tcp, (*cfg).clone())?,
        None => server.listen(tcp)?,
    };
    Ok(server.run())
}
