//! A real webhook receiver for tests: an HTTP/1.1 + HTTP/2 server on `127.0.0.1:0`, over TLS
//! with a [`TestCa`] certificate (or plain HTTP), that records every request and answers
//! each one as its script says (for example 500, 500, then 200).

use crate::tls::TestCa;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// How the receiver answers one request.
#[derive(Clone, Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// How long to wait before answering (a slow or hanging endpoint).
    pub delay: std::time::Duration,
}

impl Answer {
    pub fn status(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: String::new(),
            delay: std::time::Duration::ZERO,
        }
    }

    pub fn after(mut self, delay: std::time::Duration) -> Self {
        self.delay = delay;
        self
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub fn body(mut self, body: &str) -> Self {
        self.body = body.into();
        self
    }
}

/// One request the receiver got.
#[derive(Clone, Debug)]
pub struct Received {
    pub path: String,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
    pub at: Instant,
    pub version: hyper::Version,
    /// The address the request came from (an egress proxy's, when one is in the way).
    pub peer: SocketAddr,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Requests open right now, and the most ever open at once.
#[derive(Default)]
struct Concurrency {
    now: AtomicUsize,
    max: AtomicUsize,
}

impl Concurrency {
    fn enter(&self) {
        let n = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.max.fetch_max(n, Ordering::SeqCst);
    }
    fn leave(&self) {
        self.now.fetch_sub(1, Ordering::SeqCst);
    }
}

type Script = dyn Fn(usize, &Received) -> Answer + Send + Sync;

/// What the receiver keeps of each request.
struct Record {
    /// Every request whole, in arrival order (`None` for a tally receiver, which keeps only
    /// the counts below, so a run of a million deliveries does not hold a million bodies).
    requests: Option<Vec<Received>>,
    /// Requests received, whatever is kept.
    total: usize,
    /// How many times each (path, webhook-id) arrived: a count above 1 is a duplicate.
    tally: HashMap<(String, String), u32>,
}

/// A running receiver; dropping it stops accepting connections.
pub struct Receiver {
    addr: SocketAddr,
    tls: bool,
    record: Arc<Mutex<Record>>,
    concurrency: Arc<Concurrency>,
    task: JoinHandle<()>,
}

impl Receiver {
    /// HTTPS receiver answering with `script(n, request)` for the n-th request (0-based).
    pub async fn https<F>(ca: &TestCa, script: F) -> Self
    where
        F: Fn(usize, &Received) -> Answer + Send + Sync + 'static,
    {
        Self::start(Some(ca.server_config()), Arc::new(script), true).await
    }

    /// HTTPS receiver that requires a client certificate signed by `ca`, answering with
    /// `script` like [`Receiver::https`].
    pub async fn https_mtls<F>(ca: &TestCa, script: F) -> Self
    where
        F: Fn(usize, &Received) -> Answer + Send + Sync + 'static,
    {
        Self::start(Some(ca.server_config_mtls()), Arc::new(script), true).await
    }

    /// HTTPS receiver that answers 200 to everything and keeps only the count of each
    /// (path, webhook-id), for runs too large to keep every request: see [`Receiver::tally`].
    pub async fn https_tally(ca: &TestCa) -> Self {
        Self::start(
            Some(ca.server_config()),
            Arc::new(|_, _: &Received| Answer::status(200)),
            false,
        )
        .await
    }

    /// Plain-HTTP receiver (for tests of the `http://` opt-in).
    pub async fn http<F>(script: F) -> Self
    where
        F: Fn(usize, &Received) -> Answer + Send + Sync + 'static,
    {
        Self::start(None, Arc::new(script), true).await
    }

    /// HTTPS receiver that answers `statuses` in order, then repeats the last one.
    pub async fn https_sequence(ca: &TestCa, statuses: &[u16]) -> Self {
        let statuses = statuses.to_vec();
        Self::https(ca, move |n, _| {
            Answer::status(*statuses.get(n).or(statuses.last()).unwrap_or(&200))
        })
        .await
    }

    async fn start(
        tls: Option<Arc<rustls::ServerConfig>>,
        script: Arc<Script>,
        keep: bool,
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a receiver on 127.0.0.1");
        let addr = listener.local_addr().expect("a bound address");
        let record = Arc::new(Mutex::new(Record {
            requests: keep.then(Vec::new),
            total: 0,
            tally: HashMap::new(),
        }));
        let concurrency = Arc::new(Concurrency::default());
        let conc = concurrency.clone();
        let is_tls = tls.is_some();
        let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
        let rec = record.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, peer)) = listener.accept().await else {
                    continue;
                };
                let acceptor = acceptor.clone();
                let rec = rec.clone();
                let script = script.clone();
                let conc = conc.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let rec = rec.clone();
                        let script = script.clone();
                        let conc = conc.clone();
                        async move {
                            conc.enter();
                            let resp = handle(req, peer, &rec, &*script).await;
                            conc.leave();
                            Ok::<_, hyper::Error>(resp)
                        }
                    });
                    let builder =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    match acceptor {
                        Some(acceptor) => {
                            if let Ok(tls) = acceptor.accept(stream).await {
                                let _ = builder.serve_connection(TokioIo::new(tls), service).await;
                            }
                        }
                        None => {
                            let _ = builder
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        }
                    }
                });
            }
        });
        Self {
            addr,
            tls: is_tls,
            record,
            concurrency,
            task,
        }
    }

    /// `https://127.0.0.1:<port>/<path>` (or `http://` for a plain receiver).
    pub fn url(&self, path: &str) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}/{}", self.addr, path.trim_start_matches('/'))
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Everything received so far (empty for a tally receiver).
    pub fn received(&self) -> Vec<Received> {
        let record = self.record.lock().expect("receiver lock");
        record.requests.clone().unwrap_or_default()
    }

    /// Requests received so far.
    pub fn count(&self) -> usize {
        self.record.lock().expect("receiver lock").total
    }

    /// How many times each (path, webhook-id) arrived so far.
    pub fn tally(&self) -> HashMap<(String, String), u32> {
        self.record.lock().expect("receiver lock").tally.clone()
    }

    /// Distinct (path, webhook-id) pairs received so far.
    pub fn distinct(&self) -> usize {
        self.record.lock().expect("receiver lock").tally.len()
    }

    /// The most requests this receiver had open at once.
    pub fn max_concurrent(&self) -> usize {
        self.concurrency.max.load(Ordering::Relaxed)
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn handle(
    req: Request<Incoming>,
    peer: SocketAddr,
    rec: &Mutex<Record>,
    script: &Script,
) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let received = Received {
        path: parts
            .uri
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default(),
        headers: parts.headers,
        body,
        at: Instant::now(),
        version: parts.version,
        peer,
    };
    let answer = {
        let mut record = rec.lock().expect("receiver lock");
        let answer = script(record.total, &received);
        record.total += 1;
        let id = received.header("webhook-id").unwrap_or_default().to_owned();
        *record.tally.entry((received.path.clone(), id)).or_default() += 1;
        if let Some(all) = &mut record.requests {
            all.push(received);
        }
        answer
    };
    if !answer.delay.is_zero() {
        tokio::time::sleep(answer.delay).await;
    }
    let mut resp = Response::new(Full::new(Bytes::from(answer.body)));
    *resp.status_mut() = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::OK);
    for (k, v) in answer.headers {
        if let (Ok(k), Ok(v)) = (
            hyper::header::HeaderName::from_bytes(k.as_bytes()),
            hyper::header::HeaderValue::from_str(&v),
        ) {
            resp.headers_mut().insert(k, v);
        }
    }
    resp
}
