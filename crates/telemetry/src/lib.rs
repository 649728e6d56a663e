//! Observability shared by every role: every metric name with its help text ([`names`]), the
//! Prometheus recorder, the small HTTP server for `/metrics`, `/healthz` and `/readyz`, and
//! the tracing subscriber.

pub mod kept;
pub mod names;
pub mod traces;

use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Buckets for HTTP attempt durations, in seconds: 1 ms to 30 s (the longest timeout).
const ATTEMPT_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 30.0,
];
/// Buckets for end-to-end latency, in seconds: 1 ms to an hour, then 6 hours and a day for
/// deliveries that waited on retries.
const E2E_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    300.0, 900.0, 1800.0, 3600.0, 21600.0, 86400.0,
];
/// Buckets for JetStream publish latency, in seconds: 100 us to 5 s.
const PUBLISH_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// Buckets for a config change reaching a process, in seconds: 1 ms to 10 s.
const CONFIG_LAG_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
static TENANTS: OnceLock<Vec<&'static str>> = OnceLock::new();

/// A log line that can be written for every message in hand at once (a store that stops
/// taking writes fails them all): at most one a second, saying how many were left out.
pub struct EverySecond(std::sync::Mutex<(u64, u64)>);

impl EverySecond {
    pub const fn new() -> Self {
        Self(std::sync::Mutex::new((u64::MAX, 0)))
    }

    /// `Some(lines left out since the last one)` when a line may be written now.
    pub fn allow(&self) -> Option<u64> {
        static START: std::sync::LazyLock<std::time::Instant> =
            std::sync::LazyLock::new(std::time::Instant::now);
        let second = START.elapsed().as_secs();
        let mut state = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if state.0 == second {
            state.1 += 1;
            return None;
        }
        let left_out = state.1;
        *state = (second, 0);
        Some(left_out)
    }
}

impl Default for EverySecond {
    fn default() -> Self {
        Self::new()
    }
}

/// The `tenant` label value for `tenant`: its id when the operator listed it
/// (`GANCHO_METRICS_TENANTS`), otherwise `other`. Series stay bounded by the list.
pub fn tenant_label(tenant: &str) -> &'static str {
    tenant_slot(tenant).1
}

/// [`tenant_label`] with its place: 0 for `other`, 1 and on for the tenants listed, in the
/// order listed (for handles kept by tenant, [`kept`]).
pub fn tenant_slot(tenant: &str) -> (usize, &'static str) {
    let listed = TENANTS.get().into_iter().flatten();
    match listed.enumerate().find(|(_, t)| **t == tenant) {
        Some((i, t)) => (i + 1, t),
        None => (0, OTHER_TENANTS),
    }
}

/// The `tenant` label of every tenant not listed.
pub const OTHER_TENANTS: &str = "other";

/// Sets the tenants that get a `tenant` label of their own (once per process; a later call
/// is ignored). Their dead-letter counters start at 0, like the others.
pub fn set_metrics_tenants(tenants: &[String]) {
    let listed: Vec<&'static str> = tenants
        .iter()
        .map(|t| &*Box::leak(t.clone().into_boxed_str()))
        .collect();
    if TENANTS.set(listed).is_ok() {
        for t in TENANTS.get().into_iter().flatten() {
            names::zero_dead_letters(t);
        }
    }
}

/// Installs the process-wide Prometheus recorder (once; later calls return the same handle)
/// and registers every help text.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full(names::DELIVERY_ATTEMPT_DURATION.into()),
                    ATTEMPT_BUCKETS,
                )
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Full(names::DELIVERY_E2E.into()), E2E_BUCKETS)
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Full(names::TENANT_WAIT.into()), E2E_BUCKETS)
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(names::JETSTREAM_PUBLISH.into()),
                        PUBLISH_BUCKETS,
                    )
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(names::CONFIG_CHANGE_LAG.into()),
                        CONFIG_LAG_BUCKETS,
                    )
                })
                .expect("bucket lists are non-empty")
                .install_recorder()
                .expect("no other metrics recorder is installed");
            names::describe_all();
            handle
        })
        .clone()
}

/// Whether [`install`] has installed the process's recorder.
pub fn installed() -> bool {
    HANDLE.get().is_some()
}

/// CPU and memory of a process, from `/proc/<pid>` (Linux).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ProcessUsage {
    /// User plus system CPU time, in seconds.
    pub cpu_seconds: f64,
    /// Resident memory now, in bytes.
    pub rss_bytes: f64,
    /// Peak resident memory (VmHWM), in bytes.
    pub peak_rss_bytes: f64,
}

/// Reads `pid`'s usage (`None`: no such process, or not Linux).
pub fn process_usage(pid: &str) -> Option<ProcessUsage> {
    // utime and stime, fields 14 and 15 of /proc/<pid>/stat, in USER_HZ ticks (100 a second
    // on every Linux ABI); the command name in field 2 may hold spaces, so count after it.
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')').map(|(_, r)| r)?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok());
    let cpu_seconds = (tick(11)? + tick(12)?) as f64 / 100.0;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
            * 1024.0
    };
    Some(ProcessUsage {
        cpu_seconds,
        rss_bytes: kib("VmRSS:"),
        peak_rss_bytes: kib("VmHWM:"),
    })
}

/// Samples this process's CPU time and resident memory into the process metrics.
pub fn record_process() {
    if let Some(u) = process_usage("self") {
        metrics::counter!(names::PROCESS_CPU).absolute((u.cpu_seconds * 1000.0) as u64);
        metrics::gauge!(names::PROCESS_RSS).set(u.rss_bytes);
    }
}

/// Readiness flag a role flips once it consumes.
#[derive(Clone, Default)]
pub struct Ready(Arc<AtomicBool>);

impl Ready {
    pub fn set(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
    pub fn get(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// Routes for `/metrics`, `/healthz` and `/readyz`, to serve alone or merge into the API.
pub fn routes(handle: PrometheusHandle, ready: Ready) -> Router {
    Router::new()
        .route("/metrics", get(move || std::future::ready(handle.render())))
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let ok = ready.get();
                async move {
                    if ok {
                        (axum::http::StatusCode::OK, "ready\n")
                    } else {
                        (axum::http::StatusCode::SERVICE_UNAVAILABLE, "starting\n")
                    }
                }
            }),
        )
}

/// Serves [`routes`] on `addr` until `cancel` fires. Returns the bound address.
pub async fn serve(
    addr: SocketAddr,
    handle: PrometheusHandle,
    ready: Ready,
    cancel: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(upkeep(handle.clone(), cancel.clone()));
    let app = routes(handle, ready);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(cancel.cancelled_owned())
            .await;
    });
    Ok(bound)
}

/// How often the recorder folds the histogram samples recorded since into their buckets.
/// Until then each sample is kept (8 bytes and its share of a block): without this, a
/// process nobody scrapes held every latency it ever recorded, about 58 bytes per delivery
/// in a worker and 23 per event in a router (a straight line over 15 minutes at 1,000
/// events/s). A scrape folds them too; this bounds them between scrapes.
pub const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// Folds the histograms every [`UPKEEP_EVERY`] until `cancel` fires. The recorder is
/// installed with `install_recorder`, which leaves this to its owner.
async fn upkeep(handle: PrometheusHandle, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(UPKEEP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => handle.run_upkeep(),
        }
    }
}

/// Logs to stderr, as text or (`json`) one JSON object per line; `RUST_LOG` overrides the
/// default `info` level.
pub fn init_tracing(json: bool) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,async_nats=warn,hyper=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    let _ = if json {
        builder.json().flatten_event(true).try_init()
    } else {
        builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init()
    };
}
