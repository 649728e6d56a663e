//! One place per delivery profile: how a delivery becomes a request (URL, headers, body,
//! signature) and which answer counts as delivered. A new profile is a new arm here and a
//! variant of [`Profile`].
//!
//! - `standard`: Standard Webhooks. `webhook-id` (the event id, stable across retries),
//!   `webhook-timestamp`, `webhook-signature` (`v1,<HMAC-SHA256>`, one per live secret),
//!   body `{"type", "timestamp", "data"}`; any 2xx is success.
//! - `token`: `standard`, plus the endpoint's static token in its header or query parameter.
//! - `openfinance-br`: Open Finance Brasil's payment webhook. POST to the endpoint's URL plus
//!   its path template (`{paymentId}` and other `{attribute}`s filled from the event,
//!   percent-encoded), body `{"data":{"timestamp":"<event time, UTC, seconds, Z>"}}`, a fresh
//!   `x-webhook-interaction-id` UUID per attempt, no signature; only 202 is success. An event
//!   without a templated attribute is refused before any attempt ([`check`]).

use bytes::Bytes;
use gancho_core::webhook::standard_body;
use gancho_proto::{to_datetime, Delivery};
use gancho_store::{LiveEndpoint, Profile};
use http_body_util::Full;
use time::OffsetDateTime;

/// Characters escaped in a query parameter value: everything but unreserved ones.
const QUERY_VALUE: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Characters escaped in a templated path segment.
const SEGMENT: &percent_encoding::AsciiSet = QUERY_VALUE;

/// Why a delivery cannot be sent as it is, whatever the receiver does: dead-letter it as
/// `invalid` with this reason, without an attempt.
pub(crate) fn check(ep: &LiveEndpoint, delivery: &Delivery) -> Result<(), String> {
    match ep.config.profile {
        Profile::OpenfinanceBr => fill(template(ep), delivery).map(|_| ()),
        Profile::Standard | Profile::Token => Ok(()),
    }
}

fn template(ep: &LiveEndpoint) -> &str {
    ep.config
        .path_template
        .as_deref()
        .unwrap_or(gancho_store::model::OPENFINANCE_PATH)
}

/// `template` with each `{name}` replaced by the event's attribute `name`, percent-encoded.
fn fill(template: &str, delivery: &Delivery) -> Result<String, String> {
    let mut out = String::with_capacity(template.len() + 32);
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let close = rest[open..]
            .find('}')
            .ok_or_else(|| format!("path_template {template:?} has an unclosed '{{'"))?;
        let name = &rest[open + 1..open + close];
        let value = delivery
            .attributes
            .get(name)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| {
                format!(
                    "the event has no attribute {name:?}, which the endpoint's path {template:?} needs"
                )
            })?;
        out.extend(percent_encoding::utf8_percent_encode(value, SEGMENT));
        rest = &rest[open + close + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The endpoint's URL with the path template filled from the event (`openfinance-br`).
fn templated(ep: &LiveEndpoint, delivery: &Delivery) -> Result<http::Uri, String> {
    let path = fill(template(ep), delivery)?;
    let base = ep.uri.to_string();
    format!("{}{path}", base.trim_end_matches('/'))
        .parse()
        .map_err(|_| "the templated URL does not parse".to_owned())
}

/// The URL a delivery's request goes to, for the attempt log: the endpoint's, or for
/// `openfinance-br` the endpoint's with the payment's path filled in.
pub(crate) fn request_url<'a>(
    ep: &'a LiveEndpoint,
    delivery: &Delivery,
) -> std::borrow::Cow<'a, http::Uri> {
    match ep.config.profile {
        Profile::OpenfinanceBr => match templated(ep, delivery) {
            Ok(uri) => std::borrow::Cow::Owned(uri),
            Err(_) => std::borrow::Cow::Borrowed(&ep.uri),
        },
        Profile::Standard | Profile::Token => std::borrow::Cow::Borrowed(&ep.uri),
    }
}

/// A random (version 4) UUID.
fn uuid_v4() -> String {
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

fn openfinance(
    ep: &LiveEndpoint,
    delivery: &Delivery,
    now: OffsetDateTime,
    user_agent: &str,
) -> Result<http::Request<Full<Bytes>>, Refused> {
    let uri = templated(ep, delivery).map_err(Refused::Build)?;
    let at = delivery
        .occurred_at
        .as_ref()
        .and_then(to_datetime)
        .unwrap_or(now)
        .to_offset(time::UtcOffset::UTC);
    let ts = at
        .format(time::macros::format_description!(
            "[year]-[month]-[day]T[hour]:[minute]:[second]Z"
        ))
        .map_err(|e| Refused::Build(format!("cannot format the timestamp: {e}")))?;
    let body = format!(r#"{{"data":{{"timestamp":"{ts}"}}}}"#);
    let mut req = http::Request::post(uri)
        .header("content-type", "application/json")
        .header("x-webhook-interaction-id", uuid_v4())
        .header("user-agent", user_agent);
    for (k, v) in &ep.config.headers {
        req = req.header(k.as_str(), v.as_str());
    }
    req.body(Full::new(Bytes::from(body)))
        .map_err(|e| Refused::Build(format!("cannot build the request: {e}")))
}

/// Why no request could be built.
#[derive(Debug)]
pub(crate) enum Refused {
    /// The request cannot be built from this endpoint's settings (an attempt that fails).
    Build(String),
}

/// The body the endpoint's jq transform makes of `delivery` (`None` without one), or why it
/// cannot: the program failed or was cut off (its delivery is dead-lettered as `transform`).
/// The same delivery gives the same body at every attempt: programs cannot read the clock.
pub(crate) fn transformed(ep: &LiveEndpoint, delivery: &Delivery) -> Result<Option<Bytes>, String> {
    let Some(transform) = ep.transform() else {
        return Ok(None);
    };
    let program = transform
        .as_ref()
        .map_err(|e| format!("the transform does not compile here: {e}"))?;
    let parts = gancho_store::programs::EventParts {
        id: &delivery.event_id,
        event_type: &delivery.r#type,
        occurred_at: delivery
            .occurred_at
            .as_ref()
            .and_then(to_datetime)
            .unwrap_or(OffsetDateTime::UNIX_EPOCH),
        payload: &delivery.payload,
        channels: &delivery.channels,
    };
    let input = parts.input()?;
    program
        .transform(&input, &mut gancho_jq::Budget::transform())
        .map(|body| Some(Bytes::from(body)))
        .map_err(|e| format!("the transform failed: {e}"))
}

/// The request for one attempt of `delivery` to `ep`, made at `now`; `body`, when given, is
/// the transformed body sent instead of the standard one.
pub(crate) fn request(
    ep: &LiveEndpoint,
    delivery: &Delivery,
    now: OffsetDateTime,
    user_agent: &str,
    body: Option<Bytes>,
) -> Result<http::Request<Full<Bytes>>, Refused> {
    let mut req = profiled(ep, delivery, now, user_agent, body)?;
    if ep.config.trace_context {
        let out = gancho_core::webhook::traceparent_out(&delivery.id, delivery.attempts + 1);
        let value = http::HeaderValue::from_str(&out)
            .map_err(|_| Refused::Build("the traceparent is not a valid header value".into()))?;
        req.headers_mut().insert("traceparent", value);
    }
    let token_header = match (&ep.config.profile, &ep.config.token) {
        (Profile::Token, Some(token)) => token.header.as_deref(),
        _ => None,
    };
    never_indexed(req.headers_mut(), token_header);
    Ok(req)
}

/// The headers whose value is new on every request (or secret).
const NEW_EVERY_REQUEST: [&str; 5] = [
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    "traceparent",
    "x-webhook-interaction-id",
];

/// Marks the values that are new on every request, and the token, to be sent over HTTP/2 as
/// literals never indexed (RFC 7541, 7.1.3): they do not enter the header table that both
/// ends of a connection keep, where each would evict the values that do repeat
/// (`content-type`, `user-agent`, an endpoint's own headers) for nothing and make the
/// receiver store it too; and a signature or a token never sits in a table at all.
fn never_indexed(headers: &mut http::HeaderMap, token_header: Option<&str>) {
    for (name, value) in headers.iter_mut() {
        let name = name.as_str();
        if NEW_EVERY_REQUEST.contains(&name)
            || token_header.is_some_and(|t| t.eq_ignore_ascii_case(name))
        {
            value.set_sensitive(true);
        }
    }
}

/// [`request`] as its profile makes it.
fn profiled(
    ep: &LiveEndpoint,
    delivery: &Delivery,
    now: OffsetDateTime,
    user_agent: &str,
    body: Option<Bytes>,
) -> Result<http::Request<Full<Bytes>>, Refused> {
    match ep.config.profile {
        Profile::Standard => standard(ep, delivery, now, user_agent, ep.uri.clone(), body),
        Profile::Token => {
            let token = ep
                .config
                .token
                .as_ref()
                .ok_or_else(|| Refused::Build("profile token without a token".into()))?;
            let uri = match &token.query {
                Some(name) => with_query(&ep.uri, name, &token.value)?,
                None => ep.uri.clone(),
            };
            let mut req = standard(ep, delivery, now, user_agent, uri, body)?;
            if let Some(name) = &token.header {
                let name = http::HeaderName::from_bytes(name.as_bytes())
                    .map_err(|_| Refused::Build("the token header name is not valid".into()))?;
                let value = http::HeaderValue::from_str(&token.value)
                    .map_err(|_| Refused::Build("the token is not a valid header value".into()))?;
                req.headers_mut().insert(name, value);
            }
            Ok(req)
        }
        Profile::OpenfinanceBr => openfinance(ep, delivery, now, user_agent),
    }
}

/// Whether `status` means delivered for this profile.
pub(crate) fn is_success(profile: Profile, status: u16) -> bool {
    match profile {
        Profile::Standard | Profile::Token => (200..300).contains(&status),
        Profile::OpenfinanceBr => status == 202,
    }
}

fn standard(
    ep: &LiveEndpoint,
    delivery: &Delivery,
    now: OffsetDateTime,
    user_agent: &str,
    uri: http::Uri,
    body: Option<Bytes>,
) -> Result<http::Request<Full<Bytes>>, Refused> {
    let body = body.unwrap_or_else(|| {
        let occurred = delivery
            .occurred_at
            .as_ref()
            .and_then(to_datetime)
            .unwrap_or(now);
        Bytes::from(standard_body(&delivery.r#type, occurred, &delivery.payload))
    });
    let ts = now.unix_timestamp();
    let signer = ep
        .signer
        .as_ref()
        .ok_or_else(|| Refused::Build("no signing secret in this worker".into()))?;
    let signature = signer.header(&delivery.event_id, ts, &body);
    let mut req = http::Request::post(uri)
        .header("content-type", "application/json")
        .header("webhook-id", delivery.event_id.as_str())
        .header("webhook-timestamp", ts)
        .header("webhook-signature", signature)
        .header("user-agent", user_agent);
    for (k, v) in &ep.config.headers {
        req = req.header(k.as_str(), v.as_str());
    }
    req.body(Full::new(body))
        .map_err(|e| Refused::Build(format!("cannot build the request: {e}")))
}

/// `uri` with `name=value` added to its query, the value percent-encoded.
fn with_query(uri: &http::Uri, name: &str, value: &str) -> Result<http::Uri, Refused> {
    let value = percent_encoding::utf8_percent_encode(value, QUERY_VALUE);
    let path_and_query = match uri.query() {
        Some(q) if !q.is_empty() => format!("{}?{q}&{name}={value}", uri.path()),
        _ => format!("{}?{name}={value}", uri.path()),
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(
        path_and_query
            .parse()
            .map_err(|_| Refused::Build("the token does not fit in a URL".into()))?,
    );
    http::Uri::from_parts(parts)
        .map_err(|_| Refused::Build("the token does not fit in a URL".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_tokens_are_escaped_and_appended() {
        let uri: http::Uri = "https://h.example.com/in?a=1".parse().unwrap();
        let out = with_query(&uri, "token", "a b&c=d").unwrap();
        assert_eq!(
            out.to_string(),
            "https://h.example.com/in?a=1&token=a%20b%26c%3Dd"
        );
        let bare: http::Uri = "https://h.example.com/in".parse().unwrap();
        assert_eq!(
            with_query(&bare, "t", "x").unwrap().to_string(),
            "https://h.example.com/in?t=x"
        );
    }

    #[test]
    fn values_new_on_every_request_and_the_token_are_never_indexed() {
        let mut req = http::Request::post("https://h.example.com/in")
            .header("content-type", "application/json")
            .header("user-agent", "gancho")
            .header("webhook-id", "evt_1")
            .header("webhook-timestamp", 1_700_000_000)
            .header("webhook-signature", "v1,abc=")
            .header(
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            )
            .header("x-validationtoken", "s3cr3t")
            .header("x-partner-id", "42")
            .body(())
            .unwrap();
        never_indexed(req.headers_mut(), Some("X-ValidationToken"));
        let sensitive = |name: &str| req.headers()[name].is_sensitive();
        for name in [
            "webhook-id",
            "webhook-timestamp",
            "webhook-signature",
            "traceparent",
            "x-validationtoken",
        ] {
            assert!(sensitive(name), "{name} is indexed");
        }
        for name in ["content-type", "user-agent", "x-partner-id"] {
            assert!(!sensitive(name), "{name} is not indexed");
        }
    }

    #[test]
    fn success_is_per_profile() {
        assert!(is_success(Profile::Standard, 204));
        assert!(!is_success(Profile::Token, 302));
        assert!(is_success(Profile::OpenfinanceBr, 202));
        assert!(!is_success(Profile::OpenfinanceBr, 200));
    }

    #[test]
    fn templates_fill_from_attributes() {
        let mut d = Delivery::default();
        d.attributes.insert("paymentId".into(), "pay 1/2".into());
        assert_eq!(
            fill(gancho_store::model::OPENFINANCE_PATH, &d).unwrap(),
            "/open-banking/webhook/v1/payments/v3/pix/payments/pay%201%2F2"
        );
        let err = fill("/x/{consentId}", &d).unwrap_err();
        assert!(err.contains("\"consentId\""), "{err}");
        let id = uuid_v4();
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
        assert_ne!(id, uuid_v4());
    }
}
