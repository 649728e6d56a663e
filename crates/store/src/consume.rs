//! The consume loop the router and the worker share: a durable pull consumer with explicit
//! acks, messages processed concurrently up to a bound, and a drain on shutdown.
//!
//! Lifecycle: a slot (semaphore permit) is taken before a message is pulled from the client's
//! buffer, so a message is only taken when it can be worked on at once; each message's task
//! owns its slot and releases it when the handler returns (after its ack or nak). On
//! cancellation no new message is taken, and [`run`] returns once every slot is back.

use async_nats::jetstream::{self, consumer};
use futures::StreamExt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn, Instrument};

/// What a role consumes and how.
pub struct Spec {
    /// For log lines and spans: `router` or `worker`.
    pub role: &'static str,
    pub stream: String,
    pub durable: String,
    pub filter: String,
    pub ack_wait: Duration,
    /// Consumer-wide; part of the consumer's config, so the same in every process.
    pub max_ack_pending: i64,
    /// Messages handled at once in this process.
    pub concurrency: usize,
    /// Most messages one pull asks for.
    pub max_batch: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum ConsumeError {
    #[error("cannot create consumer {durable} on {stream}: {reason}")]
    Create {
        durable: String,
        stream: String,
        reason: String,
    },
    #[error("consumer {0} stopped: {1}")]
    Stream(String, String),
}

/// Consumes until `cancel` fires, calling `handle` for each message on its own task.
pub async fn run<F, Fut>(
    js: jetstream::Context,
    spec: Spec,
    cancel: CancellationToken,
    handle: F,
) -> Result<(), ConsumeError>
where
    F: Fn(jetstream::Message) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let consumer: consumer::PullConsumer = js
        .create_consumer_on_stream(
            consumer::pull::Config {
                durable_name: Some(spec.durable.clone()),
                description: Some(format!("gancho {}s", spec.role)),
                filter_subject: spec.filter.clone(),
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: spec.ack_wait,
                max_ack_pending: spec.max_ack_pending,
                ..Default::default()
            },
            spec.stream.clone(),
        )
        .await
        .map_err(|e| ConsumeError::Create {
            durable: spec.durable.clone(),
            stream: spec.stream.clone(),
            reason: e.to_string(),
        })?;
    let concurrency = spec.concurrency.max(1);
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(concurrency.min(spec.max_batch).max(1))
        .messages()
        .await
        .map_err(|e| ConsumeError::Stream(spec.durable.clone(), e.to_string()))?;
    info!(role = spec.role, consumer = %spec.durable, concurrency, "Consuming.");

    let handle = Arc::new(handle);
    let permits = Arc::new(Semaphore::new(concurrency));
    let result = loop {
        let permit = tokio::select! {
            _ = cancel.cancelled() => break Ok(()),
            p = permits.clone().acquire_owned() => p.expect("the semaphore is never closed"),
        };
        let msg = tokio::select! {
            _ = cancel.cancelled() => break Ok(()),
            next = messages.next() => next,
        };
        let msg = match msg {
            Some(Ok(msg)) => msg,
            Some(Err(e)) => {
                warn!(role = spec.role, error = %e, "Consumer hiccup; continuing.");
                continue;
            }
            None => {
                break Err(ConsumeError::Stream(
                    spec.durable.clone(),
                    "message stream ended".into(),
                ))
            }
        };
        let handle = handle.clone();
        tokio::spawn(
            async move {
                handle(msg).await;
                drop(permit);
            }
            .instrument(tracing::info_span!("message", role = spec.role)),
        );
    };
    // Drain: every slot back means every message taken was acked or nak'd.
    let _ = permits.acquire_many(concurrency as u32).await;
    info!(role = spec.role, "Stopped consuming.");
    result
}
