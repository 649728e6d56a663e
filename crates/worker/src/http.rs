//! The worker's HTTP client: one pooled hyper client per worker, HTTP/1.1 and HTTP/2 (ALPN),
//! rustls with the webpki roots plus an optional extra CA bundle, TLS 1.2 and 1.3. Redirects
//! are never followed (hyper does not follow them; a 3xx is a failed attempt).
//!
//! SSRF guard: the client resolves names itself and connects only to addresses the operator's
//! [`AddressPolicy`] allows ([`crate::resolve`]), so a DNS answer cannot point a webhook at
//! the metadata service. URLs with an IP literal skip the resolver, so
//! [`Client::check_target`] checks those before each request.

use crate::egress::{Egress, EgressProxy, ProxyError};
use crate::resolve::{resolve, GuardedResolver};
use bytes::Bytes;
use gancho_core::net::AddressPolicy;
use gancho_core::policy::AttemptOutcome;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use std::collections::HashMap;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Most response-body bytes kept in the attempt log.
pub const MAX_RESPONSE_BODY: usize = 4096;
/// How long an idle pooled connection is kept.
const POOL_IDLE: Duration = Duration::from_secs(90);
/// Idle connections kept per host: enough for a busy endpoint's concurrency.
const POOL_MAX_IDLE_PER_HOST: usize = 256;
/// TCP connect timeout (the request timeout bounds the rest).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a TLS probe waits for the handshake, then for the receiver's first word.
const PROBE_WAIT: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot read GANCHO_EXTRA_CA_FILE {path}: {reason}")]
    ExtraCa { path: String, reason: String },
}

type Inner = hyper_util::client::legacy::Client<hyper_rustls::HttpsConnector<Egress>, Full<Bytes>>;

/// What one HTTP attempt produced.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    pub retry_after: Option<Duration>,
}

/// Why an attempt got no HTTP response. `kind()` is the metric label.
#[derive(Debug)]
pub enum SendError {
    Timeout,
    Blocked(String),
    Connect(String),
    Tls(String),
    Request(String),
    /// The egress proxy could not be reached or refused the tunnel.
    Proxy(String),
}

impl SendError {
    pub fn kind(&self) -> AttemptOutcome {
        match self {
            SendError::Timeout => AttemptOutcome::Timeout,
            SendError::Blocked(_) => AttemptOutcome::Blocked,
            SendError::Connect(_) => AttemptOutcome::ConnectError,
            SendError::Tls(_) => AttemptOutcome::TlsError,
            SendError::Request(_) => AttemptOutcome::RequestError,
            SendError::Proxy(_) => AttemptOutcome::ProxyError,
        }
    }

    pub fn message(&self) -> String {
        match self {
            SendError::Timeout => "no response before the endpoint's timeout".into(),
            SendError::Blocked(m)
            | SendError::Connect(m)
            | SendError::Tls(m)
            | SendError::Request(m)
            | SendError::Proxy(m) => m.clone(),
        }
    }
}

/// Dedicated connection pools kept for endpoints with TLS settings of their own; past it the
/// cache starts over (their connections close when idle).
const MAX_IDENTITIES: usize = 1024;

/// What an endpoint brings to its TLS connections: a client certificate and key (mTLS) and
/// CA certificates of its own, all PEM.
#[derive(Clone, Copy, Default)]
pub struct Identity<'a> {
    pub cert: Option<&'a str>,
    pub key: Option<&'a str>,
    pub ca: Option<&'a str>,
}

impl Identity<'_> {
    fn is_empty(&self) -> bool {
        self.cert.is_none() && self.key.is_none() && self.ca.is_none()
    }

    /// A digest naming these settings: endpoints with the same ones share a pool.
    fn digest(&self) -> [u8; 32] {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        for part in [self.cert, self.key, self.ca] {
            let part = part.unwrap_or_default();
            h.update((part.len() as u64).to_be_bytes());
            h.update(part.as_bytes());
        }
        h.finalize().into()
    }
}

#[derive(Clone)]
pub struct Client {
    /// For endpoints without TLS settings of their own.
    inner: Pool,
    policy: AddressPolicy,
    /// Every connection goes through it when set.
    proxy: Option<Arc<EgressProxy>>,
    /// The webpki roots plus GANCHO_EXTRA_CA_FILE.
    roots: Arc<rustls::RootCertStore>,
    /// One client (so one connection pool) per distinct [`Identity`]: two endpoints on one
    /// host with different certificates never share a connection.
    identities: Arc<std::sync::Mutex<HashMap<[u8; 32], Pool>>>,
}

/// A pooled client and the TLS config its connections use (kept for [`Client::probe_tls`]).
#[derive(Clone)]
struct Pool {
    client: Inner,
    tls: Arc<rustls::ClientConfig>,
}

fn tls_builder() -> rustls::ConfigBuilder<rustls::ClientConfig, rustls::WantsVerifier> {
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("ring supports TLS 1.2 and 1.3")
}

/// A pooled client over `tls`, with the SSRF guard, direct or through the egress proxy.
fn pooled(
    tls: rustls::ClientConfig,
    policy: AddressPolicy,
    proxy: Option<Arc<EgressProxy>>,
) -> Pool {
    let config = Arc::new(tls.clone());
    let mut direct = HttpConnector::new_with_resolver(GuardedResolver { policy });
    direct.enforce_http(false);
    direct.set_nodelay(true);
    direct.set_connect_timeout(Some(CONNECT_TIMEOUT));
    let http = Egress {
        direct,
        proxy,
        policy,
        connect_timeout: CONNECT_TIMEOUT,
    };
    let builder = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls);
    let https = if policy.allow_http {
        builder
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http)
    } else {
        builder
            .https_only()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http)
    };
    // The timer runs the pool's reaper: without it an idle connection is dropped only when a
    // checkout reaches it, and the pool hands out its most recently used one first, so the
    // extra connections a burst opened stayed open (and held their buffers) for good.
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .pool_timer(hyper_util::rt::TokioTimer::new())
        .pool_idle_timeout(POOL_IDLE)
        .pool_max_idle_per_host(POOL_MAX_IDLE_PER_HOST)
        .build(https);
    Pool {
        client,
        tls: config,
    }
}

impl Client {
    pub fn new(
        policy: AddressPolicy,
        extra_ca: Option<&Path>,
        proxy: Option<EgressProxy>,
    ) -> Result<Self, ClientError> {
        let proxy = proxy.map(Arc::new);
        let mut roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        if let Some(path) = extra_ca {
            let err = |reason: String| ClientError::ExtraCa {
                path: path.display().to_string(),
                reason,
            };
            let pem = std::fs::read(path).map_err(|e| err(e.to_string()))?;
            let mut added = 0;
            for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
                let cert = cert.map_err(|e| err(e.to_string()))?;
                roots.add(cert).map_err(|e| err(e.to_string()))?;
                added += 1;
            }
            if added == 0 {
                return Err(err("no PEM certificate in the file".into()));
            }
        }
        let tls = tls_builder()
            .with_root_certificates(roots.clone())
            .with_no_client_auth();
        Ok(Self {
            inner: pooled(tls, policy, proxy.clone()),
            policy,
            proxy,
            roots: Arc::new(roots),
            identities: Default::default(),
        })
    }

    /// The client for an endpoint's TLS settings, built on first use and kept.
    fn for_identity(&self, id: &Identity<'_>) -> Result<Pool, SendError> {
        if id.is_empty() {
            return Ok(self.inner.clone());
        }
        let digest = id.digest();
        if let Some(c) = self.lock_identities().get(&digest) {
            return Ok(c.clone());
        }
        let mut roots = (*self.roots).clone();
        if let Some(ca) = id.ca {
            for cert in rustls_pemfile::certs(&mut ca.as_bytes()) {
                let cert = cert.map_err(|e| {
                    SendError::Tls(format!("the endpoint's ca does not parse: {e}"))
                })?;
                roots.add(cert).map_err(|e| {
                    SendError::Tls(format!(
                        "the endpoint's ca is not a usable CA certificate: {e}"
                    ))
                })?;
            }
        }
        let builder = tls_builder().with_root_certificates(roots);
        let tls = match (id.cert, id.key) {
            (Some(cert), Some(key)) => {
                let chain = rustls_pemfile::certs(&mut cert.as_bytes())
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| {
                        SendError::Tls(format!("the endpoint's client_cert does not parse: {e}"))
                    })?;
                let key = rustls_pemfile::private_key(&mut key.as_bytes())
                    .ok()
                    .flatten()
                    .ok_or_else(|| {
                        SendError::Tls("the endpoint's client_key does not parse".into())
                    })?;
                // A certificate that cannot be presented at all is said as such, not as a
                // key that does not match it.
                if let Some(problem) = chain
                    .first()
                    .and_then(|c| gancho_core::tls::client_cert_problem(c))
                {
                    return Err(SendError::Tls(format!("the endpoint's {problem}")));
                }
                builder.with_client_auth_cert(chain, key).map_err(|e| {
                    SendError::Tls(format!(
                        "the endpoint's client certificate and key do not go together: {e}"
                    ))
                })?
            }
            _ => builder.with_no_client_auth(),
        };
        let client = pooled(tls, self.policy, self.proxy.clone());
        let mut identities = self.lock_identities();
        if identities.len() >= MAX_IDENTITIES {
            identities.clear();
        }
        identities.insert(digest, client.clone());
        Ok(client)
    }

    fn lock_identities(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Pool>> {
        self.identities.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Handshakes with the receiver of `uri` and waits briefly for a first read: a TLS
    /// failure either way comes back as [`SendError::Tls`] naming its cause; anything else
    /// (no failure, no connection) as `None`. Same address checks as a request.
    async fn probe_tls(
        &self,
        uri: &http::Uri,
        tls: Arc<rustls::ClientConfig>,
    ) -> Option<SendError> {
        use tokio::io::AsyncReadExt;
        if self.proxy.is_some() {
            // The probe connects straight to the receiver, which the proxy exists to avoid.
            return None;
        }
        let host = uri.host()?.trim_start_matches('[').trim_end_matches(']');
        let port = uri.port_u16().unwrap_or(443);
        let addrs = resolve(self.policy, host, port).await.ok()?;
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(&addrs[..]))
            .await
            .ok()?
            .ok()?;
        let name = rustls::pki_types::ServerName::try_from(host.to_owned()).ok()?;
        let tls_error = |e: io::Error| {
            e.get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                .map(|t| SendError::Tls(describe_tls(t)))
        };
        let connector = tokio_rustls::TlsConnector::from(tls);
        let mut stream = match tokio::time::timeout(PROBE_WAIT, connector.connect(name, tcp)).await
        {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => return tls_error(e),
            Err(_) => return None,
        };
        let mut byte = [0u8; 1];
        match tokio::time::timeout(PROBE_WAIT, stream.read(&mut byte)).await {
            Ok(Err(e)) => tls_error(e),
            _ => None,
        }
    }

    /// Refuses a URL the operator has not allowed: plain HTTP, or an IP literal that is not
    /// public. Host names are checked at resolution time.
    pub fn check_target(&self, uri: &http::Uri) -> Result<(), SendError> {
        self.policy.check_target(uri).map_err(SendError::Blocked)
    }

    /// Sends `req` and reads at most [`MAX_RESPONSE_BODY`] bytes of the answer, all within
    /// `timeout`.
    pub async fn send(
        &self,
        req: http::Request<Full<Bytes>>,
        timeout: Duration,
        identity: Identity<'_>,
    ) -> Result<Response, SendError> {
        self.check_target(req.uri())?;
        let pool = self.for_identity(&identity)?;
        let uri = req.uri().clone();
        let fut = async {
            let resp = match pool.client.request(req).await {
                Ok(resp) => resp,
                Err(e) => {
                    let err = classify(e);
                    // Over HTTP/2 a TLS alert sent after the handshake (TLS 1.3's
                    // certificate_required) ends the connection before the request sees it:
                    // ask the receiver once more, by itself, to name the cause.
                    if matches!(err, SendError::Request(_) | SendError::Connect(_))
                        && uri.scheme_str() == Some("https")
                    {
                        if let Some(tls) = self.probe_tls(&uri, pool.tls.clone()).await {
                            return Err(tls);
                        }
                    }
                    return Err(err);
                }
            };
            let status = resp.status().as_u16();
            let headers: Vec<(String, String)> = resp
                .headers()
                .iter()
                .filter(|(k, _)| {
                    matches!(
                        k.as_str(),
                        "content-type" | "retry-after" | "location" | "x-request-id"
                    )
                })
                .map(|(k, v)| {
                    (
                        k.as_str().to_owned(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect();
            let retry_after = resp
                .headers()
                .get(http::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| {
                    gancho_core::retry::parse_retry_after(v, time::OffsetDateTime::now_utc())
                });
            let mut body = resp.into_body();
            let mut kept = Vec::new();
            while kept.len() < MAX_RESPONSE_BODY {
                match body.frame().await {
                    Some(Ok(frame)) => {
                        if let Some(data) = frame.data_ref() {
                            let room = MAX_RESPONSE_BODY - kept.len();
                            kept.extend_from_slice(&data[..data.len().min(room)]);
                        }
                    }
                    _ => break,
                }
            }
            Ok(Response {
                status,
                headers,
                body: kept.into(),
                retry_after,
            })
        };
        match tokio::time::timeout(timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(SendError::Timeout),
        }
    }
}

/// A TLS failure in words that say what to change.
fn describe_tls(e: &rustls::Error) -> String {
    use rustls::AlertDescription as A;
    match e {
        rustls::Error::AlertReceived(A::CertificateRequired) => format!(
            "the receiver requires a client certificate ({e}); give the endpoint client_cert and client_key"
        ),
        rustls::Error::AlertReceived(A::BadCertificate | A::UnknownCA | A::CertificateUnknown) => {
            format!("the receiver rejected the client certificate ({e})")
        }
        rustls::Error::InvalidCertificate(_) => format!(
            "the receiver's certificate is not trusted ({e}); if it chains to a private CA, set the endpoint's ca"
        ),
        _ => e.to_string(),
    }
}

fn classify(e: hyper_util::client::legacy::Error) -> SendError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(&e);
    let mut text = e.to_string();
    while let Some(s) = source {
        if let Some(proxy) = s.downcast_ref::<ProxyError>() {
            return SendError::Proxy(proxy.0.clone());
        }
        if let Some(tls) = s.downcast_ref::<rustls::Error>() {
            return SendError::Tls(describe_tls(tls));
        }
        if let Some(io) = s.downcast_ref::<io::Error>() {
            if io.kind() == io::ErrorKind::PermissionDenied {
                return SendError::Blocked(io.to_string());
            }
            if let Some(inner) = io.get_ref() {
                if let Some(tls) = inner.downcast_ref::<rustls::Error>() {
                    return SendError::Tls(describe_tls(tls));
                }
            }
        }
        text = format!("{text}: {s}");
        source = s.source();
    }
    if e.is_connect() {
        SendError::Connect(text)
    } else {
        SendError::Request(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn guard_refuses_a_name_that_resolves_to_loopback() {
        // "localhost" passes the literal check; the resolver must catch it.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let url = format!("https://localhost:{port}/hook");
        let c = Client::new(AddressPolicy::default(), None, None).unwrap();
        let req = http::Request::post(&url)
            .body(Full::new(Bytes::new()))
            .unwrap();
        let err = c
            .send(req, Duration::from_secs(5), Identity::default())
            .await
            .unwrap_err();
        assert_eq!(err.kind(), AttemptOutcome::Blocked, "{}", err.message());
        assert!(
            err.message().contains("GANCHO_ALLOW_PRIVATE_ENDPOINTS"),
            "{}",
            err.message()
        );
        // With private endpoints allowed, the same URL gets as far as the TLS handshake.
        let open = Client::new(
            AddressPolicy {
                allow_http: false,
                allow_private: true,
            },
            None,
            None,
        )
        .unwrap();
        let req = http::Request::post(&url)
            .body(Full::new(Bytes::new()))
            .unwrap();
        let err = open
            .send(req, Duration::from_secs(2), Identity::default())
            .await
            .unwrap_err();
        assert_ne!(err.kind(), AttemptOutcome::Blocked);
    }

    #[test]
    fn guard_refuses_private_literals_and_plain_http() {
        let c = Client::new(AddressPolicy::default(), None, None).unwrap();
        let err = c
            .check_target(&"https://10.0.0.5/hook".parse().unwrap())
            .unwrap_err();
        assert!(err.message().contains("10.0.0.5 is private"));
        assert!(err.message().contains("GANCHO_ALLOW_PRIVATE_ENDPOINTS"));
        let err = c
            .check_target(&"http://example.com/hook".parse().unwrap())
            .unwrap_err();
        assert!(err.message().contains("GANCHO_ALLOW_HTTP_ENDPOINTS"));
        assert!(c
            .check_target(&"https://[::1]:8443/".parse().unwrap())
            .is_err());
        assert!(c
            .check_target(&"https://hooks.example.com/".parse().unwrap())
            .is_ok());
        let open = Client::new(
            AddressPolicy {
                allow_http: true,
                allow_private: true,
            },
            None,
            None,
        )
        .unwrap();
        assert!(open
            .check_target(&"http://127.0.0.1:9/".parse().unwrap())
            .is_ok());
    }
}
