//! Outbound delivery: one actor per destination (`DestinationActor`), made
//! on demand by the `DeliveryPool` and retired when idle. A destination
//! actor queues transactions, runs up to `destination_concurrency` at once
//! (and no more than `total_concurrency` across all destinations), reuses
//! connections, tries MX hosts in order, and backs off as a whole when it
//! cannot connect. It reports one outcome per recipient and never changes
//! the queue: the scheduler does.

pub mod dns;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU8;
use std::time::{Duration, Instant};

use actix::prelude::*;
use arc_swap::ArcSwap;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

use crate::config::Config;
use crate::outcome::Outcome;
use crate::router::NextHopPlan;
use crate::smtp::client::{Client, ConnectError, ConnectOptions, RcptSpec, Transaction};
use crate::spool::{QueueId, Ret};
use dns::{Dns, DnsError};

/// Idle connections are closed after this long.
const IDLE_CONNECTION: Duration = Duration::from_secs(10);
/// An idle destination actor stops after this long.
const IDLE_ACTOR: Duration = Duration::from_secs(60);
/// Consecutive connection failures after which a destination is backed off.
const FAILURES_BEFORE_BACKOFF: u32 = 2;
/// Pending transactions per destination before senders wait.
const MAILBOX_CAPACITY: usize = 4096;

/// A message's transaction for one destination.
#[derive(Message, Clone)]
#[rtype(result = "Vec<(usize, Outcome)>")]
pub struct Send {
    /// Queue id, for logs.
    pub queue_id: QueueId,
    /// Where it goes.
    pub plan: NextHopPlan,
    /// Envelope sender.
    pub sender: String,
    /// RFC 3461 ENVID.
    pub envid: Option<String>,
    /// RFC 3461 RET.
    pub ret: Option<Ret>,
    /// Needs 8BITMIME.
    pub body_8bit: bool,
    /// Needs SMTPUTF8.
    pub smtputf8: bool,
    /// Recipients of this destination.
    pub rcpts: Vec<RcptSpec>,
    /// Content as queued.
    pub content: Arc<Vec<u8>>,
}

/// The shared parts every destination needs.
#[derive(Clone)]
struct Shared {
    config: Arc<ArcSwap<Config>>,
    dns: Dns,
    /// `total_concurrency` permits; each connection in use holds one.
    total: Arc<Semaphore>,
    /// The SMTP trace level the daemon's sessions share.
    trace: Arc<AtomicU8>,
}

/// The `total_concurrency` limit, changed by a reload: raising it adds
/// permits at once; lowering it takes permits away as connections end.
#[derive(Clone)]
pub struct TotalLimit {
    permits: Arc<Semaphore>,
    /// The limit in force (permits given out plus available).
    size: Arc<std::sync::Mutex<usize>>,
}

impl TotalLimit {
    /// Sets the limit to `n` (at least 1).
    pub fn set(&self, n: usize) {
        let n = n.max(1);
        let mut size = self.size.lock().unwrap_or_else(|e| e.into_inner());
        if n > *size {
            self.permits.add_permits(n - *size);
        } else if n < *size {
            let (permits, less) = (self.permits.clone(), (*size - n) as u32);
            // Waits for connections in use to end, then keeps their permits.
            tokio::spawn(async move {
                if let Ok(p) = permits.acquire_many_owned(less).await {
                    p.forget();
                }
            });
        }
        *size = n;
    }
}

/// Makes and finds destination actors.
pub struct DeliveryPool {
    shared: Shared,
    destinations: HashMap<String, Addr<DestinationActor>>,
}

impl DeliveryPool {
    /// A pool over the live configuration; `trace` is the SMTP trace level
    /// (`log.smtp_debug`) shared with the listeners.
    pub fn new(config: Arc<ArcSwap<Config>>, trace: Arc<AtomicU8>) -> Result<DeliveryPool, String> {
        let cfg = config.load();
        let dns = Dns::new(&cfg.dns.nameservers)?;
        let total = Arc::new(Semaphore::new(cfg.queue.total_concurrency));
        drop(cfg);
        Ok(DeliveryPool {
            shared: Shared {
                config,
                dns,
                total,
                trace,
            },
            destinations: HashMap::new(),
        })
    }

    /// The pool's resolver (a reload changes its name servers).
    pub fn dns(&self) -> Dns {
        self.shared.dns.clone()
    }

    /// The pool's `total_concurrency` limit (a reload changes it).
    pub fn total_limit(&self) -> TotalLimit {
        TotalLimit {
            permits: self.shared.total.clone(),
            size: Arc::new(std::sync::Mutex::new(
                self.shared.config.load().queue.total_concurrency,
            )),
        }
    }
}

impl Actor for DeliveryPool {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(MAILBOX_CAPACITY);
        // Forget retired destination actors now and then.
        ctx.run_interval(IDLE_ACTOR, |act, _| {
            act.destinations.retain(|_, a| a.connected())
        });
    }
}

impl Handler<Send> for DeliveryPool {
    type Result = ResponseFuture<Vec<(usize, Outcome)>>;

    fn handle(&mut self, msg: Send, _ctx: &mut Self::Context) -> Self::Result {
        let key = msg.plan.key();
        let addr = match self.destinations.get(&key) {
            Some(a) if a.connected() => a.clone(),
            _ => {
                let a = DestinationActor::new(key.clone(), msg.plan.clone(), self.shared.clone())
                    .start();
                self.destinations.insert(key, a.clone());
                a
            }
        };
        let rcpts: Vec<usize> = msg.rcpts.iter().map(|r| r.index).collect();
        Box::pin(async move {
            match addr.send(msg).await {
                Ok(r) => r,
                Err(_) => rcpts
                    .into_iter()
                    .map(|i| {
                        (
                            i,
                            Outcome::temp("4.3.0", "the delivery agent stopped; will retry"),
                        )
                    })
                    .collect(),
            }
        })
    }
}

/// Where a queued transaction's outcomes go.
type Answer = oneshot::Sender<Vec<(usize, Outcome)>>;

/// An idle connection kept for the next transaction.
struct Idle {
    client: Client,
    since: Instant,
}

/// One destination: its queue, connections and health.
pub struct DestinationActor {
    key: String,
    plan: NextHopPlan,
    shared: Shared,
    queue: VecDeque<(Send, Answer)>,
    active: usize,
    idle: Vec<Idle>,
    /// Consecutive connection failures.
    failures: u32,
    /// While set, new transactions fail at once with this reason.
    down_until: Option<(Instant, Outcome)>,
    last_busy: Instant,
}

impl DestinationActor {
    fn new(key: String, plan: NextHopPlan, shared: Shared) -> DestinationActor {
        DestinationActor {
            key,
            plan,
            shared,
            queue: VecDeque::new(),
            active: 0,
            idle: Vec::new(),
            failures: 0,
            down_until: None,
            last_busy: Instant::now(),
        }
    }

    fn pump(&mut self, ctx: &mut Context<Self>) {
        let limit = self.shared.config.load().queue.destination_concurrency;
        while self.active < limit {
            let Some((job, reply)) = self.queue.pop_front() else {
                break;
            };
            if let Some((until, outcome)) = &self.down_until {
                if Instant::now() < *until {
                    let _ = reply.send(
                        job.rcpts
                            .iter()
                            .map(|r| (r.index, outcome.clone()))
                            .collect(),
                    );
                    continue;
                }
                self.down_until = None;
            }
            let permit = match self.shared.total.clone().try_acquire_owned() {
                Ok(p) => p,
                Err(_) => {
                    self.queue.push_front((job, reply));
                    ctx.run_later(Duration::from_millis(20), |act, ctx| act.pump(ctx));
                    break;
                }
            };
            self.active += 1;
            self.last_busy = Instant::now();
            let conn = self.idle.pop().map(|i| i.client);
            let rcpts: Vec<usize> = job.rcpts.iter().map(|r| r.index).collect();
            let key = self.key.clone();
            let (shared, plan) = (self.shared.clone(), self.plan.clone());
            let work = contained(run_transaction(shared, plan, conn, job, permit), rcpts, key);
            ctx.spawn(work.into_actor(self).map(move |(outcomes, conn, connect_failed), act, ctx| {
                act.active -= 1;
                act.last_busy = Instant::now();
                if let Some(c) = conn {
                    act.idle.push(Idle { client: c, since: Instant::now() });
                }
                if let Some(failure) = connect_failed {
                    act.failures += 1;
                    if act.failures >= FAILURES_BEFORE_BACKOFF {
                        let wait = act.shared.config.load().queue.retry_initial.min(Duration::from_secs(300));
                        tracing::info!(destination = %act.key, wait = ?wait, "destination unreachable; backing off");
                        act.down_until = Some((Instant::now() + wait, failure));
                    }
                } else {
                    act.failures = 0;
                }
                let _ = reply.send(outcomes);
                act.pump(ctx);
            }));
        }
    }

    fn tidy(&mut self, ctx: &mut Context<Self>) {
        let now = Instant::now();
        let (keep, close): (Vec<Idle>, Vec<Idle>) = std::mem::take(&mut self.idle)
            .into_iter()
            .partition(|i| now.duration_since(i.since) < IDLE_CONNECTION);
        self.idle = keep;
        for i in close {
            tokio::spawn(async move {
                let _ = i.client.quit().await;
            });
        }
        if self.queue.is_empty()
            && self.active == 0
            && self.idle.is_empty()
            && now.duration_since(self.last_busy) > IDLE_ACTOR
        {
            ctx.stop();
        }
    }
}

impl Actor for DestinationActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(MAILBOX_CAPACITY);
        ctx.run_interval(Duration::from_secs(2), |act, ctx| act.tidy(ctx));
    }
}

impl Handler<Send> for DestinationActor {
    type Result = ResponseFuture<Vec<(usize, Outcome)>>;

    fn handle(&mut self, msg: Send, ctx: &mut Self::Context) -> Self::Result {
        let (tx, rx) = oneshot::channel();
        let rcpts: Vec<usize> = msg.rcpts.iter().map(|r| r.index).collect();
        self.queue.push_back((msg, tx));
        self.pump(ctx);
        Box::pin(async move {
            rx.await.unwrap_or_else(|_| {
                rcpts
                    .into_iter()
                    .map(|i| {
                        (
                            i,
                            Outcome::temp("4.3.0", "the delivery agent stopped; will retry"),
                        )
                    })
                    .collect()
            })
        })
    }
}

/// The text of a task that did not finish: the panic's message.
pub fn join_error_text(e: tokio::task::JoinError) -> String {
    if !e.is_panic() {
        return "the delivery job was cancelled".into();
    }
    let p = e.into_panic();
    let msg = p
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into());
    format!("the delivery job panicked: {msg}")
}

/// Runs a transaction as a task of its own, so that a panic in it costs
/// only this transaction (a temporary failure for its recipients, logged),
/// not the destination actor with its queue and connections.
async fn contained(
    work: impl std::future::Future<Output = (Vec<(usize, Outcome)>, Option<Client>, Option<Outcome>)>
    + 'static,
    rcpts: Vec<usize>,
    destination: String,
) -> (Vec<(usize, Outcome)>, Option<Client>, Option<Outcome>) {
    match actix::spawn(work).await {
        Ok(r) => r,
        Err(e) => {
            let why = join_error_text(e);
            tracing::error!(destination = %destination, reason = %why, "delivery job failed");
            let o = Outcome::temp("4.3.0", format!("internal error: {why}"));
            (
                rcpts.into_iter().map(|i| (i, o.clone())).collect(),
                None,
                None,
            )
        }
    }
}

/// Test-only fault injection, compiled into debug builds only: when the
/// environment variable `PETREL_TEST_PANIC_RCPT` (documented as test-only
/// in docs/configuration.md) names a recipient of a transaction, the
/// transaction panics, as a defect in delivery would.
#[cfg(debug_assertions)]
fn injected_fault(job: &Send) {
    if let Ok(target) = std::env::var("PETREL_TEST_PANIC_RCPT")
        && job
            .rcpts
            .iter()
            .any(|r| r.address.eq_ignore_ascii_case(&target))
    {
        panic!("fault injected for <{target}> (PETREL_TEST_PANIC_RCPT)");
    }
}

/// Carries one transaction on a reused or new connection. Returns the
/// outcomes, the connection if it can be reused, and the failure if no
/// connection could be made (for the destination's backoff).
async fn run_transaction(
    shared: Shared,
    plan: NextHopPlan,
    reused: Option<Client>,
    job: Send,
    _permit: OwnedSemaphorePermit,
) -> (Vec<(usize, Outcome)>, Option<Client>, Option<Outcome>) {
    let all = |o: Outcome| {
        job.rcpts
            .iter()
            .map(|r| (r.index, o.clone()))
            .collect::<Vec<_>>()
    };
    #[cfg(debug_assertions)]
    injected_fault(&job);
    let t = Transaction {
        sender: &job.sender,
        envid: job.envid.as_deref(),
        ret: job.ret,
        body_8bit: job.body_8bit,
        smtputf8: job.smtputf8,
        rcpts: &job.rcpts,
        content: &job.content,
    };
    // A reused connection may have been closed by the peer meanwhile: on a
    // broken transaction, try once more on a fresh connection.
    if let Some(mut c) = reused
        && let Ok(outcomes) = c.send(&t).await
    {
        return (outcomes, Some(c), None);
    }
    let mut client = match connect(&shared, &plan).await {
        Ok(c) => c,
        Err(o) => return (all(o.clone()), None, Some(o)),
    };
    match client.send(&t).await {
        Ok(outcomes) => (outcomes, Some(client), None),
        Err(e) => (all(Outcome::temp("4.4.2", e)), None, None),
    }
}

/// Connects to the first host of the plan that answers. An `Err` is the
/// outcome for every recipient (temporary, or permanent for DNS facts).
async fn connect(shared: &Shared, plan: &NextHopPlan) -> Result<Client, Outcome> {
    let cfg = shared.config.load_full();
    let opts = ConnectOptions::new(&cfg, shared.trace.clone());
    let dns_outcome = |e: DnsError| {
        if e.is_permanent() {
            let r = e.reason();
            let (status, text) = r.split_once(' ').unwrap_or(("5.4.4", &r));
            Outcome::perm(status, text)
        } else {
            let r = e.reason();
            let (status, text) = r.split_once(' ').unwrap_or(("4.4.3", &r));
            Outcome::temp(status, text)
        }
    };
    // (host name, port, whether to look up MX for it)
    let (name, port, mx) = match plan {
        NextHopPlan::Host(h) => (h.host.clone(), h.port, !h.no_mx),
        NextHopPlan::Mx(d) => (d.clone(), cfg.outbound.port, true),
        NextHopPlan::Literal(ip) => {
            let addr = SocketAddr::new(*ip, cfg.outbound.port);
            return try_host(&[addr], &ip.to_string(), &opts).await;
        }
    };
    let hosts = if mx {
        shared.dns.mail_hosts(&name).await.map_err(dns_outcome)?
    } else {
        vec![dns::MailHost {
            name: name.clone(),
            preference: 0,
        }]
    };
    let mut last = Outcome::temp("4.4.1", format!("no host of {name} answered"));
    for host in hosts {
        let addrs = match shared.dns.addresses(&host.name).await {
            Ok(a) => a,
            Err(e) => {
                last = dns_outcome(e);
                if let Outcome::PermFail(d) = &last {
                    // A bad MX host name is this host's problem, not the domain's.
                    last = Outcome::TempFail(d.clone());
                }
                continue;
            }
        };
        let addrs: Vec<SocketAddr> = addrs
            .into_iter()
            .map(|ip| SocketAddr::new(ip, port))
            .collect();
        match try_host(&addrs, &host.name, &opts).await {
            Ok(c) => return Ok(c),
            Err(o) => last = o,
        }
    }
    Err(last)
}

async fn try_host(
    addrs: &[SocketAddr],
    name: &str,
    opts: &ConnectOptions,
) -> Result<Client, Outcome> {
    let mut last = Outcome::temp("4.4.1", format!("no address for {name}"));
    for a in addrs {
        match Client::connect(*a, name, opts).await {
            Ok(c) => return Ok(c),
            Err(ConnectError::NextHost(e)) => last = Outcome::temp("4.4.1", e),
            Err(ConnectError::Policy(e)) => return Err(Outcome::temp("4.7.5", e)),
        }
    }
    Err(last)
}
