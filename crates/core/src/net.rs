//! The SSRF guard's address policy: which resolved addresses a webhook may be sent to when the
//! operator has not allowed private endpoints. Everything not routable on the public internet
//! is refused: loopback, private, link-local (cloud metadata lives at 169.254.169.254),
//! CGNAT, multicast, broadcast, reserved and documentation ranges, and their IPv6
//! counterparts, IPv4 addresses embedded in IPv6 included.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Longest endpoint URL accepted.
pub const MAX_URL_LEN: usize = 2048;

/// What the operator allows of endpoint addresses (`GANCHO_ALLOW_HTTP_ENDPOINTS`,
/// `GANCHO_ALLOW_PRIVATE_ENDPOINTS`): the one policy the api checks URLs by when they are
/// stored and the worker checks every request's target and every resolved address by before
/// it connects (directly or through a proxy), so a name that resolves elsewhere later is
/// caught where it is used.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AddressPolicy {
    pub allow_http: bool,
    pub allow_private: bool,
}

impl AddressPolicy {
    /// An endpoint URL as the API stores it: [`check_endpoint_url`].
    pub fn check_url(&self, url: &str) -> Result<(), String> {
        check_endpoint_url(url, self.allow_http, self.allow_private)
    }

    /// Whether a webhook may be sent to `ip`.
    pub fn allows(&self, ip: IpAddr) -> bool {
        self.allow_private || is_public(ip)
    }

    /// A request's target before it is sent: its scheme, and its host when that is an IP
    /// literal (a name is checked when it is resolved, by [`AddressPolicy::allowed`]).
    pub fn check_target(&self, uri: &http::Uri) -> Result<(), String> {
        match uri.scheme_str() {
            Some("https") => {}
            Some("http") if self.allow_http => {}
            _ => {
                return Err(
                    "endpoint url is not https; set GANCHO_ALLOW_HTTP_ENDPOINTS=true to allow http"
                        .into(),
                )
            }
        }
        let host = uri.host().unwrap_or_default();
        let host = host.trim_start_matches('[').trim_end_matches(']');
        match host.parse::<IpAddr>() {
            Ok(ip) if !self.allows(ip) => Err(format!(
                "endpoint address {ip} is private; set GANCHO_ALLOW_PRIVATE_ENDPOINTS=true to allow it"
            )),
            _ => Ok(()),
        }
    }

    /// The addresses `host` resolved to that a webhook may be sent to, or why there are none.
    pub fn allowed(
        &self,
        host: &str,
        addrs: impl IntoIterator<Item = SocketAddr>,
    ) -> Result<Vec<SocketAddr>, String> {
        let mut found = 0;
        let allowed: Vec<SocketAddr> = addrs
            .into_iter()
            .inspect(|_| found += 1)
            .filter(|a| self.allows(a.ip()))
            .collect();
        if found == 0 {
            return Err(format!("{host} resolves to no address"));
        }
        if allowed.is_empty() {
            return Err(format!(
                "{host} resolves only to private addresses; set GANCHO_ALLOW_PRIVATE_ENDPOINTS=true to allow them"
            ));
        }
        Ok(allowed)
    }
}

/// Checks an endpoint URL as the API stores it: `https://` (or `http://` when allowed), a
/// host, no user info (a credential in the URL would be echoed and logged), not a private
/// address or `localhost` unless allowed, at most [`MAX_URL_LEN`] characters. The error says
/// what to fix and never repeats user info.
pub fn check_endpoint_url(url: &str, allow_http: bool, allow_private: bool) -> Result<(), String> {
    if url.len() > MAX_URL_LEN {
        return Err(format!("url is longer than {MAX_URL_LEN} characters"));
    }
    let shown = redact_userinfo(url);
    let url = shown.as_str();
    if !url.is_ascii() {
        return Err(non_ascii(url));
    }
    let uri: http::Uri = url
        .parse()
        .map_err(|_| format!("url {url:?} is not a valid URL"))?;
    let authority = uri.authority().map_or("", |a| a.as_str());
    let after_host = &authority[authority.rfind(']').unwrap_or(0)..];
    if let Some((_, port)) = after_host.rsplit_once(':') {
        if !matches!(port.parse::<u16>(), Ok(1..)) {
            return Err(format!(
                "url {url:?} has port {port:?}; a port is a number from 1 to 65535"
            ));
        }
    }
    if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
        return Err(
            "url carries a user name or password (user:password@host); remove it and send credentials in \"headers\" instead, e.g. {\"authorization\": \"Basic ...\"}".into(),
        );
    }
    match uri.scheme_str() {
        Some("https") => {}
        Some("http") if allow_http => {}
        Some("http") => {
            return Err(format!(
                "endpoint url {url:?} is not https; use https, or set GANCHO_ALLOW_HTTP_ENDPOINTS=true for development"
            ))
        }
        _ => return Err(format!("url {url:?} must start with https://")),
    }
    uri.host()
        .filter(|h| !h.is_empty())
        .ok_or_else(|| format!("url {url:?} has no host"))?;
    if !allow_private && private_host(url) {
        return Err(format!(
            "endpoint url {url:?} points at a private address; set GANCHO_ALLOW_PRIVATE_ENDPOINTS=true for development"
        ));
    }
    Ok(())
}

/// Whether `url`'s host names a private address as a resolver would read it: IPv4 in any
/// form `inet_aton` takes (`127.1`, `2130706433`, `0x7f.0.0.1`, `0177.0.0.1`, `0`, which the
/// WHATWG URL parser reads the same way), IPv6, or `localhost` and its subdomains, with or
/// without the final dot. A name is not resolved here: what it points at can change, so the
/// worker checks every resolved address again.
fn private_host(url: &str) -> bool {
    match url::Url::parse(url).ok().as_ref().and_then(url::Url::host) {
        Some(url::Host::Ipv4(ip)) => !is_public(IpAddr::V4(ip)),
        Some(url::Host::Ipv6(ip)) => !is_public(IpAddr::V6(ip)),
        Some(url::Host::Domain(name)) => {
            let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
            name == "localhost" || name.ends_with(".localhost")
        }
        // http::Uri took it and the URL parser does not: not a host a request could reach.
        None => false,
    }
}

/// `url` with anything between `://` and an `@` before the path replaced by `***`, so an
/// error that quotes a URL never quotes its credentials (valid URL or not).
pub fn redact_userinfo(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..end].rfind('@') {
        Some(at) => format!("{scheme}://***{}", &rest[at..]),
        None => url.to_owned(),
    }
}

/// What to fix in a URL with non-ASCII characters: an internationalized host name is given in
/// its IDNA form (which this message spells out), anything else percent-encoded.
fn non_ascii(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    let host = authority.rsplit('@').next().unwrap_or(authority);
    let host = host.split(':').next().unwrap_or(host);
    if !host.is_ascii() {
        if let Ok(ascii) = idna::domain_to_ascii(host) {
            return format!(
                "url host {host:?} is not ASCII; give it in its IDNA form, {ascii:?} (the receiver's certificate names that form too)"
            );
        }
        return format!("url host {host:?} is not a valid internationalized domain name");
    }
    format!(
        "url {url:?} has characters that are not ASCII; percent-encode them (e.g. \"ç\" as %C3%A7)"
    )
}

/// Whether `ip` is a public unicast address a webhook may be delivered to.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_multicast()
        || ip.is_broadcast()
        || ip.is_documentation()
        || a == 0
        || (a == 100 && (64..128).contains(&b)) // CGNAT 100.64.0.0/10
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments 192.0.0.0/24
        || (a == 198 && (b == 18 || b == 19)) // benchmarking 198.18.0.0/15
        || a >= 240) // reserved 240.0.0.0/4
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_public_v4(v4);
    }
    let seg = ip.segments();
    // NAT64 64:ff9b::/96 carries an IPv4 address in its last 32 bits.
    if seg[0] == 0x64 && seg[1] == 0xff9b && seg[2..6] == [0, 0, 0, 0] {
        let [.., hi, lo] = seg;
        return is_public_v4(Ipv4Addr::from(((hi as u32) << 16) | lo as u32));
    }
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || (seg[0] & 0xfe00) == 0xfc00 // unique local fc00::/7
        || (seg[0] & 0xffc0) == 0xfe80 // link-local fe80::/10
        || (seg[0] == 0x2001 && seg[1] == 0xdb8) // documentation
        || seg[0..6] == [0, 0, 0, 0, 0, 0]) // IPv4-compatible (deprecated)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_urls_say_what_to_fix_and_never_echo_credentials() {
        let ok = |u: &str| check_endpoint_url(u, false, false);
        assert!(ok("https://hooks.example.com/x?y=1").is_ok());
        for (url, want) in [
            ("http://hooks.example.com/x", "is not https"),
            ("ftp://hooks.example.com/x", "must start with https://"),
            ("https://10.0.0.5/x", "private address"),
            ("https://[::1]/x", "private address"),
            ("https://169.254.169.254/latest", "private address"),
            ("https://api.localhost/x", "private address"),
            // What a resolver reads as loopback or "this host" though it is not spelt so.
            ("https://127.1/x", "private address"),
            ("https://2130706433/x", "private address"),
            ("https://0x7f.0.0.1/x", "private address"),
            ("https://0177.0.0.1/x", "private address"),
            ("https://0/x", "private address"),
            ("https://LOCALHOST./x", "private address"),
            ("https://api.localhost./x", "private address"),
            ("https://0xa9fea9fe/latest", "private address"),
            (
                "https://user:hunter22@hooks.example.com/x",
                "user name or password",
            ),
            // Not a valid URL, and still no password in the message (found by fuzzing).
            ("https://user:hunter22@exa mple.com/x", "not a valid URL"),
            ("not a url", "not a valid URL"),
            ("https://hooks.example.com:0/x", "1 to 65535"),
            ("https://hooks.example.com:65536/x", "1 to 65535"),
            ("https://pagamentos.açaí.com.br/x", "xn--aa-4iaz.com.br"),
            ("https://hooks.example.com/cobrança", "percent-encode"),
            ("https://user:hunter22@açaí.com.br/x", "IDNA form"),
        ] {
            let err = ok(url).unwrap_err();
            assert!(err.contains(want), "{url}: {err}");
            assert!(!err.contains("hunter22"), "{url}: {err}");
        }
        let long = format!("https://hooks.example.com/{}", "a".repeat(MAX_URL_LEN));
        assert!(ok(&long).unwrap_err().contains("longer than 2048"));
        assert!(check_endpoint_url("http://127.0.0.1:8080/x", true, true).is_ok());
        assert!(ok("https://hooks.example.com:8443/x").is_ok());
        assert!(ok("https://pagamentos.xn--aa-4iaz.com.br/x").is_ok());
        // Numbers that are names, not addresses, stay names.
        assert!(ok("https://1.2.3.4.example.com/x").is_ok());
        assert!(ok("https://0x7f.example.com/x").is_ok());
        assert!(ok("https://8.8.8.8/x").is_ok());
        assert_eq!(redact_userinfo("https://u:p@h/x@y"), "https://***@h/x@y");
        assert_eq!(redact_userinfo("https://h/x@y"), "https://h/x@y");
    }

    fn public(s: &str) -> bool {
        is_public(s.parse().unwrap())
    }

    #[test]
    fn refuses_internal_addresses() {
        for ip in [
            "127.0.0.1",
            "10.0.0.5",
            "172.16.3.4",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "100.127.255.254",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "240.0.0.1",
            "198.18.0.1",
            "::1",
            "::",
            "fd00:ec2::254",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.1.2.3",
            "64:ff9b::a00:1",
        ] {
            assert!(!public(ip), "{ip} must be refused");
        }
    }

    #[test]
    fn allows_public_addresses() {
        for ip in [
            "8.8.8.8",
            "200.160.2.3",
            "100.128.0.1",
            "2804:14c::1",
            "::ffff:8.8.4.4",
            "64:ff9b::808:808",
        ] {
            assert!(public(ip), "{ip} is public");
        }
    }

    #[test]
    fn the_address_policy_checks_targets_and_resolved_addresses_alike() {
        let strict = AddressPolicy::default();
        let open = AddressPolicy {
            allow_http: true,
            allow_private: true,
        };
        let uri = |u: &str| u.parse::<http::Uri>().unwrap();
        assert!(strict
            .check_target(&uri("https://hooks.example.com/x"))
            .is_ok());
        assert!(strict.check_target(&uri("https://93.184.215.14/x")).is_ok());
        let http = strict
            .check_target(&uri("http://hooks.example.com/x"))
            .unwrap_err();
        assert!(http.contains("GANCHO_ALLOW_HTTP_ENDPOINTS"), "{http}");
        let private = strict
            .check_target(&uri("https://[::1]:8443/x"))
            .unwrap_err();
        assert!(private.contains("::1") && private.contains("GANCHO_ALLOW_PRIVATE_ENDPOINTS"));
        assert!(open.check_target(&uri("http://127.0.0.1:8080/x")).is_ok());

        let addr = |s: &str| s.parse::<SocketAddr>().unwrap();
        let mixed = [addr("10.0.0.5:443"), addr("93.184.215.14:443")];
        assert_eq!(
            strict.allowed("hooks.example.com", mixed).unwrap(),
            vec![addr("93.184.215.14:443")],
            "only the public address is connected to"
        );
        let rebound = strict
            .allowed("rebind.example.com", [addr("169.254.169.254:80")])
            .unwrap_err();
        assert!(rebound.contains("rebind.example.com resolves only to private addresses"));
        assert_eq!(open.allowed("x", [addr("127.0.0.1:80")]).unwrap().len(), 1);
        assert!(strict
            .allowed("nothing.example.com", [])
            .unwrap_err()
            .contains("no address"));
    }
}
