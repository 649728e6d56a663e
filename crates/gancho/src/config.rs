//! Configuration: built-in defaults, then a TOML file (`--config`), then `GANCHO_*`
//! environment variables, then flags. Validated once; an invalid value stops start-up with one
//! line naming the key and the reason (exit code 64).

use clap::Args;
use gancho_core::{RetrySchedule, Subjects};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Exit code for a configuration error (EX_CONFIG from sysexits is 78; 64 is EX_USAGE, which
/// is what the house style asks for).
pub const EXIT_CONFIG: i32 = 64;

/// Flags and environment variables of the roles (and of `dev`, `bench` for the roles it
/// starts, and `secrets re-encrypt`); the client commands read none of them.
#[derive(Args, Debug, Default, Clone)]
pub struct Flags {
    /// TOML config file; every key optional.
    #[arg(long, env = "GANCHO_CONFIG")]
    pub config: Option<PathBuf>,
    /// NATS server URL(s), comma-separated. `gancho dev` starts its own when unset.
    #[arg(long, env = "GANCHO_NATS_URL")]
    pub nats_url: Option<String>,
    /// Prefix of every subject, stream and bucket name. Default: gancho.
    #[arg(long, env = "GANCHO_SUBJECT_PREFIX")]
    pub subject_prefix: Option<String>,
    /// Bearer token for admin API calls.
    #[arg(long, env = "GANCHO_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Key sealing endpoint secrets in the config bucket (base64 of 32 bytes; `gancho
    /// keygen` prints one). Needed by api and worker.
    #[arg(long, env = "GANCHO_ENCRYPTION_KEY", hide_env_values = true)]
    pub encryption_key: Option<String>,
    /// During a key rotation: the previous key, still accepted for opening secrets until
    /// `gancho secrets re-encrypt` has run.
    #[arg(long, env = "GANCHO_ENCRYPTION_OLD_KEY", hide_env_values = true)]
    pub encryption_old_key: Option<String>,
    /// Config service address. Default: 127.0.0.1:8080.
    #[arg(long, env = "GANCHO_API_LISTEN")]
    pub api_listen: Option<String>,
    /// Prometheus /metrics address. Default: 127.0.0.1:9090.
    #[arg(long, env = "GANCHO_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,
    /// Accept http:// endpoint URLs (true/false). Default: false.
    #[arg(long, env = "GANCHO_ALLOW_HTTP_ENDPOINTS")]
    pub allow_http_endpoints: Option<String>,
    /// Deliver to loopback and private addresses (true/false). Default: false.
    #[arg(long, env = "GANCHO_ALLOW_PRIVATE_ENDPOINTS")]
    pub allow_private_endpoints: Option<String>,
    /// PEM bundle trusted in addition to the webpki roots.
    #[arg(long, env = "GANCHO_EXTRA_CA_FILE")]
    pub extra_ca_file: Option<PathBuf>,
    /// Default delays before each attempt. Default: 0s,5s,5m,30m,2h,5h,10h,10h.
    #[arg(long, env = "GANCHO_RETRY_SCHEDULE")]
    pub retry_schedule: Option<String>,
    /// Replicas of every stream and bucket. Default: 1.
    #[arg(long, env = "GANCHO_STREAM_REPLICAS")]
    pub stream_replicas: Option<String>,
    /// HTTP requests in flight per worker. Default: 512.
    #[arg(long, env = "GANCHO_WORKER_CONCURRENCY")]
    pub worker_concurrency: Option<String>,
    /// Events routed at once per router, 1 to 20000. Default: 1024.
    #[arg(long, env = "GANCHO_ROUTER_CONCURRENCY")]
    pub router_concurrency: Option<String>,
    /// Warn (and count a stall) when a router or worker finishes nothing for this long while
    /// it holds work, e.g. 30s. Default: 30s.
    #[arg(long, env = "GANCHO_STALL_WARNING_AFTER")]
    pub stall_warning_after: Option<String>,
    /// How long an event id is remembered: the same id again within it is stored (and
    /// delivered) once, e.g. 2m, 1h (1s to 7d). Applied to an existing stream at start-up.
    /// Default: 2m.
    #[arg(long, env = "GANCHO_DUPLICATE_WINDOW")]
    pub duplicate_window: Option<String>,
    /// How long the audit log keeps a record, e.g. 400d, 7y (1d or more). Applied to an
    /// existing stream at start-up. Default: 400d.
    #[arg(long, env = "GANCHO_AUDIT_MAX_AGE")]
    pub audit_max_age: Option<String>,
    /// Room for events, e.g. 50GiB (the stream refuses new events when full, never drops
    /// unrouted ones). Default: no limit of its own.
    #[arg(long, env = "GANCHO_EVENTS_MAX_BYTES")]
    pub events_max_bytes: Option<String>,
    /// Memory a router may use, e.g. 512MiB (an eighth for events pulled, a quarter for
    /// delivery messages being published; the rest is the process's own). Past it the
    /// router pulls and publishes less; it never drops anything. Default: 256MiB.
    #[arg(long, env = "GANCHO_ROUTER_MEMORY")]
    pub router_memory: Option<String>,
    /// Memory a worker may use, e.g. 512MiB (a fifth for messages pulled, a tenth for
    /// bodies being sent; the rest is the process's own). Past
    /// it the worker pulls and sends less; it never drops anything. Default: 256MiB.
    #[arg(long, env = "GANCHO_WORKER_MEMORY")]
    pub worker_memory: Option<String>,
    /// Room for deliveries and retries, e.g. 10GiB. The router stops routing at 90% of it,
    /// leaving the rest to the workers' retries. Default: no limit of its own.
    #[arg(long, env = "GANCHO_DELIVERIES_MAX_BYTES")]
    pub deliveries_max_bytes: Option<String>,
    /// Size limit of the attempt log, e.g. 20GiB; past it the oldest records go (it is a
    /// log: delivery never waits on it). Default: none; records age out after 30 days.
    #[arg(long, env = "GANCHO_ATTEMPTS_MAX_BYTES")]
    pub attempts_max_bytes: Option<String>,
    /// Size limit of the dead letters, e.g. 5GiB; past it the oldest go. Default: none;
    /// they age out after 30 days.
    #[arg(long, env = "GANCHO_DEAD_MAX_BYTES")]
    pub dead_max_bytes: Option<String>,
    /// Records the attempt log keeps; past it the oldest go. nats-server holds about 100
    /// bytes of memory per record for the log's index (a record's subject names its event),
    /// so this bounds that memory. Default: 5000000 (about 0.5 GiB of nats-server's heap).
    #[arg(long, env = "GANCHO_ATTEMPTS_MAX_RECORDS")]
    pub attempts_max_records: Option<String>,
    /// Dead letters kept; past it the oldest go (about 100 bytes of nats-server's memory
    /// each, as for the attempt log). Default: 1000000.
    #[arg(long, env = "GANCHO_DEAD_MAX_RECORDS")]
    pub dead_max_records: Option<String>,
    /// How long a role may take on SIGTERM to finish or hand back what it holds, e.g. 30s
    /// (1s to 10m). Set the orchestrator's termination grace above it. Default: 15s.
    #[arg(long, env = "GANCHO_SHUTDOWN_GRACE")]
    pub shutdown_grace: Option<String>,
    /// An endpoint whose every attempt failed for this long is disabled, and a
    /// gancho.endpoint.disabled event is sent (1s to 90d). Default: 5d.
    #[arg(long, env = "GANCHO_DISABLE_AFTER")]
    pub disable_after: Option<String>,
    /// A delivery its endpoint could not take (deferred, or parked while its circuit is
    /// open or it is stalled) is dead-lettered as `exhausted` once it is older than its
    /// endpoint's whole retry schedule plus this (1s to 30d). Default: 1h.
    #[arg(long, env = "GANCHO_DEFER_GRACE")]
    pub defer_grace: Option<String>,
    /// Log lines as `text` (default) or `json` (one object per line).
    #[arg(long, env = "GANCHO_LOG_FORMAT")]
    pub log_format: Option<String>,
    /// Finished spans waiting for the OTLP exporter at most (traces are on when
    /// OTEL_EXPORTER_OTLP_ENDPOINT is set); past it spans are dropped and counted, never
    /// waited for (1 to 1000000). Default: 8192.
    #[arg(long, env = "GANCHO_TRACE_QUEUE")]
    pub trace_queue: Option<String>,
    /// Tenants whose metrics get a `tenant` label of their own, comma-separated (at most
    /// 100); every other tenant counts as `other`, so series stay bounded. Default: none.
    #[arg(long, env = "GANCHO_METRICS_TENANTS")]
    pub metrics_tenants: Option<String>,
    /// Send every webhook through this HTTP CONNECT proxy, http://[user:password@]host:port,
    /// so receivers see the proxy's fixed addresses. Default: none (direct).
    #[arg(long, env = "GANCHO_EGRESS_PROXY", hide_env_values = true)]
    pub egress_proxy: Option<String>,
    /// true: CONNECT by host name (for proxies that filter by name; the proxy must then
    /// refuse private addresses). Default false: CONNECT to an address the worker checked.
    #[arg(long, env = "GANCHO_EGRESS_PROXY_BY_NAME")]
    pub egress_proxy_by_name: Option<String>,
    /// Where people reach the api's portal, e.g. https://hooks.example.com: portal links are
    /// built from it (never from a request's Host header), so the api mints none without it.
    /// `gancho dev` sets it. Default: none.
    #[arg(long, env = "GANCHO_PORTAL_PUBLIC_URL")]
    pub portal_public_url: Option<String>,
    /// Sites allowed to show the portal in a frame, space-separated origins
    /// (https://dashboard.example.com), or 'self'. Default: 'none' (no site may frame it).
    #[arg(long, env = "GANCHO_PORTAL_FRAME_ANCESTORS")]
    pub portal_frame_ancestors: Option<String>,
    /// The portal's name, in its header and the browser's tab (at most 60 characters).
    /// Default: Webhooks.
    #[arg(long, env = "GANCHO_PORTAL_TITLE")]
    pub portal_title: Option<String>,
    /// The portal's accent colour, #rrggbb, dark enough to read as text on white (4.5:1).
    /// Default: the portal's blue.
    #[arg(long, env = "GANCHO_PORTAL_ACCENT")]
    pub portal_accent: Option<String>,
    /// A logo file for the portal's header, PNG or SVG, at most 64 KiB, read at start-up (an
    /// SVG with a script, an event handler or an outside reference is refused). Default: none.
    #[arg(long, env = "GANCHO_PORTAL_LOGO")]
    pub portal_logo: Option<std::path::PathBuf>,
    /// Proxies in front of the api whose X-Forwarded-For names the client, for the limits
    /// per client address (portal links): addresses or CIDR blocks, comma-separated, e.g.
    /// 10.0.0.0/8. Default: none (the TCP peer is the client).
    #[arg(long, env = "GANCHO_TRUSTED_PROXIES")]
    pub trusted_proxies: Option<String>,
    /// Requests a second one API key or portal session may make on an api process's /v1
    /// routes, with bursts of twice that; `off` for no limit (the admin token has its own,
    /// admin_rate_limit). Default: 50.
    #[arg(long, env = "GANCHO_API_RATE_LIMIT")]
    pub api_rate_limit: Option<String>,
    /// Requests a second the admin token may make on an api process's /v1 routes, with
    /// bursts of twice that; `off` for no limit. Default: off.
    #[arg(long, env = "GANCHO_ADMIN_RATE_LIMIT")]
    pub admin_rate_limit: Option<String>,
    /// Host names pinned to addresses, name=ip comma-separated (a name may repeat), answered
    /// before DNS; the private-address rule still applies. Default: none.
    #[arg(long, env = "GANCHO_RESOLVE")]
    pub resolve: Option<String>,
}

/// `portal_frame_ancestors`: `'self'`, `'none'` or http(s) origins, space-separated (they go
/// into a header: nothing else may pass).
fn parse_frame_ancestors(v: Option<&str>) -> Result<String, ConfigError> {
    let Some(v) = v.map(str::trim).filter(|v| !v.is_empty()) else {
        return Ok("'none'".into());
    };
    let mut out = Vec::new();
    for source in v.split_whitespace() {
        let ok = match source {
            "'self'" | "'none'" => true,
            // Only what an origin is made of: the value goes into a header as it is.
            _ if !source
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || ".:/-".contains(c))
                || source.ends_with('/') =>
            {
                false
            }
            _ => url::Url::parse(source).is_ok_and(|u| {
                matches!(u.scheme(), "http" | "https")
                    && u.host().is_some()
                    && u.path() == "/"
                    && u.username().is_empty()
            }),
        };
        if !ok {
            return Err(ConfigError(format!(
                "invalid portal_frame_ancestors {source:?}: each must be an origin like https://dashboard.example.com (scheme, host, optional port; no path), 'self' or 'none'"
            )));
        }
        out.push(source.to_owned());
    }
    if out.len() > 1 && out.iter().any(|s| s == "'none'") {
        return Err(ConfigError(
            "invalid portal_frame_ancestors: 'none' cannot be listed with other sources".into(),
        ));
    }
    Ok(out.join(" "))
}

/// `portal_public_url`: an absolute http(s) URL with no query or fragment; a trailing slash
/// is dropped.
fn parse_public_url(v: &str) -> Result<String, ConfigError> {
    let bad = |why: &str| {
        ConfigError(format!(
            "invalid portal_public_url {v:?}: {why}, e.g. https://hooks.example.com"
        ))
    };
    let url = url::Url::parse(v.trim()).map_err(|e| bad(&e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(bad("it must be an http:// or https:// URL with a host"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(bad("it must have no query or fragment"));
    }
    Ok(url.as_str().trim_end_matches('/').to_owned())
}

/// `name=ip,name=ip`: each name (lower-cased) with its addresses, in order.
fn parse_resolve(
    v: Option<&str>,
) -> Result<std::collections::HashMap<String, Vec<std::net::IpAddr>>, ConfigError> {
    let mut pins: std::collections::HashMap<String, Vec<std::net::IpAddr>> = Default::default();
    for entry in v
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
    {
        let parsed = entry.split_once('=').and_then(|(name, ip)| {
            let name = name.trim().to_ascii_lowercase();
            let ip = ip.trim().trim_start_matches('[').trim_end_matches(']');
            (!name.is_empty()).then_some(())?;
            Some((name, ip.parse::<std::net::IpAddr>().ok()?))
        });
        let (name, ip) = parsed.ok_or_else(|| {
            ConfigError(format!(
                "invalid resolve entry {entry:?}: expected name=ip, e.g. hooks.example.com=203.0.113.7"
            ))
        })?;
        pins.entry(name).or_default().push(ip);
    }
    Ok(pins)
}

/// The TOML file: the same keys, snake_case, all optional.
#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
struct File {
    nats_url: Option<String>,
    subject_prefix: Option<String>,
    admin_token: Option<String>,
    encryption_key: Option<String>,
    encryption_old_key: Option<String>,
    api_listen: Option<String>,
    metrics_listen: Option<String>,
    allow_http_endpoints: Option<bool>,
    allow_private_endpoints: Option<bool>,
    extra_ca_file: Option<PathBuf>,
    retry_schedule: Option<String>,
    stream_replicas: Option<usize>,
    worker_concurrency: Option<usize>,
    router_concurrency: Option<usize>,
    stall_warning_after: Option<String>,
    duplicate_window: Option<String>,
    audit_max_age: Option<String>,
    events_max_bytes: Option<String>,
    deliveries_max_bytes: Option<String>,
    attempts_max_bytes: Option<String>,
    dead_max_bytes: Option<String>,
    attempts_max_records: Option<usize>,
    dead_max_records: Option<usize>,
    router_memory: Option<String>,
    worker_memory: Option<String>,
    shutdown_grace: Option<String>,
    disable_after: Option<String>,
    defer_grace: Option<String>,
    log_format: Option<String>,
    trace_queue: Option<usize>,
    metrics_tenants: Option<String>,
    egress_proxy: Option<String>,
    egress_proxy_by_name: Option<bool>,
    portal_public_url: Option<String>,
    portal_frame_ancestors: Option<String>,
    portal_title: Option<String>,
    portal_accent: Option<String>,
    portal_logo: Option<std::path::PathBuf>,
    trusted_proxies: Option<String>,
    api_rate_limit: Option<String>,
    admin_rate_limit: Option<String>,
    resolve: Option<String>,
}

/// What `gancho publish` reads: where NATS is and the subject prefix.
#[derive(Args, Debug, Default, Clone)]
pub struct NatsFlags {
    /// NATS server URL(s), comma-separated. Default: the server `gancho dev` started here,
    /// else nats://127.0.0.1:4222.
    #[arg(long, env = "GANCHO_NATS_URL")]
    pub nats_url: Option<String>,
    /// Prefix of every subject, stream and bucket name. Default: gancho.
    #[arg(long, env = "GANCHO_SUBJECT_PREFIX")]
    pub subject_prefix: Option<String>,
}

impl From<NatsFlags> for Flags {
    fn from(n: NatsFlags) -> Self {
        Flags {
            nats_url: n.nats_url,
            subject_prefix: n.subject_prefix,
            ..Default::default()
        }
    }
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// NATS URL(s); `None` only under `gancho dev`, which starts its own server.
    pub nats_url: Option<String>,
    pub subjects: Subjects,
    pub admin_token: Option<String>,
    /// `None` when no key is configured (enough for the router).
    pub keys: Option<Keys>,
    pub api_listen: SocketAddr,
    pub metrics_listen: SocketAddr,
    pub allow_http_endpoints: bool,
    pub allow_private_endpoints: bool,
    pub extra_ca_file: Option<PathBuf>,
    pub retry_schedule: RetrySchedule,
    pub stream_replicas: usize,
    /// HTTP requests in flight per worker, 1 to 100,000. Default 512.
    pub worker_concurrency: usize,
    /// Events routed at once per router, 1 to 20,000 (the consumer's ack-pending limit; more
    /// could never be handed out). Default 1024.
    pub router_concurrency: usize,
    /// No message finished for this long while a role holds some is a stall: a warning line
    /// and `gancho_consumer_stalls_total`. Default 30 s.
    pub stall_warning_after: std::time::Duration,
    /// The events stream's de-duplication window. Default 2 minutes.
    pub duplicate_window: std::time::Duration,
    /// How long the audit log keeps a record. Default 400 days.
    pub audit_max_age: std::time::Duration,
    pub events_max_bytes: Option<u64>,
    pub deliveries_max_bytes: Option<u64>,
    pub attempts_max_bytes: Option<u64>,
    pub dead_max_bytes: Option<u64>,
    /// Records the attempt log keeps (they bound nats-server's memory for its index).
    pub attempts_max_records: u64,
    /// Dead letters kept.
    pub dead_max_records: u64,
    /// Bytes a router may hold of messages. Default 256 MiB.
    pub router_memory: u64,
    /// Bytes a worker may hold of messages and request bodies. Default 256 MiB.
    pub worker_memory: u64,
    /// Drain time on SIGTERM. Default 15 s.
    pub shutdown_grace: std::time::Duration,
    /// Failing this long disables an endpoint. Default 5 days.
    pub disable_after: std::time::Duration,
    /// How long past its retry schedule an undeliverable delivery is kept. Default 1 hour.
    pub defer_grace: std::time::Duration,
    /// One JSON object per log line instead of text.
    pub log_json: bool,
    /// Tenants labelled by name in metrics; the rest are `other`.
    pub metrics_tenants: Vec<String>,
    /// Spans the queue in front of the OTLP exporter holds at most.
    pub trace_queue: usize,
    /// Every webhook leaves through this proxy.
    pub egress_proxy: Option<gancho_worker::egress::EgressProxy>,
    /// Host names pinned to addresses (lower case).
    pub resolve: std::collections::HashMap<String, Vec<std::net::IpAddr>>,
    /// Where the portal is reached (scheme, host, port and any path, no trailing slash).
    pub portal_public_url: Option<String>,
    /// The portal's CSP `frame-ancestors` sources, checked: `'none'` by default.
    pub portal_frame_ancestors: String,
    /// The portal's title, accent and logo, checked.
    pub portal_brand: gancho_api::brand::Brand,
    /// Proxies whose X-Forwarded-For is believed.
    pub trusted_proxies: gancho_api::client::TrustedProxies,
    /// Requests a second per credential on /v1; 0: not limited.
    pub api_rate_limit: u32,
    /// Requests a second of the admin token on /v1; `None`: not limited.
    pub admin_rate_limit: Option<u32>,
}

/// The encryption keys as configured (checked to be keys; never printed).
#[derive(Clone)]
pub struct Keys {
    pub current: String,
    pub old: Option<String>,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keys(***)")
    }
}

impl Keys {
    pub fn keyring(&self) -> gancho_store::Keyring {
        gancho_store::Keyring::new(&self.current, self.old.as_deref())
            .expect("checked when the config was loaded")
    }
}

/// A configuration error: one line, naming the key.
#[derive(Debug)]
pub struct ConfigError(pub String);

impl std::error::Error for ConfigError {}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn bad(key: &str, value: &str, why: impl std::fmt::Display) -> ConfigError {
    ConfigError(format!("invalid {key} {value:?}: {why}"))
}

/// At most this many tenants get metrics of their own.
const MAX_METRICS_TENANTS: usize = 100;

fn metrics_tenants(list: Option<&str>) -> Result<Vec<String>, ConfigError> {
    let mut tenants: Vec<String> = Vec::new();
    for t in list.unwrap_or("").split(',').map(str::trim) {
        if t.is_empty() || tenants.iter().any(|x| x == t) {
            continue;
        }
        if t == gancho_telemetry::OTHER_TENANTS {
            return Err(bad(
                "metrics_tenants",
                t,
                "`other` is the label of every tenant not listed",
            ));
        }
        gancho_core::id::validate_tenant(t).map_err(|e| bad("metrics_tenants", t, e))?;
        tenants.push(t.to_owned());
    }
    if tenants.len() > MAX_METRICS_TENANTS {
        return Err(ConfigError(format!(
            "invalid metrics_tenants: {} tenants listed, at most {MAX_METRICS_TENANTS} (each adds series to every role)",
            tenants.len()
        )));
    }
    Ok(tenants)
}

fn parse_bool(key: &str, v: &str) -> Result<bool, ConfigError> {
    match v.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(bad(key, v, "expected true or false")),
    }
}

/// The most records a log may be set to keep (about 1 TB of nats-server's memory).
const MAX_RECORDS: usize = 10_000_000_000;

fn parse_count(key: &str, v: &str, max: usize) -> Result<usize, ConfigError> {
    match v.trim().parse::<usize>() {
        Ok(n) if (1..=max).contains(&n) => Ok(n),
        _ => Err(bad(
            key,
            v,
            format!("expected a whole number from 1 to {max}"),
        )),
    }
}

/// A size like `512MiB`, `10GB` or `1048576` (bytes), at least 1 MiB.
fn parse_size(key: &str, v: &str) -> Result<u64, ConfigError> {
    let t = v.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1_000,
        "kib" => 1 << 10,
        "mb" => 1_000_000,
        "mib" => 1 << 20,
        "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        "tb" => 1_000_000_000_000,
        "tib" => 1 << 40,
        _ => {
            return Err(bad(
                key,
                v,
                "expected a size like 512MiB, 10GB or a number of bytes",
            ))
        }
    };
    match num.parse::<u64>().ok().and_then(|n| n.checked_mul(mult)) {
        Some(n) if n >= 1 << 20 => Ok(n),
        _ => Err(bad(
            key,
            v,
            "expected a size of at least 1MiB, like 512MiB or 10GB",
        )),
    }
}

/// A duration like `15s` or `5d` from `value` (else `default`), within `seconds` (from, to).
fn duration(
    key: &str,
    value: Option<String>,
    default: &str,
    (from, to): (u64, u64),
    expected: &str,
) -> Result<std::time::Duration, ConfigError> {
    let v = value.unwrap_or_else(|| default.into());
    let range = std::time::Duration::from_secs(from)..=std::time::Duration::from_secs(to);
    match humantime::parse_duration(v.trim()) {
        Ok(d) if range.contains(&d) => Ok(d),
        _ => Err(bad(key, &v, expected)),
    }
}

fn parse_addr(key: &str, v: &str) -> Result<SocketAddr, ConfigError> {
    v.trim().parse().map_err(|_| {
        bad(
            key,
            v,
            "expected host:port with an IP address, like 127.0.0.1:8080",
        )
    })
}

impl Config {
    /// What the streams are created and reconciled with at start-up.
    pub fn stream_settings(&self) -> gancho_store::streams::StreamSettings {
        gancho_store::streams::StreamSettings {
            replicas: self.stream_replicas,
            duplicate_window: self.duplicate_window,
            events_max_bytes: self.events_max_bytes,
            deliveries_max_bytes: self.deliveries_max_bytes,
            attempts_max_bytes: self.attempts_max_bytes,
            dead_max_bytes: self.dead_max_bytes,
            attempts_max_records: Some(self.attempts_max_records),
            dead_max_records: Some(self.dead_max_records),
            audit_max_age: self.audit_max_age,
        }
    }

    /// Merges the layers and validates every value.
    #[allow(
        clippy::too_many_lines,
        reason = "every setting read and validated in one place, one statement each"
    )]
    pub fn load(flags: &Flags) -> Result<Self, ConfigError> {
        let file: File = match &flags.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    ConfigError(format!("cannot read config file {}: {e}", path.display()))
                })?;
                toml::from_str(&text).map_err(|e| {
                    let msg = e.message().replace('\n', " ");
                    // Name the line (and so the key) the parser stopped at.
                    let at = e.span().map(|span| {
                        let line_no = text[..span.start].matches('\n').count() + 1;
                        let line = text.lines().nth(line_no - 1).unwrap_or("").trim();
                        let secret = ["admin_token", "encryption_key", "encryption_old_key"]
                            .into_iter()
                            .find(|k| line.starts_with(k));
                        if let Some(key) = secret {
                            // Never echo a secret back, even a mistyped one.
                            format!(", line {line_no} `{key} = ***`")
                        } else {
                            format!(", line {line_no} `{line}`")
                        }
                    });
                    ConfigError(format!(
                        "config file {}{}: {msg}",
                        path.display(),
                        at.unwrap_or_default()
                    ))
                })?
            }
            None => File::default(),
        };
        // Each value: flag/env (strings, validated here), else the file, else the default.
        let prefix = flags
            .subject_prefix
            .clone()
            .or(file.subject_prefix)
            .unwrap_or_else(|| "gancho".into());
        let subjects = Subjects::new(&prefix).map_err(|e| bad("subject_prefix", &prefix, e))?;
        let api_listen = match &flags.api_listen {
            Some(v) => parse_addr("api_listen", v)?,
            None => parse_addr(
                "api_listen",
                file.api_listen.as_deref().unwrap_or("127.0.0.1:8080"),
            )?,
        };
        let metrics_listen = match &flags.metrics_listen {
            Some(v) => parse_addr("metrics_listen", v)?,
            None => parse_addr(
                "metrics_listen",
                file.metrics_listen.as_deref().unwrap_or("127.0.0.1:9090"),
            )?,
        };
        let allow_http_endpoints = match &flags.allow_http_endpoints {
            Some(v) => parse_bool("allow_http_endpoints", v)?,
            None => file.allow_http_endpoints.unwrap_or(false),
        };
        let allow_private_endpoints = match &flags.allow_private_endpoints {
            Some(v) => parse_bool("allow_private_endpoints", v)?,
            None => file.allow_private_endpoints.unwrap_or(false),
        };
        let schedule = flags
            .retry_schedule
            .clone()
            .or(file.retry_schedule)
            .unwrap_or_else(|| gancho_core::retry::DEFAULT_SCHEDULE.into());
        let retry_schedule =
            RetrySchedule::parse(&schedule).map_err(|e| bad("retry_schedule", &schedule, e))?;
        let stream_replicas = match &flags.stream_replicas {
            Some(v) => parse_count("stream_replicas", v, 5)?,
            None => parse_count(
                "stream_replicas",
                &file.stream_replicas.unwrap_or(1).to_string(),
                5,
            )?,
        };
        let count = |key, flag: &Option<String>, file: Option<usize>, default: usize, max| {
            let v = flag
                .clone()
                .unwrap_or_else(|| file.unwrap_or(default).to_string());
            parse_count(key, &v, max)
        };
        let worker_concurrency = count(
            "worker_concurrency",
            &flags.worker_concurrency,
            file.worker_concurrency,
            gancho_worker::DEFAULT_CONCURRENCY,
            100_000,
        )?;
        let router_concurrency = count(
            "router_concurrency",
            &flags.router_concurrency,
            file.router_concurrency,
            gancho_router::DEFAULT_CONCURRENCY,
            gancho_router::MAX_CONCURRENCY,
        )?;
        let stall = flags
            .stall_warning_after
            .clone()
            .or(file.stall_warning_after)
            .unwrap_or_else(|| "30s".into());
        let stall_warning_after = match humantime::parse_duration(stall.trim()) {
            Ok(d) if d >= std::time::Duration::from_millis(100) => d,
            _ => {
                return Err(bad(
                    "stall_warning_after",
                    &stall,
                    "expected a duration of at least 100ms, like 30s or 2m",
                ))
            }
        };
        let window = flags
            .duplicate_window
            .clone()
            .or(file.duplicate_window)
            .unwrap_or_else(|| "2m".into());
        let duplicate_window = match humantime::parse_duration(window.trim()) {
            Ok(d)
                if d >= std::time::Duration::from_secs(1)
                    && d <= gancho_store::streams::EVENTS_MAX_AGE =>
            {
                d
            }
            _ => {
                return Err(bad(
                    "duplicate_window",
                    &window,
                    "expected a duration from 1s to 7d, like 2m or 1h",
                ))
            }
        };
        let audit_age = flags
            .audit_max_age
            .clone()
            .or(file.audit_max_age)
            .unwrap_or_else(|| "400d".into());
        let audit_max_age = match humantime::parse_duration(audit_age.trim()) {
            Ok(d) if d >= std::time::Duration::from_secs(86_400) => d,
            _ => {
                return Err(bad(
                    "audit_max_age",
                    &audit_age,
                    "expected a duration of at least 1d, like 400d or 7y",
                ))
            }
        };
        let size = |key: &str, flag: &Option<String>, file: Option<String>| {
            flag.clone()
                .or(file)
                .map(|v| parse_size(key, &v))
                .transpose()
        };
        let events_max_bytes = size(
            "events_max_bytes",
            &flags.events_max_bytes,
            file.events_max_bytes,
        )?;
        let deliveries_max_bytes = size(
            "deliveries_max_bytes",
            &flags.deliveries_max_bytes,
            file.deliveries_max_bytes,
        )?;
        let attempts_max_bytes = size(
            "attempts_max_bytes",
            &flags.attempts_max_bytes,
            file.attempts_max_bytes,
        )?;
        let dead_max_bytes = size("dead_max_bytes", &flags.dead_max_bytes, file.dead_max_bytes)?;
        let attempts_max_records = count(
            "attempts_max_records",
            &flags.attempts_max_records,
            file.attempts_max_records,
            gancho_store::streams::DEFAULT_ATTEMPTS_MAX_RECORDS as usize,
            MAX_RECORDS,
        )? as u64;
        let dead_max_records = count(
            "dead_max_records",
            &flags.dead_max_records,
            file.dead_max_records,
            gancho_store::streams::DEFAULT_DEAD_MAX_RECORDS as usize,
            MAX_RECORDS,
        )? as u64;
        let router_memory = size("router_memory", &flags.router_memory, file.router_memory)?
            .unwrap_or(gancho_router::DEFAULT_MEMORY);
        let worker_memory = size("worker_memory", &flags.worker_memory, file.worker_memory)?
            .unwrap_or(gancho_worker::DEFAULT_MEMORY);
        let shutdown_grace = duration(
            "shutdown_grace",
            flags.shutdown_grace.clone().or(file.shutdown_grace),
            "15s",
            (1, 600),
            "expected a duration from 1s to 10m, like 15s or 1m",
        )?;
        let disable_after = duration(
            "disable_after",
            flags.disable_after.clone().or(file.disable_after),
            "5d",
            (1, 90 * 86_400),
            "expected a duration from 1s to 90d, like 5d or 12h",
        )?;
        let defer_grace = duration(
            "defer_grace",
            flags.defer_grace.clone().or(file.defer_grace),
            "1h",
            (1, 30 * 86_400),
            "expected a duration from 1s to 30d, like 1h or 90m",
        )?;
        let log_json = match flags
            .log_format
            .clone()
            .or(file.log_format)
            .as_deref()
            .map(str::trim)
        {
            None | Some("text") => false,
            Some("json") => true,
            Some(other) => return Err(bad("log_format", other, "expected text or json")),
        };
        let trace_queue = count(
            "trace_queue",
            &flags.trace_queue,
            file.trace_queue,
            gancho_telemetry::traces::QUEUE,
            1_000_000,
        )?;
        let metrics_tenants = metrics_tenants(
            flags
                .metrics_tenants
                .clone()
                .or(file.metrics_tenants)
                .as_deref(),
        )?;
        let by_name = match &flags.egress_proxy_by_name {
            Some(v) => parse_bool("egress_proxy_by_name", v)?,
            None => file.egress_proxy_by_name.unwrap_or(false),
        };
        let egress_proxy = match flags.egress_proxy.clone().or(file.egress_proxy) {
            Some(url) => Some(
                gancho_worker::egress::EgressProxy::parse(url.trim(), by_name).map_err(|why| {
                    // The URL may hold a password: the message names the key, not the value.
                    ConfigError(format!("invalid egress_proxy: {why}"))
                })?,
            ),
            None if by_name => {
                return Err(ConfigError(
                    "invalid egress_proxy_by_name: it needs egress_proxy (GANCHO_EGRESS_PROXY)"
                        .into(),
                ))
            }
            None => None,
        };
        let resolve = parse_resolve(flags.resolve.clone().or(file.resolve).as_deref())?;
        let portal_public_url = flags
            .portal_public_url
            .clone()
            .or(file.portal_public_url)
            .map(|v| parse_public_url(&v))
            .transpose()?;
        let portal_frame_ancestors = parse_frame_ancestors(
            flags
                .portal_frame_ancestors
                .clone()
                .or(file.portal_frame_ancestors)
                .as_deref(),
        )?;
        let portal_brand = gancho_api::brand::Brand::new(
            flags.portal_title.clone().or(file.portal_title).as_deref(),
            flags
                .portal_accent
                .clone()
                .or(file.portal_accent)
                .as_deref(),
            flags.portal_logo.clone().or(file.portal_logo).as_deref(),
        )
        .map_err(ConfigError)?;
        let trusted_proxies = match flags.trusted_proxies.clone().or(file.trusted_proxies) {
            Some(v) => gancho_api::client::TrustedProxies::parse(&v)
                .map_err(|why| ConfigError(format!("invalid trusted_proxies: {why}")))?,
            None => Default::default(),
        };
        let api_rate_limit = match flags.api_rate_limit.clone().or(file.api_rate_limit) {
            None => gancho_api::client::API_RATE_LIMIT_DEFAULT,
            Some(v) if v.trim() == "off" => 0,
            Some(v) => v.trim().parse::<u32>().ok().filter(|n| *n > 0).ok_or_else(|| {
                ConfigError(format!(
                    "invalid api_rate_limit {v:?}: requests a second per API key or portal session, a whole number from 1 (e.g. 50), or off"
                ))
            })?,
        };
        let admin_rate_limit = match flags.admin_rate_limit.clone().or(file.admin_rate_limit) {
            None => None,
            Some(v) if v.trim() == "off" => None,
            Some(v) => Some(v.trim().parse::<u32>().ok().filter(|n| *n > 0).ok_or_else(|| {
                ConfigError(format!(
                    "invalid admin_rate_limit {v:?}: requests a second for the admin token, a whole number from 1 (e.g. 100), or off"
                ))
            })?),
        };
        let extra_ca_file = flags.extra_ca_file.clone().or(file.extra_ca_file);
        if let Some(path) = &extra_ca_file {
            if !path.is_file() {
                return Err(bad(
                    "extra_ca_file",
                    &path.display().to_string(),
                    "no such file",
                ));
            }
        }
        let admin_token = flags.admin_token.clone().or(file.admin_token);
        if let Some(t) = &admin_token {
            if t.len() < 16 {
                return Err(ConfigError(
                    "invalid admin_token: it must be at least 16 characters".into(),
                ));
            }
        }
        let encryption_key = flags.encryption_key.clone().or(file.encryption_key);
        let encryption_old_key = flags.encryption_old_key.clone().or(file.encryption_old_key);
        let keys = match encryption_key {
            Some(current) => {
                let keys = Keys {
                    current,
                    old: encryption_old_key,
                };
                gancho_store::Keyring::new(&keys.current, keys.old.as_deref())
                    .map_err(|e| ConfigError(format!("invalid encryption key: {e}")))?;
                Some(keys)
            }
            None if encryption_old_key.is_some() => {
                return Err(ConfigError(
                    "GANCHO_ENCRYPTION_OLD_KEY is set without GANCHO_ENCRYPTION_KEY: set the new key too".into(),
                ))
            }
            None => None,
        };
        let nats_url = flags.nats_url.clone().or(file.nats_url);
        if let Some(url) = &nats_url {
            if url.trim().is_empty() {
                return Err(bad("nats_url", url, "it is empty"));
            }
        }
        Ok(Self {
            nats_url,
            subjects,
            admin_token,
            keys,
            api_listen,
            metrics_listen,
            allow_http_endpoints,
            allow_private_endpoints,
            extra_ca_file,
            retry_schedule,
            stream_replicas,
            worker_concurrency,
            router_concurrency,
            stall_warning_after,
            duplicate_window,
            audit_max_age,
            events_max_bytes,
            deliveries_max_bytes,
            attempts_max_bytes,
            dead_max_bytes,
            attempts_max_records,
            dead_max_records,
            router_memory,
            worker_memory,
            shutdown_grace,
            disable_after,
            defer_grace,
            log_json,
            metrics_tenants,
            trace_queue,
            egress_proxy,
            resolve,
            portal_public_url,
            trusted_proxies,
            api_rate_limit,
            admin_rate_limit,
            portal_frame_ancestors,
            portal_brand,
        })
    }

    /// The NATS URL, or the error a role that needs one reports.
    pub fn require_nats_url(&self) -> Result<&str, ConfigError> {
        self.nats_url.as_deref().ok_or_else(|| {
            ConfigError("missing nats_url: set GANCHO_NATS_URL (or use `gancho dev`, which starts its own NATS)".into())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let c = Config::load(&Flags::default()).unwrap();
        assert_eq!(c.api_listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.metrics_listen.to_string(), "127.0.0.1:9090");
        assert_eq!(c.retry_schedule.attempts(), 8);
        assert_eq!(c.stream_replicas, 1);
        assert!(!c.allow_http_endpoints);
        assert!(c.nats_url.is_none());
        assert_eq!(c.attempts_max_records, 5_000_000);
        assert_eq!(c.dead_max_records, 1_000_000);
        assert_eq!(c.portal_frame_ancestors, "'none'");
        assert!(c.portal_public_url.is_none());
        assert_eq!(c.defer_grace, gancho_worker::DEFAULT_DEFER_GRACE);
        assert_eq!(c.disable_after, std::time::Duration::from_secs(5 * 86_400));
        assert_eq!(c.shutdown_grace, std::time::Duration::from_secs(15));
    }

    #[test]
    fn flags_override_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gancho.toml");
        std::fs::write(
            &path,
            "stream_replicas = 3\nretry_schedule = \"0s,1s\"\napi_listen = \"127.0.0.1:7000\"\n",
        )
        .unwrap();
        let flags = Flags {
            config: Some(path),
            api_listen: Some("127.0.0.1:7001".into()),
            ..Default::default()
        };
        let c = Config::load(&flags).unwrap();
        assert_eq!(c.stream_replicas, 3);
        assert_eq!(c.retry_schedule.attempts(), 2);
        assert_eq!(c.api_listen.to_string(), "127.0.0.1:7001");
    }

    #[test]
    #[allow(
        clippy::too_many_lines,
        reason = "one case per key: a bad value and the line it must give"
    )]
    fn errors_name_the_key_on_one_line() {
        let cases: Vec<(Flags, &str)> = vec![
            (
                Flags {
                    retry_schedule: Some("0s,5x".into()),
                    ..Default::default()
                },
                "invalid retry_schedule \"0s,5x\"",
            ),
            (
                Flags {
                    api_listen: Some("localhost".into()),
                    ..Default::default()
                },
                "invalid api_listen",
            ),
            (
                Flags {
                    stream_replicas: Some("0".into()),
                    ..Default::default()
                },
                "invalid stream_replicas",
            ),
            (
                Flags {
                    allow_http_endpoints: Some("maybe".into()),
                    ..Default::default()
                },
                "invalid allow_http_endpoints",
            ),
            (
                Flags {
                    subject_prefix: Some("a.b".into()),
                    ..Default::default()
                },
                "invalid subject_prefix",
            ),
            (
                Flags {
                    router_concurrency: Some("20001".into()),
                    ..Default::default()
                },
                "invalid router_concurrency \"20001\": expected a whole number from 1 to 20000",
            ),
            (
                Flags {
                    attempts_max_records: Some("5M".into()),
                    ..Default::default()
                },
                "invalid attempts_max_records \"5M\": expected a whole number from 1 to 10000000000",
            ),
            (
                Flags {
                    defer_grace: Some("31d".into()),
                    ..Default::default()
                },
                "invalid defer_grace \"31d\": expected a duration from 1s to 30d, like 1h or 90m",
            ),
            (
                Flags {
                    disable_after: Some("0s".into()),
                    ..Default::default()
                },
                "invalid disable_after \"0s\": expected a duration from 1s to 90d",
            ),
            (
                Flags {
                    stall_warning_after: Some("soon".into()),
                    ..Default::default()
                },
                "invalid stall_warning_after \"soon\"",
            ),
            (
                Flags {
                    admin_token: Some("short".into()),
                    ..Default::default()
                },
                "invalid admin_token",
            ),
            (
                Flags {
                    metrics_tenants: Some("acme,Not A Tenant".into()),
                    ..Default::default()
                },
                "invalid metrics_tenants \"Not A Tenant\"",
            ),
            (
                Flags {
                    egress_proxy: Some("https://user:hunter2@proxy:3128".into()),
                    ..Default::default()
                },
                "invalid egress_proxy: it must be http://",
            ),
            (
                Flags {
                    portal_frame_ancestors: Some("https://a.example.com;script-src *".into()),
                    ..Default::default()
                },
                "invalid portal_frame_ancestors \"https://a.example.com;script-src\"",
            ),
            (
                Flags {
                    portal_frame_ancestors: Some("https://a.example.com/dashboard".into()),
                    ..Default::default()
                },
                "invalid portal_frame_ancestors \"https://a.example.com/dashboard\"",
            ),
            (
                Flags {
                    portal_public_url: Some("hooks.example.com".into()),
                    ..Default::default()
                },
                "invalid portal_public_url \"hooks.example.com\"",
            ),
            (
                Flags {
                    portal_public_url: Some("https://hooks.example.com/?x=1".into()),
                    ..Default::default()
                },
                "invalid portal_public_url \"https://hooks.example.com/?x=1\": it must have no query or fragment",
            ),
            (
                Flags {
                    egress_proxy_by_name: Some("true".into()),
                    ..Default::default()
                },
                "invalid egress_proxy_by_name: it needs egress_proxy",
            ),
            (
                Flags {
                    metrics_tenants: Some("other".into()),
                    ..Default::default()
                },
                "invalid metrics_tenants \"other\"",
            ),
            (
                Flags {
                    metrics_tenants: Some(
                        (0..101)
                            .map(|i| format!("t{i}"))
                            .collect::<Vec<_>>()
                            .join(","),
                    ),
                    ..Default::default()
                },
                "invalid metrics_tenants: 101 tenants listed, at most 100",
            ),
        ];
        for (flags, want) in cases {
            let err = Config::load(&flags).unwrap_err().to_string();
            assert!(err.starts_with(want), "{err}");
            assert!(!err.contains('\n'), "{err}");
            assert!(
                !err.contains("short\""),
                "the token must not be echoed: {err}"
            );
            assert!(!err.contains("hunter2"), "a password was echoed: {err}");
        }
    }

    #[test]
    fn metrics_tenants_are_a_list() {
        let c = Config::load(&Flags {
            metrics_tenants: Some(" acme, globex,,acme ".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(c.metrics_tenants, ["acme", "globex"]);
        assert!(Config::load(&Flags::default())
            .unwrap()
            .metrics_tenants
            .is_empty());
    }

    #[test]
    fn unknown_file_keys_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gancho.toml");
        std::fs::write(&path, "retry_shedule = \"0s\"\n").unwrap();
        let err = Config::load(&Flags {
            config: Some(path),
            ..Default::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("retry_shedule"), "{err}");
    }
}
