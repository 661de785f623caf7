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

use crate::config::{Config, Protocol};
use crate::control;
use crate::delivery::DeliveryPool;
use crate::intake::Intake;
use crate::logging::LogControl;
use crate::mailbox::{MailboxActor, MailboxStore};
use crate::scheduler::{Drain, Scheduler, Waker};
use crate::shutdown::Shutdown;
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
    /// Message history (`petrel track`).
    pub history: crate::history::History,
    log: LogControl,
    path: Option<PathBuf>,
}

impl Daemon {
    /// Re-reads the configuration file and applies it to new sessions. An
    /// invalid file is refused and the running configuration kept.
    /// A refused reload is logged here, whichever way it was asked for.
    pub fn reload(&self) -> Result<Config, String> {
        crate::service::reloading();
        let r = self.try_reload();
        crate::service::ready("reloaded");
        if let Err(e) = &r {
            tracing::error!(error = %e, "reload refused; the running configuration stays");
        }
        r
    }

    fn try_reload(&self) -> Result<Config, String> {
        let cfg = Config::load(self.path.as_deref()).map_err(|e| e.to_string())?;
        let old = self.config.load();
        if cfg.server.spool != old.server.spool {
            return Err("server.spool: cannot change while running; restart the daemon".into());
        }
        self.log.set_level(&cfg.log.level)?;
        self.smtp
            .debug
            .store(cfg.log.smtp_debug, std::sync::atomic::Ordering::Relaxed);
        self.history.set_limits(crate::history::Limits {
            max_age: cfg.history.max_age,
            max_size: cfg.history.max_size,
        });
        self.config.store(Arc::new(cfg.clone()));
        tracing::info!(path = ?self.path, "configuration reloaded");
        Ok(cfg)
    }
}

/// Runs the daemon until it is told to stop.
pub fn run(config: Config, log: LogControl) -> anyhow::Result<()> {
    let system = actix_rt::System::with_tokio_rt(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .thread_name("petrel-io")
            .build()
            .expect("the tokio runtime starts")
    });
    system.block_on(serve(config, log))
}

async fn serve(config: Config, log: LogControl) -> anyhow::Result<()> {
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
    // No message count here: it would be a scan of the queue at every start.
    tracing::info!(spool = %spool_dir.display(), recovered, "spool open");
    let history = crate::history::History::open(
        &spool_dir.join(crate::history::FILE_NAME),
        crate::history::Limits {
            max_age: config.history.max_age,
            max_size: config.history.max_size,
        },
    )
    .context("cannot open the message history")?;
    let mailboxes = MailboxStore::open(&spool);
    let path = config.path.clone();
    let debug = Arc::new(AtomicU8::new(config.log.smtp_debug));
    let config = Arc::new(ArcSwap::from_pointee(config));

    let pop3_mailboxes = mailboxes.clone();
    let mailbox_arbiter = Arbiter::new();
    let scheduler_arbiter = Arbiter::new();
    let mailbox = {
        let spool = spool.clone();
        MailboxActor::start_in_arbiter(&mailbox_arbiter.handle(), move |_| {
            MailboxActor::new(spool, mailboxes)
        })
    };
    let delivery_arbiter = Arbiter::new();
    let pool =
        DeliveryPool::new(config.clone()).map_err(|e| anyhow::anyhow!("dns.nameservers: {e}"))?;
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
    let smtp = Arc::new(SmtpShared {
        config: config.clone(),
        intake: Intake::new(spool.clone(), Some(waker.clone())),
        debug,
        connections: server::ConnectionCount::default(),
        tls,
        // A resolver of its own: the delivery pool's lives on the delivery
        // arbiter's runtime, and hickory's sockets belong to the runtime
        // that opened them. Client-name look-ups are rare (only for host
        // name patterns), so a second cache costs little.
        dns: crate::delivery::dns::Dns::new(&config.load().dns.nameservers)
            .map_err(|e| anyhow::anyhow!("dns.nameservers: {e}"))?,
    });
    let pop3 = Arc::new(crate::pop3::Pop3Shared::new(
        config.clone(),
        pop3_mailboxes,
        spool.clone(),
        smtp.tls.clone(),
    ));
    let daemon = Arc::new(Daemon {
        config: config.clone(),
        spool: spool.clone(),
        waker: waker.clone(),
        smtp: smtp.clone(),
        history: history.clone(),
        log,
        path,
    });

    let shutdown = Shutdown::new();
    let listeners = config.load().listeners.clone();
    for (i, l) in listeners.iter().enumerate() {
        let tcp = tokio::net::TcpListener::bind(l.bind)
            .await
            .with_context(|| format!("listeners[{i}].bind: cannot listen on {}", l.bind))?;
        let addr = tcp.local_addr()?;
        tracing::info!(listener = %l.name, protocol = %l.protocol.as_str(), address = %addr, "listening");
        match l.protocol {
            Protocol::Smtp | Protocol::Submission => {
                tokio::spawn(server::serve(
                    tcp,
                    l.clone(),
                    smtp.clone(),
                    shutdown.signal(),
                ));
            }
            Protocol::Pop3 => {
                tokio::spawn(crate::pop3::serve(
                    tcp,
                    l.clone(),
                    pop3.clone(),
                    shutdown.signal(),
                ));
            }
            other => anyhow::bail!(
                "listeners[{i}].protocol: {} is not available in this version",
                other.as_str()
            ),
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

    tracing::info!(hostname = %config.load().server.hostname, "ready");
    crate::service::ready("accepting mail");
    crate::service::spawn_watchdog(waker.clone(), shutdown.signal());

    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => {
                // Refusals are logged by `reload`.
                let _ = daemon.reload();
            }
        }
    }

    tracing::info!("stopping: no new connections; finishing sessions");
    crate::service::stopping();
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
