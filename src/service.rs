//! The service manager's side of the daemon (systemd `Type=notify`, the
//! `sd-notify` crate): `READY=1` once every listener is bound, `RELOADING=1`
//! and `READY=1` around a reload, `STOPPING=1` when the stop begins, and the
//! watchdog kept while the scheduler answers. Without `$NOTIFY_SOCKET`
//! (run by hand, in tests) every call does nothing.

use std::time::Duration;

use actix::prelude::*;
use sd_notify::NotifyState;

use crate::scheduler::{Scheduler, Waker};
use crate::shutdown::Signal;

fn notify(state: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(state) {
        tracing::warn!(error = %e, "cannot notify the service manager");
    }
}

/// Every listener is bound and the queue runs.
pub fn ready(status: &str) {
    notify(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// A reload begins.
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => notify(&[NotifyState::Reloading, now]),
        Err(_) => notify(&[NotifyState::Reloading]),
    }
}

/// The stop begins.
pub fn stopping() {
    notify(&[NotifyState::Stopping]);
}

/// Asks the scheduler whether it is alive: its mailbox is served.
#[derive(Message)]
#[rtype(result = "()")]
struct Alive;

impl Handler<Alive> for Scheduler {
    type Result = ();

    fn handle(&mut self, _: Alive, _: &mut Self::Context) {}
}

/// Keeps systemd's watchdog (`WatchdogSec=`) fed at half its period for as
/// long as the scheduler answers within that time: a wedged scheduler
/// stops the pings, and systemd restarts the daemon.
pub fn spawn_watchdog(waker: Waker, mut signal: Signal) {
    let Some(period) = sd_notify::watchdog_enabled() else {
        return;
    };
    let every = (period / 2).max(Duration::from_millis(100));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let answer = tokio::time::timeout(every, waker.addr().send(Alive)).await;
                    if matches!(answer, Ok(Ok(()))) {
                        notify(&[NotifyState::Watchdog]);
                    } else {
                        tracing::error!("the scheduler did not answer within {every:?}: watchdog not fed");
                    }
                }
                _ = signal.triggered() => break,
            }
        }
    });
}
