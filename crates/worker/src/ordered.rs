//! Ordered delivery's lanes: for each partition this worker owns, the deliveries of its
//! ordered endpoints (`gancho.ordered.<partition>.<tenant>.<endpoint>.<key hash>`, in the
//! ordered stream) go one key at a time, in the order of the events stream.
//!
//! - **One sender per partition.** The partition's lane is served only while this worker
//!   holds its lease (`ordered.p<n>` in the leases bucket, [`gancho_store::lease`]); a worker
//!   that cannot renew it stops sending before another may take it, and cuts short what it
//!   has on the wire.
//! - **What waits.** The lane reads its partition's subjects with an ordered consumer, headers
//!   only, from the start and then live: per key, the waiting deliveries by their event's
//!   sequence (`Gancho-Event-Sequence`) and their message's. The bodies stay in the stream; a
//!   head is read by a direct get when it goes. Memory per waiting delivery is an index entry,
//!   and the stream holds at most [`gancho_store::streams::ORDERED_MAX_MESSAGES`].
//! - **When a head may go.** Several routers route a tenant's events at once, so a key's
//!   deliveries need not arrive in event order. A head goes only when nothing earlier can
//!   still be written: its event's sequence is at or below the ack floor of its tenant's
//!   router consumer (every earlier event routed and its deliveries stored), read before the
//!   lane made sure it has read its partition to the end ([`Floors`]).
//! - **What a head's outcome does.** [`Ctx::send_ordered`]: delivered or dead-lettered, its
//!   message is removed and the key's next may go; a failed attempt replaces its message with
//!   one that carries its attempts and when it may go again (`Gancho-Not-Before`), the same
//!   event sequence, so it stays the head. A key blocks only itself; keys go in parallel up to
//!   the endpoint's in-flight cap.

use crate::deliver::{Ctx, Head, Resolved};
use async_nats::jetstream::{self, consumer, kv};
use futures::StreamExt as _;
use gancho_core::subject::{EVENT_SEQUENCE_HEADER, NOT_BEFORE_HEADER};
use gancho_store::lease::{Lease, RENEW_EVERY};
use gancho_telemetry::names;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// How often the lane looks for heads that may go when nothing happened.
const TICK: Duration = Duration::from_millis(50);
/// How often the routers' ack floors are read while heads wait for them.
const FLOOR_EVERY: Duration = Duration::from_millis(100);
/// How long a worker waits before trying again for a lease another holds.
const LEASE_RETRY: Duration = Duration::from_secs(1);
/// In-flight cap of an endpoint without one (the worker's default, as the gate's).
const DEFAULT_IN_FLIGHT: u32 = 64;

/// How often a worker looks whether ordered delivery is in use when its config is quiet.
const IN_USE_EVERY: Duration = Duration::from_secs(10);

/// Serves the ordered lanes of the partitions this worker owns until `cancel` fires, while
/// ordered delivery is in use ([`in_use`]): a fleet without it pays nothing for it (no
/// leases, no readers, no ticks).
pub(crate) async fn run(
    ctx: Arc<Ctx>,
    leases: kv::Store,
    me: String,
    mut owned: watch::Receiver<Vec<u32>>,
    cancel: CancellationToken,
) {
    let mut lanes: HashMap<u32, CancellationToken> = HashMap::new();
    let mut tasks = JoinSet::new();
    let mut config = ctx.live.changes();
    let mut look = tokio::time::interval(IN_USE_EVERY);
    loop {
        let now: Vec<u32> = match in_use(&ctx).await {
            true => owned.borrow_and_update().clone(),
            false => Vec::new(),
        };
        lanes.retain(|p, stop| {
            let keep = now.contains(p);
            if !keep {
                stop.cancel();
            }
            keep
        });
        for &p in &now {
            lanes.entry(p).or_insert_with(|| {
                let stop = cancel.child_token();
                let lane = Lane::new(ctx.clone(), p, stop.clone());
                tasks.spawn(lane.serve(leases.clone(), me.clone()));
                stop
            });
        }
        tokio::select! {
            () = cancel.cancelled() => break,
            changed = owned.changed() => if changed.is_err() { break },
            changed = config.changed() => if changed.is_err() { break },
            _ = look.tick() => {}
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
    while tasks.join_next().await.is_some() {}
}

/// Whether any endpoint orders its deliveries, or ordered deliveries still wait (routed
/// before their endpoint stopped ordering, or deleted): then every owned partition's lane
/// runs. When the ordered stream cannot be read, the lanes run.
async fn in_use(ctx: &Ctx) -> bool {
    let ordering = ctx
        .live
        .load()
        .tenants
        .values()
        .any(|t| t.list.iter().any(|ep| !ep.config.ordering.is_none()));
    if ordering {
        return true;
    }
    match ctx.js.get_stream(ctx.subjects.ordered_stream()).await {
        Ok(stream) => stream.cached_info().state.messages > 0,
        Err(_) => true,
    }
}

/// One waiting delivery of a key.
#[derive(Clone, Copy, Debug)]
struct Entry {
    /// Its message's sequence in the ordered stream.
    seq: u64,
    /// Not to be sent before this (a retry's schedule).
    not_before: Option<SystemTime>,
}

/// A key's waiting deliveries and what its head is doing.
#[derive(Default)]
struct Key {
    /// By their event's sequence: the first is the head.
    waiting: BTreeMap<u64, Entry>,
    /// Its head is being sent.
    busy: bool,
    /// In its endpoint's queue for an in-flight slot.
    queued: bool,
    /// Not to be looked at before this (its gate refused it, a write failed).
    later: Option<Instant>,
    /// Since when its head's gate has refused it.
    refused_since: Option<Instant>,
    /// Since when its head has failed (its first failed attempt).
    failing_since: Option<Instant>,
}

/// What [`Lane::start`] did with a key.
#[derive(Debug, PartialEq, Eq)]
enum Start {
    Started,
    /// Its head may not go yet (or it has none, or it is under way).
    NotReady,
    /// Queued: its endpoint has no in-flight slot free.
    Full,
}

/// `(tenant, endpoint, key hash)`.
type KeyId = (String, String, String);

struct Lane {
    ctx: Arc<Ctx>,
    partition: u32,
    stop: CancellationToken,
    keys: HashMap<KeyId, Key>,
    /// Keys whose head is being sent, by `(tenant, endpoint)`.
    busy: HashMap<(String, String), u32>,
    /// Keys whose head may go but whose endpoint has every in-flight slot taken, in the
    /// order they found it so: each slot given back goes to the first (a key whose next
    /// head is ready at once must not keep the slot from the others).
    queues: HashMap<(String, String), VecDeque<KeyId>>,
    /// Messages replaced by a later one of the same delivery, to remove.
    stale: Vec<u64>,
    /// The highest sequence of the partition's subjects read.
    read: u64,
    floors: Floors,
}

/// Per tenant, the event sequence up to which heads may go: the ack floor of the tenant's
/// router consumer, taken once the lane has read its partition up to where the ordered
/// stream ended after the floor was read.
#[derive(Default)]
struct Floors {
    ready: HashMap<String, u64>,
    /// Floors read, and the ordered stream's last sequence read after them: they hold once
    /// the lane has read its partition that far.
    pending: Option<(Vec<(String, u64)>, u64)>,
    last: Option<Instant>,
}

impl Lane {
    fn new(ctx: Arc<Ctx>, partition: u32, stop: CancellationToken) -> Self {
        Self {
            ctx,
            partition,
            stop,
            keys: HashMap::new(),
            busy: HashMap::new(),
            queues: HashMap::new(),
            stale: Vec::new(),
            read: 0,
            floors: Floors::default(),
        }
    }

    /// Takes the partition's lease, serves the lane while it is held, and starts over when
    /// it is lost, until the partition is no longer this worker's.
    async fn serve(mut self, leases: kv::Store, me: String) {
        let key = format!("ordered.p{}", self.partition);
        loop {
            let lease = loop {
                match Lease::take(&leases, &key, &me).await {
                    Ok(lease) => break lease,
                    Err(e) => {
                        debug!(partition = self.partition, error = %e, "Waiting for an ordered lane's lease.")
                    }
                }
                tokio::select! {
                    () = self.stop.cancelled() => return,
                    () = tokio::time::sleep(LEASE_RETRY) => {}
                }
            };
            info!(
                partition = self.partition,
                "Serving the partition's ordered deliveries."
            );
            let lease = self.held(lease).await;
            self.forget();
            if self.stop.is_cancelled() {
                lease.give_up().await;
                return;
            }
            warn!(
                partition = self.partition,
                "Lost the lease of a partition's ordered deliveries; taking it again when free."
            );
        }
    }

    /// Everything known of the keys, dropped when the lane stops being this worker's.
    fn forget(&mut self) {
        self.keys.clear();
        self.busy.clear();
        self.queues.clear();
        self.stale.clear();
        self.read = 0;
        self.floors = Floors::default();
        self.gauges();
    }

    /// Serves the lane while `lease` is held and the partition is this worker's; returns
    /// the lease with what is in flight ended.
    async fn held(&mut self, mut lease: Lease) -> Lease {
        // Not a child of `stop`: a partition that moves on lets what is in flight finish.
        let lost = CancellationToken::new();
        // The ordered stream and the events stream (its routers' floors), opened once.
        let opened = tokio::try_join!(
            self.ctx.js.get_stream(self.ctx.subjects.ordered_stream()),
            self.ctx.js.get_stream(self.ctx.subjects.events_stream()),
        );
        let reader = match opened {
            Ok((stream, events)) => self
                .read_partition(&stream)
                .await
                .map(|messages| (stream, events, messages)),
            Err(e) => Err(e.into()),
        };
        let (stream, events, mut messages) = match reader {
            Ok(opened) => opened,
            Err(e) => {
                warn!(partition = self.partition, error = %e, "Cannot read a partition's ordered deliveries.");
                tokio::select! {
                    () = self.stop.cancelled() => {}
                    () = tokio::time::sleep(LEASE_RETRY) => {}
                }
                return lease;
            }
        };
        let mut sends: JoinSet<(KeyId, u64, Resolved)> = JoinSet::new();
        let mut renew = tokio::time::interval(RENEW_EVERY);
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut gauges = tokio::time::interval(Duration::from_secs(5));
        // Once the partition is no longer this worker's, nothing new starts and what is in
        // flight finishes (its answer written) before the lease is given up.
        let mut draining = false;
        loop {
            if draining && sends.is_empty() {
                break;
            }
            tokio::select! {
                () = self.stop.cancelled(), if !draining => draining = true,
                _ = renew.tick() => {
                    if let Err(e) = lease.renew().await {
                        if !lease.held() {
                            warn!(partition = self.partition, error = %e, "An ordered lane's lease is no longer held.");
                            break;
                        }
                    }
                }
                msg = messages.next() => match msg {
                    Some(Ok(msg)) => self.index(&msg),
                    Some(Err(e)) => debug!(error = %e, "The ordered deliveries' reader stumbled; it goes on."),
                    None => break,
                },
                Some(done) = sends.join_next(), if !sends.is_empty() => {
                    if let Ok((id, seq, resolved)) = done {
                        // The key's next goes at once when it may, not at the next tick.
                        self.resolved(&id, seq, resolved);
                        if lease.held() && !draining {
                            self.next_after(&id, &stream, &lost, &mut sends);
                        }
                    }
                }
                _ = tick.tick() => {
                    if !lease.held() {
                        warn!(partition = self.partition, "An ordered lane's lease could not be renewed in time; its sends stop.");
                        break;
                    }
                    if !draining {
                        self.refresh_floors(&stream, &events).await;
                        self.dispatch(&stream, &lost, &mut sends);
                        self.clean().await;
                    }
                }
                _ = gauges.tick() => self.gauges(),
            }
        }
        // What is still on the wire (the lease lost) is cut short: the next owner sends it
        // again, before the next.
        lost.cancel();
        sends.shutdown().await;
        lease
    }

    /// An ordered consumer of the partition's subjects, headers only, from the start.
    async fn read_partition(
        &self,
        stream: &jetstream::stream::Stream,
    ) -> Result<consumer::pull::Ordered, async_nats::Error> {
        let consumer = stream
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: self.ctx.subjects.ordered_partition(self.partition),
                headers_only: true,
                deliver_policy: consumer::DeliverPolicy::All,
                ..Default::default()
            })
            .await?;
        Ok(consumer.messages().await?)
    }

    /// A message of the partition read: its key's waiting deliveries gain it.
    fn index(&mut self, msg: &jetstream::Message) {
        let Ok(info) = msg.info() else { return };
        let seq = info.stream_sequence;
        self.read = self.read.max(seq);
        let Some((tenant, endpoint, key)) = self.ctx.subjects.parse_ordered(&msg.subject) else {
            return;
        };
        let header = |name: &str| {
            msg.headers
                .as_ref()
                .and_then(|h| h.get(name))
                .and_then(|v| v.as_str().parse::<u64>().ok())
        };
        // A message without its event's sequence (none is written so) goes by its own.
        let event = header(EVENT_SEQUENCE_HEADER).unwrap_or(seq);
        let not_before =
            header(NOT_BEFORE_HEADER).map(|ms| SystemTime::UNIX_EPOCH + Duration::from_millis(ms));
        let id = (tenant.to_owned(), endpoint.to_owned(), key.to_owned());
        let k = self.keys.entry(id).or_default();
        let entry = Entry { seq, not_before };
        match k.waiting.get_mut(&event) {
            // The same delivery again (a retry's new message, or one left by a crash
            // between a retry's write and the old one's removal): the later message stands.
            Some(have) if have.seq > seq => self.stale.push(seq),
            Some(have) if have.seq < seq => {
                self.stale.push(have.seq);
                *have = entry;
            }
            Some(_) => {}
            None => {
                k.waiting.insert(event, entry);
            }
        }
    }

    /// A head's send ended.
    fn resolved(&mut self, id: &KeyId, event: u64, resolved: Resolved) {
        let ep = (id.0.clone(), id.1.clone());
        if let Some(n) = self.busy.get_mut(&ep) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.busy.remove(&ep);
            }
        }
        let Some(k) = self.keys.get_mut(id) else {
            return;
        };
        k.busy = false;
        match resolved {
            Resolved::Done | Resolved::Gone => {
                k.waiting.remove(&event);
                k.refused_since = None;
                k.failing_since = None;
                k.later = None;
            }
            Resolved::Retry { seq, not_before } => {
                k.refused_since = None;
                k.failing_since.get_or_insert_with(Instant::now);
                if let Some(have) = k.waiting.get_mut(&event) {
                    if have.seq <= seq {
                        *have = Entry {
                            seq,
                            not_before: Some(not_before),
                        };
                    }
                }
            }
            Resolved::Later { after, refused } => {
                k.later = Some(Instant::now() + after);
                if refused {
                    k.refused_since.get_or_insert_with(Instant::now);
                }
            }
        }
        if k.waiting.is_empty() {
            self.keys.remove(id);
        }
    }

    /// Reads the ack floors of the tenants whose heads wait for them, then the ordered
    /// stream's last sequence, and takes the floors once the lane has read its partition up
    /// to that sequence: every delivery of an event at or below a floor is then known.
    /// Writes that go on meanwhile (other routers, retries) do not hold them back.
    async fn refresh_floors(
        &mut self,
        stream: &jetstream::stream::Stream,
        events: &jetstream::stream::Stream,
    ) {
        if let Some((_, end)) = &self.floors.pending {
            if !self.read_to(stream, *end).await {
                return;
            }
            let (read, _) = self.floors.pending.take().expect("pending");
            for (tenant, floor) in read {
                let have = self.floors.ready.entry(tenant).or_default();
                *have = (*have).max(floor);
            }
        }
        if self
            .floors
            .last
            .is_some_and(|at| at.elapsed() < FLOOR_EVERY)
        {
            return;
        }
        let waiting: Vec<String> = {
            let ready = &self.floors.ready;
            let mut tenants: Vec<String> = self
                .keys
                .iter()
                .filter(|(id, k)| {
                    !k.busy
                        && k.waiting.keys().next().is_some_and(|&event| {
                            ready.get(&id.0).is_none_or(|&floor| event > floor)
                        })
                })
                .map(|(id, _)| id.0.clone())
                .collect();
            tenants.sort_unstable();
            tenants.dedup();
            tenants
        };
        if waiting.is_empty() {
            return;
        }
        self.floors.last = Some(Instant::now());
        let mut read = Vec::with_capacity(waiting.len());
        for tenant in waiting {
            let name = self.ctx.subjects.router_tenant_consumer(&tenant);
            match events.consumer_info(&name).await {
                Ok(info) => read.push((tenant, info.ack_floor.stream_sequence)),
                Err(e) => {
                    debug!(tenant = %tenant, error = %e, "Cannot read a router consumer's ack floor.")
                }
            }
        }
        // Where the ordered stream ends now, after the floors: every delivery of their
        // events lies before it.
        match stream.clone().info().await {
            Ok(info) => self.floors.pending = Some((read, info.state.last_sequence)),
            Err(e) => debug!(error = %e, "Cannot read where the ordered stream ends."),
        }
    }

    /// Whether the lane has read every message of its partition up to `end`: read that far
    /// already, or nothing of the partition lies between what it read and `end`.
    async fn read_to(&self, stream: &jetstream::stream::Stream, end: u64) -> bool {
        if self.read >= end {
            return true;
        }
        let filter = self.ctx.subjects.ordered_partition(self.partition);
        match stream
            .direct_get_next_for_subject(filter, Some(self.read + 1))
            .await
        {
            Ok(next) => next.sequence > end,
            Err(e) => e.kind() == jetstream::stream::DirectGetErrorKind::NotFound,
        }
    }

    /// Starts the heads that may go: their event at or below their tenant's floor, their
    /// time come, and their endpoint below its in-flight cap; the keys queued for a slot
    /// first, in their order.
    fn dispatch(
        &mut self,
        stream: &jetstream::stream::Stream,
        lost: &CancellationToken,
        sends: &mut JoinSet<(KeyId, u64, Resolved)>,
    ) {
        let endpoints: Vec<(String, String)> = self.queues.keys().cloned().collect();
        for ep in endpoints {
            self.serve_queue(&ep, stream, lost, sends);
        }
        let now = Instant::now();
        let ready: Vec<KeyId> = self
            .keys
            .iter()
            .filter(|(_, k)| !k.busy && !k.queued && k.later.is_none_or(|at| at <= now))
            .map(|(id, _)| id.clone())
            .collect();
        for id in ready {
            self.start(&id, stream, lost, sends);
        }
    }

    /// A head's send ended: its endpoint's slot goes to the first key queued for one, and
    /// the key's next head queues behind the others.
    fn next_after(
        &mut self,
        id: &KeyId,
        stream: &jetstream::stream::Stream,
        lost: &CancellationToken,
        sends: &mut JoinSet<(KeyId, u64, Resolved)>,
    ) {
        let ep = (id.0.clone(), id.1.clone());
        self.serve_queue(&ep, stream, lost, sends);
        self.start(id, stream, lost, sends);
    }

    /// Starts the keys queued for `ep`'s slots, in order, while slots are free.
    fn serve_queue(
        &mut self,
        ep: &(String, String),
        stream: &jetstream::stream::Stream,
        lost: &CancellationToken,
        sends: &mut JoinSet<(KeyId, u64, Resolved)>,
    ) {
        while let Some(id) = self.queues.get_mut(ep).and_then(VecDeque::pop_front) {
            if let Some(k) = self.keys.get_mut(&id) {
                k.queued = false;
            }
            if self.start(&id, stream, lost, sends) == Start::Full {
                // Queued again by `start`: back to the front, no slot after all.
                if let Some(q) = self.queues.get_mut(ep) {
                    if let Some(last) = q.pop_back() {
                        q.push_front(last);
                    }
                }
                break;
            }
        }
        if self.queues.get(ep).is_some_and(VecDeque::is_empty) {
            self.queues.remove(ep);
        }
    }

    /// Starts `id`'s head if it may go now; queues the key when only a slot is missing.
    fn start(
        &mut self,
        id: &KeyId,
        stream: &jetstream::stream::Stream,
        lost: &CancellationToken,
        sends: &mut JoinSet<(KeyId, u64, Resolved)>,
    ) -> Start {
        let Some(k) = self.keys.get_mut(id) else {
            return Start::NotReady;
        };
        if k.busy || k.queued || k.later.is_some_and(|at| at > Instant::now()) {
            return Start::NotReady;
        }
        let Some((&event, &entry)) = k.waiting.iter().next() else {
            return Start::NotReady;
        };
        if self
            .floors
            .ready
            .get(&id.0)
            .is_none_or(|&floor| event > floor)
            || entry.not_before.is_some_and(|at| at > SystemTime::now())
        {
            return Start::NotReady;
        }
        let cap = self
            .ctx
            .live
            .load()
            .endpoint(&id.0, &id.1)
            .and_then(|ep| ep.config.max_in_flight)
            .unwrap_or(DEFAULT_IN_FLIGHT);
        let ep = (id.0.clone(), id.1.clone());
        let busy = self.busy.entry(ep.clone()).or_default();
        if *busy >= cap {
            k.queued = true;
            self.queues.entry(ep).or_default().push_back(id.clone());
            return Start::Full;
        }
        *busy += 1;
        k.busy = true;
        k.later = None;
        let ctx = self.ctx.clone();
        let (stream, lost, id) = (stream.clone(), lost.clone(), id.clone());
        let subject = self
            .ctx
            .subjects
            .ordered(self.partition, &id.0, &id.1, &id.2);
        let refused_for = k.refused_since.map(|at| at.elapsed());
        sends.spawn(async move {
            let resolved = ctx
                .send_ordered(Head {
                    stream: &stream,
                    seq: entry.seq,
                    subject: &subject,
                    refused_for,
                    lost: &lost,
                })
                .await;
            (id, event, resolved)
        });
        Start::Started
    }

    /// Removes messages replaced by a later one of the same delivery.
    async fn clean(&mut self) {
        let stream = self.ctx.subjects.ordered_stream();
        for seq in std::mem::take(&mut self.stale) {
            if let Err(e) = gancho_store::writes::remove(&self.ctx.js, &stream, seq).await {
                debug!(error = %e, "Cannot remove a replaced ordered delivery; trying again.");
                self.stale.push(seq);
            }
        }
    }

    fn gauges(&self) {
        let label = self.partition.to_string();
        let waiting: usize = self.keys.values().map(|k| k.waiting.len()).sum();
        let failing = self.keys.values().filter_map(|k| k.failing_since);
        let blocked = failing.clone().count();
        let oldest = failing.map(|at| at.elapsed()).max().unwrap_or_default();
        metrics::gauge!(names::ORDERED_WAITING, "partition" => label.clone()).set(waiting as f64);
        metrics::gauge!(names::ORDERED_KEYS_BLOCKED, "partition" => label.clone())
            .set(blocked as f64);
        metrics::gauge!(names::ORDERED_OLDEST_BLOCKED, "partition" => label)
            .set(oldest.as_secs_f64());
    }
}
