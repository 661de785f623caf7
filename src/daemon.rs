//! `petrel serve`: builds the actors and listeners from the configuration,
//! runs until SIGTERM/SIGINT, reloads on SIGHUP, and stops cleanly.
//!
//! Threads: the tokio multi-thread runtime runs sessions and the control
//! socket on both cores; the scheduler, the mailbox actor and the delivery
//! pool (with its destination actors) each live on an actix Arbiter (a
//! thread of their own); the spool's committer is a thread of its own.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU8;
use std::time::Duration;

use actix::prelude::*;
use anyhow::Context as _;
use arc_swap::ArcSwap;

use crate::config::{Config, Listener, Protocol};
use crate::control;
use crate::delivery::DeliveryPool;
use crate::intake::Intake;
use crate::logging::LogControl;
use crate::mailbox::{MailboxActor, MailboxStore};
use crate::scheduler::{Drain, Scheduler, Waker};
use crate::shutdown::{Shutdown, Signal};
use crate::smtp::{SmtpShared, server};
use crate::spool::{Spool, StoreError};

/// How often the daemon looks whether removals left the spool mostly dead
/// space.
const COMPACT_CHECK: Duration = Duration::from_secs(60);

/// Compacts the spool off the async runtime if it is mostly dead space
/// (see `spool::compact`), and logs what that did. Cheap when the store's
/// counts rule a copy out, as they do unless much was removed.
pub async fn compact(spool: Arc<Spool>, reason: &'static str) {
    let started = std::time::Instant::now();
    let done = tokio::task::spawn_blocking(move || spool.compact()).await;
    match done {
        Ok(Ok(Some(c))) => tracing::info!(
            reason,
            before_mib = c.before >> 20,
            after_mib = c.after >> 20,
            ms = started.elapsed().as_millis() as u64,
            writers_waited_ms = c.paused.as_millis() as u64,
            "spool compacted"
        ),
        Ok(Ok(None)) => {}
        Ok(Err(e)) => tracing::error!(reason, error = %e, "spool compaction failed"),
        Err(e) => tracing::error!(reason, error = %e, "spool compaction stopped"),
    }
}

/// How long sessions get to finish after SIGTERM.
const SESSION_DRAIN: Duration = Duration::from_secs(30);
/// How long deliveries in flight get to finish after SIGTERM.
const DELIVERY_DRAIN: Duration = Duration::from_secs(10);

/// What the running daemon's parts share.
pub struct Daemon {
    /// The live configuration.
    pub config: Arc<ArcSwap<Config>>,
    /// The spool.
    pub spool: Arc<Spool>,
    /// Wakes the scheduler; also its address.
    pub waker: Waker,
    /// State shared by SMTP sessions.
    pub smtp: Arc<SmtpShared>,
    /// State shared by POP3 sessions.
    pub pop3: Arc<crate::pop3::Pop3Shared>,
    /// What IMAP sessions share.
    pub imap: Arc<crate::imap::ImapShared>,
    /// State shared by http listeners.
    pub web: Arc<crate::web::WebShared>,
    /// Message history (`petrel track`).
    pub history: crate::history::History,
    /// The delivery pool's resolver (its name servers change on reload).
    delivery_dns: crate::delivery::dns::Dns,
    /// The delivery pool's `total_concurrency`.
    total_limit: crate::delivery::TotalLimit,
    /// The accept loops running now, by listener name; one reload at a time.
    listeners: tokio::sync::Mutex<Vec<Running>>,
    /// A stop signal for listeners a reload starts; taken (dropped) when
    /// the stop begins, so that it does not hold up the drain.
    signal: std::sync::Mutex<Option<Signal>>,
    /// The message store (users' folders).
    pub store: Arc<dyn crate::store::MailStore>,
    /// The address book last read from the database (`[directory]
    /// backend = "postgres"`), put back beside the file's entries on reload.
    shared_directory: Arc<std::sync::Mutex<crate::config::SharedEntries>>,
    log: LogControl,
    path: Option<PathBuf>,
}

/// One listener's accept loop.
struct Running {
    spec: Listener,
    task: tokio::task::JoinHandle<()>,
}

/// What a reload did: what it changed, and what it could not change (each
/// with its key and why). Both are logged; the CLI prints them.
#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
pub struct ReloadReport {
    /// Changes now in force.
    pub applied: Vec<String>,
    /// Changes that are not in force, with the reason.
    pub not_applied: Vec<String>,
}

impl Daemon {
    /// Re-reads the configuration file and applies it: new sessions get the
    /// new configuration; listeners are started, stopped or moved; the TLS
    /// certificate and key are read again; name servers, delivery limits,
    /// log level and trace level change at once. An invalid file, or one
    /// that names another spool, is refused whole and the running
    /// configuration kept; a change that cannot be applied (a port in use,
    /// an unreadable certificate, a setting read only at start) is
    /// reported and the rest applied. Everything is logged.
    pub async fn reload(&self) -> Result<ReloadReport, String> {
        crate::service::reloading();
        let result = self.try_reload().await;
        crate::service::ready("reloaded");
        match &result {
            Ok(r) => {
                for a in &r.applied {
                    tracing::info!(change = %a, "reload applied");
                }
                for n in &r.not_applied {
                    tracing::warn!(change = %n, "reload could not apply");
                }
                tracing::info!(path = ?self.path, applied = r.applied.len(), not_applied = r.not_applied.len(), "configuration reloaded");
            }
            Err(e) => {
                tracing::error!(path = ?self.path, error = %e, "reload refused; the running configuration stays")
            }
        }
        result
    }

    async fn try_reload(&self) -> Result<ReloadReport, String> {
        let mut running = self.listeners.lock().await;
        let mut cfg = Config::load(self.path.as_deref()).map_err(|e| e.to_string())?;
        let old = self.config.load_full();
        if cfg.directory_backend == crate::config::DirectoryBackend::Postgres {
            let shared = self
                .shared_directory
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            cfg = cfg.with_shared_directory(&shared).map_err(|e| {
                format!("the file's entries beside the database's address book: {e}")
            })?;
        }
        if cfg.server.spool != old.server.spool {
            return Err("server.spool: cannot change while running; restart the daemon".into());
        }
        let mut report = ReloadReport::default();
        let note = |v: &mut Vec<String>, key: &str, what: String| v.push(format!("{key}: {what}"));

        // Read only at start.
        if cfg.store != old.store {
            note(
                &mut report.not_applied,
                "store",
                "read only at start; restart the daemon".into(),
            );
        }
        if cfg.log.format != old.log.format {
            note(
                &mut report.not_applied,
                "log.format",
                "read only at start; restart the daemon".into(),
            );
        }

        // TLS: read the certificate and key again (renewed files), before
        // listeners that need them start.
        if cfg
            .listeners
            .iter()
            .any(|l| l.tls != crate::config::TlsMode::None)
        {
            match crate::tls::server_config(&cfg.tls, &cfg.server.spool, &cfg.server.hostname) {
                Ok(t) => {
                    self.smtp.tls.set(Some(t));
                    let from = cfg
                        .tls
                        .cert
                        .as_ref()
                        .map(|p| p.display().to_string())
                        .unwrap_or_else(|| "the self-signed pair in the spool".into());
                    note(
                        &mut report.applied,
                        "tls",
                        format!("certificate and key read again from {from}"),
                    );
                }
                Err(e) => note(
                    &mut report.not_applied,
                    "tls",
                    format!("{e}; the running certificate stays"),
                ),
            }
        }

        if cfg.dns.nameservers != old.dns.nameservers {
            let set = self
                .delivery_dns
                .set_nameservers(&cfg.dns.nameservers)
                .and_then(|()| self.smtp.dns.set_nameservers(&cfg.dns.nameservers));
            match set {
                Ok(()) => note(
                    &mut report.applied,
                    "dns.nameservers",
                    format!("{:?}", cfg.dns.nameservers),
                ),
                Err(e) => note(&mut report.not_applied, "dns.nameservers", e),
            }
        }
        if cfg.queue.total_concurrency != old.queue.total_concurrency {
            self.total_limit.set(cfg.queue.total_concurrency);
            note(
                &mut report.applied,
                "queue.total_concurrency",
                cfg.queue.total_concurrency.to_string(),
            );
        }
        if cfg.queue.destination_concurrency != old.queue.destination_concurrency {
            // Destination actors read it from the live configuration.
            note(
                &mut report.applied,
                "queue.destination_concurrency",
                cfg.queue.destination_concurrency.to_string(),
            );
        }

        self.log.set_level(&cfg.log.level)?;
        self.smtp
            .debug
            .store(cfg.log.smtp_debug, std::sync::atomic::Ordering::Relaxed);
        self.history.set_limits(crate::history::Limits {
            max_age: cfg.history.max_age,
            max_size: cfg.history.max_size,
        });
        // Sessions that start from now on see the new configuration;
        // listeners started below need it in place.
        self.config.store(Arc::new(cfg.clone()));
        self.reconcile_listeners(&mut running, &cfg, &mut report)
            .await;
        Ok(report)
    }

    /// Starts, stops and moves listeners so that they match `cfg`.
    async fn reconcile_listeners(
        &self,
        running: &mut Vec<Running>,
        cfg: &Config,
        report: &mut ReloadReport,
    ) {
        let signal = self
            .signal
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let Some(signal) = signal else {
            return; // stopping
        };
        // Removed, or changed on the same address: stopped first, so that
        // the new one can bind it. Moved ones are stopped below, once their
        // new address is bound.
        let mut restarted: Vec<Listener> = Vec::new();
        let mut i = 0;
        while i < running.len() {
            let spec = running[i].spec.clone();
            match cfg.listeners.iter().find(|l| l.name == spec.name) {
                Some(l) if *l == spec || l.bind != spec.bind => i += 1,
                found => {
                    let r = running.remove(i);
                    r.task.abort();
                    let _ = r.task.await;
                    if found.is_some() {
                        restarted.push(spec);
                    } else {
                        tracing::info!(listener = %spec.name, "listener stopped");
                        report
                            .applied
                            .push(format!("listeners: {} removed", spec.name));
                    }
                }
            }
        }
        for (idx, l) in cfg.listeners.iter().enumerate() {
            let key = format!("listeners[{idx}]");
            let current = running.iter().position(|r| r.spec.name == l.name);
            if let Some(p) = current
                && running[p].spec == *l
            {
                continue;
            }
            let old = restarted.iter().find(|o| o.name == l.name).cloned();
            match self.start_listener(l, &key, signal.clone()).await {
                Ok((r, addr)) => {
                    let what = match (current, old) {
                        (Some(p), _) => {
                            let moved = running.remove(p);
                            moved.task.abort();
                            let _ = moved.task.await;
                            format!("{} moved from {} to {addr}", l.name, moved.spec.bind)
                        }
                        (None, Some(_)) => {
                            format!("{} restarted with new settings on {addr}", l.name)
                        }
                        (None, None) => format!("{} added on {addr}", l.name),
                    };
                    report.applied.push(format!("listeners: {what}"));
                    running.push(r);
                }
                Err(e) => {
                    let keeps = match (current, old) {
                        (Some(p), _) => format!("; it stays on {}", running[p].spec.bind),
                        (None, Some(o)) => {
                            match self.start_listener(&o, &key, signal.clone()).await {
                                Ok((r, addr)) => {
                                    running.push(r);
                                    format!("; it runs on with its old settings on {addr}")
                                }
                                Err(e2) => format!("; it is stopped ({e2})"),
                            }
                        }
                        (None, None) => String::new(),
                    };
                    report
                        .not_applied
                        .push(format!("{key} ({}): {e}{keeps}", l.name));
                }
            }
        }
    }

    /// Binds one listener and starts its accept loop.
    async fn start_listener(
        &self,
        l: &Listener,
        key: &str,
        signal: Signal,
    ) -> Result<(Running, std::net::SocketAddr), String> {
        let tcp = tokio::net::TcpListener::bind(l.bind)
            .await
            .map_err(|e| format!("{key}.bind: cannot listen on {}: {e}", l.bind))?;
        let addr = tcp.local_addr().map_err(|e| e.to_string())?;
        let task = match l.protocol {
            Protocol::Smtp | Protocol::Submission => {
                tokio::spawn(server::serve(tcp, l.clone(), self.smtp.clone(), signal))
            }
            Protocol::Pop3 => tokio::spawn(crate::pop3::serve(
                tcp,
                l.clone(),
                self.pop3.clone(),
                signal,
            )),
            Protocol::Imap => tokio::spawn(crate::imap::serve(
                tcp,
                l.clone(),
                self.imap.clone(),
                signal,
            )),
            Protocol::Http => {
                tokio::spawn(crate::web::serve(tcp, l.clone(), self.web.clone(), signal))
            }
        };
        tracing::info!(listener = %l.name, protocol = %l.protocol.as_str(), address = %addr, "listening");
        Ok((
            Running {
                spec: l.clone(),
                task,
            },
            addr,
        ))
    }
}

/// Runs the daemon until it is told to stop.
pub fn run(config: Config, log: LogControl) -> anyhow::Result<()> {
    system().block_on(serve(config, log, None))
}

fn system() -> actix_rt::SystemRunner {
    actix_rt::System::with_tokio_rt(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .thread_name("petrel-io")
            .build()
            .expect("the tokio runtime starts")
    })
}

/// What `petrel drain` left in the spool it drained.
#[derive(Debug, Clone, Default)]
pub struct Drained {
    /// Messages in the spool when the drain began.
    pub at_start: u64,
    /// Messages still waiting for a retry at the end.
    pub deferred: u64,
    /// Messages held by an administrator (left alone).
    pub hold: u64,
}

/// `petrel drain --spool PATH`: delivers another node's spool (its disk
/// attached here after the node died) with this node's configuration —
/// its message store, address book, routes and keys — and no listeners.
/// Every deferred message is made due now; the drain ends when nothing is
/// left to try now: the spool is empty, or what remains is held or
/// deferred after a failed attempt (run it again later, or start a node
/// on that spool). Local deliveries carry the drained spool's identity,
/// so a message its node had already stored is not stored twice.
pub fn drain(mut config: Config, spool: PathBuf, log: LogControl) -> anyhow::Result<Drained> {
    {
        let s = Spool::open(&spool).map_err(|e| match e {
            StoreError::Locked(p) => anyhow::anyhow!(
                "the spool {} is in use: its node is still running",
                p.display()
            ),
            e => anyhow::anyhow!("cannot open the spool {}: {e}", spool.display()),
        })?;
        let ids: Vec<_> = s.messages().filter_map(|m| m.ok()).map(|m| m.id).collect();
        for id in ids {
            crate::scheduler::AdminOp::Requeue.apply(&s, id)?;
        }
        system().block_on(s.commit())?;
    }
    config.server.spool = spool;
    config.listeners.clear();
    let (tx, rx) = std::sync::mpsc::channel();
    system().block_on(serve(config, log, Some(tx)))?;
    Ok(rx.try_recv().unwrap_or_default())
}

async fn serve(
    config: Config,
    log: LogControl,
    drain: Option<std::sync::mpsc::Sender<Drained>>,
) -> anyhow::Result<()> {
    match &config.path {
        Some(p) => tracing::info!(config = %p.display(), "configuration loaded"),
        None => tracing::warn!(
            looked_for = ?Config::SEARCH_PATH,
            "NO CONFIGURATION FILE: running on the built-in defaults (give one with -c or $PETREL_CONFIG)"
        ),
    }
    if config.has_sample_passwords() {
        tracing::warn!(
            "SAMPLE USERS: some [[users]] have the sample password \"petrel-example\" published in the README; replace them before this server is reachable by anyone"
        );
    }
    // A key that cannot be used would refuse every outgoing message with
    // 451: say so now, not at the first message.
    for (i, k) in config.dkim.keys.iter().enumerate() {
        if let Err(e) = crate::policy::keys::load(k) {
            if config.dkim.allow_unsigned {
                tracing::warn!(key = %format!("dkim.keys[{i}].key"), reason = %e, "dkim: key unusable; its mail goes unsigned (dkim.allow_unsigned)");
            } else {
                anyhow::bail!("dkim.keys[{i}].key: {e}");
            }
        }
    }
    let spool_dir = config.server.spool.clone();
    let spool = match Spool::open(&spool_dir) {
        Ok(s) => Arc::new(s),
        Err(StoreError::Locked(p)) => anyhow::bail!(
            "the spool {} is in use: another petrel daemon is running",
            p.display()
        ),
        Err(e) => {
            return Err(e)
                .with_context(|| format!("cannot open the spool {}", spool_dir.display()));
        }
    };
    compact(spool.clone(), "start").await;
    let recovered = spool
        .recover_active()
        .context("cannot recover messages in flight")?;
    // Content a crash left without its record (nothing is writing yet).
    spool
        .sweep_orphans()
        .context("cannot sweep orphaned content")?;
    // The one scan: from here on the spool keeps its counts as it changes
    // (`petrel status`, the queue gauges).
    spool.init_counts().context("cannot count the queue")?;
    let counts = spool.counts().unwrap_or_default();
    tracing::info!(spool = %spool_dir.display(), recovered, messages = counts.messages(), "spool open");
    let history = crate::history::History::open(
        &spool_dir.join(crate::history::FILE_NAME),
        crate::history::Limits {
            max_age: config.history.max_age,
            max_size: config.history.max_size,
        },
    )
    .context("cannot open the message history")?;
    crate::history::install(history.clone());
    crate::policy::denylist::install(&spool_dir)
        .map_err(|e| anyhow::anyhow!("cannot read the console's deny list: {e}"))?;
    let store = crate::store::open(&config.store)
        .await
        .map_err(|e| match &config.store {
            crate::config::MessageStore::Embedded { path } => {
                anyhow::anyhow!("cannot open the message store {}: {e}", path.display())
            }
            _ => anyhow::anyhow!("cannot open the message store: {e}"),
        })?;
    // The first mailbox keyspace (in the spool) moves into the store once,
    // before anything delivers or reads.
    match crate::store::migrate::from_spool(&spool, &MailboxStore::open(&spool), &*store).await {
        Ok(Some(m)) => tracing::info!(
            mailboxes = m.mailboxes,
            messages = m.messages,
            bytes = m.bytes,
            "mailboxes carried over from the spool into the message store"
        ),
        Ok(None) => {}
        Err(e) => anyhow::bail!("cannot carry the spool's mailboxes into the message store: {e}"),
    }
    let path = config.path.clone();
    let debug = Arc::new(AtomicU8::new(config.log.smtp_debug));
    let config = Arc::new(ArcSwap::from_pointee(config));

    // The address book in the database: read before anything serves.
    let shared_directory = Arc::new(std::sync::Mutex::new(Default::default()));
    if config.load().directory_backend == crate::config::DirectoryBackend::Postgres
        && let crate::config::MessageStore::Postgres { url, .. } = &config.load().store
    {
        crate::directory::book::install(url, config.clone(), shared_directory.clone())
            .await
            .map_err(|e| anyhow::anyhow!("cannot read the address book from the database: {e}"))?;
    }

    let mailbox_arbiter = Arbiter::new();
    let scheduler_arbiter = Arbiter::new();
    let origin = spool
        .identity()
        .context("cannot read the spool's identity")?;
    let mailbox = {
        let (store, config) = (store.clone(), config.clone());
        MailboxActor::start_in_arbiter(&mailbox_arbiter.handle(), move |_| {
            MailboxActor::new(store, config, origin)
        })
    };
    let delivery_arbiter = Arbiter::new();
    let pool = DeliveryPool::new(config.clone(), debug.clone())
        .map_err(|e| anyhow::anyhow!("dns.nameservers: {e}"))?;
    let (delivery_dns, total_limit) = (pool.dns(), pool.total_limit());
    let delivery = DeliveryPool::start_in_arbiter(&delivery_arbiter.handle(), move |_| pool);
    let waker = Scheduler::start(
        &scheduler_arbiter.handle(),
        spool.clone(),
        config.clone(),
        mailbox,
        delivery,
    );

    let tls = {
        let cfg = config.load();
        if cfg
            .listeners
            .iter()
            .any(|l| l.tls != crate::config::TlsMode::None)
        {
            Some(
                crate::tls::server_config(&cfg.tls, &spool_dir, &cfg.server.hostname)
                    .map_err(|e| anyhow::anyhow!(e))?,
            )
        } else {
            None
        }
    };
    let tls = crate::tls::ServerTls::new(tls);
    let smtp = Arc::new(SmtpShared {
        config: config.clone(),
        intake: Intake::new(spool.clone(), Some(waker.clone())),
        debug,
        connections: crate::session::limits::ConnectionCount::default(),
        tls,
        // A resolver of its own: the delivery pool's lives on the delivery
        // arbiter's runtime, and hickory's sockets belong to the runtime
        // that opened them. Client-name look-ups are rare (only for host
        // name patterns), so a second cache costs little.
        dns: crate::delivery::dns::Dns::new(&config.load().dns.nameservers)
            .map_err(|e| anyhow::anyhow!("dns.nameservers: {e}"))?,
        verify: Default::default(),
        rates: Default::default(),
    });
    let pop3 = Arc::new(crate::pop3::Pop3Shared::new(
        config.clone(),
        store.clone(),
        smtp.tls.clone(),
    ));
    let imap = Arc::new(crate::imap::ImapShared::new(
        config.clone(),
        store.clone(),
        smtp.tls.clone(),
    ));
    let shutdown = Shutdown::new();
    let daemon = Arc::new(Daemon {
        config: config.clone(),
        spool: spool.clone(),
        waker: waker.clone(),
        smtp: smtp.clone(),
        pop3: pop3.clone(),
        imap,
        web: Arc::new(crate::web::WebShared {
            config: config.clone(),
            spool: spool.clone(),
            tls: smtp.tls.clone(),
            store: store.clone(),
            intake: smtp.intake.clone(),
            sessions: Default::default(),
            lists: Default::default(),
            daemon: Default::default(),
        }),
        history: history.clone(),
        delivery_dns,
        total_limit,
        listeners: tokio::sync::Mutex::new(Vec::new()),
        signal: std::sync::Mutex::new(Some(shutdown.signal())),
        store: store.clone(),
        shared_directory,
        log,
        path,
    });

    let _ = daemon.web.daemon.set(Arc::downgrade(&daemon));
    {
        let mut running = daemon.listeners.lock().await;
        let listeners = config.load().listeners.clone();
        for (i, l) in listeners.iter().enumerate() {
            let (r, _) = daemon
                .start_listener(l, &format!("listeners[{i}]"), shutdown.signal())
                .await
                .map_err(|e| anyhow::anyhow!(e))?;
            running.push(r);
        }
    }

    let socket_path = spool_dir.join(control::SOCKET_NAME);
    // We hold the spool lock, so a socket file left here is stale.
    let _ = std::fs::remove_file(&socket_path);
    // SAFETY: umask only changes the process's file creation mask; no memory is involved.
    let old_mask = unsafe { libc::umask(0o077) };
    let control_listener = tokio::net::UnixListener::bind(&socket_path);
    // SAFETY: as above; restores the previous mask.
    unsafe { libc::umask(old_mask) };
    let control_listener = control_listener
        .with_context(|| format!("cannot create the control socket {}", socket_path.display()))?;
    {
        let daemon = daemon.clone();
        let mut signal = shutdown.signal();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    a = control_listener.accept() => if let Ok((stream, _)) = a {
                        tokio::spawn(control::serve_connection(stream, daemon.clone()));
                    },
                    _ = signal.triggered() => break,
                }
            }
        });
    }

    {
        let spool = spool.clone();
        let mut signal = shutdown.signal();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(COMPACT_CHECK);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => compact(spool.clone(), "periodic").await,
                    _ = signal.triggered() => break,
                }
            }
        });
    }

    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    // Only now: a SIGTERM sent on seeing this line must find the handler.
    tracing::info!(hostname = %config.load().server.hostname, "ready");
    crate::service::ready("accepting mail");
    crate::service::spawn_watchdog(waker.clone(), shutdown.signal());
    let at_start = spool.counts().map(|c| c.messages()).unwrap_or(0);
    let drained = async {
        if drain.is_none() {
            return std::future::pending().await;
        }
        // Nothing left to try now: every message delivered, held, or
        // deferred after an attempt made since the start (its next try is
        // later than that). Seen twice in a row, so a message between the
        // scheduler and its destination is not missed.
        let started = chrono::Utc::now().timestamp_millis();
        let mut quiet = 0;
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let c = spool.counts().unwrap_or_default();
            let next = spool.next_due_time().ok().flatten();
            let idle = c.active == 0 && next.is_none_or(|t| t > started);
            quiet = if idle { quiet + 1 } else { 0 };
            if quiet >= 2 {
                return c;
            }
        }
    };
    tokio::pin!(drained);
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            c = &mut drained => {
                if let Some(tx) = &drain {
                    let _ = tx.send(Drained { at_start, deferred: c.deferred, hold: c.hold });
                }
                break;
            }
            // `reload` logs what it did, and a refusal.
            _ = hup.recv() => { let _ = daemon.reload().await; }
        }
    }

    tracing::info!("stopping: no new connections; finishing sessions");
    crate::service::stopping();
    daemon
        .signal
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take();
    if !shutdown.drained(SESSION_DRAIN).await {
        tracing::warn!(
            "some sessions did not finish in time; their messages were not acknowledged"
        );
    }
    let deadline = tokio::time::Instant::now() + DELIVERY_DRAIN;
    loop {
        let in_flight = waker.addr().send(Drain).await.unwrap_or(0);
        if in_flight == 0 || tokio::time::Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if let Err(e) = spool.commit().await {
        tracing::error!(error = %e, "final commit failed");
    }
    {
        let history = history.clone();
        let _ = tokio::task::spawn_blocking(move || history.sync()).await;
    }
    let _ = std::fs::remove_file(&socket_path);
    mailbox_arbiter.stop();
    delivery_arbiter.stop();
    scheduler_arbiter.stop();
    tracing::info!("stopped");
    Ok(())
}
