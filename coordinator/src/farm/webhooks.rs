//! Webhook delivery (policy in `crate::notify`). What a change owes is
//! worked out under the scheduler's lock and committed with the change, as
//! outbox rows, so a crash between the change and the POST loses nothing.
//! A background task then delivers due rows: a 2xx deletes the row; anything
//! else (an error status, a refused connection, a timeout) tries again after
//! a backoff (1 s doubling to 5 min), until [`Webhooks::give_up_after_ms`]
//! has passed since the event, when the row is given up, logged and counted.
//! A delivery may arrive more than once (its `stylefarm-delivery` id is the
//! same each time), and deliveries to one URL may arrive out of order.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use stylefarm_core::retry::Backoff;
use stylefarm_core::tasks::Stopping;

use super::Farm;
use crate::clock::now_ms;
use crate::error::Result;
use crate::model::Millis;
use crate::notify::{sign, Delivery, Lookup};
use crate::scheduler::{Effects, EventKind, Scheduler};
use crate::store::{OutboxOp, OutboxRow, StoreOp};

/// Most rows one step reads, and how many of them are sent at once.
const STEP: usize = 64;
const IN_FLIGHT: usize = 8;
/// How often the outbox is read when nothing wakes the task.
const POLL: Duration = Duration::from_secs(1);
/// The wait between a target's tries.
const RETRY: Backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(300));
/// One try's limit.
const TIMEOUT: Duration = Duration::from_secs(10);

impl Farm {
    /// Under the scheduler's lock, before the commit: the deliveries the
    /// change in `fx` owes join its store ops. Returns whether there were any.
    pub(super) fn owe_webhooks(&self, sched: &Scheduler, fx: &mut Effects, now: Millis) -> bool {
        let hooks = &self.config.submit.webhooks;
        if hooks.is_empty() {
            return false;
        }
        let Effects { events, ops, .. } = fx;
        let before = ops.len();
        for e in events.iter() {
            let Some(batch) = sched.batch(e.batch).filter(|b| hooks.wants(b)) else { continue };
            let owed = match (e.kind, e.job.and_then(|j| sched.job(j))) {
                (EventKind::BatchFinished, _) => hooks.batch_finished(batch, now),
                (EventKind::Failed, Some(job)) => hooks.job_failed(batch, job, now),
                _ => continue,
            };
            ops.extend(owed.into_iter().map(|entry| StoreOp::Outbox(OutboxOp::Enqueue(entry))));
        }
        ops.len() > before
    }

    /// Delivers due webhooks until `stopping` (see the module doc). With no
    /// allowed prefix nothing may be sent: what an earlier run with one still
    /// owed is given up, and the task ends.
    pub fn deliveries(self: &Arc<Self>, stopping: Stopping) -> impl std::future::Future<Output = ()> + Send + 'static {
        let farm = Arc::clone(self);
        async move {
            if farm.config.submit.webhooks.is_empty() {
                if let Err(e) = farm.give_up_owed().await {
                    tracing::warn!(error = %e, "webhooks: could not clear what an earlier run owed");
                }
                return;
            }
            let client = match reqwest::Client::builder()
                .timeout(TIMEOUT)
                .connect_timeout(TIMEOUT)
                // a redirect could lead anywhere: only allowlisted URLs are posted to
                .redirect(reqwest::redirect::Policy::none())
                .user_agent(concat!("stylefarm-coordinator/", env!("CARGO_PKG_VERSION")))
                .build()
            {
                Ok(client) => client,
                Err(e) => {
                    tracing::error!(error = %e, "webhooks: no HTTP client; nothing will be delivered");
                    return;
                }
            };
            let stop = stopping.wait();
            tokio::pin!(stop);
            loop {
                match farm.delivery_step(&client).await {
                    // a full step: more are due
                    Ok(n) if n == STEP => continue,
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "webhooks: a delivery step failed"),
                }
                tokio::select! {
                    _ = tokio::time::sleep(POLL) => {}
                    _ = farm.outbox_wake.notified() => {}
                    _ = &mut stop => return,
                }
            }
        }
    }

    /// Tries every due row once (a few at a time) and records how each went.
    /// Returns how many were due.
    async fn delivery_step(self: &Arc<Self>, client: &reqwest::Client) -> Result<usize> {
        let now = now_ms();
        let due = self.stored(move |store| store.outbox_due(now, STEP)).await?;
        let n = due.len();
        if n > 0 {
            let tried: Vec<(OutboxOp, Delivery)> =
                futures::stream::iter(due).map(|row| self.try_delivery(client, row)).buffer_unordered(IN_FLIGHT).collect().await;
            let mut ops = Vec::with_capacity(tried.len());
            for (op, outcome) in tried {
                if let Some(metrics) = self.metrics() {
                    metrics.webhook_delivery(outcome);
                }
                ops.push(StoreOp::Outbox(op));
            }
            self.wait(self.store.commit(ops)).await?;
        }
        if let Some(metrics) = self.metrics() {
            if let Ok(pending) = self.stored(|store| store.outbox_pending()).await {
                metrics.webhook_outbox.set(pending as f64);
            }
        }
        Ok(n)
    }

    /// Gives up every delivery still owed (the allowlist is empty now).
    async fn give_up_owed(self: &Arc<Self>) -> Result<()> {
        loop {
            let owed = self.stored(|store| store.outbox_due(Millis::MAX, STEP)).await?;
            if owed.is_empty() {
                return Ok(());
            }
            tracing::warn!(deliveries = owed.len(), "webhooks given up: this coordinator allows no webhook URL now (--webhook-allow)");
            if let Some(metrics) = self.metrics() {
                for _ in &owed {
                    metrics.webhook_delivery(Delivery::GivenUp);
                }
            }
            let ops = owed.iter().map(|row| StoreOp::Outbox(OutboxOp::Done(row.id))).collect();
            self.wait(self.store.commit(ops)).await?;
        }
    }

    async fn try_delivery(&self, client: &reqwest::Client, row: OutboxRow) -> (OutboxOp, Delivery) {
        let OutboxRow { id, entry, attempts } = row;
        let key = match self.config.submit.webhooks.lookup(&entry.target) {
            Lookup::Allowed(key) => key,
            Lookup::NotAllowed => {
                tracing::warn!(delivery = id, batch_id = %entry.batch, target = %entry.target, "webhook given up: its URL is no longer allowed (--webhook-allow)");
                return (OutboxOp::Done(id), Delivery::GivenUp);
            }
        };
        let signature = sign::signature(key, now_ms() / 1000, entry.body.as_bytes());
        let sent = client
            .post(&entry.target)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header("stylefarm-event", &entry.event)
            .header("stylefarm-delivery", id.to_string())
            .header(sign::HEADER, signature)
            .body(entry.body.clone())
            .send()
            .await;
        let error = match sent {
            Ok(response) if response.status().is_success() => {
                tracing::info!(delivery = id, batch_id = %entry.batch, event = %entry.event, target = %entry.target, tries = attempts + 1, "webhook delivered");
                return (OutboxOp::Done(id), Delivery::Delivered);
            }
            Ok(response) => format!("HTTP {}", response.status()),
            Err(e) => e.to_string(),
        };
        let attempts = attempts.saturating_add(1);
        let now = now_ms();
        if now.saturating_sub(entry.created_ms) >= self.config.submit.webhooks.give_up_after_ms {
            tracing::warn!(delivery = id, batch_id = %entry.batch, event = %entry.event, target = %entry.target, tries = attempts, error = %error, "webhook given up: its target kept failing");
            return (OutboxOp::Done(id), Delivery::GivenUp);
        }
        let next_ms = now + RETRY.delay_after(attempts).as_millis() as Millis;
        tracing::info!(delivery = id, batch_id = %entry.batch, target = %entry.target, tries = attempts, error = %error, next_ms, "webhook failed; tried again later");
        (OutboxOp::Retry { id, next_ms, attempts, error }, Delivery::Retried)
    }
}
