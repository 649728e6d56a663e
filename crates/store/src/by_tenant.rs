//! The routers' consume loop: one durable consumer per tenant on the events stream, all
//! sharing the router's intake, so that one tenant's backlog never stands in front of
//! another tenant's events.
//!
//! Why per tenant: one consumer over every tenant hands events out first in, first out, and a
//! tenant that publishes 50,000 events holds every other tenant's webhooks until they are
//! routed. With a consumer each, a tenant's events wait only behind its own.
//!
//! How the intake is shared: every tenant keeps one pull waiting, holding one slot of the
//! intake (an idle tenant costs a waiting pull, no more); a busy one asks for twice what its
//! last pull brought. Each turn at the intake (first come, first served) takes the tenant's
//! weight in slots, so when tenants are waiting for slots, each gets turns in proportion to
//! its weight, and a tenant alone gets all of them.
//!
//! Consumers come and go with the tenants: a new tenant's consumer is created by the first
//! router that sees it, starting five minutes before the tenant was created (so no event
//! published for it is missed, whatever the API's and the server's clocks say); a deleted
//! tenant's is removed. When the consumer every tenant shared in older versions is found,
//! each tenant's starts at its ack floor instead, and it is removed once every tenant has
//! its own: the events it had handed out and not seen acked are routed again, and their
//! deliveries (the same message ids) are dropped by JetStream's de-duplication.

use crate::consume::{ConsumeError, Handled, Tracker};
use crate::live::TenantSettings;
use crate::partitioned::{serve, Lane, Shared};
use async_nats::jetstream::{self, consumer};
use futures::StreamExt;
use gancho_core::Subjects;
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn, Instrument};

/// How long a tenant's pull waits for events. Idle tenants keep one pull waiting; heartbeats
/// tell a forgotten pull within seconds.
const PULL_EXPIRES: Duration = Duration::from_secs(30);
/// A tenant's consumer starts this long before the tenant was created (by the API's clock):
/// no event published for it after its creation is missed, whatever the clocks say.
const START_MARGIN: Duration = Duration::from_secs(300);
/// How often consumers that could not be set up are tried again.
const SETUP_RETRY: Duration = Duration::from_secs(2);
/// Tenants whose consumers are set up at once.
const SETUP_AT_ONCE: usize = 16;
/// Events of one tenant a router works on at once: enough to keep its publishes going (128
/// events at fan-out 4 are 512 publishes in flight), few enough that a backlog's tasks do
/// not queue in front of another tenant's event for long (1,024 of them, a router's whole
/// intake, held a quiet tenant's webhooks a quarter of a second in a debug build).
const MOST_IN_HAND: usize = 128;
/// What a tenant's first pull expects of an event's size (it asks for one).
const FIRST_SIZE: usize = 4096;

/// What the routers consume and how.
pub struct Spec {
    pub role: &'static str,
    pub stream: String,
    pub subjects: Subjects,
    /// The consumer every tenant shared in older versions: each tenant's consumer starts at
    /// its ack floor, and it is removed once every tenant has its own.
    pub legacy: Option<String>,
    pub ack_wait: Duration,
    /// Per tenant consumer.
    pub max_ack_pending: i64,
    /// Messages handled at once in this process, over every tenant (plus one per tenant for
    /// the pull it keeps waiting).
    pub concurrency: usize,
    pub max_batch: usize,
    pub metric_label: &'static str,
    pub stall_after: Duration,
    /// Nothing is pulled while it reads `false`.
    pub gate: Option<watch::Receiver<bool>>,
    pub budget: crate::budget::Budget,
    /// A gate of each tenant's own: its consumer pulls only while it reads `true` (the
    /// routers hold back a tenant with a backlog that has its share of the bulk lanes).
    pub gate_for: Option<GateFor>,
}

/// Gives a tenant's own gate.
pub type GateFor = Arc<dyn Fn(&str) -> watch::Receiver<bool> + Send + Sync>;

/// One tenant being served.
struct Serving {
    token: CancellationToken,
    task: JoinHandle<()>,
    weight: Arc<AtomicU32>,
}

/// Consumes every tenant in `tenants` (kept current by the config watch) until `cancel`
/// fires, calling `handle` for each event on its own task.
#[allow(
    clippy::too_many_lines,
    reason = "the consumer set-up and its select loop share the tenants' state"
)]
pub async fn run<F, Fut>(
    js: jetstream::Context,
    spec: Spec,
    mut tenants: watch::Receiver<Arc<BTreeMap<String, TenantSettings>>>,
    cancel: CancellationToken,
    handle: F,
) -> Result<(), ConsumeError>
where
    F: Fn(jetstream::Message) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Handled> + Send + 'static,
{
    let stream = js
        .get_stream(&spec.stream)
        .await
        .map_err(|e| ConsumeError::Create {
            durable: spec.subjects.router_tenant_prefix(),
            stream: spec.stream.clone(),
            reason: e.to_string(),
        })?;
    // Where each tenant's consumer starts when they replace the shared one.
    let mut legacy = match &spec.legacy {
        Some(name) => match stream.get_consumer::<consumer::pull::Config>(name).await {
            Ok(mut c) => match c.info().await {
                Ok(i) => Some((name.clone(), i.ack_floor.stream_sequence + 1)),
                Err(_) => None,
            },
            Err(_) => None,
        },
        None => None,
    };
    let concurrency = spec.concurrency.max(1);
    info!(role = spec.role, concurrency, "Consuming by tenant.");
    let tracker = Arc::new(Tracker::new());
    let watchdog = tokio::spawn(
        crate::consume::watch(
            tracker.clone(),
            spec.role,
            spec.metric_label,
            spec.stall_after,
            spec.gate.clone(),
        )
        .instrument(tracing::info_span!("watchdog", role = spec.role)),
    );
    let handle = Arc::new(handle);
    let shared = Arc::new(Shared {
        js: js.clone(),
        stream: stream.clone(),
        role: spec.role,
        max_batch: spec.max_batch.max(1),
        permits: Arc::new(Semaphore::new(concurrency)),
        deliveries: Arc::new(Semaphore::new(concurrency)),
        intake: concurrency,
        progress_every: spec.ack_wait / 3,
        tracker,
        handle: Arc::new(move |msg, _leaving| handle(msg)),
    });
    let template = Template {
        subjects: spec.subjects.clone(),
        role: spec.role,
        ack_wait: spec.ack_wait,
        max_ack_pending: spec.max_ack_pending,
    };
    let mut serving: HashMap<String, Serving> = HashMap::new();
    let mut leaving: Vec<(String, JoinHandle<()>)> = Vec::new();
    loop {
        let want = tenants.borrow_and_update().clone();
        // Gone: stop pulling, then remove the consumer once the events in hand are done.
        let gone: Vec<String> = serving
            .keys()
            .filter(|t| !want.contains_key(*t))
            .cloned()
            .collect();
        for tenant in gone {
            let s = serving.remove(&tenant).expect("listed above");
            s.token.cancel();
            shared.permits.forget_permits(1);
            leaving.push((tenant, s.task));
        }
        for (tenant, task) in std::mem::take(&mut leaving) {
            if !task.is_finished() {
                leaving.push((tenant, task));
                continue;
            }
            let name = spec.subjects.router_tenant_consumer(&tenant);
            if stream.delete_consumer(&name).await.is_ok() {
                info!(tenant, "The tenant is gone; removed its events consumer.");
            }
        }
        for (tenant, settings) in want.iter() {
            if let Some(s) = serving.get(tenant) {
                s.weight.store(settings.weight.max(1), Ordering::Relaxed);
            }
        }
        // New: set up their consumers (a few at once), then serve them.
        // Owned, not borrowed: a stream of futures borrowing locals trips the compiler's
        // inference of `Send` (rust-lang/rust#102211).
        let new: Vec<(String, TenantSettings)> = want
            .iter()
            .filter(|(t, _)| !serving.contains_key(*t))
            .map(|(t, s)| (t.clone(), s.clone()))
            .collect();
        let start = legacy.as_ref().map(|(_, floor)| *floor);
        let set_up: Vec<(String, Result<(), String>)> = futures::stream::iter(new)
            .map(|(tenant, settings)| {
                let (stream, template) = (stream.clone(), template.clone());
                async move {
                    let r = template.ensure(&stream, &tenant, &settings, start).await;
                    (tenant, r)
                }
            })
            .buffer_unordered(SETUP_AT_ONCE)
            .collect()
            .await;
        let mut failed = 0usize;
        for (tenant, result) in set_up {
            if let Err(reason) = result {
                failed += 1;
                warn!(tenant, %reason, "Cannot set up the tenant's events consumer; trying again shortly.");
                continue;
            }
            let weight = Arc::new(AtomicU32::new(
                want.get(&tenant).map_or(1, |s| s.weight.max(1)),
            ));
            let token = cancel.child_token();
            let lane = Lane {
                durable: spec.subjects.router_tenant_consumer(&tenant),
                pinned: false,
                expires: PULL_EXPIRES,
                cap: None,
                weight: weight.clone(),
                gates: spec
                    .gate
                    .iter()
                    .cloned()
                    .chain(spec.gate_for.as_ref().map(|g| g(&tenant)))
                    .collect(),
                most_in_hand: Some(Arc::new(Semaphore::new(MOST_IN_HAND))),
                bytes: Arc::new(crate::budget::Intake::expecting(
                    spec.budget.clone(),
                    FIRST_SIZE,
                )),
            };
            // One slot more per tenant: the pull an idle tenant keeps waiting holds one.
            shared.permits.add_permits(1);
            let task = tokio::spawn(
                serve(shared.clone(), lane, token.clone())
                    .instrument(tracing::info_span!("tenant", role = spec.role, tenant = %tenant)),
            );
            serving.insert(
                tenant,
                Serving {
                    token,
                    task,
                    weight,
                },
            );
        }
        if failed == 0 {
            if let Some((name, _)) = legacy.take() {
                if stream.delete_consumer(&name).await.is_ok() {
                    info!(consumer = %name, tenants = serving.len(), "Every tenant has its own events consumer; removed the one they shared.");
                }
            }
        }
        metrics::gauge!(gancho_telemetry::names::ROUTER_TENANTS).set(serving.len() as f64);
        let retry = failed > 0 || !leaving.is_empty();
        tokio::select! {
            _ = cancel.cancelled() => break,
            changed = tenants.changed() => if changed.is_err() {
                cancel.cancelled().await;
                break;
            },
            _ = tokio::time::sleep(SETUP_RETRY), if retry => {}
        }
    }
    for (_, s) in serving.drain() {
        let _ = s.task.await;
    }
    for (_, task) in leaving {
        let _ = task.await;
    }
    // Acks are only queued on the connection: send them before the process may exit.
    if let Err(e) = js.client().flush().await {
        warn!(role = spec.role, error = %e, "Cannot flush the last acks; their messages may be redelivered.");
    }
    watchdog.abort();
    info!(role = spec.role, "Stopped consuming.");
    Ok(())
}

/// What every tenant's consumer is made of.
#[derive(Clone)]
struct Template {
    subjects: Subjects,
    role: &'static str,
    ack_wait: Duration,
    max_ack_pending: i64,
}

impl Template {
    /// Finds the tenant's consumer, or creates it: from `start` (the shared consumer's ack floor,
    /// when replacing it) or from a little before the tenant was created.
    async fn ensure(
        &self,
        stream: &jetstream::stream::Stream,
        tenant: &str,
        settings: &TenantSettings,
        start: Option<u64>,
    ) -> Result<(), String> {
        let name = self.subjects.router_tenant_consumer(tenant);
        if stream
            .get_consumer::<consumer::pull::Config>(&name)
            .await
            .is_ok()
        {
            return Ok(());
        }
        let deliver_policy = match start {
            Some(start_sequence) => consumer::DeliverPolicy::ByStartSequence { start_sequence },
            None => consumer::DeliverPolicy::ByStartTime {
                start_time: settings.created_at - START_MARGIN,
            },
        };
        let config = consumer::pull::Config {
            durable_name: Some(name.clone()),
            description: Some(format!("gancho {}s, tenant {tenant}", self.role)),
            filter_subject: self.subjects.tenant_events(tenant),
            deliver_policy,
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: self.ack_wait,
            max_ack_pending: self.max_ack_pending,
            ..Default::default()
        };
        match stream.create_consumer(config).await {
            Ok(_) => Ok(()),
            // Another router created it meanwhile (perhaps from another floor): that one stands.
            Err(e) => match stream.get_consumer::<consumer::pull::Config>(&name).await {
                Ok(_) => Ok(()),
                Err(_) => Err(e.to_string()),
            },
        }
    }
}

/// Every tenant's events consumer (and the shared one of older versions, named `legacy`), as
/// the server describes it now: `(tenant, info)`, the shared one with an empty tenant.
pub async fn consumers(
    stream: &jetstream::stream::Stream,
    subjects: &Subjects,
    legacy: &str,
) -> Result<Vec<(String, consumer::Info)>, async_nats::Error> {
    let prefix = subjects.router_tenant_prefix();
    let mut infos = stream.consumers();
    let mut out = Vec::new();
    while let Some(info) = infos.next().await {
        let info = info?;
        if let Some(tenant) = info.name.strip_prefix(prefix.as_str()) {
            out.push((tenant.to_owned(), info));
        } else if info.name == legacy {
            out.push((String::new(), info));
        }
    }
    Ok(out)
}

/// The stream sequence at and below which every event of every tenant in `consumers` is
/// routed (`last` when none has any waiting): an idle consumer has handled everything of
/// its tenant, a busy one everything up to its ack floor.
pub fn routed_floor(consumers: &[(String, consumer::Info)], last: u64) -> u64 {
    consumers
        .iter()
        .filter(|(_, i)| i.num_pending + i.num_ack_pending as u64 > 0)
        .map(|(_, i)| i.ack_floor.stream_sequence)
        .min()
        .unwrap_or(last)
}
