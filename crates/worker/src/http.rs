//! The worker's HTTP client: one pooled hyper client per worker, HTTP/1.1 and HTTP/2 (ALPN),
//! rustls with the webpki roots plus an optional extra CA bundle, TLS 1.2 and 1.3. Redirects
//! are never followed (hyper does not follow them; a 3xx is a failed attempt).
//!
//! SSRF guard: unless private endpoints are allowed, the client resolves names itself and
//! keeps only public addresses ([`gancho_core::net::is_public`]), then connects to an address
//! it checked, so a DNS answer cannot point a webhook at the metadata service. URLs with an IP
//! literal skip the resolver, so [`Client::check_target`] checks those before each request.

use bytes::Bytes;
use gancho_core::net::is_public;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

/// Most response-body bytes kept in the attempt log.
pub const MAX_RESPONSE_BODY: usize = 4096;
/// How long an idle pooled connection is kept.
const POOL_IDLE: Duration = Duration::from_secs(90);
/// Idle connections kept per host: enough for a busy endpoint's concurrency.
const POOL_MAX_IDLE_PER_HOST: usize = 256;
/// TCP connect timeout (the request timeout bounds the rest).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest `Retry-After` honoured.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot read GANCHO_EXTRA_CA_FILE {path}: {reason}")]
    ExtraCa { path: String, reason: String },
}

/// Resolves with the system resolver, keeping only addresses the policy allows.
#[derive(Clone)]
struct GuardedResolver {
    allow_private: bool,
}

type ResolveFuture =
    Pin<Box<dyn Future<Output = io::Result<std::vec::IntoIter<SocketAddr>>> + Send>>;

impl tower_service::Service<Name> for GuardedResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = io::Error;
    type Future = ResolveFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let allow_private = self.allow_private;
        Box::pin(async move {
            let host = name.as_str().to_owned();
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|a| allow_private || is_public(a.ip()))
                .collect();
            if addrs.is_empty() {
                return Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!("{host} resolves only to private addresses; set GANCHO_ALLOW_PRIVATE_ENDPOINTS=true to allow them"),
                ));
            }
            Ok(addrs.into_iter())
        })
    }
}

type Inner = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<HttpConnector<GuardedResolver>>,
    Full<Bytes>,
>;

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
}

impl SendError {
    pub fn kind(&self) -> &'static str {
        match self {
            SendError::Timeout => "timeout",
            SendError::Blocked(_) => "blocked",
            SendError::Connect(_) => "connect_error",
            SendError::Tls(_) => "tls_error",
            SendError::Request(_) => "request_error",
        }
    }

    pub fn message(&self) -> String {
        match self {
            SendError::Timeout => "no response before the endpoint's timeout".into(),
            SendError::Blocked(m)
            | SendError::Connect(m)
            | SendError::Tls(m)
            | SendError::Request(m) => m.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Client {
    inner: Inner,
    allow_private: bool,
    allow_http: bool,
}

impl Client {
    pub fn new(
        allow_http: bool,
        allow_private: bool,
        extra_ca: Option<&Path>,
    ) -> Result<Self, ClientError> {
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
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("ring supports TLS 1.2 and 1.3")
        .with_root_certificates(roots)
        .with_no_client_auth();
        let mut http = HttpConnector::new_with_resolver(GuardedResolver { allow_private });
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(CONNECT_TIMEOUT));
        let builder = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls);
        let https = if allow_http {
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
        let inner = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE)
            .pool_max_idle_per_host(POOL_MAX_IDLE_PER_HOST)
            .build(https);
        Ok(Self {
            inner,
            allow_private,
            allow_http,
        })
    }

    /// Refuses a URL the operator has not allowed: plain HTTP, or an IP literal that is not
    /// public. Host names are checked at resolution time.
    pub fn check_target(&self, uri: &http::Uri) -> Result<(), SendError> {
        match uri.scheme_str() {
            Some("https") => {}
            Some("http") if self.allow_http => {}
            _ => {
                return Err(SendError::Blocked(
                    "endpoint url is not https; set GANCHO_ALLOW_HTTP_ENDPOINTS=true to allow http"
                        .into(),
                ))
            }
        }
        if !self.allow_private {
            let host = uri.host().unwrap_or_default();
            let host = host.trim_start_matches('[').trim_end_matches(']');
            if let Ok(ip) = host.parse::<IpAddr>() {
                if !is_public(ip) {
                    return Err(SendError::Blocked(format!(
                        "endpoint address {ip} is private; set GANCHO_ALLOW_PRIVATE_ENDPOINTS=true to allow it"
                    )));
                }
            }
        }
        Ok(())
    }

    /// Sends `req` and reads at most [`MAX_RESPONSE_BODY`] bytes of the answer, all within
    /// `timeout`.
    pub async fn send(
        &self,
        req: http::Request<Full<Bytes>>,
        timeout: Duration,
    ) -> Result<Response, SendError> {
        self.check_target(req.uri())?;
        let fut = async {
            let resp = self.inner.request(req).await.map_err(classify)?;
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
                .and_then(parse_retry_after);
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

/// `Retry-After` in seconds (HTTP dates are rare from webhook receivers and are ignored).
fn parse_retry_after(v: &str) -> Option<Duration> {
    v.trim()
        .parse::<u64>()
        .ok()
        .map(|s| Duration::from_secs(s).min(MAX_RETRY_AFTER))
}

fn classify(e: hyper_util::client::legacy::Error) -> SendError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(&e);
    let mut text = e.to_string();
    while let Some(s) = source {
        if s.downcast_ref::<rustls::Error>().is_some() {
            return SendError::Tls(s.to_string());
        }
        if let Some(io) = s.downcast_ref::<io::Error>() {
            if io.kind() == io::ErrorKind::PermissionDenied {
                return SendError::Blocked(io.to_string());
            }
            if let Some(inner) = io.get_ref() {
                if inner.downcast_ref::<rustls::Error>().is_some() {
                    return SendError::Tls(inner.to_string());
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
        let c = Client::new(false, false, None).unwrap();
        let req = http::Request::post(&url)
            .body(Full::new(Bytes::new()))
            .unwrap();
        let err = c.send(req, Duration::from_secs(5)).await.unwrap_err();
        assert_eq!(err.kind(), "blocked", "{}", err.message());
        assert!(
            err.message().contains("GANCHO_ALLOW_PRIVATE_ENDPOINTS"),
            "{}",
            err.message()
        );
        // With private endpoints allowed, the same URL gets as far as the TLS handshake.
        let open = Client::new(false, true, None).unwrap();
        let req = http::Request::post(&url)
            .body(Full::new(Bytes::new()))
            .unwrap();
        let err = open.send(req, Duration::from_secs(2)).await.unwrap_err();
        assert_ne!(err.kind(), "blocked");
    }

    #[test]
    fn retry_after_seconds_are_bounded() {
        assert_eq!(parse_retry_after("120"), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after("999999"), Some(MAX_RETRY_AFTER));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
    }

    #[test]
    fn guard_refuses_private_literals_and_plain_http() {
        let c = Client::new(false, false, None).unwrap();
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
        let open = Client::new(true, true, None).unwrap();
        assert!(open
            .check_target(&"http://127.0.0.1:9/".parse().unwrap())
            .is_ok());
    }
}
