//! The scheduler owns *when*: it takes due messages from the spool's due
//! index, hands each recipient to the router and then to a mailbox or
//! delivery, applies the outcomes (delivered, deferred with backoff,
//! bounced, expired), and writes the next due time. It is the only writer of
//! queue records after intake, so administrator operations (requeue, hold,
//! release, delete) come to it as messages too.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use actix::prelude::*;
use arc_swap::ArcSwap;
use backon::BackoffBuilder;

use crate::config::{Config, Queue};
use crate::delivery::{self, DeliveryPool};
use crate::dsn::{self, Action};
use crate::history::EventKind;
use crate::mailbox::{Deliver, LocalTarget, MailboxActor};
use crate::outcome::Outcome;
use crate::router::{self, Destination};
use crate::smtp::client::RcptSpec;
use crate::spool::{
    QueueId, QueuedMessage, RcptState, Recipient, Spool, StoreError, notify, now_ms,
};

/// RFC 5321 §6.3: more `Received:` headers than this is a loop.
const MAX_HOPS: usize = 50;
/// Messages up to this size are read from the spool on the actor's
/// thread; larger ones on the blocking pool.
const INLINE_READ: u64 = 64 * 1024;
/// How many due messages are taken from the index per pass.
const BATCH: usize = 256;
/// Longest sleep between passes; the due index is looked at least this often.
const MAX_SLEEP: Duration = Duration::from_secs(1);
/// Actor mailbox bound: callers of `send` wait when it is full.
const MAILBOX_CAPACITY: usize = 1024;

/// Look at the due index now.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Wake;

/// An administrator's queue operation on some messages.
#[derive(Message)]
#[rtype(result = "Result<AdminReport, String>")]
pub struct Admin {
    /// What to do.
    pub op: AdminOp,
    /// To which messages.
    pub ids: Vec<QueueId>,
}

/// The queue operations of the CLI.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdminOp {
    /// Keep from delivery.
    Hold,
    /// Undo hold; due now.
    Release,
    /// Make deferred mail due now.
    Requeue,
    /// Remove without a bounce.
    Delete,
}

impl AdminOp {
    /// Applies the operation to one message of an open spool. Used by the
    /// scheduler in the daemon and by the CLI directly when no daemon runs.
    pub fn apply(self, spool: &Spool, id: QueueId) -> Result<bool, StoreError> {
        let done = match self {
            AdminOp::Hold => spool.hold(id)?,
            AdminOp::Release => spool.release(id)?,
            AdminOp::Requeue => spool.requeue(id)?,
            AdminOp::Delete => spool.delete(id)?,
        };
        if done {
            let op = match self {
                AdminOp::Hold => "hold",
                AdminOp::Release => "release",
                AdminOp::Requeue => "requeue",
                AdminOp::Delete => "delete",
            };
            crate::history::record(
                Some(id.0),
                EventKind::Admin {
                    op: op.into(),
                    by: None,
                },
            );
        }
        if done && self == AdminOp::Delete {
            tracing::info!(queue_id = %id, "removed");
            crate::history::record(
                Some(id.0),
                EventKind::Removed {
                    reason: "deleted".into(),
                },
            );
        }
        Ok(done)
    }
}

/// What an `Admin` did.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct AdminReport {
    /// Messages changed.
    pub done: usize,
    /// Ids not in the queue.
    pub missing: Vec<QueueId>,
}

/// Stop dispatching (daemon shutdown); answers with the number of messages
/// still in flight.
#[derive(Message)]
#[rtype(result = "usize")]
pub struct Drain;

/// A cheap, cloneable way to wake the scheduler. Coalesces: at most one
/// `Wake` sits in the actor's mailbox however many sessions enqueue.
#[derive(Clone)]
pub struct Waker {
    addr: Addr<Scheduler>,
    pending: Arc<AtomicBool>,
}

impl Waker {
    /// Asks the scheduler to look at the due index soon.
    pub fn wake(&self) {
        if !self.pending.swap(true, Ordering::AcqRel) {
            self.addr.do_send(Wake);
        }
    }

    /// The scheduler's address.
    pub fn addr(&self) -> &Addr<Scheduler> {
        &self.addr
    }
}

/// The scheduler actor.
pub struct Scheduler {
    spool: Arc<Spool>,
    config: Arc<ArcSwap<Config>>,
    mailbox: Addr<MailboxActor>,
    delivery: Addr<DeliveryPool>,
    /// Messages handed out and not yet completed; mirrors the spool's
    /// `active` tree.
    in_flight: HashSet<QueueId>,
    /// The pending timer, replaced whenever a new sleep is chosen.
    timer: Option<SpawnHandle>,
    /// Set by `Drain`: no new dispatches.
    stopping: bool,
    /// Shared with `Waker`s; cleared when a `Wake` is handled.
    wake_pending: Arc<AtomicBool>,
    /// Messages an administrator made due (`requeue`, `release`): their
    /// next round is not one of the retry schedule, so a temporary failure
    /// in it neither counts as an attempt nor lengthens the back-off. Kept
    /// in memory only; after a restart such a round counts as usual.
    forced: HashSet<QueueId>,
}

impl Scheduler {
    /// Starts the scheduler on the given arbiter and returns its waker.
    pub fn start(
        arbiter: &ArbiterHandle,
        spool: Arc<Spool>,
        config: Arc<ArcSwap<Config>>,
        mailbox: Addr<MailboxActor>,
        delivery: Addr<DeliveryPool>,
    ) -> Waker {
        let pending = Arc::new(AtomicBool::new(false));
        let wake_pending = pending.clone();
        let addr = Scheduler::start_in_arbiter(arbiter, move |ctx| {
            ctx.set_mailbox_capacity(MAILBOX_CAPACITY);
            Scheduler {
                spool,
                config,
                mailbox,
                delivery,
                in_flight: HashSet::new(),
                timer: None,
                stopping: false,
                wake_pending,
                forced: HashSet::new(),
            }
        });
        Waker { addr, pending }
    }

    /// One pass: dispatch due messages up to the concurrency limit, then
    /// sleep until the next due time.
    fn pump(&mut self, ctx: &mut Context<Self>) {
        if self.stopping {
            return;
        }
        let limit = self.config.load().queue.total_concurrency;
        let room = limit.saturating_sub(self.in_flight.len()).min(BATCH);
        let now = now_ms();
        let mut taken = 0;
        if room > 0 {
            match self.spool.take_due(now, room) {
                Ok(msgs) => {
                    taken = msgs.len();
                    for msg in msgs {
                        if !self.in_flight.contains(&msg.id) {
                            self.dispatch(msg, ctx);
                        }
                    }
                }
                Err(e) => tracing::error!(error = %e, "cannot read the due index"),
            }
        }
        let sleep = if taken == room && room > 0 {
            Duration::ZERO
        } else {
            match self.spool.next_due_time() {
                Ok(Some(t)) if t <= now => {
                    MAX_SLEEP.min(Duration::from_millis(if room == 0 { 100 } else { 10 }))
                }
                Ok(Some(t)) => MAX_SLEEP.min(Duration::from_millis((t - now) as u64)),
                _ => MAX_SLEEP,
            }
        };
        if let Some(h) = self.timer.take() {
            ctx.cancel_future(h);
        }
        self.timer = Some(ctx.run_later(sleep, |act, ctx| {
            act.timer = None;
            act.pump(ctx);
        }));
    }

    fn dispatch(&mut self, mut msg: QueuedMessage, ctx: &mut Context<Self>) {
        if let Err(e) = self.spool.mark_active(&mut msg) {
            tracing::error!(queue_id = %msg.id, error = %e, "cannot mark message active");
            return;
        }
        self.in_flight.insert(msg.id);
        let forced = self.forced.remove(&msg.id);
        let config = self.config.load_full();
        let now = now_ms();
        let mut outcomes = Vec::new();
        let mut locals = Vec::new();
        let mut remotes: Vec<(router::NextHopPlan, Vec<RcptSpec>)> = Vec::new();
        // The next hop of each remote recipient, for the `relay=` of its
        // log line when no remote host answered.
        let mut relays: HashMap<usize, String> = HashMap::new();
        for (i, r) in msg.recipients.iter().enumerate() {
            if r.state.is_final() || r.next_attempt > now {
                continue;
            }
            match router::route(&config, &r.address) {
                Destination::Mailbox(mailbox) => locals.push(LocalTarget {
                    rcpt: i,
                    mailbox,
                    address: r.address.clone(),
                }),
                Destination::Unknown => outcomes.push((
                    i,
                    Outcome::perm(
                        "5.1.1",
                        format!("<{}>: unknown user in a local domain", r.address),
                    ),
                )),
                Destination::Remote(domain) => {
                    let plan = router::next_hop(&config, &domain);
                    relays.insert(i, plan.key());
                    let spec = RcptSpec {
                        index: i,
                        address: r.address.clone(),
                        notify: r.notify,
                        orcpt: r.orcpt.clone(),
                    };
                    match remotes.iter_mut().find(|(p, _)| *p == plan) {
                        Some((_, list)) => list.push(spec),
                        None => remotes.push((plan, vec![spec])),
                    }
                }
            }
        }
        let id = msg.id;
        // Every recipient handed to a job must come back with an outcome.
        let dispatched: Vec<usize> = locals
            .iter()
            .map(|t| t.rcpt)
            .chain(remotes.iter().flat_map(|(_, l)| l.iter().map(|r| r.index)))
            .collect();
        // The content is read, then the jobs start. A large message is
        // read off the actor's thread (megabytes of sled reads); a small
        // one (the common case, a few chunks in sled's cache) in place:
        // the blocking pool's two thread hops cost more than the read.
        // Recipients failed already (unknown here) need it for their
        // report.
        let reading = (!locals.is_empty() || !remotes.is_empty() || !outcomes.is_empty())
            .then(|| msg.clone());
        let spool = self.spool.clone();
        let mailbox = self.mailbox.clone();
        let pool = self.delivery.clone();
        let work = async move {
            let content = match reading {
                None => None,
                Some(m) if m.size <= INLINE_READ => Some(spool.content(&m)),
                Some(m) => Some(
                    tokio::task::spawn_blocking(move || spool.content(&m))
                        .await
                        .unwrap_or_else(|e| {
                            Err(StoreError::Io(format!("reading the content: {e}")))
                        }),
                ),
            };
            let content = match content {
                None => None,
                // RFC 5321 §6.3: a message that has crossed too many hosts
                // is looping (this also catches local submissions).
                Some(Ok(c)) if crate::headers::count(&c, "Received") > MAX_HOPS => {
                    let fail = |i| {
                        (
                            i,
                            Outcome::perm(
                                "5.4.6",
                                "mail forwarding loop: too many Received: headers",
                            ),
                        )
                    };
                    outcomes.extend(locals.drain(..).map(|t| fail(t.rcpt)));
                    outcomes.extend(
                        remotes
                            .drain(..)
                            .flat_map(|(_, l)| l.into_iter().map(|r| fail(r.index))),
                    );
                    // Decided here: no next hop was involved.
                    relays.clear();
                    Some(Arc::new(c))
                }
                Some(Ok(c)) => Some(Arc::new(c)),
                Some(Err(e)) => {
                    let fail = |i| (i, Outcome::temp("4.3.0", e.to_string()));
                    outcomes.extend(locals.drain(..).map(|t| fail(t.rcpt)));
                    outcomes.extend(
                        remotes
                            .drain(..)
                            .flat_map(|(_, l)| l.into_iter().map(|r| fail(r.index))),
                    );
                    relays.clear();
                    None
                }
            };
            let mut jobs = Vec::new();
            if let Some(content) = &content {
                if !locals.is_empty() {
                    let rcpts: Vec<usize> = locals.iter().map(|t| t.rcpt).collect();
                    let d = Deliver {
                        queue_id: id,
                        sender: msg.sender.clone(),
                        message_id: msg.message_id.clone(),
                        content: content.clone(),
                        targets: locals,
                    };
                    jobs.push(Box::pin(async move {
                        match mailbox.send(d).await {
                            Ok(results) => results,
                            Err(_) => rcpts
                                .into_iter()
                                .map(|r| {
                                    (
                                        r,
                                        Outcome::temp(
                                            "4.3.0",
                                            "the mailbox service is not running",
                                        ),
                                    )
                                })
                                .collect(),
                        }
                    })
                        as std::pin::Pin<
                            Box<dyn std::future::Future<Output = Vec<(usize, Outcome)>>>,
                        >);
                }
                for (plan, rcpts) in remotes {
                    let job = delivery::Send {
                        queue_id: id,
                        plan,
                        sender: msg.sender.clone(),
                        envid: msg.envid.clone(),
                        ret: msg.ret,
                        body_8bit: msg.body_8bit,
                        smtputf8: msg.smtputf8,
                        rcpts,
                        content: content.clone(),
                    };
                    let indexes: Vec<usize> = job.rcpts.iter().map(|r| r.index).collect();
                    let pool = pool.clone();
                    jobs.push(Box::pin(async move {
                        match pool.send(job).await {
                            Ok(results) => results,
                            Err(_) => indexes
                                .into_iter()
                                .map(|r| {
                                    (
                                        r,
                                        Outcome::temp(
                                            "4.3.0",
                                            "the delivery service is not running",
                                        ),
                                    )
                                })
                                .collect(),
                        }
                    }));
                }
            }
            let mut failure = None;
            for r in futures_join_all(jobs).await {
                match r {
                    Ok(r) => outcomes.extend(r),
                    Err(e) => failure = Some(e),
                }
            }
            // A job that panicked (or lost recipients) answers nothing for
            // them: they get a temporary failure, so the attempt counts and
            // the back-off applies, instead of being due again at once.
            let answered: HashSet<usize> = outcomes.iter().map(|(k, _)| *k).collect();
            for i in dispatched {
                if !answered.contains(&i) {
                    let why = failure
                        .clone()
                        .unwrap_or_else(|| "the delivery job gave no result".into());
                    tracing::error!(queue_id = %id, rcpt = i, reason = %why, "delivery job failed");
                    outcomes.push((i, Outcome::temp("4.3.0", format!("internal error: {why}"))));
                }
            }
            (outcomes, content, relays)
        };
        ctx.spawn(
            work.into_actor(self)
                .map(move |(outcomes, content, relays), act, ctx| {
                    let round = Round {
                        forced,
                        relays,
                        started: now,
                    };
                    act.complete(id, outcomes, content, round, ctx)
                }),
        );
    }

    fn complete(
        &mut self,
        id: QueueId,
        outcomes: Vec<(usize, Outcome)>,
        content: Option<Arc<Vec<u8>>>,
        round: Round,
        ctx: &mut Context<Self>,
    ) {
        self.in_flight.remove(&id);
        let mut msg = match self.spool.get(id) {
            Ok(Some(m)) => m,
            Ok(None) => return, // deleted by the administrator meanwhile
            Err(e) => {
                tracing::error!(queue_id = %id, error = %e, "cannot read message after delivery");
                return;
            }
        };
        let config = self.config.load_full();
        let queue = &config.queue;
        let now = now_ms();
        let mut reports: Vec<(Action, Vec<usize>)> = vec![
            (Action::Failed, vec![]),
            (Action::Delayed, vec![]),
            (Action::Delivered, vec![]),
            (Action::Relayed, vec![]),
        ];
        for (i, outcome) in outcomes {
            let Some(r) = msg.recipients.get_mut(i) else {
                continue;
            };
            let delivered_remote =
                matches!(&outcome, Outcome::Delivered(d) if d.remote_mta.is_some());
            let relay = round.relays.get(&i).map(String::as_str);
            if let Some(action) = apply_outcome(
                queue,
                msg.id,
                msg.arrival,
                now,
                r,
                outcome,
                relay,
                round.forced,
                round.started,
            ) {
                let action = if action == Action::Delivered && delivered_remote {
                    Action::Relayed
                } else {
                    action
                };
                if let Some((_, list)) = reports.iter_mut().find(|(a, _)| *a == action) {
                    list.push(i);
                }
            }
        }
        // One delay notice per message (RFC 3464 §2.3.3 leaves the count to us).
        let delayed: Vec<usize> = msg
            .recipients
            .iter()
            .enumerate()
            .filter(|(_, r)| {
                r.state == RcptState::Deferred && notify::wants(r.notify, notify::DELAY)
            })
            .map(|(i, _)| i)
            .collect();
        if !msg.warned
            && now - msg.arrival >= queue.warn_after.as_millis() as i64
            && !delayed.is_empty()
        {
            msg.warned = true;
            reports[1].1 = delayed;
        }
        if msg.sender.is_empty() {
            // Nobody to tell: say so where the administrator looks.
            for i in &reports[0].1 {
                if let Some(r) = msg.recipients.get(*i) {
                    tracing::warn!(queue_id = %id, to = %r.address, reason = %r.last_error.as_deref().unwrap_or(""), "undeliverable report discarded (from <>)");
                }
            }
        } else {
            for (action, list) in &reports {
                if list.is_empty() {
                    continue;
                }
                let until = (*action == Action::Delayed)
                    .then(|| msg.arrival + queue.lifetime.as_millis() as i64);
                self.notify_sender(&config, &msg, list, *action, content.as_deref(), now, until);
            }
        }
        let result = if msg.is_done() {
            self.forced.remove(&id);
            self.spool.remove(&msg).map(|_| {
                tracing::info!(queue_id = %id, "removed");
                crate::history::record(
                    Some(id.0),
                    EventKind::Removed {
                        reason: "done".into(),
                    },
                );
            })
        } else {
            self.spool.finish_active(&mut msg)
        };
        if let Err(e) = result {
            tracing::error!(queue_id = %id, error = %e, "cannot record delivery results");
        }
        // Make the results durable soon, so a crash repeats little, but
        // without a flush of their own that the next message's commit would
        // have to queue behind.
        self.spool.store().commit_soon();
        self.pump(ctx);
    }

    /// Queues a delivery status notification to the message's sender.
    #[allow(clippy::too_many_arguments)]
    fn notify_sender(
        &self,
        config: &Config,
        msg: &QueuedMessage,
        rcpts: &[usize],
        action: Action,
        content: Option<&Vec<u8>>,
        now: i64,
        until: Option<i64>,
    ) {
        let entries: Vec<&Recipient> = rcpts
            .iter()
            .filter_map(|i| msg.recipients.get(*i))
            .collect();
        let wanted = match action {
            Action::Failed => notify::FAILURE,
            Action::Delayed => notify::DELAY,
            Action::Delivered | Action::Relayed => notify::SUCCESS,
        };
        let entries: Vec<&Recipient> = entries
            .into_iter()
            .filter(|r| notify::wants(r.notify, wanted))
            .collect();
        if entries.is_empty() {
            return;
        }
        let original = match content {
            Some(c) => c.to_vec(),
            None => self.spool.content(msg).unwrap_or_default(),
        };
        let report = dsn::compose(
            &config.server.hostname,
            msg,
            &entries,
            action,
            &original,
            now,
            until,
        );
        let new = crate::intake::report(config, &msg.sender, &report);
        let report = match crate::policy::dkim_sign::sign_report(config, &new.recipients, &report) {
            Some(h) => [h.as_bytes(), &report].concat(),
            None => report,
        };
        let nrcpt = new.recipients.len();
        match self.spool.write_message(new, &report) {
            Ok(dsn_msg) => {
                tracing::info!(
                    queue_id = %msg.id,
                    dsn_queue_id = %dsn_msg.id,
                    action = action_name(action),
                    nrcpt,
                    to = %format!("<{}>", msg.sender),
                    "sender notified"
                );
                crate::history::record(
                    Some(msg.id.0),
                    EventKind::Notified {
                        action: action_name(action).into(),
                        report: dsn_msg.id.0,
                        to: msg.sender.clone(),
                    },
                );
                // The report is a message of its own: its history starts
                // here (it never passes through intake).
                crate::history::record(
                    Some(dsn_msg.id.0),
                    EventKind::Accepted {
                        client: dsn_msg.client.clone(),
                        listener: dsn_msg.listener.clone(),
                        size: dsn_msg.size,
                        sender: dsn_msg.sender.clone(),
                        recipients: dsn_msg
                            .recipients
                            .iter()
                            .map(|r| r.address.clone())
                            .collect(),
                        message_id: dsn_msg.message_id.clone(),
                    },
                );
            }
            Err(e) => {
                tracing::error!(queue_id = %msg.id, error = %e, "cannot queue the delivery status notification")
            }
        }
    }
}

fn action_name(a: Action) -> &'static str {
    match a {
        Action::Failed => "failed",
        Action::Delayed => "delayed",
        Action::Delivered => "delivered",
        Action::Relayed => "relayed",
    }
}

/// What a delivery round of one message carries to its completion.
struct Round {
    /// Made due by an administrator (see `Scheduler::forced`).
    forced: bool,
    /// Remote recipient index → next hop, for logs.
    relays: HashMap<usize, String>,
    /// When the round began (Unix ms): splits `delays=`.
    started: i64,
}

/// When a recipient's message arrived, its round began and its outcome came.
struct Timing {
    arrival: i64,
    started: i64,
    now: i64,
}

/// Seconds in Postfix's style: two decimals under 10 s, one under 100 s,
/// whole seconds above (`delay=0.35`, `delay=12.4`, `delay=3600`).
fn seconds(ms: i64) -> String {
    let s = ms.max(0) as f64 / 1000.0;
    if s < 10.0 {
        format!("{s:.2}")
    } else if s < 100.0 {
        format!("{s:.1}")
    } else {
        format!("{s:.0}")
    }
}

/// The delivery line, with Postfix's field names and punctuation so that
/// tools written for Postfix logs (pflogsumm and its greps) read it:
/// `delivery ID: to=<a@b>, relay=host[ip]:port, delay=1.2,
/// delays=a/b/c/d, dsn=2.0.0, status=sent (250 2.0.0 Ok)`. `delays` are
/// before the queue (0: intake's time is inside the SMTP session), in the
/// queue until this round, connection set-up (0: not measured apart) and
/// the round itself.
fn log_delivery(
    id: QueueId,
    r: &Recipient,
    relay: &str,
    t: &Timing,
    detail: &crate::outcome::Detail,
    status: &str,
) {
    let reason = detail.text.replace(['\r', '\n'], " ");
    tracing::info!(
        queue_id = %id,
        "delivery {id}: to=<{}>, relay={relay}, delay={}, delays=0/{}/0/{}, dsn={}, status={status} ({reason})",
        r.address,
        seconds(t.now - t.arrival),
        seconds(t.started - t.arrival),
        seconds(t.now - t.started),
        detail.status,
    );
    crate::history::record(
        Some(id.0),
        EventKind::Attempt {
            to: r.address.clone(),
            relay: relay.to_string(),
            status: status.to_string(),
            dsn: detail.status.clone(),
            reason,
            delay: (t.now - t.arrival).max(0) as f64 / 1000.0,
        },
    );
}

/// Runs futures concurrently on the actor's thread and collects their
/// outputs in order; a future that panicked gives the panic's text.
async fn futures_join_all<T: 'static>(
    futs: Vec<std::pin::Pin<Box<dyn std::future::Future<Output = T>>>>,
) -> Vec<Result<T, String>> {
    let mut set = Vec::with_capacity(futs.len());
    let handles: Vec<_> = futs.into_iter().map(actix::spawn).collect();
    for h in handles {
        set.push(h.await.map_err(delivery::join_error_text));
    }
    set
}

/// The next retry interval after `attempts` failed attempts: exponential
/// from `retry_initial`, doubling, capped at `retry_max`.
pub fn retry_delay(queue: &Queue, attempts: u32) -> Duration {
    backon::ExponentialBuilder::default()
        .with_min_delay(queue.retry_initial)
        .with_max_delay(queue.retry_max)
        .with_factor(2.0)
        .without_max_times()
        .build()
        .nth(attempts.saturating_sub(1).min(64) as usize)
        .unwrap_or(queue.retry_max)
}

/// Applies one outcome to a recipient and logs it. Returns the report the
/// sender may get: `Failed` for a bounce or expiry, `Delivered` for a
/// success.
///
/// `relay` is the next hop of a remote recipient (logged when no remote
/// host answered). `forced`: the round was an administrator's `requeue` or
/// `release`; a temporary failure in it is not counted as an attempt and
/// keeps the back-off where it was (a first attempt still counts).
#[allow(clippy::too_many_arguments)]
fn apply_outcome(
    queue: &Queue,
    id: QueueId,
    arrival: i64,
    now: i64,
    r: &mut Recipient,
    outcome: Outcome,
    relay: Option<&str>,
    forced: bool,
    started: i64,
) -> Option<Action> {
    let uncounted = forced && r.attempts > 0 && matches!(outcome, Outcome::TempFail(_));
    if !uncounted {
        r.attempts += 1;
    }
    let timing = Timing {
        arrival,
        started,
        now,
    };
    let detail = outcome.detail().clone();
    let relay = detail
        .peer
        .clone()
        .or_else(|| detail.remote_mta.clone())
        .or_else(|| relay.map(str::to_string))
        .unwrap_or_else(|| "local".into());
    r.status = Some(detail.status.clone());
    r.remote_mta = detail.remote_mta.clone();
    r.diagnostic = detail.smtp_reply.clone();
    crate::metrics::get().delivery(
        match &outcome {
            Outcome::Delivered(_) => "sent",
            Outcome::PermFail(_) => "bounced",
            Outcome::TempFail(_) if now - arrival >= queue.lifetime.as_millis() as i64 => "expired",
            Outcome::TempFail(_) => "deferred",
        },
        if relay == "local" { "local" } else { "smtp" },
    );
    match outcome {
        Outcome::Delivered(_) => {
            r.state = RcptState::Delivered;
            r.last_error = None;
            log_delivery(id, r, &relay, &timing, &detail, "sent");
            Some(Action::Delivered)
        }
        Outcome::PermFail(_) => {
            r.state = RcptState::Bounced;
            r.last_error = Some(detail.text.clone());
            log_delivery(id, r, &relay, &timing, &detail, "bounced");
            Some(Action::Failed)
        }
        Outcome::TempFail(_) => {
            r.last_error = Some(detail.text.clone());
            if now - arrival >= queue.lifetime.as_millis() as i64 {
                r.state = RcptState::Bounced;
                log_delivery(id, r, &relay, &timing, &detail, "expired");
                Some(Action::Failed)
            } else {
                r.state = RcptState::Deferred;
                r.next_attempt = now + retry_delay(queue, r.attempts).as_millis() as i64;
                log_delivery(id, r, &relay, &timing, &detail, "deferred");
                None
            }
        }
    }
}

impl Actor for Scheduler {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.pump(ctx);
    }
}

impl Handler<Wake> for Scheduler {
    type Result = ();

    fn handle(&mut self, _: Wake, ctx: &mut Self::Context) {
        self.wake_pending.store(false, Ordering::Release);
        self.pump(ctx);
    }
}

impl Handler<Admin> for Scheduler {
    type Result = Result<AdminReport, String>;

    fn handle(&mut self, msg: Admin, ctx: &mut Self::Context) -> Self::Result {
        let mut report = AdminReport::default();
        let mut changed = Vec::new();
        for id in msg.ids {
            match msg.op.apply(&self.spool, id) {
                Ok(true) => {
                    report.done += 1;
                    changed.push(id);
                }
                Ok(false) => report.missing.push(id),
                Err(e) => return Err(e.to_string()),
            }
        }
        if msg.op == AdminOp::Delete {
            for id in &changed {
                self.forced.remove(id);
            }
        }
        if matches!(msg.op, AdminOp::Release | AdminOp::Requeue) {
            // A round already under way answers for itself: its results
            // overwrite the requeue, and the next round is a normal one.
            let in_flight = &self.in_flight;
            self.forced
                .extend(changed.into_iter().filter(|id| !in_flight.contains(id)));
            self.pump(ctx);
        }
        Ok(report)
    }
}

impl Handler<Drain> for Scheduler {
    type Result = usize;

    fn handle(&mut self, _: Drain, ctx: &mut Self::Context) -> usize {
        self.stopping = true;
        if let Some(h) = self.timer.take() {
            ctx.cancel_future(h);
        }
        self.in_flight.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delays_double_and_cap() {
        let c = Config::parse("[server]\npostmaster = \"ops@remote.test\"\n[domains]\nprimary = \"example.test\"\n[queue]\nretry_initial = \"5m\"\nretry_max = \"1h\"\n")
            .expect("valid");
        let d: Vec<u64> = (1..=6)
            .map(|n| retry_delay(&c.queue, n).as_secs())
            .collect();
        assert_eq!(d, vec![300, 600, 1200, 2400, 3600, 3600]);
    }
}
