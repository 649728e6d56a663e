//! How connections leave the worker: straight to the endpoint, or through an HTTP CONNECT
//! proxy (`GANCHO_EGRESS_PROXY`), so that every webhook comes from the proxy's fixed
//! addresses, which receivers can allow-list.
//!
//! Through the proxy the SSRF guard still holds: the worker resolves the endpoint's host
//! itself, keeps only the addresses the policy allows, and asks the proxy to CONNECT to that
//! address; TLS then runs inside the tunnel with the endpoint's host name, so certificates
//! are checked as usual. The proxy's own address is exempt from the private-address rule (it
//! is usually on a private network). With `GANCHO_EGRESS_PROXY_BY_NAME` the worker CONNECTs by
//! host name instead, for proxies that filter by name; then the proxy must refuse private
//! addresses itself.
//!
//! A proxy that cannot be reached or refuses the tunnel is a [`ProxyError`], which the client
//! reports as its own attempt outcome (`proxy_error`).

use base64::Engine as _;
use gancho_core::net::AddressPolicy;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Longest answer to a CONNECT the worker reads.
const MAX_CONNECT_REPLY: usize = 8 * 1024;

/// The egress proxy, as configured. Its credentials never print.
#[derive(Clone)]
pub struct EgressProxy {
    /// `host:port` of the proxy.
    pub addr: String,
    /// `Basic <base64>` from the URL's userinfo.
    authorization: Option<String>,
    /// CONNECT by host name instead of by a checked address.
    pub by_name: bool,
}

impl std::fmt::Debug for EgressProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EgressProxy")
            .field("addr", &self.addr)
            .field("credentials", &self.authorization.as_ref().map(|_| "***"))
            .field("by_name", &self.by_name)
            .finish()
    }
}

impl EgressProxy {
    /// Parses `http://[user:password@]host:port`. The error never repeats the password.
    pub fn parse(url: &str, by_name: bool) -> Result<Self, String> {
        let rest = url
            .strip_prefix("http://")
            .ok_or("it must be http://[user:password@]host:port (the tunnel carries TLS)")?;
        let rest = rest.trim_end_matches('/');
        let (userinfo, hostport) = match rest.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, rest),
        };
        if hostport.is_empty() || hostport.contains('/') {
            return Err("it must be http://[user:password@]host:port".into());
        }
        let port_ok = hostport
            .rsplit_once(':')
            .and_then(|(h, p)| (!h.is_empty()).then_some(p))
            .and_then(|p| p.parse::<u16>().ok())
            .is_some_and(|p| p > 0);
        if !port_ok {
            return Err(format!("the proxy address {hostport:?} needs a port"));
        }
        let authorization = userinfo.map(|u| {
            let decoded = percent_decode(u);
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(decoded)
            )
        });
        Ok(Self {
            addr: hostport.to_owned(),
            authorization,
            by_name,
        })
    }
}

/// `%XX` escapes of a URL's userinfo, as the CONNECT credentials carry them in clear.
fn percent_decode(s: &str) -> Vec<u8> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}

/// The egress proxy failed: unreachable, or it refused the tunnel.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ProxyError(pub String);

/// The connector under TLS: direct through the guarded resolver, or a tunnel.
#[derive(Clone)]
pub struct Egress {
    pub(crate) direct: HttpConnector<crate::resolve::GuardedResolver>,
    pub(crate) proxy: Option<Arc<EgressProxy>>,
    pub(crate) policy: AddressPolicy,
    pub(crate) connect_timeout: Duration,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type ConnectFuture = Pin<Box<dyn Future<Output = Result<TokioIo<TcpStream>, BoxError>> + Send>>;

impl tower_service::Service<http::Uri> for Egress {
    type Response = TokioIo<TcpStream>;
    type Error = BoxError;
    type Future = ConnectFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        match &self.proxy {
            None => self.direct.poll_ready(cx).map_err(Into::into),
            Some(_) => Poll::Ready(Ok(())),
        }
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        match self.proxy.clone() {
            None => {
                let fut = self.direct.call(uri);
                Box::pin(async move { fut.await.map_err(Into::into) })
            }
            Some(proxy) => {
                let (policy, wait) = (self.policy, self.connect_timeout);
                Box::pin(async move {
                    let stream = tunnel(&proxy, &uri, policy, wait).await?;
                    Ok(TokioIo::new(stream))
                })
            }
        }
    }
}

/// Opens a tunnel to the endpoint of `uri` through `proxy`.
async fn tunnel(
    proxy: &EgressProxy,
    uri: &http::Uri,
    policy: AddressPolicy,
    wait: Duration,
) -> Result<TcpStream, BoxError> {
    let host = uri
        .host()
        .ok_or("the endpoint url has no host")?
        .trim_start_matches('[')
        .trim_end_matches(']');
    let port = uri
        .port_u16()
        .unwrap_or(if uri.scheme_str() == Some("http") {
            80
        } else {
            443
        });
    let target = if proxy.by_name {
        match host.parse::<IpAddr>() {
            Ok(IpAddr::V6(ip)) => format!("[{ip}]:{port}"),
            _ => format!("{host}:{port}"),
        }
    } else {
        // The same check as a direct connection: the address the proxy is sent to is one
        // the worker resolved and allowed.
        let addrs = crate::resolve::resolve(policy, host, port).await?;
        addrs[0].to_string()
    };
    let unreachable =
        |e: String| ProxyError(format!("cannot reach the egress proxy {}: {e}", proxy.addr));
    let mut stream = tokio::time::timeout(wait, TcpStream::connect(proxy.addr.as_str()))
        .await
        .map_err(|_| unreachable("no answer to the connection".into()))?
        .map_err(|e| unreachable(e.to_string()))?;
    stream.set_nodelay(true)?;
    let mut request = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
    if let Some(auth) = &proxy.authorization {
        request.push_str("Proxy-Authorization: ");
        request.push_str(auth);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    let reply = tokio::time::timeout(wait, async {
        stream.write_all(request.as_bytes()).await?;
        read_reply(&mut stream).await
    })
    .await
    .map_err(|_| {
        ProxyError(format!(
            "the egress proxy {} did not answer CONNECT",
            proxy.addr
        ))
    })?
    .map_err(|e| {
        ProxyError(format!(
            "the egress proxy {} failed during CONNECT: {e}",
            proxy.addr
        ))
    })?;
    let status_line = reply.lines().next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok());
    match status {
        Some(200..=299) => Ok(stream),
        Some(407) => Err(ProxyError(format!(
            "the egress proxy {} wants credentials ({status_line}): check the user and password in GANCHO_EGRESS_PROXY",
            proxy.addr
        ))
        .into()),
        _ => Err(ProxyError(format!(
            "the egress proxy {} refused CONNECT {target}: {status_line}",
            proxy.addr
        ))
        .into()),
    }
}

/// The proxy's answer up to the blank line, a byte at a time so nothing of the tunnel is read.
async fn read_reply(stream: &mut TcpStream) -> io::Result<String> {
    let mut reply = Vec::with_capacity(128);
    let mut byte = [0u8; 1];
    while !reply.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).await? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the connection closed",
            ));
        }
        reply.push(byte[0]);
        if reply.len() > MAX_CONNECT_REPLY {
            return Err(io::Error::other("the answer is too long"));
        }
    }
    Ok(String::from_utf8_lossy(&reply).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_urls() {
        let p = EgressProxy::parse("http://user:p%40ss@proxy.internal:3128", false).unwrap();
        assert_eq!(p.addr, "proxy.internal:3128");
        assert_eq!(
            p.authorization.as_deref(),
            Some(format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode("user:p@ss")
            ))
            .as_deref()
        );
        assert!(!format!("{p:?}").contains("p%40ss") && !format!("{p:?}").contains("Basic"));
        assert!(EgressProxy::parse("http://10.0.0.5:8080/", true)
            .unwrap()
            .authorization
            .is_none());
        for bad in [
            "https://proxy:3128",
            "proxy:3128",
            "http://proxy",
            "http://:3128",
            "http://u:secret@proxy",
        ] {
            let err = EgressProxy::parse(bad, false).unwrap_err();
            assert!(!err.contains("secret"), "{err}");
        }
    }
}
