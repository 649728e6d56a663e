//! `gancho sink`: a webhook receiver for demos and load tests. It answers every request with a
//! fixed status, verifies the Standard Webhooks signature (with `--secret`, or under
//! `gancho dev` with the secret of whichever endpoint points at it), and prints one line per
//! request. Totals are printed when it stops.

use bytes::Bytes;
use clap::Args;
use gancho_core::signature::DEFAULT_TOLERANCE_SECS;
use gancho_core::{Key, PublicKey, Signer};
use gancho_store::Live;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

#[derive(Args, Debug)]
pub struct SinkArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8099")]
    pub listen: SocketAddr,
    /// The endpoint's whsec_ secret (or whsk_ key); without it or --public-key, signatures
    /// are not checked.
    #[arg(long, env = "GANCHO_SINK_SECRET", hide_env_values = true)]
    pub secret: Option<String>,
    /// The endpoint's whpk_ public key: checks v1a (ed25519) signatures, as a receiver does.
    #[arg(long, conflicts_with = "secret")]
    pub public_key: Option<String>,
    /// PEM certificate chain, to serve HTTPS (with --tls-key).
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Status to answer with.
    #[arg(long, default_value_t = 200)]
    pub status: u16,
    /// Share of requests (0 to 1), chosen at random, answered 500 instead (a receiver that
    /// fails now and then, so deliveries are retried). They are not counted as delivered.
    #[arg(long, default_value_t = 0.0)]
    pub fail_share: f64,
    /// Print only the totals at exit, not a line per request. Any GET answers the totals
    /// so far as JSON, with end-to-end latencies (from the body's timestamp).
    #[arg(long)]
    pub quiet: bool,
}

/// How the sink checks signatures.
pub enum Verifier {
    None,
    Secret(Signer),
    PublicKey(PublicKey),
    /// Under `gancho dev`: any endpoint of the live config whose URL points at this sink.
    Live(Arc<Live>),
}

#[derive(Default)]
struct Counts {
    received: AtomicU64,
    /// Answered 500 on purpose (`--fail-share`).
    failed: AtomicU64,
    valid: AtomicU64,
    invalid: AtomicU64,
    /// What `GET` answers (for `gancho bench`): distinct webhooks and end-to-end latencies.
    seen: std::sync::Mutex<Seen>,
}

#[derive(Default)]
struct Seen {
    /// Hashes of (path, webhook-id): a repeat is a duplicate.
    ids: std::collections::HashSet<u64>,
    /// Microseconds from the body's `timestamp` (the event's time) to arrival, with the
    /// arrival.
    latencies_us: Vec<(std::time::Instant, u64)>,
    /// Per path (endpoint): requests, the first and the last arrival.
    paths: std::collections::HashMap<String, (u64, std::time::Instant, std::time::Instant)>,
}

impl Counts {
    /// `GET ?progress`: only `{"received", "distinct"}`, for asking often while a run goes
    /// on. [`Counts::stats`] sorts every latency seen while it holds the lock each request
    /// takes: asked ten times a second, that was the sink's own CPU and its requests' waits,
    /// charged to whatever it measured (at fan-out 1 and 60,000 deliveries the sink took
    /// 1.66 s of CPU with it and 1.16 s without).
    fn progress(&self) -> serde_json::Value {
        let distinct = self
            .seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .ids
            .len();
        serde_json::json!({
            "received": self.received.load(Ordering::Relaxed),
            "distinct": distinct,
        })
    }

    /// `GET` on the sink: `{"received", "distinct", "valid", "invalid", "latency_us":
    /// {"p50", "p90", "p99", "max"}, "p99_us_by_5s", "busiest_endpoint_per_s"}`, where
    /// `p99_us_by_5s` is the p99 of the arrivals in each 5 s from the first one (where the
    /// tail comes from: a start-up, a circuit opening, all along).
    fn stats(&self) -> serde_json::Value {
        let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let quantile = |l: &[u64], p: f64| {
            if l.is_empty() {
                0
            } else {
                l[((l.len() as f64 - 1.0) * p).round() as usize]
            }
        };
        let mut l: Vec<u64> = seen.latencies_us.iter().map(|(_, us)| *us).collect();
        l.sort_unstable();
        let q = |p: f64| quantile(&l, p);
        let mut slices: Vec<Vec<u64>> = Vec::new();
        if let Some(start) = seen.latencies_us.iter().map(|(at, _)| *at).min() {
            for (at, us) in &seen.latencies_us {
                let i = ((*at - start).as_secs() / 5) as usize;
                if slices.len() <= i {
                    slices.resize_with(i + 1, Vec::new);
                }
                slices[i].push(*us);
            }
        }
        let by_5s: Vec<u64> = slices
            .iter_mut()
            .map(|s| {
                s.sort_unstable();
                quantile(s, 0.99)
            })
            .collect();
        // The busiest endpoint's rate over its own first to last request (those with at least
        // 20 requests): what a receiver limited to N/s would see.
        let busiest = seen
            .paths
            .values()
            .filter(|(n, first, last)| *n >= 20 && last > first)
            .map(|(n, first, last)| (*n - 1) as f64 / (*last - *first).as_secs_f64())
            .fold(0.0f64, f64::max);
        serde_json::json!({
            "busiest_endpoint_per_s": (busiest * 10.0).round() / 10.0,
            "received": self.received.load(Ordering::Relaxed),
            "failed_on_purpose": self.failed.load(Ordering::Relaxed),
            "distinct": seen.ids.len(),
            "valid": self.valid.load(Ordering::Relaxed),
            "invalid": self.invalid.load(Ordering::Relaxed),
            "latency_us": {"p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "max": q(1.0)},
            "p99_us_by_5s": by_5s,
        })
    }

    fn note(&self, path: &str, id: &str, body: &[u8]) {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (path, id).hash(&mut h);
        let latency = serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .and_then(|v| {
                let ts = v.get("timestamp")?.as_str()?.to_owned();
                time::OffsetDateTime::parse(&ts, &time::format_description::well_known::Rfc3339)
                    .ok()
            })
            .map(|at| {
                (time::OffsetDateTime::now_utc() - at)
                    .whole_microseconds()
                    .max(0) as u64
            });
        let now = std::time::Instant::now();
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.ids.insert(h.finish());
        match seen.paths.get_mut(path) {
            Some(p) => {
                p.0 += 1;
                p.2 = now;
            }
            None => {
                seen.paths.insert(path.to_owned(), (1, now, now));
            }
        }
        if let Some(us) = latency {
            seen.latencies_us.push((now, us));
        }
    }
}

struct Sink {
    verifier: Verifier,
    status: StatusCode,
    fail_share: f64,
    quiet: bool,
    counts: Counts,
    /// Until when every webhook is answered 503 (`POST /_outage?secs=N`, for `gancho bench
    /// --faults`): a receiver down for a while, its counts kept.
    down_until: std::sync::Mutex<Option<std::time::Instant>>,
}

pub async fn run(args: SinkArgs) -> anyhow::Result<()> {
    let verifier = match (&args.secret, &args.public_key) {
        (Some(s), _) => Verifier::Secret(Signer::new(
            Key::parse(s).map_err(|e| anyhow::anyhow!("--secret: {e}"))?,
        )),
        (None, Some(k)) => Verifier::PublicKey(
            PublicKey::parse(k).map_err(|e| anyhow::anyhow!("--public-key: {e}"))?,
        ),
        (None, None) => Verifier::None,
    };
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(load_tls(cert, key)?),
        _ => None,
    };
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    eprintln!(
        "gancho sink listening on {scheme}://{}",
        listener.local_addr()?
    );
    let cancel = CancellationToken::new();
    let status = StatusCode::from_u16(args.status)
        .map_err(|_| anyhow::anyhow!("--status {} is not an HTTP status", args.status))?;
    if !(0.0..=1.0).contains(&args.fail_share) {
        anyhow::bail!("--fail-share {} must be from 0 to 1", args.fail_share);
    }
    let sink = tokio::spawn(serve(
        listener,
        tls,
        verifier,
        (status, args.fail_share),
        args.quiet,
        cancel.clone(),
    ));
    let _ = tokio::signal::ctrl_c().await;
    cancel.cancel();
    let sink = sink.await?;
    let c = &sink.counts;
    println!(
        "received {} webhooks: {} signatures valid, {} invalid",
        c.received.load(Ordering::Relaxed),
        c.valid.load(Ordering::Relaxed),
        c.invalid.load(Ordering::Relaxed)
    );
    Ok(())
}

fn load_tls(cert: &PathBuf, key: &PathBuf) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let certs = rustls_pemfile::certs(&mut std::fs::read(cert)?.as_slice())
        .collect::<Result<Vec<_>, _>>()?;
    let key = rustls_pemfile::private_key(&mut std::fs::read(key)?.as_slice())?
        .ok_or_else(|| anyhow::anyhow!("no private key in {}", key.display()))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(certs, key)?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// Serves until `cancel` fires; the returned future resolves to the sink (for its totals).
fn serve(
    listener: tokio::net::TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    verifier: Verifier,
    (status, fail_share): (StatusCode, f64),
    quiet: bool,
    cancel: CancellationToken,
) -> impl std::future::Future<Output = Arc<Sink>> {
    let sink = Arc::new(Sink {
        verifier,
        status,
        fail_share,
        quiet,
        counts: Counts::default(),
        down_until: std::sync::Mutex::new(None),
    });
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    async move {
        loop {
            let (stream, _) = tokio::select! {
                _ = cancel.cancelled() => break,
                r = listener.accept() => match r { Ok(s) => s, Err(_) => continue },
            };
            let sink2 = sink.clone();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let sink = sink2.clone();
                    async move { Ok::<_, hyper::Error>(sink.handle(req).await) }
                });
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                match acceptor {
                    Some(a) => {
                        if let Ok(tls) = a.accept(stream).await {
                            let _ = builder.serve_connection(TokioIo::new(tls), svc).await;
                        }
                    }
                    None => {
                        let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
                    }
                }
            });
        }
        sink
    }
}

/// Starts the demo receiver of `gancho dev`; returns its address.
pub async fn start_dev(
    addr: SocketAddr,
    live: Arc<Live>,
    cancel: CancellationToken,
) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(serve(
        listener,
        None,
        Verifier::Live(live),
        (StatusCode::OK, 0.0),
        false,
        cancel,
    ));
    Ok(bound)
}

impl Sink {
    #[allow(
        clippy::too_many_lines,
        reason = "one branch per behaviour the bench's receiver can be asked for"
    )]
    async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        if req.method() == hyper::Method::GET {
            let stats = match req.uri().query() {
                Some("progress") => self.counts.progress(),
                _ => self.counts.stats(),
            };
            let mut resp = Response::new(Full::new(Bytes::from(stats.to_string())));
            resp.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("application/json"),
            );
            return resp;
        }
        if req.uri().path() == "/_outage" {
            return self.outage(req.uri().query().unwrap_or(""));
        }
        let (parts, body) = req.into_parts();
        let body = body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let h = |name: &str| {
            parts
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
        };
        let (id, ts, sig) = (
            h("webhook-id"),
            h("webhook-timestamp"),
            h("webhook-signature"),
        );
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let verify =
            |signer: &Signer| signer.verify(id, ts, sig, &body, now, DEFAULT_TOLERANCE_SECS);
        let verdict: &str = match &self.verifier {
            Verifier::None => "unchecked",
            Verifier::Secret(signer) => match verify(signer) {
                Ok(()) => "valid",
                Err(e) => e.kind(),
            },
            Verifier::PublicKey(key) => {
                match key.verify(id, ts, sig, &body, now, DEFAULT_TOLERANCE_SECS) {
                    Ok(()) => "valid",
                    Err(e) => e.kind(),
                }
            }
            Verifier::Live(live) => {
                let snap = live.load();
                let path = parts.uri.path();
                let mut candidates =
                    snap.tenants
                        .values()
                        .flat_map(|t| t.list.iter())
                        .filter(|ep| {
                            ep.uri.path() == path
                                && ep.uri.port_u16() == parts.uri.port_u16().or(ep.uri.port_u16())
                        });
                if candidates.any(|ep| ep.signer.as_ref().is_some_and(|s| verify(s).is_ok())) {
                    "valid"
                } else {
                    "no_match"
                }
            }
        };
        let down = self
            .down_until
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some_and(|until| std::time::Instant::now() < until);
        let fail = down || (self.fail_share > 0.0 && rand::random::<f64>() < self.fail_share);
        self.counts.received.fetch_add(1, Ordering::Relaxed);
        if fail {
            self.counts.failed.fetch_add(1, Ordering::Relaxed);
        } else {
            self.counts.note(parts.uri.path(), id, &body);
        }
        match verdict {
            "valid" => self.counts.valid.fetch_add(1, Ordering::Relaxed),
            "unchecked" => 0,
            _ => self.counts.invalid.fetch_add(1, Ordering::Relaxed),
        };
        if !self.quiet {
            let ty = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("type").and_then(|t| t.as_str()).map(str::to_owned))
                .unwrap_or_default();
            let line = format!(
                "webhook {} {} id={id} type={ty} signature={verdict} body={}",
                parts.method,
                parts.uri.path(),
                String::from_utf8_lossy(&body[..body.len().min(300)])
            );
            println!("{line}");
        }
        let mut resp = Response::new(Full::new(Bytes::new()));
        *resp.status_mut() = if down {
            StatusCode::SERVICE_UNAVAILABLE
        } else if fail {
            StatusCode::INTERNAL_SERVER_ERROR
        } else {
            self.status
        };
        resp
    }

    /// `POST /_outage?secs=N`: every webhook for the next N seconds (at most an hour) is
    /// answered 503 and counted as failed on purpose.
    fn outage(&self, query: &str) -> Response<Full<Bytes>> {
        let secs = query
            .split('&')
            .find_map(|kv| kv.strip_prefix("secs="))
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|s| *s <= 3600);
        let mut resp = Response::new(Full::new(Bytes::new()));
        match secs {
            Some(secs) => {
                *self.down_until.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some(std::time::Instant::now() + std::time::Duration::from_secs(secs));
                *resp.status_mut() = StatusCode::NO_CONTENT;
            }
            None => *resp.status_mut() = StatusCode::BAD_REQUEST,
        }
        resp
    }
}
