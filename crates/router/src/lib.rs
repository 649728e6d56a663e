//! The router role. It consumes `GANCHO_EVENTS` through each tenant's durable consumer, which
//! every router shares, checks each event (decodes, JSON payload, tenant and type agree with the subject),
//! matches it against the live subscription table, and publishes its deliveries to the
//! matching enabled endpoints to `GANCHO_DELIVERIES`: one message per partition, a `Delivery`
//! (`Nats-Msg-Id: <tenant>:<event id>:<endpoint id>`) when one endpoint of the partition matches, a
//! `DeliveryBatch` of up to [`BATCH_MAX`] (`Nats-Msg-Id:
//! <tenant>:<event id>:<first endpoint id>+<n>`)
//! when several do.
//!
//! The event is acked only after JetStream acked every one of its deliveries; on any publish
//! failure it is nak'd and routed again later, and JetStream's de-duplication turns the
//! deliveries that did land into no-ops. An event that can never be delivered goes to
//! `GANCHO_DEAD` with its reason, then is acked, and the router goes on.
//!
//! Throughput and bounds: events are processed concurrently (bounded by
//! [`RouterConfig::concurrency`]); every delivery publish, from before the message is built
//! until its PubAck is in, holds one of [`PUBLISH_SLOTS`] slots shared by all events, and one
//! event has at most [`FAN_OUT_WINDOW`] messages in flight. A slot is only ever held by a
//! future that is awaiting its own PubAck, so slots always come back: a fan-out of 10,000
//! at any concurrency cannot deadlock, and memory is bounded by the slots, not the fan-out.
//! (The earlier design sent a whole fan-out before awaiting any PubAck, against the JetStream
//! context's in-flight limit: once that limit was full of PubAcks nobody was awaiting yet,
//! every event waited forever.) The router reads and writes through two separate NATS
//! connections, and its output context ([`output_context`]) is its own, so neither its
//! consumer nor another role in the same process is starved by its publishing.

mod backlog;
mod pace;
pub mod room;
mod route;
mod spend;
mod trim;

pub use gancho_core::subject::partition;
pub use route::{check_event, Invalid};

use async_nats::jetstream;
use gancho_store::consume::{ConsumeError, Handled};
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
const MAX_BATCH: usize = 64;
/// Delay before a nak'd event is redelivered (its fan-out failed to publish).
const NAK_DELAY: Duration = Duration::from_secs(1);
/// Delivery publishes in flight in one router, over every event: enough to keep JetStream
/// busy (a PubAck takes about a millisecond, so 4,096 in flight allow millions per second),
/// small enough that their buffers stay a few MB at 1 KiB payloads.
pub const PUBLISH_SLOTS: usize = 4096;
/// Delivery messages of one event in flight at once, so that one event with a fan-out of
/// 10,000 takes turns with the others instead of queueing hundreds of waiters.
pub const FAN_OUT_WINDOW: usize = 256;
/// Delivery publishes in flight in one router for tenants with a backlog (their deliveries
/// go to the bulk lanes): JetStream stores a stream's writes in the order they come, so a
/// deep queue of one tenant's publishes would stand in front of every other tenant's. 512
/// in flight keep the server busy (a PubAck is about a millisecond) and keep that queue
/// under about 10 ms.
pub const BULK_PUBLISH_SLOTS: usize = 512;
/// A tenant with more events than this waiting in its consumer has a backlog: its
/// deliveries go to the bulk lanes (for [`BULK_FOR`] after the last time it had one),
/// where they take what other tenants' deliveries leave free.
pub const BULK_AFTER: u64 = 1000;
/// How long a tenant's deliveries keep going to the bulk lanes after its backlog was last
/// seen: the tail of a burst does not come back in front of other tenants.
pub const BULK_FOR: Duration = Duration::from_secs(10);
/// Most deliveries of one event in one message (the endpoints of one partition): enough to
/// share a JetStream write among many, few enough that a worker's message in hand stays small.
pub const BATCH_MAX: usize = 16;
/// How often an event whose fan-out is still publishing tells JetStream it is being worked
/// on (a fan-out of 10,000 behind other events can outlast [`ACK_WAIT`]).
pub const PROGRESS_EVERY: Duration = Duration::from_secs(3);
/// Events a router handles at once unless configured (`GANCHO_ROUTER_CONCURRENCY`).
pub const DEFAULT_CONCURRENCY: usize = 1024;

/// The largest useful concurrency: the consumer never hands out more events than this.
pub const MAX_CONCURRENCY: usize = MAX_ACK_PENDING as usize;

#[derive(Clone, Debug)]
pub struct RouterConfig {
    /// Events routed at once in this process, 1 to [`MAX_CONCURRENCY`]. Their deliveries
    /// share the router's [`PUBLISH_SLOTS`].
    pub concurrency: usize,
    /// Number of `gancho.deliveries.<n>` partitions.
    pub partitions: u32,
    /// No event finished for this long while some are in hand is logged as a stall.
    pub stall_after: Duration,
    /// Room for the deliveries stream: routing waits at 90% of it ([`room`]). `None`: no
    /// limit but the server's.
    pub deliveries_max_bytes: Option<u64>,
    /// Bytes the router may hold of messages (`GANCHO_ROUTER_MEMORY`, default
    /// [`DEFAULT_MEMORY`]): an eighth for the events it has pulled and not finished, a
    /// quarter for the delivery messages published and awaiting their PubAck; the rest is
    /// what the process needs around them (its code, config snapshot, the connections'
    /// buffers, the allocator's slack: about 80 to 100 MB with 256 KB events, measured).
    pub memory: u64,
}

/// The router's memory budget unless configured: 256 MiB.
pub const DEFAULT_MEMORY: u64 = 256 << 20;

impl Default for RouterConfig {
    fn default() -> Self {
        Self {
            concurrency: DEFAULT_CONCURRENCY,
            partitions: gancho_core::subject::PARTITIONS,
            stall_after: gancho_store::consume::STALL_AFTER,
            deliveries_max_bytes: None,
            memory: DEFAULT_MEMORY,
        }
    }
}

/// The JetStream context the router publishes through, on its own connection. Its in-flight
/// limit is above [`PUBLISH_SLOTS`] plus the dead letters of every event in hand, so it
/// never makes a publish wait: the router's own slots are the bound.
pub fn output_context(client: async_nats::Client) -> jetstream::Context {
    jetstream::ContextBuilder::new()
        .max_ack_inflight(PUBLISH_SLOTS + MAX_CONCURRENCY)
        .backpressure_on_inflight(true)
        .build(client)
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
    // Present among the routers, saying what this version supports.
    tokio::spawn(gancho_store::members::present(
        layout.routers.clone(),
        gancho_store::members::new_id(),
        cancel.clone(),
    ));
    let (room, gate) = room::watch(
        output.clone(),
        [
            subjects.deliveries_stream(),
            subjects.held_stream(),
            subjects.ordered_stream(),
        ],
        config.deliveries_max_bytes,
        cancel.clone(),
    );
    trim::spawn(
        output.clone(),
        subjects.clone(),
        live.clone(),
        room.clone(),
        cancel.clone(),
    );
    let backlogs = Arc::new(backlog::Backlogs::default());
    let pace = Arc::new(pace::Pace::default());
    let spec = gancho_store::by_tenant::Spec {
        role: "router",
        stream: subjects.events_stream(),
        subjects: subjects.clone(),
        legacy: Some(subjects.router_consumer()),
        ack_wait: ACK_WAIT,
        max_ack_pending: MAX_ACK_PENDING,
        concurrency: config.concurrency.clamp(1, MAX_CONCURRENCY),
        max_batch: MAX_BATCH,
        metric_label: "events",
        stall_after: config.stall_after,
        gate: Some(gate),
        budget: gancho_store::budget::Budget::new(config.memory / 8),
        gate_for: Some({
            let pace = pace.clone();
            Arc::new(move |tenant: &str| pace.gate(tenant))
        }),
    };
    let ctx = Arc::new(route::Ctx {
        js: output,
        subjects,
        live: live.clone(),
        partitions: config.partitions.max(1),
        publish_slots: tokio::sync::Semaphore::new(PUBLISH_SLOTS),
        bulk_slots: tokio::sync::Semaphore::new(BULK_PUBLISH_SLOTS),
        publishing: gancho_store::budget::Budget::new(config.memory / 4),
        room,
        backlogs: backlogs.clone(),
        pace: pace.clone(),
        spend: Default::default(),
    });
    tokio::spawn(pace::run(
        pace,
        ctx.js.clone(),
        ctx.subjects.clone(),
        live.clone(),
        backlogs,
        cancel.clone(),
    ));
    tokio::spawn(count_entries(ctx.clone(), cancel.clone()));
    let tenants = follow_tenants(live, cancel.clone());
    gancho_store::by_tenant::run(jetstream::new(input), spec, tenants, cancel, move |msg| {
        let ctx = ctx.clone();
        async move { ctx.handle(msg).await }
    })
    .await
}

/// The tenants of the config, sent again whenever a snapshot changes them.
fn follow_tenants(
    live: Arc<Live>,
    cancel: CancellationToken,
) -> tokio::sync::watch::Receiver<
    Arc<std::collections::BTreeMap<String, gancho_store::live::TenantSettings>>,
> {
    let mut changes = live.changes();
    let (tx, rx) = tokio::sync::watch::channel(live.load().accounts.clone());
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                changed = changes.changed() => if changed.is_err() { return },
            }
            let now = live.load().accounts.clone();
            tx.send_if_modified(|was| {
                let changed = !Arc::ptr_eq(was, &now);
                *was = now;
                changed
            });
        }
    });
    rx
}

/// The router's long-lived structures, as entries, every 5 s until `cancel`.
async fn count_entries(ctx: Arc<route::Ctx>, cancel: CancellationToken) {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
        metrics::gauge!(names::RETAINED_ENTRIES, "structure" => "filter_spend")
            .set(ctx.spend.entries() as f64);
    }
}

pub(crate) async fn nak(msg: &jetstream::Message) -> Handled {
    nak_after(msg, NAK_DELAY).await
}

/// Hands an event back, to come again after `delay`.
pub(crate) async fn nak_after(msg: &jetstream::Message, delay: Duration) -> Handled {
    if let Err(e) = gancho_store::writes::hand_back(msg, Some(delay)).await {
        error!(error = %e, "Cannot nak an event; it will be redelivered after the ack wait.");
    }
    metrics::counter!(names::ROUTER_PUBLISH_FAILURES).increment(1);
    Handled::HandedBack
}
