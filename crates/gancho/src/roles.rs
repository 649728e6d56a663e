//! Wiring: connects to NATS, creates or checks the JetStream layout, loads the live config,
//! and runs the requested roles until shutdown, then drains them under a grace timeout.

use crate::config::Config;
use anyhow::Context as _;
use async_nats::jetstream;
use gancho_store::{Layout, Live};
use gancho_telemetry::{names, Ready};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

/// How often consumer lag and snapshot age are sampled into gauges.
const STATS_EVERY: Duration = Duration::from_secs(5);

#[derive(Clone, Copy, Debug, Default)]
pub struct Roles {
    pub router: bool,
    pub worker: bool,
    pub api: bool,
}

impl Roles {
    fn name(&self) -> &'static str {
        match (self.router, self.worker, self.api) {
            (true, false, false) => "router",
            (false, true, false) => "worker",
            (false, false, true) => "api",
            _ => "dev",
        }
    }
}

/// The servers of `GANCHO_NATS_URL`: one URL or several, comma-separated (the client
/// fails over between them). Errors quote URLs without their credentials.
pub fn nats_servers(url: &str) -> anyhow::Result<Vec<async_nats::ServerAddr>> {
    let servers = url
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<async_nats::ServerAddr>().map_err(|e| {
                anyhow::anyhow!(
                    "GANCHO_NATS_URL: {:?} is not a NATS server URL ({e})",
                    gancho_core::net::redact_userinfo(s)
                )
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    anyhow::ensure!(!servers.is_empty(), "GANCHO_NATS_URL is empty");
    Ok(servers)
}

/// How often a role pings its NATS server while nothing else comes from it. async-nats gives
/// a connection up at the third interval without a word from the server (two pings
/// unanswered, then the next tick), so a connection that went silent without closing (a
/// partition, a frozen server) is noticed within 15 s and the client reconnects; with
/// async-nats' default of 60 s it took three minutes.
pub const NATS_PING_INTERVAL: Duration = Duration::from_secs(5);

/// A connection named after its role and purpose, counting slow-consumer events, saying when
/// it is lost and made again.
pub async fn connect(url: &str, name: String) -> anyhow::Result<async_nats::Client> {
    let servers = nats_servers(url)?;
    let shown = url
        .split(',')
        .map(|s| gancho_core::net::redact_userinfo(s.trim()))
        .collect::<Vec<_>>()
        .join(",");
    async_nats::ConnectOptions::new()
        .name(name)
        .ping_interval(NATS_PING_INTERVAL)
        .event_callback(|event| async move {
            match event {
                async_nats::Event::SlowConsumer(_) => {
                    metrics::counter!(names::NATS_SLOW_CONSUMER).increment(1);
                }
                async_nats::Event::Disconnected => {
                    warn!("Lost the connection to NATS (closed, or silent for three pings); reconnecting.");
                }
                async_nats::Event::Connected => info!("Connected to NATS."),
                _ => {}
            }
        })
        .connect(servers)
        .await
        .with_context(|| format!("cannot connect to NATS at {shown}"))
}

/// How long a starting role keeps trying to set up the streams while JetStream times out.
const SETUP_PATIENCE: Duration = Duration::from_secs(60);

/// Whether a stream set-up error is JetStream not answering (a leader election, a node
/// restarting) rather than a refusal.
fn is_transient(error: &gancho_store::streams::LayoutError) -> bool {
    gancho_store::refusal::of(error) == gancho_store::refusal::Refusal::Unavailable
}

/// How long a client may take to send a request's head (slowloris clients are cut off).
const API_HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves the API over HTTP/1.1 and HTTP/2 until `cancel`, then lets requests under way
/// finish. Unlike `axum::serve`, a request head that does not arrive within
/// [`API_HEADER_TIMEOUT`] ends its connection; the API's own layer bounds the body.
async fn serve_api(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(API_HEADER_TIMEOUT);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        let stream = tokio::select! {
            _ = cancel.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: pause rather than spin.
                    warn!(error = %e, "Cannot accept an API connection.");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let (stream, peer) = stream;
        let app = app.clone();
        let service =
            hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                // The peer's address, for limits per client (`gancho_api::client`).
                req.extensions_mut()
                    .insert(axum::extract::ConnectInfo(peer));
                let mut app = app.clone();
                async move { tower_service::Service::call(&mut app, req).await }
            });
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
    graceful.shutdown().await;
    Ok(())
}

/// Started roles, for `gancho dev` to print where they are.
pub struct Running {
    pub live: Arc<Live>,
    pub api_addr: Option<std::net::SocketAddr>,
    pub metrics_addr: std::net::SocketAddr,
    tasks: JoinSet<(&'static str, anyhow::Result<()>)>,
    cancel: CancellationToken,
    /// How long a shutdown may drain ([`Config::shutdown_grace`]).
    grace: Duration,
    /// The OTLP export of traces, when an endpoint is set.
    traces: Option<gancho_telemetry::traces::Exporting>,
}

/// Starts `roles` against `nats_url`. They run until `cancel` fires.
#[allow(
    clippy::too_many_lines,
    reason = "starts each role in turn with what it shares with the others (connection, streams, live config, metrics)"
)]
pub async fn start(
    config: &Config,
    nats_url: &str,
    roles: Roles,
    cancel: CancellationToken,
) -> anyhow::Result<Running> {
    let role = roles.name();
    let handle = gancho_telemetry::install();
    gancho_telemetry::set_metrics_tenants(&config.metrics_tenants);
    let traces = gancho_telemetry::traces::start(&format!("gancho-{role}"), config.trace_queue)
        .map_err(crate::config::ConfigError)?;
    let ready = Ready::default();
    // Set-up, the config watch and the API use this connection; the router and the worker
    // each read and write on connections of their own, so that one role's backlog cannot
    // starve another's writes when they share a process (`gancho dev`).
    // The api and the worker seal and open endpoint secrets; the router reads none, so a
    // router never holds the key (and keeps routing through a key rotation).
    let keyring = match &config.keys {
        Some(keys) if roles.api || roles.worker => Some(keys.keyring()),
        Some(_) => None,
        None if roles.api || roles.worker => {
            return Err(crate::config::ConfigError(format!(
                "missing encryption_key: the {role} role needs GANCHO_ENCRYPTION_KEY to seal and open endpoint secrets (`gancho keygen` prints a new one; use the same key on every api and worker)"
            ))
            .into())
        }
        None => None,
    };
    let out = connect(nats_url, format!("gancho-{role}")).await?;
    // A role started while the cluster elects a leader sees its stream requests time out:
    // it tries again for a while instead of exiting. A refusal (bad settings) stops it at once.
    let settings = config.stream_settings();
    let deadline = std::time::Instant::now() + SETUP_PATIENCE;
    let mut layout = loop {
        match gancho_store::streams::ensure_with(
            jetstream::new(out.clone()),
            config.subjects.clone(),
            &settings,
        )
        .await
        {
            Ok(layout) => break layout,
            Err(e) if is_transient(&e) && std::time::Instant::now() < deadline => {
                warn!(error = %e, "JetStream is not answering yet; setting up the streams again.");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => return Err(e).context("cannot set up the JetStream streams"),
        }
    };
    if let Some(keyring) = keyring {
        keyring
            .check(&layout.config)
            .await
            .map_err(crate::config::ConfigError)?;
        layout = layout.with_keyring(keyring);
    }
    let live = Live::start(&layout, config.retry_schedule.clone(), cancel.clone())
        .await
        .map_err(|e| anyhow::anyhow!("cannot load the config bucket: {e}"))?;

    let metrics_addr = gancho_telemetry::serve(
        config.metrics_listen,
        handle.clone(),
        ready.clone(),
        cancel.clone(),
    )
    .await
    .with_context(|| format!("cannot listen for /metrics on {}", config.metrics_listen))?;

    let mut tasks = JoinSet::new();
    if roles.router {
        let input = connect(nats_url, "gancho-router-in".into()).await?;
        let js =
            gancho_router::output_context(connect(nats_url, "gancho-router-out".into()).await?);
        let (layout, live, cancel) = (layout.clone(), live.clone(), cancel.clone());
        let cfg = gancho_router::RouterConfig {
            concurrency: config.router_concurrency,
            stall_after: config.stall_warning_after,
            deliveries_max_bytes: config.deliveries_max_bytes,
            memory: config.router_memory,
            ..Default::default()
        };
        tasks.spawn(async move {
            let r = gancho_router::run(input, js, layout, live, cfg, cancel).await;
            ("router", r.map_err(Into::into))
        });
    }
    if roles.worker {
        let input = connect(nats_url, "gancho-worker-in".into()).await?;
        // The default in-flight limit (5,000, waiting when full) is safe here: every write
        // is awaited by the delivery that made it.
        let js = jetstream::new(connect(nats_url, "gancho-worker-out".into()).await?);
        let (layout, live, cancel) = (layout.clone(), live.clone(), cancel.clone());
        gancho_worker::resolve::pin_names(config.resolve.clone());
        let cfg = gancho_worker::WorkerConfig {
            concurrency: config.worker_concurrency,
            allow_http: config.allow_http_endpoints,
            allow_private: config.allow_private_endpoints,
            extra_ca_file: config.extra_ca_file.clone(),
            stall_after: config.stall_warning_after,
            disable_after: config.disable_after,
            defer_grace: config.defer_grace,
            egress_proxy: config.egress_proxy.clone(),
            memory: config.worker_memory,
            ..Default::default()
        };
        tasks.spawn(async move {
            let r = gancho_worker::run(input, js, layout, live, cfg, cancel).await;
            ("worker", r.map_err(Into::into))
        });
    }
    let mut api_addr = None;
    if roles.api {
        let token = config.admin_token.clone().ok_or_else(|| {
            crate::config::ConfigError(
                "missing admin_token: set GANCHO_ADMIN_TOKEN to a secret of 16 or more characters"
                    .into(),
            )
        })?;
        let process_id = gancho_store::members::new_id();
        let state = gancho_api::ApiState {
            fleet_runs_programs: Default::default(),
            store: gancho_store::ConfigStore::new(&layout),
            admin_token: token.into(),
            allow_http: config.allow_http_endpoints,
            allow_private: config.allow_private_endpoints,
            keys: Default::default(),
            live: live.clone(),
            layout: layout.clone(),
            known_tenants: Default::default(),
            portal: gancho_store::portal::PortalStore::new(layout.portal.clone()),
            portal_public_url: config.portal_public_url.as_deref().map(Into::into),
            portal_frame_ancestors: config.portal_frame_ancestors.as_str().into(),
            portal_brand: config.portal_brand.clone().into(),
            trusted_proxies: config.trusted_proxies.clone().into(),
            link_limits: Default::default(),
            request_limits: Arc::new(gancho_api::client::CredentialLimits::new(
                config.api_rate_limit,
            )),
            admin_rate_limit: config.admin_rate_limit,
            process_id: process_id.as_str().into(),
            ingest_limits: Arc::new(gancho_api::client::SharedRates::ingest()),
        };
        gancho_api::jobs::spawn(state.clone(), cancel.clone());
        tokio::spawn(api_retained(state.clone(), cancel.clone()));
        // The live api processes share each credential's request rate.
        let (alive_tx, mut alive) = tokio::sync::watch::channel(1usize);
        tokio::spawn(gancho_store::members::count(
            layout.apis.clone(),
            process_id,
            alive_tx,
            cancel.clone(),
        ));
        // Changes whose audit record an api could not store (it died, or JetStream did not
        // take the record): recorded now if they were made.
        tokio::spawn(gancho_api::audit::catch_up(state.clone(), cancel.clone()));
        let (limits, ingest) = (state.request_limits.clone(), state.ingest_limits.clone());
        tokio::spawn(async move {
            while alive.changed().await.is_ok() {
                let n = *alive.borrow_and_update();
                limits.set_processes(n);
                ingest.set_processes(n);
                info!(
                    api_processes = n,
                    "Api processes alive changed; each credential's request rate is shared again."
                );
            }
        });
        let app = gancho_api::router(state).merge(gancho_telemetry::routes(handle, ready.clone()));
        let listener = tokio::net::TcpListener::bind(config.api_listen)
            .await
            .with_context(|| format!("cannot listen for the API on {}", config.api_listen))?;
        api_addr = Some(listener.local_addr()?);
        let cancel = cancel.clone();
        tasks.spawn(async move { ("api", serve_api(listener, app, cancel).await) });
    }
    tokio::spawn(stats(layout.clone(), live.clone(), roles, cancel.clone()));
    ready.set();
    info!(role, nats = nats_url, "gancho started.");
    Ok(Running {
        live,
        api_addr,
        metrics_addr,
        tasks,
        cancel,
        grace: config.shutdown_grace,
        traces,
    })
}

impl Running {
    /// Waits for a shutdown signal (or a role failing), then drains.
    pub async fn wait(mut self) -> anyhow::Result<()> {
        let mut failure = None;
        tokio::select! {
            _ = shutdown_signal() => info!("Shutting down; draining work in flight."),
            _ = self.cancel.cancelled() => {}
            Some(done) = self.tasks.join_next() => {
                if let Ok((role, Err(e))) = done {
                    error!(role, error = %e, "A role stopped; shutting down.");
                    failure = Some(e.context(format!("{role} stopped")));
                }
            }
        }
        self.cancel.cancel();
        let drained = tokio::time::timeout(self.grace, async {
            while let Some(done) = self.tasks.join_next().await {
                if let Ok((role, Err(e))) = done {
                    error!(role, error = %e, "A role failed while stopping.");
                }
            }
        })
        .await;
        if drained.is_err() {
            error!(grace_secs = self.grace.as_secs_f64(), "Roles did not stop within the grace period; exiting anyway (unacked work is redelivered).");
        }
        if let Some(traces) = self.traces.take() {
            traces.shutdown(Duration::from_secs(5)).await;
        }
        failure.map_or(Ok(()), Err)
    }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).expect("install a SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

/// Sets the api's `gancho_retained_entries` every [`STATS_EVERY`] until `cancel`.
async fn api_retained(state: gancho_api::ApiState, cancel: CancellationToken) {
    let [keys, tenants, mint, open, credentials, ingest] = names::API_RETAINED_STRUCTURES;
    loop {
        let (minting, opening) = state.link_limits.addresses();
        for (structure, n) in [
            (keys, state.keys.entries()),
            (tenants, state.known_tenants.entries()),
            (mint, minting),
            (open, opening),
            (credentials, state.request_limits.entries()),
            (ingest, state.ingest_limits.entries()),
        ] {
            metrics::gauge!(names::RETAINED_ENTRIES, "structure" => structure).set(n as f64);
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(STATS_EVERY) => {}
        }
    }
}

/// Samples consumer lag, stream usage against limits, JetStream's storage and the snapshot
/// age into gauges.
async fn stats(layout: Layout, live: Arc<Live>, roles: Roles, cancel: CancellationToken) {
    let subjects = layout.subjects.clone();
    let names_of: Vec<&str> = [
        (roles.api, "api"),
        (roles.router, "router"),
        (roles.worker, "worker"),
    ]
    .into_iter()
    .filter_map(|(on, n)| on.then_some(n))
    .collect();
    metrics::gauge!(names::BUILD_INFO, "version" => env!("CARGO_PKG_VERSION"), "roles" => names_of.join("+"))
        .set(1.0);
    gancho_telemetry::record_process();
    let mut watched = Vec::new();
    if roles.worker {
        watched.push((
            "deliveries",
            subjects.deliveries_stream(),
            (0..gancho_core::subject::PARTITIONS)
                .flat_map(|p| {
                    [
                        subjects.worker_consumer(p),
                        subjects.worker_bulk_consumer(p),
                    ]
                })
                .collect::<Vec<_>>(),
        ));
    }
    let config_stream = format!("KV_{}", subjects.config_bucket());
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(STATS_EVERY) => {}
        }
        metrics::gauge!(names::CONFIG_SNAPSHOT_AGE).set(live.age_seconds() as f64);
        // The bucket's revision is read before the snapshot's: a change landing in between
        // makes the snapshot look ahead, never behind, so a healthy process never looks stale.
        if let Ok(mut bucket) = layout.js.get_stream(&config_stream).await {
            if let Ok(info) = bucket.info().await {
                metrics::gauge!(names::CONFIG_REVISION).set(info.state.last_sequence as f64);
            }
        }
        metrics::gauge!(names::CONFIG_SNAPSHOT_REVISION).set(live.load().revision as f64);
        gancho_telemetry::record_process();
        usage(&layout, roles.worker).await;
        if roles.router {
            tenant_backlogs(&layout).await;
        }
        for (label, stream, consumers) in &watched {
            // Summed over the consumers (the worker's partitions).
            let info = async {
                let stream = layout.js.get_stream(stream).await.ok()?;
                let (mut pending, mut ack_pending) = (0, 0);
                for consumer in consumers {
                    let mut c: jetstream::consumer::PullConsumer =
                        stream.get_consumer(consumer).await.ok()?;
                    let i = c.info().await.ok()?;
                    pending += i.num_pending;
                    ack_pending += i.num_ack_pending;
                }
                Some((pending, ack_pending))
            }
            .await;
            if let Some((pending, ack_pending)) = info {
                metrics::gauge!(names::CONSUMER_PENDING, "stream" => *label).set(pending as f64);
                metrics::gauge!(names::CONSUMER_ACK_PENDING, "stream" => *label)
                    .set(ack_pending as f64);
            }
        }
    }
}

/// The routers' consumers (one per tenant): the events lag, summed, and each tenant's
/// backlog (the tenants without a label of their own summed as `other`). A tenant whose
/// consumer is gone is set to 0 once, not left at its last value.
async fn tenant_backlogs(layout: &Layout) {
    static SEEN: std::sync::Mutex<Vec<&'static str>> = std::sync::Mutex::new(Vec::new());
    let subjects = &layout.subjects;
    let Ok(stream) = layout.js.get_stream(subjects.events_stream()).await else {
        return;
    };
    let Ok(consumers) =
        gancho_store::by_tenant::consumers(&stream, subjects, &subjects.router_consumer()).await
    else {
        return;
    };
    let (mut pending, mut ack_pending) = (0u64, 0u64);
    let mut by_label: std::collections::HashMap<&'static str, u64> = Default::default();
    for (tenant, info) in &consumers {
        pending += info.num_pending;
        ack_pending += info.num_ack_pending as u64;
        if !tenant.is_empty() {
            *by_label
                .entry(gancho_telemetry::tenant_label(tenant))
                .or_default() += info.num_pending + info.num_ack_pending as u64;
        }
    }
    metrics::gauge!(names::CONSUMER_PENDING, "stream" => "events").set(pending as f64);
    metrics::gauge!(names::CONSUMER_ACK_PENDING, "stream" => "events").set(ack_pending as f64);
    let mut seen = SEEN.lock().unwrap_or_else(|e| e.into_inner());
    for label in seen.iter() {
        by_label.entry(label).or_default();
    }
    for (label, n) in by_label {
        metrics::gauge!(names::TENANT_BACKLOG, "tenant" => label).set(n as f64);
        if !seen.contains(&label) {
            seen.push(label);
        }
    }
}

/// Bytes and messages in each stream against its limit, and JetStream's storage for the
/// account. The deliveries stream's limit is the router's room, set by the router. A worker
/// also says (at most every [`LOG_FULL_EVERY`]) when the attempt log or the dead letters are
/// at their size limit, so their oldest records are going.
async fn usage(layout: &Layout, worker: bool) {
    let subjects = &layout.subjects;
    let streams = [
        ("events", subjects.events_stream()),
        ("deliveries", subjects.deliveries_stream()),
        ("held", subjects.held_stream()),
        ("ordered", subjects.ordered_stream()),
        ("attempts", subjects.attempts_stream()),
        ("dead", subjects.dead_stream()),
    ];
    for (label, name) in streams {
        let Ok(mut stream) = layout.js.get_stream(&name).await else {
            continue;
        };
        let Ok(info) = stream.info().await else {
            continue;
        };
        metrics::gauge!(names::STREAM_BYTES, "stream" => label).set(info.state.bytes as f64);
        metrics::gauge!(names::STREAM_MESSAGES, "stream" => label).set(info.state.messages as f64);
        metrics::gauge!(names::STREAM_SUBJECTS, "stream" => label)
            .set(info.state.subjects_count as f64);
        if label != "deliveries" {
            metrics::gauge!(names::STREAM_MAX_BYTES, "stream" => label)
                .set(info.config.max_bytes as f64);
        }
        let (max, max_records) = (info.config.max_bytes, info.config.max_messages);
        metrics::gauge!(names::STREAM_MAX_MESSAGES, "stream" => label).set(if max_records > 0 {
            max_records as f64
        } else {
            -1.0
        });
        let near = |have: u64, max: i64| max > 0 && have as f64 >= LOG_AT_LIMIT * max as f64;
        let at_limit = near(info.state.bytes, max) || near(info.state.messages, max_records);
        if worker && at_limit && matches!(label, "attempts" | "dead") && log_full_due(label) {
            warn!(
                stream = %name,
                bytes = info.state.bytes,
                max_bytes = max,
                records = info.state.messages,
                max_records,
                oldest = %info.state.first_timestamp,
                "A log is at its size or record limit: its oldest records are dropped as new ones come (delivery goes on). Raise its limit to keep more."
            );
        }
    }
    if let Ok(account) = layout.js.query_account().await {
        metrics::gauge!(names::JETSTREAM_STORAGE).set(account.storage as f64);
        metrics::gauge!(names::JETSTREAM_STORAGE_LIMIT)
            .set(account.limits.max_storage.unwrap_or(-1) as f64);
    }
}

/// Share of a log's limit at which it counts as full.
const LOG_AT_LIMIT: f64 = 0.95;
/// How often a full log is logged, per log.
const LOG_FULL_EVERY: Duration = Duration::from_secs(3600);

/// Whether a full `log` is due to be logged again (and notes that it is).
fn log_full_due(log: &'static str) -> bool {
    static LAST: std::sync::Mutex<Vec<(&'static str, std::time::Instant)>> =
        std::sync::Mutex::new(Vec::new());
    let mut last = LAST.lock().unwrap_or_else(|e| e.into_inner());
    match last.iter_mut().find(|(l, _)| *l == log) {
        Some((_, at)) if at.elapsed() < LOG_FULL_EVERY => false,
        Some((_, at)) => {
            *at = std::time::Instant::now();
            true
        }
        None => {
            last.push((log, std::time::Instant::now()));
            true
        }
    }
}

/// `gancho secrets re-encrypt`: seals every endpoint secret with the current key and purges
/// older revisions, then says what it did.
pub async fn reencrypt(config: &Config) -> anyhow::Result<()> {
    let keys = config.keys.as_ref().ok_or_else(|| {
        crate::config::ConfigError(
            "missing encryption_key: set GANCHO_ENCRYPTION_KEY to the new key (and GANCHO_ENCRYPTION_OLD_KEY to the old one during a rotation)".into(),
        )
    })?;
    let url = config.require_nats_url()?.to_owned();
    let client = connect(&url, "gancho-secrets".into()).await?;
    let keyring = keys.keyring();
    let id = keyring.current_id().unwrap_or_default().to_owned();
    let layout = gancho_store::ensure(
        jetstream::new(client),
        config.subjects.clone(),
        config.stream_replicas,
    )
    .await
    .context("cannot open the JetStream layout")?
    .with_keyring(keyring);
    layout
        .keyring
        .check(&layout.config)
        .await
        .map_err(crate::config::ConfigError)?;
    let (rewritten, purged) = gancho_store::ConfigStore::new(&layout)
        .reencrypt()
        .await
        .context("re-encryption stopped; run it again")?;
    println!(
        "Sealed {rewritten} endpoint(s) with key {id}; purged older revisions of {purged} record(s). GANCHO_ENCRYPTION_OLD_KEY can now be removed."
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nats_url_lists_parse_and_errors_hide_credentials() {
        let servers = nats_servers("nats://a:4222, nats://b:4222,nats://user:pw@c:4222").unwrap();
        assert_eq!(servers.len(), 3);
        assert_eq!(nats_servers("nats://a:4222").unwrap().len(), 1);
        let err = nats_servers("nats://a:4222,nats://user:hunter22@c:notaport")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("GANCHO_NATS_URL") && err.contains("***@c:notaport"),
            "{err}"
        );
        assert!(!err.contains("hunter22"), "{err}");
        assert!(nats_servers(" , ").is_err());
    }
}
