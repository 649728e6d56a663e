//! The router role. It consumes `GANCHO_EVENTS` through the durable consumer every router
//! shares, checks each event (decodes, JSON payload, tenant and type agree with the subject),
//! matches it against the live subscription table, and publishes one `Delivery` per matching
//! enabled endpoint to `GANCHO_DELIVERIES` with `Nats-Msg-Id: <event id>:<endpoint id>`.
//!
//! The event is acked only after JetStream acked every one of its deliveries; on any publish
//! failure it is nak'd and routed again later, and JetStream's de-duplication turns the
//! deliveries that did land into no-ops. An event that can never be delivered goes to
//! `GANCHO_DEAD` with its reason, then is acked, and the router goes on.
//!
//! Throughput: events are processed concurrently (bounded by [`RouterConfig::concurrency`]),
//! the PubAcks of one fan-out are awaited together, and the router reads and writes through
//! two separate NATS connections so that its publishing cannot starve its consumer.

mod route;

pub use route::{check_event, delivery_id, partition, Invalid};

use async_nats::jetstream;
use gancho_store::consume::{ConsumeError, Spec};
use gancho_store::{Layout, Live};
use gancho_telemetry::names;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::error;

/// How long JetStream waits for an ack before redelivering an event to another router.
/// Routing takes milliseconds; a short wait means a crashed router's events move on quickly.
const ACK_WAIT: Duration = Duration::from_secs(10);
/// Events handed out and not yet acked across every router; fixed in the consumer's config.
const MAX_ACK_PENDING: i64 = 20_000;
/// Most events one pull asks for.
const MAX_BATCH: usize = 256;
/// Delay before a nak'd event is redelivered (its fan-out failed to publish).
const NAK_DELAY: Duration = Duration::from_secs(1);

#[derive(Clone, Debug)]
pub struct RouterConfig {
    /// Events routed at once in this process. Each holds its deliveries' PubAcks in flight,
    /// so this also bounds the memory of a burst.
    pub concurrency: usize,
    /// Number of `gancho.deliveries.<n>` partitions.
    pub partitions: u32,
}

impl Default for RouterConfig {
    fn default() -> Self {
        Self {
            concurrency: 1024,
            partitions: 16,
        }
    }
}

/// Runs the router until `cancel` fires, then waits for the events in flight.
pub async fn run(
    input: async_nats::Client,
    output: jetstream::Context,
    layout: Layout,
    live: Arc<Live>,
    config: RouterConfig,
    cancel: CancellationToken,
) -> Result<(), ConsumeError> {
    let subjects = layout.subjects.clone();
    let spec = Spec {
        role: "router",
        stream: subjects.events_stream(),
        durable: subjects.router_consumer(),
        filter: subjects.events_wildcard(),
        ack_wait: ACK_WAIT,
        max_ack_pending: MAX_ACK_PENDING,
        concurrency: config.concurrency,
        max_batch: MAX_BATCH,
    };
    let ctx = Arc::new(route::Ctx {
        js: output,
        subjects,
        live,
        partitions: config.partitions.max(1),
    });
    gancho_store::consume::run(jetstream::new(input), spec, cancel, move |msg| {
        let ctx = ctx.clone();
        async move { ctx.handle(msg).await }
    })
    .await
}

pub(crate) async fn nak(msg: &jetstream::Message) {
    if let Err(e) = msg.ack_with(jetstream::AckKind::Nak(Some(NAK_DELAY))).await {
        error!(error = %e, "Cannot nak an event; it will be redelivered after the ack wait.");
    }
    metrics::counter!(names::ROUTER_PUBLISH_FAILURES).increment(1);
}
