//! `gancho bench`: gancho measured as operators run it. It starts its own nats-server, a
//! `gancho sink` (HTTPS, its own process), the api, the router and `--workers` workers as
//! separate processes of this binary; creates a tenant with `--endpoints` endpoints through the
//! API (a `--dead-share` of them pointing at a black hole that accepts connections and never
//! answers); sends `--events` events over NATS or HTTP ingest, as a backlog or at `--rate`;
//! and reports the ingest rate, the delivery rate to the healthy endpoints, end-to-end
//! latency (event time to arrival at the sink) p50/p90/p99/max, CPU seconds and peak RSS of
//! every process, deferrals and failed attempts; with `--config-changes`, how long a config
//! change takes to reach every role. `--json` prints one JSON object. `--floor` measures the
//! floor under all that instead: the same deliveries from a bare client, with no gancho role.

mod floor;
mod soak;

use crate::manage::{call, Conn};
use anyhow::{bail, Context as _};
use async_nats::jetstream::{self, message::PublishMessage};
use bytes::Bytes;
use gancho_proto::Message as _;
use http_body_util::{BodyExt, Full};
use serde_json::{json, Value};
use soak::{Fault, Faults, Samples, SAMPLE_EVERY};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// Endpoints of the benchmark tenant, each subscribed to every event.
    #[arg(long, default_value_t = 10)]
    pub endpoints: usize,
    /// Events to send; each is delivered to every endpoint (or to `--fan-out` of them).
    #[arg(long, default_value_t = 10_000)]
    pub events: usize,
    /// Endpoints each event goes to, when not all: the endpoints are dealt into groups of
    /// this size, each subscribed to a type of its own, and the events take the types in
    /// turn (so `--endpoints 100 --fan-out 1` spreads the events over 100 endpoints).
    #[arg(long)]
    pub fan_out: Option<usize>,
    /// Bytes of each event's JSON payload.
    #[arg(long, default_value_t = 1024)]
    pub payload_bytes: usize,
    /// Share of endpoints (0 to 0.9) that accept connections and never answer.
    #[arg(long, default_value_t = 0.0)]
    pub dead_share: f64,
    /// Share of requests (0 to 0.5) the sink answers 500 at random, so deliveries are
    /// retried (on the endpoints' schedule: the next attempt comes 5 s later).
    #[arg(long, default_value_t = 0.0)]
    pub fail_share: f64,
    /// Share of the healthy endpoints (0 to 1) given a jq filter that lets every event
    /// through (`.data.n >= 0`): what filtering costs the router.
    #[arg(long, default_value_t = 0.0)]
    pub filter_share: f64,
    /// Each filtered endpoint gets a program of its own text (`.data.n >= -<i>`), as many
    /// tenants' own filters would: what compiled programs weigh in every role.
    #[arg(long)]
    pub distinct_filters: bool,
    /// A jq transform on every healthy endpoint, e.g. '{n: .data.n, type: .type}': what
    /// transforming costs the worker.
    #[arg(long)]
    pub transform: Option<String>,
    /// Ordered delivery on every healthy endpoint (`ordering: key`, `ordering_key: /k`), the
    /// events taking this many keys in turn: what ordering costs against the same run
    /// unordered.
    #[arg(long)]
    pub ordering_keys: Option<usize>,
    /// Timeout of the dead endpoints, e.g. 5s.
    #[arg(long, default_value = "5s")]
    pub dead_timeout: String,
    /// Events per second; 0 sends them as a backlog, as fast as JetStream takes them.
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// How events come in: nats (protobuf on JetStream, as platform services do) or http
    /// (POST .../events/batch).
    #[arg(long, default_value = "nats", value_parser = ["nats", "http"])]
    pub via: String,
    /// Worker processes.
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// Each healthy endpoint's rate limit (requests per second); the report gives the
    /// busiest endpoint's rate as the sink saw it, to check the limit holds for the fleet.
    #[arg(long)]
    pub rate_limit: Option<u32>,
    /// Deliver to this HTTPS URL (path /e<N> appended) instead of a local sink; the rate and
    /// the latency then come from gancho's metrics side only (no sink statistics).
    #[arg(long)]
    pub target: Option<String>,
    /// Before sending, change this many endpoints one at a time (their description) and
    /// report how long each change took to reach every role (from its write to the config
    /// bucket to the role's snapshot having it).
    #[arg(long, default_value_t = 0)]
    pub config_changes: usize,
    /// Give up waiting for the deliveries after this long, e.g. 10m.
    #[arg(long, default_value = "10m")]
    pub timeout: String,
    /// Run for this long at `--rate` (which it requires; `--events` is then the rate times
    /// the duration), e.g. 30m: each process's resident memory is sampled every 10 s and the
    /// report gives the series and its slope after `--warm-up`, to see memory that grows
    /// with traffic. Nothing scrapes the roles' /metrics meanwhile, as in a process no
    /// Prometheus watches.
    #[arg(long, requires = "rate", conflicts_with = "floor")]
    pub soak: Option<String>,
    /// The part of a `--soak` run left out of the slope, e.g. 5m.
    #[arg(long, default_value = "5m", requires = "soak")]
    pub warm_up: String,
    /// In a `--soak` run, a fault this often, e.g. 3m: a worker SIGKILLed and started again,
    /// the router the same, nats-server SIGKILLed and started again on its store, the sink
    /// answering 503 for 30 s, in turn. The run then fails unless, after the warm-up, no
    /// role's memory or open descriptors grew by more than 10% (the rise of the line through
    /// their medians of each fault cycle: from one fault to the next of the same kind) and
    /// what waits in the deliveries and held streams
    /// was back under one second of traffic after every fault (and, as always, every
    /// delivery arrived).
    #[arg(long, requires = "soak")]
    pub faults: Option<String>,
    /// One JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Measure the floor under gancho instead of gancho: no api, router or worker; this
    /// process stores each event in JetStream under its id and reads it back, stores and
    /// reads back the delivery messages gancho would write for it (one per partition of its
    /// endpoints), POSTs the same deliveries (payload, concurrency) over HTTP/2 and TLS to
    /// the sink and stores one attempt-sized record per delivery, awaiting every PubAck.
    /// Reports each process's CPU per delivery and the rate they would allow.
    #[arg(long, conflicts_with_all = ["target", "dead_share", "rate", "config_changes", "fail_share", "fan_out"])]
    pub floor: bool,
    /// Compare this build with another: run the same scenario with the api, router and
    /// workers of OLD_BINARY and of this binary in alternating rounds (the sink and
    /// nats-server are the same for both), and print each process's CPU per delivery as a
    /// ratio to the sink's, per round and as medians, with the change from OLD_BINARY. A
    /// machine's speed drifts within minutes; ratios taken in the same rounds do not.
    #[arg(long, value_name = "OLD_BINARY", conflicts_with_all = ["floor", "soak", "target"])]
    pub compare: Option<PathBuf>,
    /// Rounds of `--compare` or `--compare-floor`: each runs both sides, in turns that
    /// alternate which goes first.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Measure gancho against its floor (`--floor`) at each fan-out of `--fan-outs`: the
    /// floor and gancho in alternating rounds, `--endpoints` set to the fan-out and
    /// `--events` to `--deliveries` over it (a backlog, 1 KiB payloads unless
    /// `--payload-bytes`). Prints each process's CPU per delivery, and gancho's over the
    /// floor's: in all, the roles' and the worker's over the floor's client, nats-server's
    /// and the sink's over the same in the floor; per round and as medians.
    #[arg(long, conflicts_with_all = ["floor", "compare", "soak", "target", "dead_share", "rate", "config_changes", "fail_share", "fan_out", "filter_share", "transform", "ordering_keys", "via"])]
    pub compare_floor: bool,
    /// The fan-outs of `--compare-floor`.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1,10,100,1000",
        requires = "compare_floor"
    )]
    pub fan_outs: Vec<usize>,
    /// Deliveries in each run of `--compare-floor`, whatever the fan-out.
    #[arg(long, default_value_t = 100_000, requires = "compare_floor")]
    pub deliveries: usize,
}

const TENANT: &str = "bench";
const TOKEN_LEN: usize = 32;

/// A process of the run, killed on drop.
struct Proc {
    name: String,
    child: Child,
}

impl Proc {
    /// (peak RSS in MiB, CPU seconds) from /proc.
    fn usage(&self) -> (f64, f64) {
        self.child
            .id()
            .and_then(|pid| gancho_telemetry::process_usage(&pid.to_string()))
            .map_or((0.0, 0.0), |u| {
                (u.peak_rss_bytes / (1024.0 * 1024.0), u.cpu_seconds)
            })
    }
}

/// A port that was free a moment ago, for a role to listen on. Below the kernel's ephemeral
/// range (32768 and up on Linux): a port the kernel handed out for `:0` could be taken by any
/// outgoing connection of a busy machine before the role binds it ("Address already in use"
/// failed two benches of one `make test`). Handed out in turn from a start that differs per
/// process, as the test harness does.
fn free_port() -> anyhow::Result<u16> {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        (std::process::id().wrapping_mul(104_729)) % SPAN,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    for _ in 0..SPAN {
        let port = (LOW + NEXT.fetch_add(1, Ordering::Relaxed) % SPAN) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    anyhow::bail!("no free port on 127.0.0.1 from {LOW} to {}", LOW + SPAN)
}

/// A CA and a certificate for 127.0.0.1 signed by it, written as PEM files under `dir`.
fn tls_files(dir: &Path) -> anyhow::Result<(PathBuf, PathBuf, PathBuf)> {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose};
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "gancho bench CA");
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, ca_key);
    let leaf_key = KeyPair::generate()?;
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])?
        .signed_by(&leaf_key, &issuer)?;
    let (ca_path, cert_path, key_path) = (
        dir.join("ca.pem"),
        dir.join("sink.pem"),
        dir.join("sink-key.pem"),
    );
    std::fs::write(&ca_path, ca_cert.pem())?;
    std::fs::write(&cert_path, leaf.pem() + &ca_cert.pem())?;
    std::fs::write(&key_path, leaf_key.serialize_pem())?;
    Ok((ca_path, cert_path, key_path))
}

/// Accepts connections and never answers: a dead endpoint.
async fn black_hole() -> anyhow::Result<u16> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    Ok(port)
}

async fn get_json(client: &HttpClient, url: &str) -> Option<Value> {
    let req = http::Request::get(url).body(Full::new(Bytes::new())).ok()?;
    let resp = tokio::time::timeout(Duration::from_secs(5), client.request(req))
        .await
        .ok()?
        .ok()?;
    let body = resp.into_body().collect().await.ok()?.to_bytes();
    serde_json::from_slice(&body).ok()
}

async fn get_text(client: &HttpClient, url: &str) -> String {
    let Ok(req) = http::Request::get(url).body(Full::new(Bytes::new())) else {
        return String::new();
    };
    match tokio::time::timeout(Duration::from_secs(5), client.request(req)).await {
        Ok(Ok(resp)) => resp
            .into_body()
            .collect()
            .await
            .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
            .unwrap_or_default(),
        _ => String::new(),
    }
}

/// The sum of every sample of `family` in a Prometheus page whose labels contain `filter`.
fn metric_sum(page: &str, family: &str, filter: &str) -> f64 {
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let name = series.split('{').next()?;
            (name == family && series.contains(filter)).then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

type HttpClient = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Full<Bytes>,
>;

/// A client trusting `ca` (only); with `http2`, it offers HTTP/2 by ALPN, as the worker does.
fn http_client(ca: &Path, http2: bool) -> anyhow::Result<HttpClient> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut std::fs::read(ca)?.as_slice()) {
        roots.add(cert?)?;
    }
    let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1();
    let https = if http2 {
        builder.enable_http2().build()
    } else {
        builder.build()
    };
    Ok(
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(https),
    )
}

fn duration_arg(name: &str, v: &str) -> anyhow::Result<Duration> {
    humantime::parse_duration(v.trim())
        .with_context(|| format!("--{name} {v:?}: expected a duration like 5s or 10m"))
}

/// Shared flags `gancho bench` sets for its processes itself. `--nats-url` is not one of them:
/// given on bench's command line, it names an existing server or cluster to run on
/// ([`Cluster`]).
const SET_BY_BENCH: [&str; 8] = [
    "GANCHO_SUBJECT_PREFIX",
    "GANCHO_ADMIN_TOKEN",
    "GANCHO_ENCRYPTION_KEY",
    "GANCHO_ENCRYPTION_OLD_KEY",
    "GANCHO_API_LISTEN",
    "GANCHO_METRICS_LISTEN",
    "GANCHO_EXTRA_CA_FILE",
    "GANCHO_ALLOW_PRIVATE_ENDPOINTS",
];

/// The shared flags given on bench's command line (`--worker-concurrency 128`, `--config
/// f.toml`, ...), as the environment variables of the processes it starts, which read them
/// from there: without this they would apply to the bench process alone, and a run would
/// silently measure the defaults. A flag bench sets itself is refused.
pub fn forwarded(matches: &clap::ArgMatches) -> anyhow::Result<Vec<(String, std::ffi::OsString)>> {
    use clap::Args as _;
    let shared = crate::config::Flags::augment_args(clap::Command::new("gancho"));
    let mut out = Vec::new();
    for arg in shared.get_arguments() {
        let id = arg.get_id().as_str();
        let Some(env) = arg.get_env().and_then(|e| e.to_str()) else {
            continue;
        };
        if matches.value_source(id) != Some(clap::parser::ValueSource::CommandLine) {
            continue;
        }
        if SET_BY_BENCH.contains(&env) {
            bail!(
                "gancho bench starts its own nats-server and roles and sets --{} itself; leave it out",
                arg.get_long().unwrap_or(id)
            );
        }
        let values: Vec<&std::ffi::OsStr> = matches.get_raw(id).into_iter().flatten().collect();
        out.push((env.to_owned(), values.join(std::ffi::OsStr::new(","))));
    }
    Ok(out)
}

/// The forwarded settings as the report shows them; a proxy URL may carry credentials, so
/// only its presence is shown.
fn settings(forwarded: &[(String, std::ffi::OsString)]) -> Value {
    forwarded
        .iter()
        .map(|(k, v)| {
            let shown = if k.contains("PROXY") {
                "(set)".to_owned()
            } else {
                v.to_string_lossy().into_owned()
            };
            (k.clone(), Value::String(shown))
        })
        .collect::<serde_json::Map<_, _>>()
        .into()
}

pub async fn run(
    mut args: BenchArgs,
    mut forwarded: Vec<(String, std::ffi::OsString)>,
) -> anyhow::Result<()> {
    let cluster = forwarded
        .iter()
        .position(|(k, _)| k == "GANCHO_NATS_URL")
        .map(|i| forwarded.remove(i).1.to_string_lossy().into_owned());
    if cluster.is_some() && args.floor {
        bail!("--floor runs on a nats-server of its own; leave out --nats-url");
    }
    let soak = match &args.soak {
        Some(d) => {
            let run = duration_arg("soak", d)?;
            let warm_up = duration_arg("warm-up", &args.warm_up)?;
            if warm_up + SAMPLE_EVERY * 3 > run {
                bail!("--warm-up must leave at least 30 s of the --soak run to measure");
            }
            args.events = (args.rate as f64 * run.as_secs_f64()).round() as usize;
            Some((run, warm_up))
        }
        None => None,
    };
    if args.endpoints == 0 || args.events == 0 || args.workers == 0 {
        bail!("--endpoints, --events and --workers must be at least 1");
    }
    if !(0.0..=0.9).contains(&args.dead_share) {
        bail!("--dead-share must be from 0 to 0.9");
    }
    if let Some(f) = args.fan_out {
        if f == 0 || f > args.endpoints || !args.endpoints.is_multiple_of(f) {
            bail!("--fan-out must be from 1 to --endpoints and divide it");
        }
    }
    if !(0.0..=0.5).contains(&args.fail_share) {
        bail!("--fail-share must be from 0 to 0.5");
    }
    if !(0.0..=1.0).contains(&args.filter_share) {
        bail!("--filter-share must be from 0 to 1");
    }
    let dead_timeout = duration_arg("dead-timeout", &args.dead_timeout)?;
    let patience = duration_arg("timeout", &args.timeout)?;
    // A soak's deliveries take the whole run to be sent.
    let patience = soak.map_or(patience, |(run, _)| patience + run);
    let soak = soak.map(|(_, warm_up)| warm_up);
    let dead = (args.endpoints as f64 * args.dead_share).round() as usize;
    let healthy = args.endpoints - dead;
    if healthy == 0 {
        bail!("--dead-share leaves no healthy endpoint to measure");
    }

    let faults = args
        .faults
        .as_deref()
        .map(|f| duration_arg("faults", f))
        .transpose()?;
    if faults.is_some() && cluster.is_some() {
        bail!("--faults restarts nats-server, so it runs on a nats-server of its own; leave out --nats-url");
    }
    let shape = Shape {
        dead,
        healthy,
        dead_timeout,
        patience,
        soak,
        faults,
        cluster,
    };
    if let Some(old) = &args.compare {
        return compare(&args, &forwarded, old, shape).await;
    }
    if args.compare_floor {
        return compare_floor(&args, &forwarded, shape).await;
    }
    let report = bench_in_dir(&args, &forwarded, &std::env::current_exe()?, shape).await?;
    if args.json {
        println!("{report}");
    } else if args.floor {
        print_floor(&report);
    } else {
        print_report(&report);
    }
    soak_verdict(&report)
}

/// An error when a `--soak` run with `--faults` failed its checks.
fn soak_verdict(report: &Value) -> anyhow::Result<()> {
    let failed: Vec<&str> = report["soak"]["failed"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    if !failed.is_empty() {
        bail!("the soak failed: {}", failed.join("; "));
    }
    Ok(())
}

/// One run in a directory of its own, removed after it unless the run failed (its error
/// names the directory: the roles' logs and nats-server's store stay there to look into).
async fn bench_in_dir(
    args: &BenchArgs,
    forwarded: &[(String, std::ffi::OsString)],
    roles: &Path,
    shape: Shape,
) -> anyhow::Result<Value> {
    static RUN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = RUN.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("gancho-bench-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let cluster = shape.cluster.clone().map(Cluster::new).transpose()?;
    let result = bench(args, forwarded, &dir, roles, shape, cluster.as_ref()).await;
    if result.is_ok() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    if let Some(cluster) = &cluster {
        // The roles were killed when the run ended; give them a moment to be gone.
        tokio::time::sleep(Duration::from_millis(500)).await;
        cluster.clean_up().await.with_context(|| {
            format!(
                "cleaning up after the run on {}: remove the streams and buckets named {}_* by hand",
                cluster.url,
                cluster.subjects.prefix()
            )
        })?;
    }
    result
}

/// `--compare OLD_BINARY`: alternating rounds of the two builds' roles on one scenario; each
/// process's CPU per delivery over the sink's, per round and as medians.
async fn compare(
    args: &BenchArgs,
    forwarded: &[(String, std::ffi::OsString)],
    old: &Path,
    shape: Shape,
) -> anyhow::Result<()> {
    if args.rounds == 0 {
        bail!("--rounds must be at least 1");
    }
    let old = std::fs::canonicalize(old)
        .with_context(|| format!("--compare: no binary at {}", old.display()))?;
    let new = std::env::current_exe()?;
    let builds = [("old", old.as_path()), ("new", new.as_path())];
    let mut runs = Vec::new();
    for round in 1..=args.rounds {
        // The build that goes first alternates, so neither always meets a warmer machine.
        let order = if round % 2 == 1 { [0, 1] } else { [1, 0] };
        for i in order {
            let (build, exe) = builds[i];
            if !args.json {
                eprintln!(
                    "round {round} of {}: {build} ({})",
                    args.rounds,
                    exe.display()
                );
            }
            let report = bench_in_dir(args, forwarded, exe, shape.clone()).await?;
            runs.push(json!({
                "round": round,
                "build": build,
                "deliveries_per_s": report["deliveries_per_s"],
                "duplicates": report["duplicates"],
                "cpu_over_sink": cpu_over_sink(&report),
            }));
        }
    }
    let summary = compare_summary(&runs);
    let report = json!({
        "old": old.display().to_string(),
        "new": new.display().to_string(),
        "rounds": runs,
        "medians": summary,
        "settings": settings(forwarded),
    });
    if args.json {
        println!("{report}");
    } else {
        print_compare(&report);
    }
    Ok(())
}

/// `--compare-floor`: at each fan-out, alternating rounds of the floor and of gancho (this
/// binary's roles) on the same deliveries; each process's CPU per delivery, and gancho's
/// over the floor's.
async fn compare_floor(
    args: &BenchArgs,
    forwarded: &[(String, std::ffi::OsString)],
    shape: Shape,
) -> anyhow::Result<()> {
    if args.rounds == 0 {
        bail!("--rounds must be at least 1");
    }
    if let Some(f) = args
        .fan_outs
        .iter()
        .find(|f| **f == 0 || **f > args.deliveries)
    {
        bail!(
            "--fan-outs: {f} is not from 1 to --deliveries ({})",
            args.deliveries
        );
    }
    let exe = std::env::current_exe()?;
    let mut scenarios = Vec::new();
    for &fan_out in &args.fan_outs {
        let mut run_args = args.clone();
        run_args.compare_floor = false;
        run_args.endpoints = fan_out;
        run_args.events = args.deliveries / fan_out;
        let shape = Shape {
            dead: 0,
            healthy: fan_out,
            ..shape.clone()
        };
        let mut rounds = Vec::new();
        for round in 1..=args.rounds {
            // Which side goes first alternates, so neither always meets a warmer machine.
            let sides = if round % 2 == 1 {
                [true, false]
            } else {
                [false, true]
            };
            let (mut floor, mut gancho) = (Value::Null, Value::Null);
            for is_floor in sides {
                if !args.json {
                    eprintln!(
                        "fan-out {fan_out}, round {round} of {}: {}",
                        args.rounds,
                        if is_floor { "floor" } else { "gancho" }
                    );
                }
                run_args.floor = is_floor;
                let report = bench_in_dir(&run_args, forwarded, &exe, shape.clone()).await?;
                if is_floor {
                    floor = report;
                } else {
                    gancho = report;
                }
            }
            rounds.push(floor_round(round, &floor, &gancho));
        }
        scenarios.push(json!({
            "fan_out": fan_out,
            "events": run_args.events,
            "deliveries": run_args.events * fan_out,
            "medians": floor_medians(&rounds),
            "rounds": rounds,
        }));
    }
    let report = json!({
        "payload_bytes": args.payload_bytes,
        "workers": args.workers,
        "scenarios": scenarios,
        "settings": settings(forwarded),
    });
    if args.json {
        println!("{report}");
    } else {
        print_compare_floor(&report);
    }
    Ok(())
}

/// Each process's CPU per delivery in microseconds, by name, after set-up; gancho's workers
/// summed as `workers`, and `all`.
fn us_per_delivery(report: &Value) -> std::collections::BTreeMap<String, f64> {
    let deliveries = report["deliveries"].as_f64().unwrap_or(0.0);
    let mut out = std::collections::BTreeMap::new();
    if deliveries <= 0.0 {
        return out;
    }
    for p in report["processes"].as_array().into_iter().flatten() {
        let used = p["cpu_s"].as_f64().unwrap_or(0.0) - p["setup_cpu_s"].as_f64().unwrap_or(0.0);
        let name = p["name"].as_str().unwrap_or("?");
        let name = if name.starts_with("worker") {
            "workers"
        } else {
            name
        };
        let us = used / deliveries * 1e6;
        *out.entry(name.to_owned()).or_default() += us;
        *out.entry("all".to_owned()).or_default() += us;
    }
    out
}

/// One round of `--compare-floor`: both sides' CPU per delivery, and the ratios.
fn floor_round(round: usize, floor: &Value, gancho: &Value) -> Value {
    let f = us_per_delivery(floor);
    let g = us_per_delivery(gancho);
    let get =
        |m: &std::collections::BTreeMap<String, f64>, k: &str| m.get(k).copied().unwrap_or(0.0);
    let roles = get(&g, "api") + get(&g, "router") + get(&g, "workers");
    let over = |a: f64, b: f64| (b > 0.0).then(|| (a / b * 1000.0).round() / 1000.0);
    let round_us = |m: &std::collections::BTreeMap<String, f64>| -> Value {
        m.iter()
            .map(|(k, v)| (k.clone(), json!((v * 10.0).round() / 10.0)))
            .collect::<serde_json::Map<_, _>>()
            .into()
    };
    json!({
        "round": round,
        "floor_per_s": floor["deliveries_per_s"],
        "gancho_per_s": gancho["deliveries_per_s"],
        "duplicates": gancho["duplicates"],
        "floor_us": round_us(&f),
        "gancho_us": round_us(&g),
        "ratios": {
            "all": over(get(&g, "all"), get(&f, "all")),
            "roles / client": over(roles, get(&f, "client")),
            "worker / client": over(get(&g, "workers"), get(&f, "client")),
            "nats-server": over(get(&g, "nats-server"), get(&f, "nats-server")),
            "sink": over(get(&g, "sink"), get(&f, "sink")),
        },
    })
}

/// The median of `v`, or `None` when it is empty.
fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    })
}

/// The ratios of `--compare-floor`, gancho's over the floor's, in the order they are printed.
const FLOOR_RATIOS: [&str; 5] = [
    "all",
    "roles / client",
    "worker / client",
    "nats-server",
    "sink",
];

/// The median of each ratio and of each side's CPU in all over the rounds.
fn floor_medians(rounds: &[Value]) -> Value {
    let of = |path: &[&str]| {
        median(
            rounds
                .iter()
                .filter_map(|r| path.iter().fold(r, |v, k| &v[*k]).as_f64())
                .collect(),
        )
    };
    let mut out = serde_json::Map::new();
    out.insert("floor_us".into(), json!(of(&["floor_us", "all"])));
    out.insert("gancho_us".into(), json!(of(&["gancho_us", "all"])));
    for k in FLOOR_RATIOS {
        out.insert(k.into(), json!(of(&["ratios", k])));
    }
    out.into()
}

fn print_compare_floor(r: &Value) {
    println!(
        "gancho against its floor: CPU per delivery, {} B payloads, {} worker(s), a backlog",
        num(&r["payload_bytes"]),
        num(&r["workers"])
    );
    for s in r["scenarios"].as_array().into_iter().flatten() {
        println!(
            "\nfan-out {} ({} events, {} deliveries)",
            num(&s["fan_out"]),
            num(&s["events"]),
            num(&s["deliveries"])
        );
        println!(
            "  round   floor/s  gancho/s  floor us  gancho us    all  roles/client  worker/client  nats-server   sink"
        );
        let row = |label: String, per_s: (String, String), us: (&Value, &Value), ratios: &Value| {
            let r: Vec<String> = FLOOR_RATIOS.iter().map(|k| ratio(&ratios[*k])).collect();
            println!(
                "  {label:>5}  {:>8}  {:>8}  {:>8}  {:>9}  {:>5}  {:>12}  {:>13}  {:>11}  {:>5}",
                per_s.0,
                per_s.1,
                num(us.0),
                num(us.1),
                r[0],
                r[1],
                r[2],
                r[3],
                r[4]
            );
        };
        for round in s["rounds"].as_array().into_iter().flatten() {
            row(
                num(&round["round"]),
                (num(&round["floor_per_s"]), num(&round["gancho_per_s"])),
                (&round["floor_us"]["all"], &round["gancho_us"]["all"]),
                &round["ratios"],
            );
        }
        let m = &s["medians"];
        row(
            "median".into(),
            (String::new(), String::new()),
            (&m["floor_us"], &m["gancho_us"]),
            m,
        );
    }
}

/// Each process's CPU after set-up over the sink's, by name (the sink's own is 1). With the
/// same deliveries in both, it is the process's CPU per delivery in units of the sink's.
fn cpu_over_sink(report: &Value) -> serde_json::Map<String, Value> {
    let used =
        |p: &Value| p["cpu_s"].as_f64().unwrap_or(0.0) - p["setup_cpu_s"].as_f64().unwrap_or(0.0);
    let procs = report["processes"].as_array().cloned().unwrap_or_default();
    let sink = procs
        .iter()
        .find(|p| p["name"] == "sink")
        .map(used)
        .unwrap_or(0.0);
    procs
        .iter()
        .filter(|p| p["name"] != "sink" && sink > 0.0)
        .map(|p| {
            let name = p["name"].as_str().unwrap_or("?").to_owned();
            (name, json!((used(p) / sink * 1000.0).round() / 1000.0))
        })
        .collect()
}

/// The medians of each build's rounds: deliveries per second and each process's CPU over
/// the sink's, with the new build's change from the old as a share.
fn compare_summary(runs: &[Value]) -> Value {
    let of = |build: &str, f: &dyn Fn(&Value) -> Option<f64>| {
        median(
            runs.iter()
                .filter(|r| r["build"] == build)
                .filter_map(f)
                .collect(),
        )
    };
    let mut names: Vec<String> = runs
        .iter()
        .filter_map(|r| r["cpu_over_sink"].as_object())
        .flat_map(|m| m.keys().cloned())
        .collect();
    names.sort();
    names.dedup();
    let change = |old: Option<f64>, new: Option<f64>| match (old, new) {
        // A process that hardly ran (the api, with events over NATS) has no change to speak of.
        (Some(o), Some(n)) if o >= 0.01 => Some(((n / o - 1.0) * 1000.0).round() / 1000.0),
        _ => None,
    };
    let mut rows = vec![{
        let f = |r: &Value| r["deliveries_per_s"].as_f64();
        let (old, new) = (of("old", &f), of("new", &f));
        json!({"what": "deliveries/s", "old": old, "new": new, "change": change(old, new)})
    }];
    for name in names {
        let f = |r: &Value| r["cpu_over_sink"][name.as_str()].as_f64();
        let (old, new) = (of("old", &f), of("new", &f));
        rows.push(
            json!({"what": format!("{name} CPU / sink CPU"), "old": old, "new": new,
            "change": change(old, new)}),
        );
    }
    Value::Array(rows)
}

fn print_compare(r: &Value) {
    println!(
        "old: {}\nnew: {}",
        r["old"].as_str().unwrap_or("?"),
        r["new"].as_str().unwrap_or("?")
    );
    println!("  round  build  deliveries/s  duplicates  CPU per delivery over the sink's");
    for run in r["rounds"].as_array().into_iter().flatten() {
        let cpu = run["cpu_over_sink"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| format!("{k} {}", ratio(v)))
                    .collect::<Vec<_>>()
                    .join("  ")
            })
            .unwrap_or_default();
        println!(
            "  {:>5}  {:<5}  {:>12}  {:>10}  {cpu}",
            num(&run["round"]),
            run["build"].as_str().unwrap_or("?"),
            num(&run["deliveries_per_s"]),
            num(&run["duplicates"]),
        );
    }
    println!("  medians                         old        new     change");
    for row in r["medians"].as_array().into_iter().flatten() {
        let change = row["change"]
            .as_f64()
            .map_or("-".to_owned(), |c| format!("{:+.1}%", c * 100.0));
        let what = row["what"].as_str().unwrap_or("?");
        let show = |v: &Value| {
            if what == "deliveries/s" {
                num(v)
            } else {
                ratio(v)
            }
        };
        println!(
            "  {what:<28} {:>8}   {:>8}   {change:>7}",
            show(&row["old"]),
            show(&row["new"]),
        );
    }
}

/// A ratio to two decimals, or `-`.
fn ratio(v: &Value) -> String {
    v.as_f64().map_or("-".to_owned(), |r| format!("{r:.2}"))
}

/// What `run` made of the arguments.
#[derive(Clone)]
struct Shape {
    dead: usize,
    healthy: usize,
    dead_timeout: Duration,
    patience: Duration,
    /// `--soak`: its warm-up.
    soak: Option<Duration>,
    /// `--faults`: how often.
    faults: Option<Duration>,
    /// `--nats-url`: run on this server or cluster instead of a nats-server of its own.
    cluster: Option<String>,
}

/// A run on an existing server or cluster (`--nats-url`): its streams and buckets carry a
/// subject prefix of their own, deleted after the run, so nothing of the cluster's own
/// gancho (or of another run) is touched.
struct Cluster {
    url: String,
    subjects: gancho_core::Subjects,
}

impl Cluster {
    fn new(url: String) -> anyhow::Result<Self> {
        let suffix: u32 = rand::random();
        let subjects = gancho_core::Subjects::new(&format!("bench-{suffix:08x}"))
            .map_err(|e| anyhow::anyhow!("a bench subject prefix: {e}"))?;
        Ok(Self { url, subjects })
    }

    /// How the deliveries stream is replicated: replicas, leader and peers.
    async fn replication(&self) -> anyhow::Result<Value> {
        let client = crate::roles::connect(&self.url, "gancho-bench".into()).await?;
        let version = client.server_info().version;
        let js = jetstream::new(client);
        let info = js
            .get_stream(self.subjects.deliveries_stream())
            .await?
            .info()
            .await?
            .clone();
        let cluster = info.cluster.as_ref();
        Ok(json!({
            "url": self.url,
            "version": version,
            "replicas": info.config.num_replicas,
            "cluster": cluster.and_then(|c| c.name.clone()),
            "leader": cluster.and_then(|c| c.leader.clone()),
            "peers": cluster.map(|c| c.replicas.iter().map(|p| p.name.clone()).collect::<Vec<_>>()),
        }))
    }

    /// Deletes the run's streams and buckets (the roles are stopped by then); one the run
    /// never made is no error.
    async fn clean_up(&self) -> anyhow::Result<()> {
        use jetstream::context::DeleteStreamErrorKind;
        use jetstream::ErrorCode;
        let js = jetstream::new(crate::roles::connect(&self.url, "gancho-bench".into()).await?);
        let s = &self.subjects;
        // A bucket is the stream KV_<bucket>.
        let buckets = [
            s.config_bucket(),
            s.jobs_bucket(),
            s.workers_bucket(),
            s.apis_bucket(),
            s.routers_bucket(),
            s.leases_bucket(),
            s.portal_bucket(),
            s.audit_pending_bucket(),
        ];
        let streams = [
            s.events_stream(),
            s.deliveries_stream(),
            s.held_stream(),
            s.ordered_stream(),
            s.attempts_stream(),
            s.dead_stream(),
            s.audit_stream(),
        ]
        .into_iter()
        .chain(buckets.iter().map(|b| format!("KV_{b}")));
        for stream in streams {
            match js.delete_stream(&stream).await {
                Ok(_) => {}
                Err(e)
                    if matches!(e.kind(), DeleteStreamErrorKind::JetStream(j)
                    if j.error_code() == ErrorCode::STREAM_NOT_FOUND) => {}
                Err(e) => bail!("deleting stream {stream}: {e}"),
            }
        }
        Ok(())
    }
}

#[allow(
    clippy::too_many_lines,
    reason = "one run in order: start the processes, set up, send, wait, measure, clean up; each step a call"
)]
async fn bench(
    args: &BenchArgs,
    forwarded: &[(String, std::ffi::OsString)],
    dir: &Path,
    roles: &Path,
    shape: Shape,
    cluster: Option<&Cluster>,
) -> anyhow::Result<Value> {
    let Shape {
        dead,
        healthy,
        dead_timeout,
        patience,
        soak,
        faults,
        cluster: _,
    } = shape;
    let quiet = args.json;
    let say = |m: &str| {
        if !quiet {
            eprintln!("{m}");
        }
    };
    let exe = std::env::current_exe()?;
    let mut procs = Vec::new();
    let nats_port = free_port()?;
    let nats_url = match cluster {
        Some(c) => c.url.clone(),
        None => {
            procs.push(Proc {
                name: "nats-server".into(),
                child: crate::dev::spawn_nats(dir, nats_port).await?,
            });
            format!("nats://127.0.0.1:{nats_port}")
        }
    };
    let prefix = cluster.map_or("gancho", |c| c.subjects.prefix()).to_owned();
    let (ca, cert, key) = tls_files(dir)?;
    let token: String = {
        use rand::Rng;
        let mut rng = rand::rng();
        (0..TOKEN_LEN)
            .map(|_| rng.sample(rand::distr::Alphanumeric) as char)
            .collect()
    };
    let encryption_key = gancho_store::Keyring::generate();
    // The sink is always this binary's, so two builds' roles are measured against one sink.
    let spawn_from =
        |exe: &Path, name: &str, args: &[&str], envs: &[(&str, String)]| -> anyhow::Result<Proc> {
            let mut cmd = Command::new(exe);
            cmd.args(args)
                .envs(forwarded.iter().map(|(k, v)| (k, v)))
                .env("GANCHO_NATS_URL", &nats_url)
                .env("GANCHO_SUBJECT_PREFIX", &prefix)
                .env("GANCHO_ADMIN_TOKEN", &token)
                .env("GANCHO_ENCRYPTION_KEY", &encryption_key)
                .env("GANCHO_EXTRA_CA_FILE", &ca)
                .env("GANCHO_ALLOW_PRIVATE_ENDPOINTS", "true")
                .env("RUST_LOG", "error")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                // Appended to: a role started again by `--faults` keeps its log.
                .stderr(
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(dir.join(format!("{name}.log")))?,
                )
                .kill_on_drop(true);
            for (k, v) in envs {
                cmd.env(k, v);
            }
            let child = cmd
                .spawn()
                .with_context(|| format!("cannot start {}", exe.display()))?;
            Ok(Proc {
                name: name.to_owned(),
                child,
            })
        };
    let spawn =
        |name: &str, args: &[&str], envs: &[(&str, String)]| spawn_from(roles, name, args, envs);
    let listen = |port: u16| format!("127.0.0.1:{port}");

    let sink_port = free_port()?;
    if args.target.is_none() {
        let (cert, key) = (cert.display().to_string(), key.display().to_string());
        let fail_share = args.fail_share.to_string();
        let sink_args = [
            "sink",
            "--listen",
            &listen(sink_port),
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--quiet",
            "--fail-share",
            &fail_share,
        ];
        procs.push(spawn_from(&exe, "sink", &sink_args, &[])?);
    }
    if args.floor {
        return floor::run(args, &nats_url, sink_port, &ca, &procs).await;
    }
    let api_port = free_port()?;
    let api_url = format!("http://127.0.0.1:{api_port}");
    let api_metrics = free_port()?;
    procs.push(spawn(
        "api",
        &["api"],
        &[
            ("GANCHO_API_LISTEN", listen(api_port)),
            ("GANCHO_METRICS_LISTEN", listen(api_metrics)),
        ],
    )?);
    let router_metrics = free_port()?;
    procs.push(spawn(
        "router",
        &["router"],
        &[("GANCHO_METRICS_LISTEN", listen(router_metrics))],
    )?);
    let mut metrics_ports = Vec::new();
    for i in 0..args.workers {
        let port = free_port()?;
        metrics_ports.push(port);
        procs.push(spawn(
            &format!("worker-{}", i + 1),
            &["worker"],
            &[("GANCHO_METRICS_LISTEN", listen(port))],
        )?);
    }
    let client = http_client(&ca, false)?;
    let ready = Instant::now();
    while get_text(&client, &format!("{api_url}/readyz")).await != "ready\n" {
        if ready.elapsed() > Duration::from_secs(30) {
            bail!(
                "the api did not get ready in 30 s; see {}/api.log",
                dir.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The tenant and its endpoints, through the API.
    let conn = Conn::new(api_url.clone(), token.clone());
    let setup_started = Instant::now();
    call(&conn, "POST", "/v1/tenants", Some(json!({"id": TENANT}))).await?;
    let hole = black_hole().await?;
    let base = args
        .target
        .clone()
        .unwrap_or_else(|| format!("https://127.0.0.1:{sink_port}"));
    let groups = args.fan_out.map_or(1, |f| args.endpoints / f.max(1));
    let bar = progress(quiet, args.endpoints as u64, "endpoints");
    let creates = (0..args.endpoints).map(|i| {
        let conn = &conn;
        let bar = &bar;
        let is_dead = i < dead;
        let base = &base;
        let rate_limit = args.rate_limit;
        let filter = json!([event_type(i, groups)]);
        // Spread over the ids (every tenth at 0.1), not the first ones.
        let filtered = args.filter_share > 0.0
            && (i as f64 * args.filter_share).floor() != ((i + 1) as f64 * args.filter_share).floor();
        let program = match (filtered, args.distinct_filters) {
            (false, _) => None,
            (true, false) => Some(".data.n >= 0".to_owned()),
            (true, true) => Some(format!(".data.n >= -{i}")),
        };
        let transform = args.transform.clone();
        let ordered = args.ordering_keys.is_some();
        async move {
            // Named e0, e1, ... as the floor names them: the same endpoints fall in the same
            // partitions in every run, every round of --compare and the floor, so the delivery
            // messages per event (one per partition) do not change from one run to the next.
            let body = if is_dead {
                json!({"id": format!("e{i}"), "url": format!("https://127.0.0.1:{hole}/e{i}"),
                    "timeout_ms": dead_timeout.as_millis() as u64, "filter_types": filter})
            } else {
                let mut body = json!({"id": format!("e{i}"), "url": format!("{}/e{i}", base.trim_end_matches('/')),
                    "filter_types": filter});
                if let Some(limit) = rate_limit {
                    body["rate_limit_per_sec"] = json!(limit);
                }
                if let Some(p) = program {
                    body["filter"] = json!(p);
                }
                if let Some(t) = transform {
                    body["transform"] = json!(t);
                }
                if ordered {
                    body["ordering"] = json!("key");
                    body["ordering_key"] = json!("/k");
                }
                body
            };
            let r = call(conn, "POST", &format!("/v1/tenants/{TENANT}/endpoints"), Some(body)).await;
            bar.inc(1);
            r
        }
    });
    use futures::StreamExt as _;
    // In order: the first `dead` ids are the dead endpoints'.
    let created: Vec<_> = futures::stream::iter(creates).buffered(16).collect().await;
    bar.finish_and_clear();
    let mut ids = Vec::new();
    for c in created {
        ids.push(c?["id"].as_str().unwrap_or_default().to_owned());
    }
    // Every role's snapshot has every endpoint before the first event.
    let mut config_ports = vec![router_metrics];
    config_ports.extend(&metrics_ports);
    let waited = Instant::now();
    loop {
        let mut behind = false;
        for port in &config_ports {
            let page = get_text(&client, &format!("http://127.0.0.1:{port}/metrics")).await;
            let applied = metric_sum(&page, "gancho_config_snapshot_revision", "");
            let latest = metric_sum(&page, "gancho_config_revision", "");
            behind |= latest == 0.0 || applied < latest;
        }
        if !behind {
            break;
        }
        if waited.elapsed() > Duration::from_secs(60) {
            bail!("the roles did not load the config in 60 s");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // What setting up the endpoints cost each process (their creates, and every role's
    // config snapshot following them), and how long until every role had them all.
    let setup_cpu: Vec<f64> = procs.iter().map(|p| p.usage().1).collect();
    let setup_s = setup_started.elapsed().as_secs_f64();
    // The workers have dealt out the partitions (each sees them all and serves its share),
    // as in a fleet that has been running: a run does not measure partitions moving.
    let waited = Instant::now();
    loop {
        let (mut served, mut settled) = (0.0, true);
        for port in &metrics_ports {
            let page = get_text(&client, &format!("http://127.0.0.1:{port}/metrics")).await;
            served += metric_sum(&page, "gancho_worker_partitions", "");
            settled &= metric_sum(&page, "gancho_workers_alive", "") == args.workers as f64;
        }
        if settled && served == f64::from(gancho_core::subject::PARTITIONS) {
            break;
        }
        if waited.elapsed() > Duration::from_secs(60) {
            bail!("the workers did not share the partitions in 60 s");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let mut roles = vec![("router".to_owned(), router_metrics)];
    for (i, port) in metrics_ports.iter().enumerate() {
        roles.push((format!("worker-{}", i + 1), *port));
    }
    roles.push(("api".to_owned(), api_metrics));
    let config_change_ms =
        config_changes(&conn, &client, &ids, &roles, args.config_changes, quiet).await?;
    say(&format!(
        "gancho bench: {} events x {} endpoints ({} dead), {} worker(s), via {}, {}",
        args.events,
        args.endpoints,
        dead,
        args.workers,
        args.via,
        if args.rate == 0 {
            "as a backlog".to_string()
        } else {
            format!("at {} events/s", args.rate)
        }
    ));

    // Send.
    // Each group's healthy endpoints get the events of its type (the dead ones come first).
    let healthy_in = |g: usize| {
        (g..args.endpoints)
            .step_by(groups)
            .filter(|&i| i >= dead)
            .count()
    };
    let expected = (0..args.events)
        .map(|i| healthy_in(i % groups) as u64)
        .sum::<u64>();
    let _ = healthy;
    let started = Instant::now();
    let sender = {
        let (via, events, rate, payload_bytes, keys) = (
            args.via.clone(),
            args.events,
            args.rate,
            args.payload_bytes,
            args.ordering_keys,
        );
        let (nats_url, api_url, token) = (nats_url.clone(), api_url.clone(), token.clone());
        let client = client.clone();
        let prefix = prefix.clone();
        tokio::spawn(async move {
            send(
                &via,
                (events, groups, keys),
                rate,
                payload_bytes,
                (&nats_url, &prefix),
                &api_url,
                &token,
                &client,
            )
            .await
        })
    };
    let sink_stats = format!("https://127.0.0.1:{sink_port}/stats");
    // While the run goes on, only the counts: the whole statistics (every latency sorted)
    // once, at the end.
    let sink_progress = format!("{sink_stats}?progress");
    let bar = progress(quiet, expected, "deliveries");
    let mut sent_for = None;
    let mut last = Value::Null;
    let mut samples = Samples::new(
        &procs
            .iter()
            .map(|p| (p.name.clone(), p.child.id()))
            .collect::<Vec<_>>(),
    );
    // A soak sends `rate` events a second for its whole run.
    let run = Duration::from_secs_f64(args.events as f64 / args.rate.max(1) as f64);
    let mut faults = faults.map(|every| Faults::new(every, args.rate, run));
    let watch = match &faults {
        Some(_) => Some(jetstream::new(
            crate::roles::connect(&nats_url, "gancho-bench".into()).await?,
        )),
        None => None,
    };
    loop {
        if soak.is_some() {
            samples.sample_if_due();
        }
        if let (Some(f), Some(js)) = (faults.as_mut(), watch.as_ref()) {
            if let Some(fault) = f.due(started.elapsed()) {
                say(&format!("fault at {:.0?}: {fault:?}", started.elapsed()));
                let (name, again) = match fault {
                    Fault::WorkerKill => ("worker-1", Restart::Role(&["worker"], metrics_ports[0])),
                    Fault::RouterKill => ("router", Restart::Role(&["router"], router_metrics)),
                    Fault::NatsRestart => ("nats-server", Restart::Nats),
                    Fault::ReceiverOutage => ("sink", Restart::Outage),
                };
                let pid = match again {
                    Restart::Outage => {
                        outage(&client, sink_port).await?;
                        None
                    }
                    again => {
                        let Some(p) = procs.iter_mut().find(|p| p.name == name) else {
                            bail!("no process {name} to stop");
                        };
                        p.child.kill().await?;
                        p.child = match again {
                            Restart::Role(role, port) => {
                                spawn(name, role, &[("GANCHO_METRICS_LISTEN", listen(port))])?.child
                            }
                            _ => crate::dev::spawn_nats(dir, nats_port).await?,
                        };
                        Some(p.child.id())
                    }
                };
                if let Some(pid) = pid {
                    samples.restarted(name, pid);
                }
            }
            if let Some(waiting) = waiting(js, &prefix).await {
                f.observe(started.elapsed(), waiting);
            }
        }
        if sent_for.is_none() && sender.is_finished() {
            sent_for = Some(started.elapsed());
        }
        if args.target.is_none() {
            if let Some(s) = get_json(&client, &sink_progress).await {
                let distinct = s["distinct"].as_u64().unwrap_or(0);
                bar.set_position(distinct.min(expected));
                if distinct >= expected {
                    break;
                }
            }
        } else {
            let mut ok = 0.0;
            for port in &metrics_ports {
                let page = get_text(&client, &format!("http://127.0.0.1:{port}/metrics")).await;
                ok += metric_sum(
                    &page,
                    "gancho_delivery_attempts_total",
                    "outcome=\"success\"",
                );
            }
            bar.set_position((ok as u64).min(expected));
            if ok as u64 >= expected {
                break;
            }
        }
        if started.elapsed() > patience {
            bar.abandon();
            // A soak that ran out of patience still measured memory: print what it saw.
            if let Some(warm_up) = soak {
                eprintln!(
                    "memory over the run (it timed out, the series still holds): {}",
                    serde_json::to_string_pretty(&soak_report(&samples, faults.as_ref(), warm_up))?
                );
            }
            // What did not arrive is lost only if gancho did not give up on it: say what it
            // gave up on, by kind.
            let given_up = match dead_letters_of(&nats_url, &prefix, &ids[dead..]).await {
                Ok(kinds) if kinds.is_empty() => "none".to_owned(),
                Ok(kinds) => kinds
                    .iter()
                    .map(|(kind, n)| format!("{n} {kind}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                Err(e) => format!("unknown ({e})"),
            };
            bail!(
                "{} of {expected} deliveries after {patience:?}; dead letters of the healthy \
                 endpoints: {given_up}; logs in {}",
                bar.position(),
                dir.display()
            );
        }
        // A soak asks less often.
        let poll = if soak.is_some() { 2_000 } else { 100 };
        tokio::time::sleep(Duration::from_millis(poll)).await;
    }
    let elapsed = started.elapsed();
    if args.target.is_none() {
        last = get_json(&client, &sink_stats).await.unwrap_or(Value::Null);
    }
    bar.finish_and_clear();
    let sent = sender.await??;
    let sent_for = sent_for.unwrap_or(elapsed);

    // What the workers saw.
    let (mut deferred, mut failed) = (0.0, 0.0);
    for port in &metrics_ports {
        let page = get_text(&client, &format!("http://127.0.0.1:{port}/metrics")).await;
        deferred += metric_sum(&page, "gancho_delivery_deferred_total", "");
        failed += metric_sum(&page, "gancho_delivery_attempts_total", "")
            - metric_sum(
                &page,
                "gancho_delivery_attempts_total",
                "outcome=\"success\"",
            );
    }
    let processes: Vec<Value> = procs
        .iter()
        .zip(&setup_cpu)
        .map(|(p, setup)| {
            let (rss, cpu) = p.usage();
            json!({"name": p.name, "peak_rss_mib": (rss * 10.0).round() / 10.0,
                "cpu_s": (cpu * 100.0).round() / 100.0,
                "setup_cpu_s": (setup * 100.0).round() / 100.0})
        })
        .collect();
    let cluster = match cluster {
        Some(c) => Some(c.replication().await?),
        None => None,
    };
    // The server's own version; the local binary's only when the run started it.
    let nats_version = match &cluster {
        Some(c) => c["version"].clone(),
        None => std::process::Command::new(crate::dev::nats_binary())
            .arg("--version")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default()
            .into(),
    };
    Ok(json!({
        "events": args.events,
        "endpoints": args.endpoints,
        "dead_endpoints": dead,
        "workers": args.workers,
        "via": args.via,
        "rate": args.rate,
        "payload_bytes": args.payload_bytes,
        "deliveries": expected,
        "ingest_per_s": (sent as f64 / sent_for.as_secs_f64()).round(),
        "deliveries_per_s": (expected as f64 / elapsed.as_secs_f64()).round(),
        "elapsed_s": (elapsed.as_secs_f64() * 100.0).round() / 100.0,
        "setup_s": (setup_s * 100.0).round() / 100.0,
        "latency_ms": {
            "p50": last["latency_us"]["p50"].as_f64().map(|v| v / 1000.0),
            "p90": last["latency_us"]["p90"].as_f64().map(|v| v / 1000.0),
            "p99": last["latency_us"]["p99"].as_f64().map(|v| v / 1000.0),
            "max": last["latency_us"]["max"].as_f64().map(|v| v / 1000.0),
        },
        "p99_ms_by_5s": last["p99_us_by_5s"].as_array().map(|a| {
            a.iter()
                .filter_map(|v| v.as_f64())
                .map(|us| (us / 100.0).round() / 10.0)
                .collect::<Vec<_>>()
        }),
        "config_change_ms": config_change_ms,
        "rate_limit": args.rate_limit,
        "busiest_endpoint_per_s": last["busiest_endpoint_per_s"].as_f64(),
        "fail_share": args.fail_share,
        "filter_share": args.filter_share,
        "distinct_filters": args.distinct_filters,
        "transform": args.transform,
        "ordering_keys": args.ordering_keys,
        "fan_out": args.fan_out.unwrap_or(args.endpoints),
        "duplicates": last["received"].as_u64().zip(last["distinct"].as_u64())
            .map(|(r, d)| r - last["failed_on_purpose"].as_u64().unwrap_or(0) - d),
        "deferred": deferred,
        "failed_attempts": failed,
        "processes": processes,
        "nats_server": nats_version,
        "cluster": cluster,
        "settings": settings(forwarded),
        "soak": soak.map(|warm_up| soak_report(&samples, faults.as_ref(), warm_up)),
    }))
}

/// How a process stopped by `--faults` comes back.
#[derive(Clone, Copy)]
enum Restart {
    /// `gancho <args>` with its metrics on this port.
    Role(&'static [&'static str], u16),
    /// nats-server on its store and port.
    Nats,
    /// Not stopped: the sink answers 503 for [`soak::OUTAGE`].
    Outage,
}

/// Asks the sink to answer 503 for [`soak::OUTAGE`].
async fn outage(client: &HttpClient, sink_port: u16) -> anyhow::Result<()> {
    let url = format!(
        "https://127.0.0.1:{sink_port}/_outage?secs={}",
        soak::OUTAGE.as_secs()
    );
    let req = http::Request::post(&url).body(Full::new(Bytes::new()))?;
    let resp = tokio::time::timeout(Duration::from_secs(5), client.request(req))
        .await
        .context("the sink did not answer the outage request in 5 s")??;
    if !resp.status().is_success() {
        bail!("the sink refused the outage: {}", resp.status());
    }
    Ok(())
}

/// Messages in the deliveries, held and ordered streams (what waits to be delivered), or
/// `None` when JetStream does not answer (nats-server restarting).
async fn waiting(js: &jetstream::Context, prefix: &str) -> Option<u64> {
    let subjects = gancho_core::Subjects::new(prefix).ok()?;
    let mut total = 0;
    for name in [
        subjects.deliveries_stream(),
        subjects.held_stream(),
        subjects.ordered_stream(),
    ] {
        // `get_stream` reads the stream's info.
        total += js.get_stream(name).await.ok()?.cached_info().state.messages;
    }
    Some(total)
}

/// The soak's part of the report: the samples, the faults, and what failed (with
/// `--faults`: growth after the warm-up, faults not recovered from).
fn soak_report(samples: &Samples, faults: Option<&Faults>, warm_up: Duration) -> Value {
    let cycle = faults.map(Faults::cycle);
    let mut report = samples.report(warm_up, cycle);
    if let Some(f) = faults {
        let mut failed = samples.grown(warm_up, cycle);
        failed.extend(
            f.not_back()
                .into_iter()
                .map(|w| format!("the deliveries were not back to empty after the {w}")),
        );
        report["faults"] = f.report();
        report["failed"] = json!(failed);
    }
    report
}

/// How many dead letters `endpoints` (of the bench's tenant) have, by kind: what gancho gave
/// up on, as against what it lost.
async fn dead_letters_of(
    nats_url: &str,
    prefix: &str,
    endpoints: &[String],
) -> anyhow::Result<std::collections::BTreeMap<String, usize>> {
    let subjects = gancho_core::Subjects::new(prefix)
        .map_err(|e| anyhow::anyhow!("a bench subject prefix: {e}"))?;
    let js = jetstream::new(crate::roles::connect(nats_url, "gancho-bench".into()).await?);
    let stream = js.get_stream(subjects.dead_stream()).await?;
    let mut kinds = std::collections::BTreeMap::new();
    for endpoint in endpoints {
        // One subject per dead letter: a healthy endpoint has few.
        let filter = subjects.dead_filter(TENANT, Some(endpoint), None);
        let mut listed = stream.info_with_subjects(filter).await?;
        while let Some((subject, n)) = futures::TryStreamExt::try_next(&mut listed).await? {
            if let Some((_, _, kind)) = subjects.parse_dead(&subject) {
                *kinds.entry(kind.to_owned()).or_default() += n;
            }
        }
    }
    Ok(kinds)
}

/// The event type of event (or endpoint) `i` when the endpoints are dealt into `groups`.
fn event_type(i: usize, groups: usize) -> String {
    if groups <= 1 {
        "charge.paid".into()
    } else {
        format!("charge.g{}", i % groups)
    }
}

/// Changes `n` endpoints one at a time and measures how long each change took to reach every
/// role, from its write to the config bucket to the role's snapshot having it (the sum of the
/// role's `gancho_config_change_lag_seconds` grows by exactly that); returns p50/p99/max in ms
/// over the changes of the slowest role for each.
async fn config_changes(
    conn: &Conn,
    client: &HttpClient,
    ids: &[String],
    roles: &[(String, u16)],
    n: usize,
    quiet: bool,
) -> anyhow::Result<Value> {
    if n == 0 || ids.is_empty() {
        return Ok(Value::Null);
    }
    let family = "gancho_config_change_lag_seconds";
    let lag_of = |port: u16| async move {
        let page = get_text(client, &format!("http://127.0.0.1:{port}/metrics")).await;
        (
            metric_sum(&page, &format!("{family}_count"), ""),
            metric_sum(&page, &format!("{family}_sum"), ""),
        )
    };
    let bar = progress(quiet, n as u64, "config changes");
    let mut lags_ms = Vec::with_capacity(n);
    let mut by_role: Vec<Vec<f64>> = vec![Vec::with_capacity(n); roles.len()];
    for i in 0..n {
        let mut before = Vec::with_capacity(roles.len());
        for (_, port) in roles {
            before.push(lag_of(*port).await);
        }
        let id = &ids[i * 7919 % ids.len()];
        let body = json!({"description": format!("gancho bench change {i}")});
        call(
            conn,
            "PATCH",
            &format!("/v1/tenants/{TENANT}/endpoints/{id}"),
            Some(body),
        )
        .await?;
        let waited = Instant::now();
        let mut slowest: f64 = 0.0;
        for (((_, port), (count0, sum0)), lags) in roles.iter().zip(before).zip(&mut by_role) {
            loop {
                let (count, sum) = lag_of(*port).await;
                if count > count0 {
                    let lag = (sum - sum0) / (count - count0);
                    lags.push(lag * 1000.0);
                    slowest = slowest.max(lag);
                    break;
                }
                if waited.elapsed() > Duration::from_secs(30) {
                    bail!("config change {i} did not reach the role with metrics on port {port} in 30 s");
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        lags_ms.push(slowest * 1000.0);
        bar.inc(1);
    }
    bar.finish_and_clear();
    let quantiles = |mut lags: Vec<f64>| {
        lags.sort_by(f64::total_cmp);
        let at = |q: f64| {
            let v = lags[((lags.len() as f64 * q).ceil() as usize).clamp(1, lags.len()) - 1];
            (v * 100.0).round() / 100.0
        };
        json!({"p50": at(0.5), "p99": at(0.99), "max": at(1.0)})
    };
    let mut report = quantiles(lags_ms);
    report["changes"] = json!(n);
    report["by_role"] = roles
        .iter()
        .zip(by_role)
        .map(|((name, _), lags)| (name.clone(), quantiles(lags)))
        .collect::<serde_json::Map<_, _>>()
        .into();
    Ok(report)
}

fn progress(hidden: bool, total: u64, what: &str) -> indicatif::ProgressBar {
    if hidden {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template(&format!(
            "{{spinner}} {what} {{pos}}/{{len}} [{{bar:30}}] {{per_sec}} eta {{eta}}"
        ))
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar
}

/// Sends the events; returns how many were accepted.
#[allow(clippy::too_many_arguments)]
async fn send(
    via: &str,
    (events, groups, keys): (usize, usize, Option<usize>),
    rate: u64,
    payload_bytes: usize,
    (nats_url, prefix): (&str, &str),
    api_url: &str,
    token: &str,
    client: &HttpClient,
) -> anyhow::Result<usize> {
    let pad = "x".repeat(payload_bytes.saturating_sub(24));
    let payload = |n: usize| match keys {
        Some(k) => format!(r#"{{"n":{n},"k":{},"pad":"{pad}"}}"#, n % k.max(1)),
        None => format!(r#"{{"n":{n},"pad":"{pad}"}}"#),
    };
    // At a fixed rate, events go out in ticks of 10 ms.
    let per_tick = if rate == 0 {
        usize::MAX
    } else {
        (rate as usize / 100).max(1)
    };
    let tick = tokio::time::interval(if rate == 0 {
        Duration::from_millis(1)
    } else {
        Duration::from_secs_f64(per_tick as f64 / rate as f64)
    });
    let paced = (tick, rate > 0, per_tick);
    if via == "nats" {
        send_nats(events, groups, paced, &payload, nats_url, prefix).await
    } else {
        send_http(events, groups, paced, &payload, api_url, token, client).await
    }
}

/// [`send`] over NATS: each event published under its id, sent again until acknowledged.
async fn send_nats(
    events: usize,
    groups: usize,
    (mut tick, paced, per_tick): (tokio::time::Interval, bool, usize),
    payload: &impl Fn(usize) -> String,
    nats_url: &str,
    prefix: &str,
) -> anyhow::Result<usize> {
    let js = jetstream::new(crate::roles::connect(nats_url, "gancho-bench".into()).await?);
    // Event `i` as a publish under its id: sent again, it is stored once.
    let event = |i: usize| {
        let ty = event_type(i, groups);
        let subject = format!("{prefix}.events.{TENANT}.{ty}");
        let ev = gancho_proto::Event {
            id: format!("evt-{i}"),
            tenant: TENANT.into(),
            r#type: ty,
            occurred_at: Some(gancho_proto::timestamp(time::OffsetDateTime::now_utc())),
            payload: payload(i).into_bytes().into(),
            ..Default::default()
        };
        let publish = PublishMessage::build()
            .payload(ev.encode_to_vec().into())
            .message_id(gancho_core::subject::event_message_id(TENANT, &ev.id));
        (subject, publish)
    };
    let mut acks = Vec::with_capacity(1000);
    let mut n = 0;
    while n < events {
        if paced {
            tick.tick().await;
        }
        let end = (n + per_tick.min(1000)).min(events);
        for i in n..end {
            let (subject, publish) = event(i);
            acks.push((i, js.send_publish(subject, publish).await));
        }
        n = end;
        if acks.len() >= 1000 || n == events {
            // As a producer that may not lose an event does (a nats-server restarted by
            // `--faults`): what JetStream did not acknowledge is sent again under its id
            // until it is.
            let mut again = Vec::new();
            for (i, ack) in acks.drain(..) {
                let stored = match ack {
                    Ok(ack) => ack.await.is_ok(),
                    Err(_) => false,
                };
                if !stored {
                    again.push(i);
                }
            }
            while !again.is_empty() {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let mut left = Vec::new();
                for i in again {
                    let (subject, publish) = event(i);
                    let stored = match js.send_publish(subject, publish).await {
                        Ok(ack) => ack.await.is_ok(),
                        Err(_) => false,
                    };
                    if !stored {
                        left.push(i);
                    }
                }
                again = left;
            }
        }
    }
    Ok(events)
}

/// [`send`] over HTTP ingest, in batches.
async fn send_http(
    events: usize,
    groups: usize,
    (mut tick, paced, per_tick): (tokio::time::Interval, bool, usize),
    payload: &impl Fn(usize) -> String,
    api_url: &str,
    token: &str,
    client: &HttpClient,
) -> anyhow::Result<usize> {
    let url = format!("{api_url}/v1/tenants/{TENANT}/events/batch");
    let mut n = 0;
    while n < events {
        if paced {
            tick.tick().await;
        }
        let end = (n + per_tick.min(500)).min(events);
        let now = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)?;
        let batch: Vec<Value> = (n..end)
            .map(|i| {
                json!({"id": format!("evt-{i}"), "type": event_type(i, groups), "occurred_at": now,
                    "data": serde_json::from_str::<Value>(&payload(i)).unwrap_or(Value::Null)})
            })
            .collect();
        let req = http::Request::post(&url)
            .header(http::header::AUTHORIZATION, format!("Bearer {token}"))
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(json!({"events": batch}).to_string())))?;
        let resp = client.request(req).await?;
        if !resp.status().is_success() {
            bail!("HTTP ingest answered {}", resp.status());
        }
        n = end;
    }
    Ok(events)
}

/// A report number: whole ones without decimals, others with two; `-` when absent.
fn num(v: &Value) -> String {
    match v.as_f64() {
        Some(x) if x.fract() == 0.0 => format!("{x:.0}"),
        Some(x) => format!("{x:.2}"),
        None => "-".into(),
    }
}

fn print_floor(r: &Value) {
    let f = num;
    println!(
        "\nfloor: {} deliveries ({} events x {} endpoints, {} delivery messages per event, {} B payloads, {} B records) at {}/s ({} MB/s of payload)",
        r["deliveries"],
        r["events"],
        r["endpoints"],
        r["delivery_messages_per_event"],
        r["payload_bytes"],
        r["record_bytes"],
        f(&r["deliveries_per_s"]),
        f(&r["mb_per_s"])
    );
    println!("{:<14} {:>8} {:>14}", "process", "CPU s", "us/delivery");
    for p in r["processes"].as_array().into_iter().flatten() {
        println!(
            "{:<14} {:>8} {:>14}",
            p["name"].as_str().unwrap_or(""),
            f(&p["cpu_s"]),
            f(&p["cpu_us_per_delivery"])
        );
    }
    println!(
        "all: {} us of CPU per delivery; {} cores doing nothing else would allow at most {} deliveries/s",
        f(&r["cpu_us_per_delivery"]),
        r["cores"],
        f(&r["ceiling_per_s"])
    );
}

#[allow(
    clippy::too_many_lines,
    reason = "one printed line per figure of the report, in the order they are read"
)]
fn print_report(r: &Value) {
    let f = num;
    println!(
        "\n{} events x {} endpoints ({} dead, fan-out {}) = {} deliveries to healthy endpoints; {} worker(s); via {}; {}",
        r["events"], r["endpoints"], r["dead_endpoints"], r["fan_out"], r["deliveries"], r["workers"],
        r["via"].as_str().unwrap_or(""),
        if r["rate"] == 0 { "backlog".to_string() } else { format!("{} events/s", r["rate"]) }
    );
    if let Some(settings) = r["settings"].as_object().filter(|s| !s.is_empty()) {
        let list: Vec<String> = settings
            .iter()
            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
            .collect();
        println!("  settings         {}", list.join(" "));
    }
    println!("  ingest           {} events/s", f(&r["ingest_per_s"]));
    println!(
        "  delivery         {} deliveries/s ({} s)",
        f(&r["deliveries_per_s"]),
        f(&r["elapsed_s"])
    );
    if !r["rate_limit"].is_null() {
        println!(
            "  rate limit       {}/s per endpoint; busiest endpoint received {}/s",
            f(&r["rate_limit"]),
            f(&r["busiest_endpoint_per_s"])
        );
    }
    let l = &r["latency_ms"];
    println!(
        "  end-to-end ms    p50 {}  p90 {}  p99 {}  max {}",
        f(&l["p50"]),
        f(&l["p90"]),
        f(&l["p99"]),
        f(&l["max"])
    );
    if let Some(slices) = r["p99_ms_by_5s"].as_array() {
        let list: Vec<String> = slices.iter().map(f).collect();
        println!("  p99 ms by 5 s   {}", list.join(" "));
    }
    let c = &r["config_change_ms"];
    if !c.is_null() {
        println!(
            "  config change    {} changes, to every role: p50 {} ms  p99 {} ms  max {} ms",
            f(&c["changes"]),
            f(&c["p50"]),
            f(&c["p99"]),
            f(&c["max"])
        );
        for (role, q) in c["by_role"].as_object().into_iter().flatten() {
            println!(
                "                   {role}: p50 {} ms  p99 {} ms  max {} ms",
                f(&q["p50"]),
                f(&q["p99"]),
                f(&q["max"])
            );
        }
    }
    println!(
        "  deferred {}  failed attempts {}  duplicates {}",
        f(&r["deferred"]),
        f(&r["failed_attempts"]),
        f(&r["duplicates"])
    );
    println!(
        "  {:<14} {:>10} {:>8} {:>22}",
        "process",
        "peak RSS",
        "CPU s",
        format!("of it, setup ({} s)", f(&r["setup_s"]))
    );
    for p in r["processes"].as_array().into_iter().flatten() {
        println!(
            "  {:<14} {:>7} MiB {:>8} {:>22}",
            p["name"].as_str().unwrap_or(""),
            f(&p["peak_rss_mib"]),
            f(&p["cpu_s"]),
            f(&p["setup_cpu_s"])
        );
    }
    // Read as a value, not a map: a key a run does not report (`faults` without --faults)
    // reads as null instead of stopping the report.
    let soak = &r["soak"];
    if soak.is_object() {
        println!(
            "  resident memory every 10 s (MiB); slope and change after the first {} s",
            f(&soak["warm_up_s"])
        );
        for (name, p) in soak["processes"].as_object().into_iter().flatten() {
            let series: Vec<String> = p["rss_mib_every_10s"]
                .as_array()
                .into_iter()
                .flatten()
                .map(f)
                .collect();
            println!(
                "  {name:<14} {} MiB/min, {}%: {}",
                f(&p["slope_mib_per_min"]),
                f(&p["change_after_warm_up_pct"]),
                series.join(" ")
            );
        }
        for fault in soak["faults"]["faults"].as_array().into_iter().flatten() {
            println!(
                "  fault at {} s: {}; back to empty after {} s",
                f(&fault["at_s"]),
                fault["fault"].as_str().unwrap_or(""),
                f(&fault["back_to_empty_s"])
            );
        }
        for failed in soak["failed"].as_array().into_iter().flatten() {
            println!("  FAILED: {}", failed.as_str().unwrap_or(""));
        }
    }
    let c = &r["cluster"];
    if c.is_object() {
        let peers: Vec<&str> = c["peers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p.as_str())
            .collect();
        println!(
            "  on {} (nats-server {}): streams with {} replica(s); cluster {}, leader {}{}; its CPU and memory are not measured",
            c["url"].as_str().unwrap_or("?"),
            c["version"].as_str().unwrap_or("?"),
            f(&c["replicas"]),
            c["cluster"].as_str().unwrap_or("none"),
            c["leader"].as_str().unwrap_or("-"),
            if peers.is_empty() { String::new() } else { format!(", peers {}", peers.join(", ")) },
        );
    } else {
        println!("  {}", r["nats_server"].as_str().unwrap_or(""));
    }
}
