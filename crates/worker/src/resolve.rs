//! Where a webhook may be sent: names resolved by the worker itself (pinned names first, then
//! the system resolver), every address checked against the operator's [`AddressPolicy`], and
//! only checked addresses connected to, whether directly or through the egress proxy. A DNS
//! answer therefore cannot point a webhook at the metadata service or the cluster's own
//! services, however the name resolved when the endpoint was stored.

use gancho_core::net::AddressPolicy;
use hyper_util::client::legacy::connect::dns::Name;
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};

/// Host names pinned to addresses (`GANCHO_RESOLVE`), answered before the system resolver.
/// The policy applies to them like to any other answer.
static PINNED: std::sync::OnceLock<HashMap<String, Vec<IpAddr>>> = std::sync::OnceLock::new();

/// Pins host names (lower case) to addresses for this process, once, before the first request.
pub fn pin_names(pins: HashMap<String, Vec<IpAddr>>) {
    let _ = PINNED.set(pins);
}

/// The addresses of `host`: pinned ones, else the system resolver's.
async fn lookup(host: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
    if let Some(ips) = PINNED.get().and_then(|p| p.get(&host.to_ascii_lowercase())) {
        return Ok(ips.iter().map(|ip| SocketAddr::new(*ip, port)).collect());
    }
    Ok(tokio::net::lookup_host((host, port)).await?.collect())
}

/// The addresses a webhook to `host` (a name or an IP literal, without brackets) may be
/// connected to, or why there are none (`PermissionDenied` when the policy refuses them all).
pub(crate) async fn resolve(
    policy: AddressPolicy,
    host: &str,
    port: u16,
) -> io::Result<Vec<SocketAddr>> {
    let found = match host.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => lookup(host, port).await?,
    };
    policy
        .allowed(host, found)
        .map_err(|why| io::Error::new(io::ErrorKind::PermissionDenied, why))
}

/// hyper's resolver for direct connections: [`resolve`].
#[derive(Clone)]
pub(crate) struct GuardedResolver {
    pub(crate) policy: AddressPolicy,
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
        let policy = self.policy;
        Box::pin(async move { Ok(resolve(policy, name.as_str(), 0).await?.into_iter()) })
    }
}
