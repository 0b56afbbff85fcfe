//! One stop signal for every task of a process, and the set of its tasks,
//! awaited at the end (mini-redis' model): a task is spawned through
//! [`Tasks::spawn`] with a [`Stopping`] it watches, and [`Tasks::join`] says
//! stop, then waits for every one of them. No task is detached or aborted.

use std::future::Future;

use tokio::sync::watch;
use tokio::task::JoinSet;

/// A process's tasks and their one stop signal.
pub struct Tasks {
    stop: watch::Sender<bool>,
    set: JoinSet<&'static str>,
}

/// What a task watches to know it should stop (cheap to clone).
#[derive(Clone)]
pub struct Stopping(watch::Receiver<bool>);

impl Stopping {
    /// Resolves once the process stops (at once if it already has).
    pub async fn wait(mut self) {
        let _ = self.0.wait_for(|stop| *stop).await;
    }

    pub fn is_stopping(&self) -> bool {
        *self.0.borrow()
    }
}

impl Default for Tasks {
    fn default() -> Tasks {
        Tasks { stop: watch::channel(false).0, set: JoinSet::new() }
    }
}

impl Tasks {
    pub fn new() -> Tasks {
        Tasks::default()
    }

    /// The signal a task watches.
    pub fn stopping(&self) -> Stopping {
        Stopping(self.stop.subscribe())
    }

    /// Runs `task` (named for the logs) until it returns; it should return
    /// soon after [`Stopping`] resolves.
    pub fn spawn(&mut self, name: &'static str, task: impl Future<Output = ()> + Send + 'static) {
        self.set.spawn(async move {
            task.await;
            name
        });
    }

    /// Tells every task to stop, without waiting.
    pub fn stop(&self) {
        self.stop.send_replace(true);
    }

    /// Tells every task to stop and waits for each; a task that panicked is logged.
    pub async fn join(mut self) {
        self.stop();
        while let Some(done) = self.set.join_next().await {
            match done {
                Ok(name) => tracing::debug!(task = name, "task stopped"),
                Err(e) => tracing::error!(error = %e, "a task panicked"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use super::*;

    #[tokio::test]
    async fn join_stops_every_task_and_waits_for_each() {
        let mut tasks = Tasks::new();
        let stopped = Arc::new(AtomicUsize::new(0));
        for _ in 0..3 {
            let (stopping, stopped) = (tasks.stopping(), Arc::clone(&stopped));
            tasks.spawn("waiter", async move {
                stopping.wait().await;
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                stopped.fetch_add(1, Ordering::SeqCst);
            });
        }
        tasks.spawn("panics", async { panic!("on purpose") });
        let late = tasks.stopping();
        assert!(!late.is_stopping());
        tasks.join().await;
        assert_eq!(stopped.load(Ordering::SeqCst), 3, "join returned before every task ended");
        assert!(late.is_stopping());
        late.wait().await; // resolves at once once stopped
    }
}
