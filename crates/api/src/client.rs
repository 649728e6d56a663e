//! Who is calling, by network address, and how often an address may mint and open portal
//! links. The address is the TCP peer's, unless the peer is a proxy listed in
//! `trusted_proxies` (`GANCHO_TRUSTED_PROXIES`): then it is the rightmost address of
//! `X-Forwarded-For` that is not itself a trusted proxy, since only those entries were added
//! by proxies we trust (anything to their left came from the client and may be forged).

use crate::error::ApiError;
use crate::ApiState;
use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use governor::{Quota, RateLimiter};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::num::NonZeroU32;

/// Proxies whose `X-Forwarded-For` is believed: addresses and CIDR blocks.
#[derive(Clone, Debug, Default)]
pub struct TrustedProxies(Vec<(IpAddr, u8)>);

impl TrustedProxies {
    /// `10.0.0.0/8, 192.168.1.7, fd00::/8`: comma- or space-separated addresses and blocks.
    pub fn parse(v: &str) -> Result<Self, String> {
        let mut out = Vec::new();
        for item in v.split([',', ' ']).map(str::trim).filter(|s| !s.is_empty()) {
            let (addr, bits) = item.split_once('/').unwrap_or((item, ""));
            let addr: IpAddr = addr.parse().map_err(|_| {
                format!("{item:?} is not an IP address or a CIDR block like 10.0.0.0/8")
            })?;
            let max = if addr.is_ipv4() { 32 } else { 128 };
            let bits = if bits.is_empty() {
                max
            } else {
                bits.parse::<u8>()
                    .ok()
                    .filter(|b| *b <= max)
                    .ok_or_else(|| format!("{item:?}: the prefix length must be 0 to {max}"))?
            };
            out.push((addr, bits));
        }
        Ok(Self(out))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.0.iter().any(|(net, bits)| in_block(ip, *net, *bits))
    }

    /// The client's address: the peer's, or what trusted proxies say they saw.
    pub fn client(&self, peer: IpAddr, forwarded_for: &[&str]) -> IpAddr {
        let peer = canonical(peer);
        if !self.contains(peer) {
            return peer;
        }
        // Right to left: each hop appends the address it saw; the first one that is not a
        // trusted proxy is the client (or the closest untrusted hop to us).
        let mut client = peer;
        for entry in forwarded_for
            .iter()
            .rev()
            .flat_map(|h| h.rsplit(','))
            .map(str::trim)
        {
            let Some(ip) = parse_forwarded(entry) else {
                // Garbage past our proxies: the last address we could read stands.
                return client;
            };
            client = canonical(ip);
            if !self.contains(client) {
                return client;
            }
        }
        client
    }
}

/// An `X-Forwarded-For` entry: an address, with a port or IPv6 brackets as some proxies
/// write it.
fn parse_forwarded(s: &str) -> Option<IpAddr> {
    if let Ok(ip) = s.parse() {
        return Some(ip);
    }
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Some(sa.ip());
    }
    s.strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .and_then(|r| r.parse().ok())
}

/// IPv4-mapped IPv6 addresses as IPv4, so one client is one key.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

fn in_block(ip: IpAddr, net: IpAddr, bits: u8) -> bool {
    match (ip, canonical(net)) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(bits)).unwrap_or(0);
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(bits)).unwrap_or(0);
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

/// The calling client's address ([`TrustedProxies::client`]); unspecified when the server
/// did not record the peer (every such request then shares one limit).
pub struct ClientAddr(pub IpAddr);

impl FromRequestParts<ApiState> for ClientAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &ApiState,
    ) -> Result<Self, Self::Rejection> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map_or(IpAddr::V6(Ipv6Addr::UNSPECIFIED), |c| c.0.ip());
        let forwarded: Vec<&str> = parts
            .headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        Ok(Self(state.trusted_proxies.client(peer, &forwarded)))
    }
}

/// Keys of [`LinkLimits`]: an IPv4 address, or an IPv6 address's /64 (one host is given a
/// whole /64, so a finer key would let it take 2^64 limits).
fn key(ip: IpAddr) -> IpAddr {
    match canonical(ip) {
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & (u128::MAX << 64))),
        v4 => v4,
    }
}

/// Keys (addresses, credentials) a limiter keeps before it forgets those back at a full
/// burst; when more are still busy than this, it starts again empty. Bound: at most this many
/// entries each.
const ADDRESSES_MAX: usize = 10_000;

/// How often one client address may mint portal links, and open them.
pub struct LinkLimits {
    mint: Limit,
    open: Limit,
}

/// Minting: a platform's backend mints a link each time one of its users opens the portal,
/// all from one address: 10 a second, bursts of 50.
const MINT_PER_SEC: u32 = 10;
const MINT_BURST: u32 = 50;
/// Opening: a person opens one link; an office behind one address, a few: one every 2
/// seconds on average, bursts of 20. Guessing tokens (32 random bytes) is hopeless anyway;
/// this keeps a flood from reaching the store.
const OPEN_PER_MIN: u32 = 30;
const OPEN_BURST: u32 = 20;

fn nonzero(v: u32) -> NonZeroU32 {
    NonZeroU32::new(v).expect("a limit is not zero")
}

impl Default for LinkLimits {
    fn default() -> Self {
        Self {
            mint: Limit::new(
                Quota::per_second(nonzero(MINT_PER_SEC)).allow_burst(nonzero(MINT_BURST)),
                "minting portal links from this address",
            ),
            open: Limit::new(
                Quota::per_minute(nonzero(OPEN_PER_MIN)).allow_burst(nonzero(OPEN_BURST)),
                "opening portal links from this address",
            ),
        }
    }
}

impl LinkLimits {
    pub fn mint(&self, client: IpAddr) -> Result<(), ApiError> {
        self.mint.check(client)
    }
    pub fn open(&self, client: IpAddr) -> Result<(), ApiError> {
        self.open.check(client)
    }
    /// Addresses each limiter holds: (minting, opening), at most [`ADDRESSES_MAX`] each.
    pub fn addresses(&self) -> (usize, usize) {
        (self.mint.len(), self.open.len())
    }
}

/// One quota per key (a client address, a credential). Bound: [`ADDRESSES_MAX`] keys; past
/// it, those back at a full burst are forgotten, and if that is not enough, all of them (a
/// flood from that many keys then gets one fresh burst each, no more).
pub(crate) struct Limit<K: std::hash::Hash + Eq + Clone = IpAddr> {
    quota: Quota,
    /// What is limited and by whom, for the message: "opening portal links from this address".
    what: String,
    limiter: std::sync::Mutex<governor::DefaultKeyedRateLimiter<K>>,
}

impl<K: std::hash::Hash + Eq + Clone> Limit<K> {
    pub(crate) fn new(quota: Quota, what: impl Into<String>) -> Self {
        Self {
            quota,
            what: what.into(),
            limiter: std::sync::Mutex::new(RateLimiter::keyed(quota)),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.limiter.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Takes one request of `key`'s quota, or says when to try again (429).
    pub(crate) fn take(&self, key: &K) -> Result<(), ApiError> {
        self.take_n(key, 1)
    }

    /// Takes `n` of `key`'s quota at once, or none of it (429).
    pub(crate) fn take_n(&self, key: &K, n: u32) -> Result<(), ApiError> {
        let mut limiter = self.limiter.lock().unwrap_or_else(|p| p.into_inner());
        if limiter.len() >= ADDRESSES_MAX {
            limiter.retain_recent();
            if limiter.len() >= ADDRESSES_MAX {
                *limiter = RateLimiter::keyed(self.quota);
            }
        }
        let n = NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN);
        let not_until = match limiter.check_key_n(key, n) {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(not_until)) => not_until,
            Err(governor::InsufficientCapacity(burst)) => {
                return Err(ApiError::too_many(
                    format!(
                        "{n} at once is more than the burst of {burst} allowed ({}): send at most {burst} at a time",
                        self.what
                    ),
                    1,
                ))
            }
        };
        let wait = not_until.wait_time_from(governor::clock::Clock::now(
            &governor::clock::DefaultClock::default(),
        ));
        let secs = (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1);
        Err(ApiError::too_many(
            format!("too many requests {}; try again in {secs} s", self.what),
            secs,
        ))
    }
}

impl Limit<IpAddr> {
    fn check(&self, client: IpAddr) -> Result<(), ApiError> {
        self.take(&key(client))
    }
}

/// How many requests a second one credential (an API key, a portal session) may make on the
/// `/v1` routes, with bursts of twice that: `GANCHO_API_RATE_LIMIT`, default 50; a tenant's
/// `api_rate_limit_per_sec` replaces it for that tenant's credentials.
pub const API_RATE_LIMIT_DEFAULT: u32 = 50;

/// Rates per key (a credential, a tenant), shared by the live api processes: each enforces a
/// rate divided by their number (a key spread over them gets the whole rate; one that reaches
/// a single process gets its share), with bursts of twice its share. Each key may have a rate
/// of its own (a tenant's setting) or take the default; 0 is no limit. Bound: one limiter per
/// distinct rate in use, each of at most [`ADDRESSES_MAX`] keys.
pub struct SharedRates {
    /// For the message: "requests with this credential".
    what: &'static str,
    default: u32,
    processes: std::sync::atomic::AtomicUsize,
    by_rate: std::sync::RwLock<std::collections::HashMap<u32, std::sync::Arc<Limit<String>>>>,
}

/// Each credential's request rate ([`SharedRates`]).
pub type CredentialLimits = SharedRates;

impl SharedRates {
    /// Requests per credential: `per_sec` by default (0: none).
    pub fn new(per_sec: u32) -> Self {
        Self::of("requests with this credential", per_sec)
    }

    /// HTTP ingest's events per tenant: none by default.
    pub fn ingest() -> Self {
        Self::of("events through HTTP ingest for this tenant", 0)
    }

    fn of(what: &'static str, default: u32) -> Self {
        Self {
            what,
            default,
            processes: std::sync::atomic::AtomicUsize::new(1),
            by_rate: Default::default(),
        }
    }

    /// `n` api processes are alive: each allows its share from now on. What each key had used
    /// is forgotten.
    pub fn set_processes(&self, n: usize) {
        self.processes
            .store(n.max(1), std::sync::atomic::Ordering::Relaxed);
        self.by_rate
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// The limiter of `rate` for the processes alive now.
    fn limit(&self, rate: NonZeroU32) -> std::sync::Arc<Limit<String>> {
        if let Some(l) = self
            .by_rate
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&rate.get())
        {
            return l.clone();
        }
        let n = self.processes.load(std::sync::atomic::Ordering::Relaxed) as u32;
        let period = std::time::Duration::from_secs_f64(f64::from(n) / f64::from(rate.get()));
        let burst = nonzero((2 * rate.get()).div_ceil(n).max(1));
        let quota = Quota::with_period(period)
            .expect("a rate above zero has a period")
            .allow_burst(burst);
        let share = if n == 1 {
            String::new()
        } else {
            format!(", shared by {n} api processes")
        };
        let limit = std::sync::Arc::new(Limit::new(
            quota,
            format!(
                "{} (at most {rate} a second, bursts of {}{share})",
                self.what,
                2 * rate.get()
            ),
        ));
        self.by_rate
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .entry(rate.get())
            .or_insert(limit)
            .clone()
    }

    /// Takes one from `key`'s rate (`rate`, or the default), or says when to try again (429).
    pub fn take(&self, key: &str, rate: Option<u32>) -> Result<(), ApiError> {
        self.take_n(key, rate, 1)
    }

    /// Takes `n` at once (a batch, whole or not at all).
    pub fn take_n(&self, key: &str, rate: Option<u32>, n: u32) -> Result<(), ApiError> {
        match NonZeroU32::new(rate.unwrap_or(self.default)) {
            Some(rate) => self.limit(rate).take_n(&key.to_owned(), n),
            None => Ok(()),
        }
    }

    /// Keys tracked now, over every rate in use.
    pub fn entries(&self) -> usize {
        self.by_rate
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(|l| l.len())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn only_trusted_proxies_are_believed() {
        let none = TrustedProxies::default();
        assert_eq!(none.client(ip("10.0.0.1"), &["1.2.3.4"]), ip("10.0.0.1"));
        let t = TrustedProxies::parse("10.0.0.0/8, 192.168.1.7 fd00::/8").unwrap();
        // From a trusted proxy: the address it saw.
        assert_eq!(t.client(ip("10.1.2.3"), &["1.2.3.4"]), ip("1.2.3.4"));
        // A client's forged entry to the left of what our proxies wrote is not believed.
        assert_eq!(
            t.client(ip("10.1.2.3"), &["6.6.6.6, 1.2.3.4, 192.168.1.7"]),
            ip("1.2.3.4")
        );
        // Several headers read as one list, in order.
        assert_eq!(
            t.client(ip("10.1.2.3"), &["6.6.6.6", "1.2.3.4"]),
            ip("1.2.3.4")
        );
        // Not from a trusted proxy: its header is ignored.
        assert_eq!(t.client(ip("8.8.8.8"), &["1.2.3.4"]), ip("8.8.8.8"));
        // Ports, brackets and mapped addresses.
        assert_eq!(t.client(ip("10.1.2.3"), &["1.2.3.4:5555"]), ip("1.2.3.4"));
        assert_eq!(
            t.client(ip("fd00::1"), &["[2001:db8::1]"]),
            ip("2001:db8::1")
        );
        assert_eq!(t.client(ip("::ffff:10.0.0.9"), &["1.2.3.4"]), ip("1.2.3.4"));
        // Garbage: the last address read stands.
        assert_eq!(t.client(ip("10.1.2.3"), &["nonsense"]), ip("10.1.2.3"));
        assert_eq!(t.client(ip("10.1.2.3"), &[]), ip("10.1.2.3"));
    }

    #[test]
    fn bad_lists_say_which_entry() {
        assert!(TrustedProxies::parse("10.0.0.0/33")
            .unwrap_err()
            .contains("0 to 32"));
        assert!(TrustedProxies::parse("proxy.internal")
            .unwrap_err()
            .contains("proxy.internal"));
        assert!(TrustedProxies::parse(" ").unwrap().is_empty());
        assert!(TrustedProxies::parse("0.0.0.0/0")
            .unwrap()
            .contains(ip("1.2.3.4")));
    }

    #[test]
    fn an_address_past_its_burst_waits_and_others_do_not() {
        let limits = LinkLimits::default();
        for _ in 0..OPEN_BURST {
            limits.open(ip("1.2.3.4")).unwrap();
        }
        let refused = limits.open(ip("1.2.3.4")).unwrap_err();
        assert_eq!(refused.status, 429);
        assert_eq!(refused.retry_after, Some(2));
        limits.open(ip("1.2.3.5")).unwrap();
        // One IPv6 host's /64 is one address.
        for i in 0..OPEN_BURST {
            limits.open(ip(&format!("2001:db8::{i:x}"))).unwrap();
        }
        assert!(limits.open(ip("2001:db8::ffff")).is_err());
        assert!(limits.open(ip("2001:db8:0:1::1")).is_ok());
    }

    #[test]
    fn a_credential_past_its_burst_waits_and_others_do_not() {
        let limits = CredentialLimits::new(5);
        for _ in 0..10 {
            limits.take("key_a", None).unwrap();
        }
        let refused = limits.take("key_a", None).unwrap_err();
        assert_eq!(refused.status, 429);
        assert!(
            refused.message.contains("at most 5 a second"),
            "{}",
            refused.message
        );
        limits.take("key_b", None).unwrap();
        let off = CredentialLimits::new(0);
        for _ in 0..1000 {
            off.take("key_a", None).unwrap();
        }
        assert_eq!(off.entries(), 0);
    }

    #[test]
    fn a_tenant_rate_replaces_the_default_and_batches_take_many() {
        let limits = CredentialLimits::new(0);
        limits.take("key_a", None).unwrap();
        for _ in 0..4 {
            limits.take("key_b", Some(2)).unwrap();
        }
        assert!(limits.take("key_b", Some(2)).is_err());
        let ingest = SharedRates::ingest();
        ingest.take_n("acme", Some(100), 150).unwrap();
        let refused = ingest.take_n("acme", Some(100), 100).unwrap_err();
        assert_eq!(refused.status, 429);
        let too_big = ingest.take_n("globex", Some(100), 500).unwrap_err();
        assert!(
            too_big.message.contains("burst of 200"),
            "{}",
            too_big.message
        );
        ingest.take_n("nobody", None, 10_000).unwrap();
        // Only acme is tracked: a batch past the burst takes nothing, no limit tracks nothing.
        assert_eq!(ingest.entries(), 1);
    }

    #[test]
    fn two_processes_each_allow_half() {
        let limits = CredentialLimits::new(5);
        limits.set_processes(2);
        for _ in 0..5 {
            limits.take("key_a", None).unwrap();
        }
        let refused = limits.take("key_a", None).unwrap_err();
        assert!(
            refused.message.contains("shared by 2 api processes"),
            "{}",
            refused.message
        );
        assert_eq!(refused.retry_after, Some(1));
        limits.set_processes(1);
        for _ in 0..10 {
            limits.take("key_a", None).unwrap();
        }
    }

    #[test]
    fn the_limiters_stay_within_their_bound() {
        let limits = LinkLimits::default();
        for i in 0..(ADDRESSES_MAX as u32 + 500) {
            let _ = limits.mint(IpAddr::V4(i.into()));
        }
        assert!(
            limits.addresses().0 <= ADDRESSES_MAX,
            "{:?}",
            limits.addresses()
        );
    }
}
