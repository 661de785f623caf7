//! The scheduler owns *when*: it takes due messages from the spool's due
//! index, hands each recipient to the router and then to a mailbox or
//! delivery, applies the outcomes (delivered, deferred with backoff,
//! bounced, expired), and writes the next due time. It is the only writer of
//! queue records after intake, so administrator operations (requeue, hold,
//! release, delete) come to it as messages too.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use actix::prelude::*;
use arc_swap::ArcSwap;
use backon::BackoffBuilder;

use crate::config::{Config, Queue};
use crate::mailbox::{Deliver, LocalTarget, MailboxActor};
use crate::outcome::Outcome;
use crate::router::{self, Destination};
use crate::spool::{QueueId, QueuedMessage, RcptState, Spool, StoreError, now_ms};

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
        if done && self == AdminOp::Delete {
            tracing::info!(queue_id = %id, "removed");
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
    /// Messages handed out and not yet completed; mirrors the spool's
    /// `active` tree.
    in_flight: HashSet<QueueId>,
    /// The pending timer, replaced whenever a new sleep is chosen.
    timer: Option<SpawnHandle>,
    /// Set by `Drain`: no new dispatches.
    stopping: bool,
    /// Shared with `Waker`s; cleared when a `Wake` is handled.
    wake_pending: Arc<AtomicBool>,
}

impl Scheduler {
    /// Starts the scheduler on the given arbiter and returns its waker.
    pub fn start(
        arbiter: &ArbiterHandle,
        spool: Arc<Spool>,
        config: Arc<ArcSwap<Config>>,
        mailbox: Addr<MailboxActor>,
    ) -> Waker {
        let pending = Arc::new(AtomicBool::new(false));
        let wake_pending = pending.clone();
        let addr = Scheduler::start_in_arbiter(arbiter, move |ctx| {
            ctx.set_mailbox_capacity(MAILBOX_CAPACITY);
            Scheduler {
                spool,
                config,
                mailbox,
                in_flight: HashSet::new(),
                timer: None,
                stopping: false,
                wake_pending,
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
        let config = self.config.load_full();
        let now = now_ms();
        let mut outcomes = Vec::new();
        let mut locals = Vec::new();
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
                    Outcome::PermFail(format!("5.1.1 <{}>: unknown user in a local domain", r.address)),
                )),
                Destination::Remote(domain) => outcomes.push((
                    i,
                    Outcome::TempFail(format!(
                        "4.4.0 delivery to remote domain {domain} is not available in this version of petrel"
                    )),
                )),
            }
        }
        let id = msg.id;
        let mailbox = self.mailbox.clone();
        let content = if locals.is_empty() {
            None
        } else {
            match self.spool.content(&msg) {
                Ok(c) => Some(Arc::new(c)),
                Err(e) => {
                    outcomes.extend(
                        locals
                            .drain(..)
                            .map(|t| (t.rcpt, Outcome::TempFail(format!("4.3.0 {e}")))),
                    );
                    None
                }
            }
        };
        let deliver = content.map(|content| Deliver {
            queue_id: id,
            sender: msg.sender.clone(),
            message_id: msg.message_id.clone(),
            content,
            targets: locals,
        });
        let work = async move {
            if let Some(d) = deliver {
                let rcpts: Vec<usize> = d.targets.iter().map(|t| t.rcpt).collect();
                match mailbox.send(d).await {
                    Ok(results) => outcomes.extend(results),
                    Err(_) => outcomes.extend(rcpts.into_iter().map(|r| {
                        (
                            r,
                            Outcome::TempFail("4.3.0 the mailbox service is not running".into()),
                        )
                    })),
                }
            }
            outcomes
        };
        ctx.spawn(
            work.into_actor(self)
                .map(move |outcomes, act, ctx| act.complete(id, outcomes, ctx)),
        );
    }

    fn complete(&mut self, id: QueueId, outcomes: Vec<(usize, Outcome)>, ctx: &mut Context<Self>) {
        self.in_flight.remove(&id);
        let mut msg = match self.spool.get(id) {
            Ok(Some(m)) => m,
            Ok(None) => return, // deleted by the administrator meanwhile
            Err(e) => {
                tracing::error!(queue_id = %id, error = %e, "cannot read message after delivery");
                return;
            }
        };
        let queue = self.config.load().queue.clone();
        let now = now_ms();
        for (i, outcome) in outcomes {
            let Some(r) = msg.recipients.get_mut(i) else {
                continue;
            };
            apply_outcome(&queue, msg.id, msg.arrival, now, r, outcome);
        }
        let result = if msg.is_done() {
            self.spool
                .remove(&msg)
                .map(|_| tracing::info!(queue_id = %id, "removed"))
        } else {
            self.spool.finish_active(&mut msg)
        };
        if let Err(e) = result {
            tracing::error!(queue_id = %id, error = %e, "cannot record delivery results");
        }
        self.pump(ctx);
    }
}

/// The RFC 3463 status code at the start of a reason, or `default`.
fn dsn_of<'a>(reason: &'a str, default: &'a str) -> &'a str {
    let first = reason.split_whitespace().next().unwrap_or("");
    let looks_like = first.split('.').count() == 3
        && first
            .split('.')
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    if looks_like { first } else { default }
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

fn apply_outcome(
    queue: &Queue,
    id: QueueId,
    arrival: i64,
    now: i64,
    r: &mut crate::spool::Recipient,
    outcome: Outcome,
) {
    r.attempts += 1;
    let delay = format!("{:.2}", (now - arrival).max(0) as f64 / 1000.0);
    match outcome {
        Outcome::Delivered(detail) => {
            r.state = RcptState::Delivered;
            r.last_error = None;
            tracing::info!(queue_id = %id, to = %r.address, relay = %detail, delay = %delay, dsn = %"2.0.0", status = %"sent", "delivery");
        }
        Outcome::PermFail(reason) => {
            r.state = RcptState::Bounced;
            tracing::info!(queue_id = %id, to = %r.address, relay = %"none", delay = %delay, dsn = %dsn_of(&reason, "5.0.0"), status = %"bounced", reason = %reason, "delivery");
            r.last_error = Some(reason);
        }
        Outcome::TempFail(reason) => {
            if now - arrival >= queue.lifetime.as_millis() as i64 {
                r.state = RcptState::Bounced;
                tracing::info!(queue_id = %id, to = %r.address, relay = %"none", delay = %delay, dsn = %"4.4.7", status = %"expired", reason = %reason, "delivery");
            } else {
                r.state = RcptState::Deferred;
                r.next_attempt = now + retry_delay(queue, r.attempts).as_millis() as i64;
                tracing::info!(queue_id = %id, to = %r.address, relay = %"none", delay = %delay, dsn = %dsn_of(&reason, "4.0.0"), status = %"deferred", reason = %reason, "delivery");
            }
            r.last_error = Some(reason);
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
        for id in msg.ids {
            match msg.op.apply(&self.spool, id) {
                Ok(true) => report.done += 1,
                Ok(false) => report.missing.push(id),
                Err(e) => return Err(e.to_string()),
            }
        }
        if matches!(msg.op, AdminOp::Release | AdminOp::Requeue) {
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
        let c = Config::parse("[domains]\nprimary = \"example.test\"\n[queue]\nretry_initial = \"5m\"\nretry_max = \"1h\"\n")
            .expect("valid");
        let d: Vec<u64> = (1..=6)
            .map(|n| retry_delay(&c.queue, n).as_secs())
            .collect();
        assert_eq!(d, vec![300, 600, 1200, 2400, 3600, 3600]);
    }

    #[test]
    fn dsn_codes_are_read_from_reasons() {
        assert_eq!(dsn_of("5.1.1 <x@y>: unknown", "5.0.0"), "5.1.1");
        assert_eq!(dsn_of("connection refused", "4.0.0"), "4.0.0");
    }
}
