//! Graceful stop: one broadcast that tells every task to stop, and a drain
//! channel whose senders live in the tasks, so the daemon knows when the
//! last one has finished (the mini-redis pattern).

use std::time::Duration;

use tokio::sync::{mpsc, watch};

/// Held by the daemon: starts the stop and waits for the drain.
pub struct Shutdown {
    notify: watch::Sender<bool>,
    /// Dropped in `drained` so that only tasks' senders remain.
    guard: Option<mpsc::Sender<()>>,
    done: mpsc::Receiver<()>,
}

/// Held by each task: tells it when to stop; its drop tells the daemon the
/// task has finished.
#[derive(Clone)]
pub struct Signal {
    notify: watch::Receiver<bool>,
    /// Never sent on; its drop is the message.
    _drain: mpsc::Sender<()>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl Shutdown {
    /// A new, not yet triggered shutdown.
    pub fn new() -> Shutdown {
        let (notify, _) = watch::channel(false);
        let (guard, done) = mpsc::channel(1);
        Shutdown {
            notify,
            guard: Some(guard),
            done,
        }
    }

    /// A signal for a new task.
    pub fn signal(&self) -> Signal {
        Signal {
            notify: self.notify.subscribe(),
            // `guard` is only taken in `drained`, which consumes self.
            _drain: self.guard.clone().expect("signal() before drained()"),
        }
    }

    /// Tells every task to stop.
    pub fn trigger(&self) {
        let _ = self.notify.send(true);
    }

    /// Waits until every task has dropped its signal, or `limit` passes.
    /// Returns whether all finished.
    pub async fn drained(mut self, limit: Duration) -> bool {
        self.trigger();
        self.guard = None;
        tokio::time::timeout(limit, self.done.recv()).await.is_ok()
    }
}

impl Signal {
    /// Whether the stop has begun.
    pub fn is_triggered(&self) -> bool {
        *self.notify.borrow()
    }

    /// Waits for the stop.
    pub async fn triggered(&mut self) {
        let _ = self.notify.wait_for(|stop| *stop).await;
    }
}
