//! The workers' consume loop: one durable pull consumer per partition of the deliveries
//! stream, each pinned to one worker at a time, so everything about an endpoint (its rate
//! limit, in-flight cap, circuit, a receiver's pause) is decided in one process whatever the
//! number of workers.
//!
//! Each partition consumer uses JetStream priority groups with the `pinned_client` policy:
//! the server hands the partition's messages to one client (the one it pinned, named by
//! the `Nats-Pin-Id` header on its messages) and keeps other clients' pulls waiting as
//! standbys. A worker pulls only the partitions [`crate::members`] assigns it; when its
//! share shrinks (a worker joined) it stops pulling a partition, hands back what it had not
//! started, lets what is in flight finish, and unpins the consumer, so the new owner's
//! waiting pull takes over at once. When a worker dies, the server unpins it after
//! [`PIN_TIMEOUT`] without pulls, its entry in the workers bucket expires, the survivors
//! start pulling its partitions, and its unacked messages come back after the ack wait.
//!
//! Pulls are explicit, as in [`crate::consume`]: a partition asks for as many messages as
//! the worker has free intake slots, shared by every partition it serves.

use crate::consume::{ConsumeError, Handled, Tracker};
use crate::writes::hand_back;
use async_nats::jetstream::{self, consumer};
use async_nats::StatusCode;
use futures::StreamExt;
use gancho_telemetry::names;
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn, Instrument};

/// The priority group every worker pulls in.
pub const GROUP: &str = "workers";
/// A pinned worker that sends no pull for this long loses its partition to a standby.
pub const PIN_TIMEOUT: Duration = Duration::from_secs(6);
/// How long one pull waits for messages (well under [`PIN_TIMEOUT`], so a worker with free
/// intake keeps its pin).
const PULL_EXPIRES: Duration = Duration::from_secs(2);
/// A pull that waits longer than this asks the server for heartbeats every
/// [`IDLE_HEARTBEAT`], and is sent again when three are missed: a pull the server forgot (its
/// consumer's leader moved) is not waited out.
const IDLE_HEARTBEAT_AFTER: Duration = Duration::from_secs(10);
const IDLE_HEARTBEAT: Duration = Duration::from_secs(5);

/// An intake slot for one message, its slot of a capped lane's share, and of its lane's own
/// bound.
type Slot = (
    OwnedSemaphorePermit,
    Option<OwnedSemaphorePermit>,
    Option<OwnedSemaphorePermit>,
);
/// Pause before pulling again after a pull request failed (no JetStream leader, say).
const PULL_RETRY: Duration = Duration::from_secs(1);
/// A message handed back while a partition is being given up comes back after this, by
/// which time the partition is normally unpinned and the new owner gets it.
pub const HAND_BACK_DELAY: Duration = Duration::from_secs(1);
/// The part of a worker's intake (messages, deliveries) the bulk lanes may hold, in
/// quarters: the rest is always free for deliveries of tenants without a backlog.
pub const BULK_SHARE: (usize, usize) = (3, 4);

/// How long a lane without a pin listens to its open pull when it stops, to hand back what
/// was already sent to it.
const UNPINNED_HAND_BACK_WAIT: Duration = Duration::from_millis(100);

/// Most messages one pull of a bulk lane asks for.
pub const BULK_MAX_BATCH: usize = 16;

/// `n` times [`BULK_SHARE`], at least 1.
pub fn bulk_share(n: usize) -> usize {
    (n * BULK_SHARE.0 / BULK_SHARE.1).max(1)
}

/// What the partitioned consumers consume and how.
pub struct Spec {
    /// For log lines and spans.
    pub role: &'static str,
    pub stream: String,
    /// `(durable name, filter subject)` of each partition, by partition number.
    pub partitions: Vec<(String, String)>,
    /// `(durable name, filter subject)` of each partition's bulk lane, by partition number
    /// (none, or one per partition): the deliveries of tenants with a backlog, served by the
    /// partition's owner with what the partition's own deliveries leave free, up to
    /// [`BULK_SHARE`] of the intake.
    pub bulk: Vec<(String, String)>,
    /// A consumer over every partition from an older version; removed when found (its filter
    /// overlaps the partitions', which a work-queue stream refuses).
    pub legacy: Option<String>,
    pub ack_wait: Duration,
    /// How often a message kept past its ack wait tells JetStream it is still in hand
    /// (here: while it waits for its delivery slots).
    pub progress_every: Duration,
    /// Per partition consumer.
    pub max_ack_pending: i64,
    /// Messages handled at once in this process, over every partition it serves (plus one
    /// per partition for the pull it keeps waiting).
    pub concurrency: usize,
    /// Most messages one pull asks for.
    pub max_batch: usize,
    /// The `stream` label of the consumer metrics.
    pub metric_label: &'static str,
    pub stall_after: Duration,
    /// The bytes of messages in hand, over every partition: each pull asks for no more
    /// messages than fit in what it could reserve, and each message keeps its share until
    /// it is finished.
    pub budget: crate::budget::Budget,
}

/// Creates the partition consumers and consumes the partitions `owned` names until `cancel`
/// fires; `owned` may change at any time. `handle` gets each message with a token that fires
/// when its partition is given up (or the worker stops): a message still waiting for its
/// turn should then be handed back ([`HAND_BACK_DELAY`]) instead of started.
#[allow(
    clippy::too_many_lines,
    reason = "the consumer set-up and its select loop share the partitions' state"
)]
pub async fn run<F, Fut>(
    js: jetstream::Context,
    spec: Spec,
    mut owned: watch::Receiver<Vec<u32>>,
    cancel: CancellationToken,
    handle: F,
) -> Result<(), ConsumeError>
where
    F: Fn(jetstream::Message, CancellationToken) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Handled> + Send + 'static,
{
    // During a leader election JetStream answers set-up requests late or not at all: keep
    // asking for up to SETUP_PATIENCE; a refusal stops at once.
    let started = Instant::now();
    let first = spec
        .partitions
        .first()
        .map(|p| p.0.clone())
        .unwrap_or_default();
    let stream = loop {
        match js.get_stream(&spec.stream).await {
            Ok(s) => break s,
            Err(e) => {
                let transient = match e.kind() {
                    jetstream::context::GetStreamErrorKind::Request => true,
                    jetstream::context::GetStreamErrorKind::JetStream(j) => j.code() == 503,
                    _ => false,
                };
                wait_or_fail(started, transient, &first, &spec.stream, e.to_string()).await?;
            }
        }
    };
    if let Some(legacy) = &spec.legacy {
        if stream.delete_consumer(legacy).await.is_ok() {
            info!(consumer = %legacy, "Removed the consumer of an older version; the deliveries are consumed by partition now.");
        }
    }
    for (durable, filter) in spec.partitions.iter().chain(&spec.bulk) {
        let config = consumer::pull::Config {
            durable_name: Some(durable.clone()),
            description: Some(format!("gancho {}s, partition {filter}", spec.role)),
            filter_subject: filter.clone(),
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: spec.ack_wait,
            max_ack_pending: spec.max_ack_pending,
            priority_policy: consumer::PriorityPolicy::PinnedClient,
            priority_groups: vec![GROUP.to_owned()],
            priority_timeout: PIN_TIMEOUT,
            ..Default::default()
        };
        let _: consumer::PullConsumer = loop {
            match js
                .create_consumer_on_stream(config.clone(), spec.stream.clone())
                .await
            {
                Ok(c) => break c,
                Err(e) => {
                    use jetstream::stream::ConsumerErrorKind as K;
                    let transient = match e.kind() {
                        K::TimedOut | K::Request => true,
                        K::JetStream(j) => j.code() == 503,
                        _ => false,
                    };
                    wait_or_fail(started, transient, durable, &spec.stream, e.to_string()).await?;
                }
            }
        };
    }
    let concurrency = spec.concurrency.max(1);
    info!(
        role = spec.role,
        partitions = spec.partitions.len(),
        concurrency,
        "Consuming by partition."
    );

    let tracker = Arc::new(Tracker::new());
    let watchdog = tokio::spawn(
        crate::consume::watch(
            tracker.clone(),
            spec.role,
            spec.metric_label,
            spec.stall_after,
            None,
        )
        .instrument(tracing::info_span!("watchdog", role = spec.role)),
    );
    let lanes = spec.partitions.len() + spec.bulk.len();
    let shared = Arc::new(Shared {
        js: js.clone(),
        stream,
        role: spec.role,
        max_batch: spec.max_batch.max(1),
        // One slot more per lane: the pull an idle lane keeps waiting holds one, and should
        // not take it from the busy ones.
        permits: Arc::new(Semaphore::new(concurrency + lanes)),
        deliveries: Arc::new(Semaphore::new(concurrency)),
        intake: concurrency,
        progress_every: spec.progress_every,
        tracker,
        handle: Arc::new(handle),
    });
    let bytes = Arc::new(crate::budget::Intake::new(
        spec.budget,
        js.client().server_info().max_payload,
    ));
    let bulk_cap = Cap {
        messages: Arc::new(Semaphore::new(bulk_share(concurrency) + spec.bulk.len())),
        deliveries: Arc::new(Semaphore::new(bulk_share(concurrency))),
    };
    let mut serving: HashMap<(u32, bool), (CancellationToken, JoinHandle<()>)> = HashMap::new();
    let mut leaving: Vec<JoinHandle<()>> = Vec::new();
    loop {
        let want = owned.borrow_and_update().clone();
        let gone: Vec<(u32, bool)> = serving
            .keys()
            .copied()
            .filter(|(p, _)| !want.contains(p))
            .collect();
        for p in gone {
            let (token, task) = serving.remove(&p).expect("listed above");
            token.cancel();
            leaving.push(task);
        }
        for &p in &want {
            for bulk in [false, true] {
                let lanes = if bulk { &spec.bulk } else { &spec.partitions };
                let Some((durable, _)) = lanes.get(p as usize) else {
                    continue;
                };
                if serving.contains_key(&(p, bulk)) {
                    continue;
                }
                let token = cancel.child_token();
                let lane = Lane {
                    durable: durable.clone(),
                    pinned: true,
                    expires: PULL_EXPIRES,
                    cap: bulk.then(|| bulk_cap.clone()),
                    weight: Arc::new(AtomicU32::new(1)),
                    gates: Vec::new(),
                    most_in_hand: None,
                    bytes: bytes.clone(),
                };
                let task = tokio::spawn(serve(shared.clone(), lane, token.clone()).instrument(
                    tracing::info_span!("partition", role = spec.role, partition = p, bulk),
                ));
                serving.insert((p, bulk), (token, task));
            }
        }
        leaving.retain(|t| !t.is_finished());
        let mut list: Vec<u32> = serving.keys().map(|(p, _)| *p).collect();
        list.sort_unstable();
        list.dedup();
        debug!(partitions = ?list, "Serving partitions.");
        metrics::gauge!(names::WORKER_PARTITIONS).set(list.len() as f64);
        tokio::select! {
            _ = cancel.cancelled() => break,
            changed = owned.changed() => if changed.is_err() {
                cancel.cancelled().await;
                break;
            },
        }
    }
    // Every partition token is a child of `cancel`: each one hands back, drains and unpins.
    for (_, (_, task)) in serving.drain() {
        leaving.push(task);
    }
    for task in leaving {
        let _ = task.await;
    }
    // Acks are only queued on the connection: send them before the process may exit, or a
    // message done here is redelivered and done twice.
    if let Err(e) = js.client().flush().await {
        warn!(role = spec.role, error = %e, "Cannot flush the last acks; their messages may be redelivered.");
    }
    watchdog.abort();
    metrics::gauge!(names::WORKER_PARTITIONS).set(0.0);
    info!(role = spec.role, "Stopped consuming.");
    Ok(())
}

/// How long a worker keeps asking JetStream to set up its consumers while it times out.
const SETUP_PATIENCE: Duration = Duration::from_secs(60);

/// Waits a second before the next try of a set-up request that failed with `reason`, or
/// returns the error: it was a refusal, or JetStream has not answered for [`SETUP_PATIENCE`].
async fn wait_or_fail(
    started: Instant,
    transient: bool,
    durable: &str,
    stream: &str,
    reason: String,
) -> Result<(), ConsumeError> {
    if !transient || started.elapsed() >= SETUP_PATIENCE {
        return Err(ConsumeError::Create {
            durable: durable.to_owned(),
            stream: stream.to_owned(),
            reason,
        });
    }
    warn!(consumer = durable, error = %reason, "JetStream did not set up the consumer; trying again in a second.");
    tokio::time::sleep(PULL_RETRY).await;
    Ok(())
}

type Handler<Fut> = dyn Fn(jetstream::Message, CancellationToken) -> Fut + Send + Sync;

/// One consumer that [`serve`] pulls from: a partition or its bulk lane (pinned to one
/// worker), or a tenant's events (any router).
pub(crate) struct Lane {
    pub durable: String,
    /// Pulls in the priority group [`GROUP`], pinned to one client at a time.
    pub pinned: bool,
    /// How long one pull waits for messages.
    pub expires: Duration,
    /// A lane of bulk work also holds these, so what it takes of the intake stays within
    /// their size.
    pub cap: Option<Cap>,
    /// Its share against the others: each turn at the intake takes this many slots.
    pub weight: Arc<AtomicU32>,
    /// It pulls only while each of these reads `true` (a router: room in the deliveries
    /// stream, and the tenant's share of the bulk lanes).
    pub gates: Vec<watch::Receiver<bool>>,
    /// Messages of this lane in hand at once, at most (none: the intake is the bound). Each
    /// message in hand is a task, and a few hundred of one tenant's at once stand in front
    /// of another tenant's next one on the runtime's queue.
    pub most_in_hand: Option<Arc<Semaphore>>,
    /// The bytes of its messages in hand, and their size lately (shared by lanes that
    /// share a budget and an estimate).
    pub bytes: Arc<crate::budget::Intake>,
}

/// A bound on what some lanes take of the intake, within it.
#[derive(Clone)]
pub(crate) struct Cap {
    pub messages: Arc<Semaphore>,
    pub deliveries: Arc<Semaphore>,
}

pub(crate) struct Shared<Fut> {
    pub(crate) js: jetstream::Context,
    pub(crate) stream: jetstream::stream::Stream,
    pub(crate) role: &'static str,
    pub(crate) max_batch: usize,
    /// The worker's intake slots for messages, shared by its partitions: each pull asks for
    /// as many messages as it holds slots.
    pub(crate) permits: Arc<Semaphore>,
    /// The worker's intake slots for deliveries: a message is handled once it holds one per
    /// delivery it carries (a batch carries several), so the deliveries being worked on stay
    /// within the intake whatever the batches carry.
    pub(crate) deliveries: Arc<Semaphore>,
    /// The intake, in deliveries (no message waits for more).
    pub(crate) intake: usize,
    /// How often a message waiting for its delivery slots tells JetStream it is in hand.
    pub(crate) progress_every: Duration,
    pub(crate) tracker: Arc<Tracker>,
    pub(crate) handle: Arc<Handler<Fut>>,
}

/// What a reply to a pull is.
enum Reply {
    Message,
    Heartbeat,
    /// The pull is over (expired, or the server ended it).
    End,
    /// Our pin id is no longer the pinned one.
    WrongPin,
    Refused(u16, String),
}

/// Waits until `msg` holds an intake slot for each delivery it carries (the semaphore is
/// first come, first served, and a waiter holds none of these slots, so batches cannot starve
/// or block each other), keeping the message in hand meanwhile; `None` when `leave` fires
/// first.
async fn delivery_slots<Fut>(
    shared: &Shared<Fut>,
    cap: Option<&Cap>,
    msg: &jetstream::Message,
    leave: &CancellationToken,
) -> Option<(OwnedSemaphorePermit, Option<OwnedSemaphorePermit>)> {
    let n = weight(msg).min(shared.intake) as u32;
    if let Some(cap) = cap {
        let n = n.min(bulk_share(shared.intake) as u32);
        let wait = async {
            let capped = cap.deliveries.clone().acquire_many_owned(n).await;
            let held = shared.deliveries.clone().acquire_many_owned(n).await;
            (
                held.expect("the semaphore is never closed"),
                Some(capped.expect("the semaphore is never closed")),
            )
        };
        return tokio::select! {
            held = crate::consume::with_progress(msg, shared.progress_every, wait) => Some(held),
            _ = leave.cancelled() => None,
        };
    }
    if let Ok(held) = shared.deliveries.clone().try_acquire_many_owned(n) {
        return Some((held, None));
    }
    let wait = shared.deliveries.clone().acquire_many_owned(n);
    tokio::select! {
        held = crate::consume::with_progress(msg, shared.progress_every, wait) => {
            Some((held.expect("the semaphore is never closed"), None))
        }
        _ = leave.cancelled() => None,
    }
}

/// How many deliveries a message carries: its `Gancho-Batch` header, or 1.
fn weight(msg: &jetstream::Message) -> usize {
    msg.headers
        .as_ref()
        .and_then(|h| h.get(gancho_core::subject::BATCH_HEADER))
        .and_then(|v| v.as_str().parse::<usize>().ok())
        .map_or(1, |n| n.clamp(1, 64))
}

fn classify(msg: &async_nats::Message) -> Reply {
    match msg.status {
        None | Some(StatusCode::OK) => Reply::Message,
        Some(StatusCode::IDLE_HEARTBEAT) => Reply::Heartbeat,
        Some(StatusCode::TIMEOUT) | Some(StatusCode::NOT_FOUND) => Reply::End,
        Some(StatusCode::PIN_ID_MISMATCH) => Reply::WrongPin,
        Some(StatusCode::REQUEST_TERMINATED) => {
            // 409: leadership change, max waiting, batch completed... the next pull decides.
            debug!(description = ?msg.description, "Pull ended by the server.");
            Reply::End
        }
        Some(code) => Reply::Refused(code.as_u16(), msg.description.clone().unwrap_or_default()),
    }
}

/// Remembers the pin id a pulled message carries: the server pins the partition to the
/// client its first message goes to, and says so only in that message's `Nats-Pin-Id`.
fn note_pin(pin: &mut Option<String>, msg: &async_nats::Message) {
    if let Some(id) = msg.headers.as_ref().and_then(|h| h.get("Nats-Pin-Id")) {
        if pin.as_deref() != Some(id.as_str()) {
            debug!("This worker is pinned to the partition.");
            *pin = Some(id.as_str().to_owned());
        }
    }
}

/// Serves one lane until `leave` fires, then gives it up cleanly.
#[allow(
    clippy::too_many_lines,
    reason = "one lane's pull loop: budget, pull, hand out, hand back; its state is local to it"
)]
pub(crate) async fn serve<Fut>(shared: Arc<Shared<Fut>>, lane: Lane, leave: CancellationToken)
where
    Fut: Future<Output = Handled> + Send + 'static,
{
    let durable = lane.durable.clone();
    let client = shared.js.client();
    let next_subject = format!(
        "$JS.API.CONSUMER.MSG.NEXT.{}.{}",
        shared.stream.cached_info().config.name,
        durable
    );
    let tasks = TaskTracker::new();
    let mut pin: Option<String> = None;
    let mut open_pull: Option<(async_nats::Subscriber, Instant)> = None;
    let mut last_got = 0usize;
    // Since when pulls are refused (JetStream without a leader for the consumer, a cluster
    // without its quorum): logged when it starts and when it ends, not once a second.
    let mut refused_since: Option<Instant> = None;
    let mut gates = lane.gates.clone();
    'pulls: loop {
        for gate in &mut gates {
            while !*gate.borrow_and_update() {
                tokio::select! {
                    _ = leave.cancelled() => break 'pulls,
                    changed = gate.changed() => if changed.is_err() { break },
                }
            }
        }
        // An idle lane holds one slot while its pull waits; a busy one asks for twice what
        // its last pull brought, so the lanes share the intake by load. Each turn at the
        // intake (first come, first served) takes the lane's weight in slots at once.
        let most = match lane.cap {
            // Bulk work comes in small pulls: each message pulled is a task, and a pull of
            // 128 lands 128 tasks in front of whatever a tenant without a backlog needs next
            // (a quarter of a second of stalls in a debug build, seen in tests/fairness.rs).
            Some(_) => shared.max_batch.min(BULK_MAX_BATCH),
            None => shared.max_batch,
        };
        let ask = (last_got * 2).clamp(1, most);
        let turn = (lane.weight.load(Ordering::Relaxed).max(1) as usize).min(ask);
        let own = match &lane.most_in_hand {
            Some(sem) => tokio::select! {
                _ = leave.cancelled() => break 'pulls,
                p = sem.clone().acquire_many_owned(turn as u32) => {
                    Some(p.expect("the semaphore is never closed"))
                }
            },
            None => None,
        };
        let capped = match &lane.cap {
            Some(cap) => tokio::select! {
                _ = leave.cancelled() => break 'pulls,
                p = cap.messages.clone().acquire_many_owned(turn as u32) => {
                    Some(p.expect("the semaphore is never closed"))
                }
            },
            None => None,
        };
        let first = tokio::select! {
            _ = leave.cancelled() => break 'pulls,
            p = shared.permits.clone().acquire_many_owned(turn as u32) => p.expect("the semaphore is never closed"),
        };
        let mut slots: Vec<Slot> = Vec::with_capacity(ask);
        let mut first = first;
        let mut capped = capped;
        let mut own = own;
        while first.num_permits() > 1 {
            let cap = capped.as_mut().and_then(|c| c.split(1));
            let mine = own.as_mut().and_then(|c| c.split(1));
            slots.push((first.split(1).expect("more than one"), cap, mine));
        }
        slots.push((first, capped, own));
        while slots.len() < ask {
            let own = match &lane.most_in_hand {
                Some(sem) => match sem.clone().try_acquire_owned() {
                    Ok(p) => Some(p),
                    Err(_) => break,
                },
                None => None,
            };
            let cap = match &lane.cap {
                Some(cap) => match cap.messages.clone().try_acquire_owned() {
                    Ok(p) => Some(p),
                    Err(_) => break,
                },
                None => None,
            };
            match shared.permits.clone().try_acquire_owned() {
                Ok(p) => slots.push((p, cap, own)),
                Err(_) => break,
            }
        }
        // Bytes too: as many messages as fit in what the budget has free, at the size the
        // lane's messages have had lately, so what the lanes ask for at once stays within
        // the budget and well under what nats-server lets wait for one client before it
        // drops it as slow (budget.rs says why not the pull's max_bytes).
        let (mut reserved, fit) = tokio::select! {
            _ = leave.cancelled() => break 'pulls,
            r = lane.bytes.reserve_for(slots.len()) => r,
        };
        slots.truncate(fit);
        let inbox = client.new_inbox();
        let sent = async {
            let sub = client.subscribe(inbox.clone()).await?;
            let mut request = serde_json::json!({
                "batch": slots.len(),
                "expires": lane.expires.as_nanos() as u64,
            });
            if lane.pinned {
                request["group"] = serde_json::Value::String(GROUP.to_owned());
                if let Some(id) = &pin {
                    request["id"] = serde_json::Value::String(id.clone());
                }
            }
            if lane.expires > IDLE_HEARTBEAT_AFTER {
                request["idle_heartbeat"] = serde_json::json!(IDLE_HEARTBEAT.as_nanos() as u64);
            }
            client
                .publish_with_reply(
                    next_subject.clone(),
                    inbox.clone(),
                    request.to_string().into(),
                )
                .await?;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(sub)
        };
        let mut sub = match sent.await {
            Ok(sub) => sub,
            Err(e) => {
                warn!(role = shared.role, error = %e, consumer = %durable, "Cannot pull; trying again in a second.");
                drop(slots);
                tokio::select! {
                    _ = leave.cancelled() => break 'pulls,
                    _ = tokio::time::sleep(PULL_RETRY) => continue 'pulls,
                }
            }
        };
        // A pull ends with a status, when it is full, or (if its end got lost) a little after
        // its expiry, or when a long one misses its heartbeats (its consumer's leader moved).
        let deadline = Instant::now() + lane.expires + Duration::from_secs(2);
        let silence = if lane.expires > IDLE_HEARTBEAT_AFTER {
            IDLE_HEARTBEAT * 3
        } else {
            lane.expires + Duration::from_secs(2)
        };
        let asked = slots.len();
        last_got = 0;
        loop {
            let until = deadline.min(Instant::now() + silence);
            let next = tokio::select! {
                _ = leave.cancelled() => {
                    open_pull = Some((sub, deadline));
                    break 'pulls;
                }
                next = tokio::time::timeout_at(until, sub.next()) => next,
            };
            let Ok(Some(msg)) = next else { break };
            match classify(&msg) {
                Reply::Message => {}
                Reply::Heartbeat => continue,
                Reply::End => break,
                Reply::WrongPin => {
                    debug!("The partition's pin moved; pulling as a standby.");
                    pin = None;
                    break;
                }
                Reply::Refused(code, description) => {
                    if refused_since.is_none() {
                        refused_since = Some(Instant::now());
                        warn!(
                            role = shared.role,
                            code,
                            description,
                            consumer = %durable,
                            "Pulls are refused; trying again every second."
                        );
                    }
                    tokio::select! {
                        _ = leave.cancelled() => break 'pulls,
                        _ = tokio::time::sleep(PULL_RETRY) => break,
                    }
                }
            }
            if let Some(since) = refused_since.take() {
                info!(
                    role = shared.role,
                    consumer = %durable,
                    refused_for_secs = since.elapsed().as_secs(),
                    "Pulls are answered again."
                );
            }
            note_pin(&mut pin, &msg);
            let msg = jetstream::Message {
                message: msg,
                context: shared.js.clone(),
            };
            last_got += 1;
            let Some((permit, capped, own)) = slots.pop() else {
                // More than asked for: never expected; give it back rather than overfill.
                let _ = hand_back(&msg, None).await;
                continue;
            };
            let mut share = lane
                .bytes
                .take(&mut reserved, crate::consume::message_size(&msg));
            let ticket = shared.tracker.start();
            let token = leave.clone();
            let shared = shared.clone();
            let bytes = lane.bytes.clone();
            let cap = lane.cap.clone();
            // Boxed before it is wrapped and spawned: the message's future (its handler's
            // included) is kilobytes, and every wrapper and the task's cell would otherwise
            // move all of it again (each a copy of the whole future, per message).
            tasks.spawn(
                Box::pin(async move {
                    // Larger than the pull expected: its share of the budget first.
                    let topped_up = share.is_whole()
                        || tokio::select! {
                            () = crate::consume::with_progress(
                                &msg,
                                shared.progress_every,
                                bytes.complete(&mut share),
                            ) => true,
                            _ = token.cancelled() => false,
                        };
                    let held = if topped_up {
                        delivery_slots(&shared, cap.as_ref(), &msg, &token).await
                    } else {
                        None
                    };
                    let Some(held) = held else {
                        // Given up while it waited: the partition's next owner gets it.
                        let _ = hand_back(&msg, Some(HAND_BACK_DELAY)).await;
                        shared.tracker.finish(ticket, Handled::HandedBack);
                        return;
                    };
                    let handled = (shared.handle)(msg, token).await;
                    shared.tracker.finish(ticket, handled);
                    drop((permit, capped, own));
                    drop(held);
                    drop(share);
                })
                .in_current_span(),
            );
            if slots.is_empty() {
                break;
            }
        }
        debug_assert!(last_got <= asked);
    }
    // Giving the partition up: what the open pull still brings is handed back while the work
    // in hand finishes (what waits for its endpoint's turn is handed back by the handler);
    // then the pin is released so a standby takes the partition at once.
    tasks.close();
    let drain = async {
        let Some((mut sub, deadline)) = open_pull else {
            return (0usize, pin);
        };
        // A pinned lane listens until its pull ends, for the message that names its pin; any
        // other only for what is already on its way (its pull may wait 30 s).
        let deadline = match lane.pinned {
            true => deadline,
            false => deadline.min(Instant::now() + UNPINNED_HAND_BACK_WAIT),
        };
        let mut handed = 0usize;
        while let Ok(Some(msg)) = tokio::time::timeout_at(deadline, sub.next()).await {
            match classify(&msg) {
                Reply::Message => {
                    // The message that made this worker the pinned one may come only now: without
                    // its id the pin would hold the partition from the others until it times out.
                    note_pin(&mut pin, &msg);
                    let msg = jetstream::Message {
                        message: msg,
                        context: shared.js.clone(),
                    };
                    if hand_back(&msg, Some(HAND_BACK_DELAY)).await.is_ok() {
                        handed += 1;
                    }
                }
                Reply::Heartbeat => {}
                _ => break,
            }
        }
        (handed, pin)
    };
    let ((handed, pin), ()) = tokio::join!(drain, tasks.wait());
    if handed > 0 {
        info!(
            role = shared.role,
            handed, "Handed back messages pulled but not started."
        );
    }
    let Some(pin) = pin.filter(|_| lane.pinned) else {
        return;
    };
    // Only our own pin: if it already moved on (this worker was slow to pull), unpinning would
    // take the partition from its new owner.
    let mut consumer: consumer::PullConsumer = match shared.stream.get_consumer(&durable).await {
        Ok(c) => c,
        Err(e) => {
            debug!(error = %e, "Cannot read the partition consumer to unpin it; its pin times out.");
            return;
        }
    };
    let ours = consumer.info().await.is_ok_and(|i| {
        i.priority_groups
            .iter()
            .any(|g| g.group == GROUP && g.pinned_client_id.as_deref() == Some(pin.as_str()))
    });
    if ours {
        if let Err(e) = shared.stream.unpin_consumer(&durable, GROUP).await {
            debug!(error = %e, "Cannot unpin the partition; its pin times out.");
        }
    }
}
