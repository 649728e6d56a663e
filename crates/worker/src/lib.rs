//! The worker role. The deliveries stream is consumed by partition, each partition by one
//! worker at a time ([`gancho_store::partitioned`], dealt out by [`gancho_store::members`]),
//! so an endpoint's limits, circuit and pauses hold for the whole fleet; each delivery is
//! POSTed as a Standard Webhooks request over a pooled HTTPS client, every attempt
//! is recorded in `GANCHO_ATTEMPTS`, and the outcome decides what happens next:
//!
//! - 2xx: acked once the attempt record is stored.
//! - failure with attempts left: republished as a scheduled message (`Nats-Schedule: @at`)
//!   on `gancho.retry.<delivery id>` and acked, so waiting never holds an ack-pending slot.
//!   `Retry-After` on 429/503 is honoured up to an hour.
//! - failure on the last attempt: written to `GANCHO_DEAD` with the reason, then acked.
//! - 410 Gone: the endpoint is disabled in the config and the delivery dead-lettered.
//! - paused endpoint: set aside on `gancho.hold.<tenant>.<endpoint>` (the held stream) and
//!   acked, no attempt; released back to its partition when the endpoint is resumed, disabled
//!   or deleted.
//!
//! Writes that fail (a JetStream leader election) are re-sent for up to 30 s; only then is the
//! delivery nak'd and attempted again: at least once, never lost. Attempts are counted by
//! gancho in the `Delivery` message, not by the server (a NAK counts toward `max_deliver` and
//! ignores backoff).
//!
//! Before a request, the endpoint's [`gate`] decides whether it goes now, waits in the
//! endpoint's queue, or is rescheduled without counting an attempt (in-flight cap, rate
//! limit, open circuit), so one slow or dead endpoint cannot take the others' capacity.
//!
//! # Layout
//! - [`http`]: the pooled client and the SSRF guard.
//! - [`gate`]: per-endpoint admission: in-flight cap, rate limit, circuit, trust-sized queue.
//! - `deliver`: one delivery, from message to ack.
//! - `release`: a paused endpoint's held deliveries, moved back when it is resumed.
//! - `operational`: events telling the tenant a delivery was given up on, an endpoint was
//!   disabled, or recovered; each endpoint's `failing_since`.
//! - `rearm`: scheduled retries JetStream did not fire (its store was full), scheduled again.

mod deliver;
pub mod egress;
mod emit;
pub mod gate;
pub mod http;
mod operational;
mod ordered;
mod profile;
mod rearm;
mod release;
pub mod resolve;

use async_nats::jetstream;
use gancho_store::consume::ConsumeError;
use gancho_store::partitioned::Spec;
use gancho_store::{ConfigStore, Layout, Live};
use gate::Gates;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Ack wait of the deliveries consumer. Short, so the deliveries a crashed worker held are
/// redelivered within seconds; a delivery whose request takes longer is kept alive with
/// progress acks every [`PROGRESS_EVERY`].
pub const ACK_WAIT: Duration = Duration::from_secs(10);
/// How often a delivery in flight tells JetStream it is still being worked on.
pub const PROGRESS_EVERY: Duration = Duration::from_secs(3);
/// Deliveries of one partition handed out and not yet acked. Part of each partition
/// consumer's config, so it is the same whatever each worker's concurrency is; waiting
/// retries never count against it (they are scheduled messages).
pub const MAX_ACK_PENDING: i64 = 4_096;
/// Most messages one pull asks for (a pull never asks for more than the free intake slots).
const MAX_BATCH: usize = 128;
/// Deliveries a worker holds (in flight, or waiting in an endpoint's queue) per HTTP request
/// slot. Past it the worker stops pulling: backpressure instead of bouncing deliveries.
const INTAKE_PER_REQUEST: usize = 4;

#[derive(Clone, Debug)]
pub struct WorkerConfig {
    /// HTTP requests in flight at once in this worker.
    pub concurrency: usize,
    /// Accept `http://` endpoints.
    pub allow_http: bool,
    /// Deliver to loopback and private addresses.
    pub allow_private: bool,
    /// PEM bundle trusted in addition to the webpki roots.
    pub extra_ca_file: Option<PathBuf>,
    /// Retries are spread by up to this fraction either way.
    pub jitter: f64,
    /// No delivery finished for this long while some are in hand is logged as a stall.
    pub stall_after: Duration,
    /// An endpoint failing for this long is disabled (`GANCHO_DISABLE_AFTER`).
    pub disable_after: Duration,
    /// A delivery its endpoint could not take is dead-lettered as `exhausted` once older than
    /// the endpoint's whole retry schedule plus this (`GANCHO_DEFER_GRACE`).
    pub defer_grace: Duration,
    /// Every webhook leaves through this HTTP CONNECT proxy (`GANCHO_EGRESS_PROXY`).
    pub egress_proxy: Option<egress::EgressProxy>,
    /// Bytes the worker may hold of messages and request bodies (`GANCHO_WORKER_MEMORY`,
    /// default [`DEFAULT_MEMORY`]): a fifth for the delivery messages it has pulled and not
    /// finished, a tenth for the bodies of the requests being sent; the rest is what the
    /// process needs around them (its code, config snapshot, connection and TLS buffers, the
    /// allocator's slack: about 100 MB with 256 KB payloads, measured). A larger share bought
    /// no speed: 256 KB at fan-out 50 went at 1,223, 1,387 and 1,260 deliveries/s with 154,
    /// 77 and 38 MiB counted.
    pub memory: u64,
}

/// How much longer than its retry schedule a delivery may wait for its endpoint unless
/// configured: an hour.
pub const DEFAULT_DEFER_GRACE: Duration = Duration::from_secs(3600);

/// Requests a worker has in flight unless configured (`GANCHO_WORKER_CONCURRENCY`).
pub const DEFAULT_CONCURRENCY: usize = 512;

/// The worker's memory budget unless configured: 256 MiB.
pub const DEFAULT_MEMORY: u64 = 256 << 20;

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            concurrency: DEFAULT_CONCURRENCY,
            allow_http: false,
            allow_private: false,
            extra_ca_file: None,
            jitter: 0.1,
            stall_after: gancho_store::consume::STALL_AFTER,
            disable_after: Duration::from_secs(5 * 86_400),
            defer_grace: DEFAULT_DEFER_GRACE,
            egress_proxy: None,
            memory: DEFAULT_MEMORY,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error(transparent)]
    Client(#[from] http::ClientError),
    #[error(transparent)]
    Consume(#[from] ConsumeError),
}

/// The attempt records' fast batch, when the attempts stream takes them (nats-server 2.14 or
/// newer: an older one ignores `allow_batched`, and records are written one by one).
async fn records_batched(
    output: &jetstream::Context,
    subjects: &gancho_core::Subjects,
) -> Option<gancho_store::batch::Batched> {
    let batched = match output.get_stream(subjects.attempts_stream()).await {
        Ok(stream) => stream.cached_info().config.allow_batch_publish,
        Err(e) => {
            tracing::info!(error = %e, "Cannot read the attempts stream's settings; attempt records are written one by one.");
            false
        }
    };
    if !batched {
        tracing::info!("The attempts stream does not take fast batches (nats-server 2.14 or newer does); attempt records are written one by one.");
    }
    batched.then(|| gancho_store::batch::Batched::start(output.client()))
}

/// Runs the worker until `cancel` fires, then waits for the deliveries in flight.
#[allow(
    clippy::too_many_lines,
    reason = "starts the worker's tasks in order with what they share"
)]
pub async fn run(
    input: async_nats::Client,
    output: jetstream::Context,
    layout: Layout,
    live: Arc<Live>,
    config: WorkerConfig,
    cancel: CancellationToken,
) -> Result<(), WorkerError> {
    let client = http::Client::new(
        gancho_core::net::AddressPolicy {
            allow_http: config.allow_http,
            allow_private: config.allow_private,
        },
        config.extra_ca_file.as_deref(),
        config.egress_proxy.clone(),
    )?;
    let subjects = layout.subjects.clone();
    let requests = config.concurrency.max(1);
    let intake = requests * INTAKE_PER_REQUEST;
    let partitions = gancho_core::subject::PARTITIONS;
    let spec = Spec {
        role: "worker",
        stream: subjects.deliveries_stream(),
        partitions: (0..partitions)
            .map(|p| (subjects.worker_consumer(p), subjects.delivery(p)))
            .collect(),
        bulk: (0..partitions)
            .map(|p| (subjects.worker_bulk_consumer(p), subjects.bulk_wildcard(p)))
            .collect(),
        legacy: Some(subjects.legacy_worker_consumer()),
        ack_wait: ACK_WAIT,
        progress_every: PROGRESS_EVERY,
        max_ack_pending: MAX_ACK_PENDING,
        concurrency: intake,
        max_batch: MAX_BATCH,
        metric_label: "deliveries",
        stall_after: config.stall_after,
        budget: gancho_store::budget::Budget::new(config.memory / 5),
    };
    // Who serves which partition: this worker's share of the live workers, kept up to date.
    let me = gancho_store::members::new_id();
    tracing::info!(worker = %me, "Joining the workers.");
    let (owned_tx, owned) = tokio::sync::watch::channel(Vec::new());
    let membership = tokio::spawn(gancho_store::members::run(
        layout.workers.clone(),
        me.clone(),
        partitions,
        owned_tx,
        cancel.clone(),
    ));
    let gates = Arc::new(Gates::new(intake));
    let wake_release = Arc::new(tokio::sync::Notify::new());
    let pressure = Arc::new(gancho_store::full::Pressure::new("worker"));
    let rearming = tokio::spawn(rearm::run(
        output.clone(),
        subjects.clone(),
        pressure.clone(),
        cancel.clone(),
    ));
    let health = operational::Health::new(
        ConfigStore::new(&layout),
        output.clone(),
        subjects.clone(),
        config.disable_after,
    );
    let records = records_batched(&output, &subjects).await;
    let ctx = Arc::new(deliver::Ctx {
        records,
        js: output,
        deliveries_stream: subjects.deliveries_stream(),
        subjects,
        live,
        store: ConfigStore::new(&layout),
        client,
        jitter: config.jitter,
        defer_grace: config.defer_grace,
        user_agent: format!("gancho/{}", env!("CARGO_PKG_VERSION")),
        gates,
        wake_release,
        requests: tokio::sync::Semaphore::new(requests),
        bulk_requests: tokio::sync::Semaphore::new(gancho_store::partitioned::bulk_share(requests)),
        bodies: gancho_store::budget::Budget::new(config.memory / 10),
        pressure,
        health,
        failure_lines: Default::default(),
        recall: Default::default(),
    });
    // Held deliveries go back to their partitions; when the store has no room for that copy,
    // they are delivered from where they are, and those parked past their patience are
    // dead-lettered where they are (release.rs).
    let releasing = tokio::spawn(release::run(
        ctx.live.clone(),
        release::Parking {
            ctx: ctx.clone(),
            owned: owned.clone(),
        },
        cancel.clone(),
    ));
    // Ordered endpoints' deliveries, one key at a time, for the partitions this worker owns.
    let ordering = tokio::spawn(ordered::run(
        ctx.clone(),
        layout.leases.clone(),
        me,
        owned.clone(),
        cancel.clone(),
    ));
    // A config change reaches the deliveries waiting in this worker's queues at once: a
    // deleted, disabled or paused endpoint's are finished or held, and new limits apply to
    // the queue (gate/mod.rs, `Gates::follow`).
    let following = tokio::spawn(follow_config(
        ctx.live.clone(),
        ctx.gates.clone(),
        ctx.wake_release.clone(),
        cancel.clone(),
    ));
    // Circuits and receivers' pauses end by time, not only at the next attempt: the gauges
    // follow every few seconds.
    let gauges = {
        let (ctx, cancel) = (ctx.clone(), cancel.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                }
                emit::Emit::emit(emit::GatesCounted::of(&ctx.gates));
                let [gates, finished, handed_back, lines] =
                    gancho_telemetry::names::RETAINED_STRUCTURES;
                let (finished_n, handed_back_n) = ctx.recall.entries();
                for (structure, n) in [
                    (gates, ctx.gates.entries()),
                    (finished, finished_n),
                    (handed_back, handed_back_n),
                    (lines, ctx.failure_lines.entries()),
                ] {
                    metrics::gauge!(gancho_telemetry::names::RETAINED_ENTRIES, "structure" => structure)
                        .set(n as f64);
                }
            }
        })
    };
    gancho_store::partitioned::run(
        jetstream::new(input),
        spec,
        owned,
        cancel,
        move |msg, leaving| {
            let ctx = ctx.clone();
            async move { ctx.handle(msg, leaving).await }
        },
    )
    .await?;
    let _ = membership.await;
    let _ = releasing.await;
    let _ = rearming.await;
    let _ = gauges.await;
    let _ = following.await;
    let _ = ordering.await;
    Ok(())
}

/// Brings the gates to every new config snapshot until `cancel` fires, and pokes the release
/// loop when one changed (a new URL closes a circuit opened at the old one).
async fn follow_config(
    live: Arc<Live>,
    gates: Arc<Gates>,
    wake_release: Arc<tokio::sync::Notify>,
    cancel: CancellationToken,
) {
    let mut changes = live.changes();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            changed = changes.changed() => if changed.is_err() { return },
        }
        let snapshot = live.load_full();
        let changed = gates.follow(
            |tenant, endpoint| match snapshot.endpoint(tenant, endpoint) {
                None => gate::Current::Gone,
                Some(ep) if ep.config.disabled || ep.config.paused => gate::Current::Stopped,
                Some(ep) => gate::Current::Live(gate::Settings {
                    rate: ep.config.rate_limit_per_sec,
                    max_in_flight: ep.config.max_in_flight,
                    url: &ep.config.url,
                    revision: snapshot.revision,
                }),
            },
        );
        if changed > 0 {
            wake_release.notify_one();
        }
    }
}
