//! Portal links and sessions over real HTTP, with `gancho api` as the built binary: a link
//! starts one session, once, within 10 minutes; the session reaches its own tenant with its
//! scope and nothing else; ending it, its expiry and deleting its tenant stop it on the api
//! within 5 s; two api processes given the same link at once start one session; `gancho
//! portal link` prints a link that works.
#![allow(
    clippy::too_many_lines,
    reason = "a test reads top to bottom: its set-up, its load and its checks in one place"
)]
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod support;

use serde_json::{json, Value};
use std::time::Duration;
use support::http;

const TOKEN: &str = "test-admin-token-0123456789";
const PUBLIC: &str = "https://hooks.example.com/base";

struct Api {
    base: String,
    child: std::process::Child,
}

impl Drop for Api {
    fn drop(&mut self) {
        support::kill9(&mut self.child);
    }
}

impl Api {
    async fn start(env: &support::Env, public_url: Option<&str>) -> Self {
        let envs: Vec<(&str, &str)> = public_url
            .map(|u| ("GANCHO_PORTAL_PUBLIC_URL", u))
            .into_iter()
            .collect();
        let (child, base) = env.spawn_api_with(TOKEN, &envs).await;
        Self { base, child }
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let body = body.map(|b| b.to_string());
        http(
            method,
            &format!("{}{path}", self.base),
            Some(token),
            body.as_deref(),
        )
        .await
    }

    async fn admin(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let (status, v) = self.call(method, path, TOKEN, body).await;
        assert!(
            (200..300).contains(&status),
            "{method} {path}: {status} {v}"
        );
        v
    }

    /// Mints a link for `tenant` with the admin token: (session id, link token).
    async fn mint(&self, tenant: &str, scope: &str) -> (String, String) {
        let v = self
            .admin(
                "POST",
                &format!("/v1/tenants/{tenant}/portal-sessions"),
                Some(json!({"scope": scope, "ttl": "15m"})),
            )
            .await;
        let url = v["url"].as_str().unwrap();
        let token = url
            .strip_prefix(&format!("{PUBLIC}/portal/#t="))
            .unwrap_or_else(|| {
                panic!("a link under {PUBLIC}/portal/ with its token in the fragment: {url}")
            });
        (v["id"].as_str().unwrap().to_owned(), token.to_owned())
    }

    /// What the portal page does with a link's token.
    async fn open(&self, token: &str) -> (u16, Value) {
        let body = json!({"token": token}).to_string();
        http(
            "POST",
            &format!("{}/portal/session", self.base),
            None,
            Some(&body),
        )
        .await
    }

    async fn session(&self, tenant: &str, scope: &str) -> String {
        let (_, token) = self.mint(tenant, scope).await;
        let (status, v) = self.open(&token).await;
        assert_eq!(status, 201, "{v}");
        v["session"].as_str().unwrap().to_owned()
    }

    /// Waits up to 5 s for `session` to be refused with 401 on `path`, saying why.
    async fn refused_within_5_s(&self, session: &str, path: &str, why: &str) {
        let started = std::time::Instant::now();
        loop {
            let (status, v) = self.call("GET", path, session, None).await;
            if status == 401 {
                let said = v["error"]["message"].as_str().unwrap();
                assert!(said.contains("ended or expired"), "{why}: {v}");
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "{why}: the session was still taken after 5 s ({status} {v})"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_starts_one_session_that_reaches_its_tenant_with_its_scope() {
    let env = support::Env::new().await;
    let api = Api::start(&env, Some(PUBLIC)).await;
    let mut ids = Vec::new();
    for t in ["acme", "globex"] {
        api.admin("POST", "/v1/tenants", Some(json!({"id": t})))
            .await;
        let ep = api
            .admin(
                "POST",
                &format!("/v1/tenants/{t}/endpoints"),
                Some(json!({"url": format!("https://hooks.example.com/{t}")})),
            )
            .await;
        ids.push(ep["id"].as_str().unwrap().to_owned());
    }
    let (acme_ep, globex_ep) = (&ids[0], &ids[1]);

    // Minted: the token is in the fragment, the link must be opened within 10 minutes.
    let v = api
        .admin(
            "POST",
            "/v1/tenants/acme/portal-sessions",
            Some(json!({"scope": "read"})),
        )
        .await;
    assert!(v["id"].as_str().unwrap().starts_with("ps_"), "{v}");
    assert_eq!(
        (v["scope"].as_str(), v["ttl_secs"].as_u64()),
        (Some("read"), Some(3600)),
        "{v}"
    );
    let expires = time::OffsetDateTime::parse(
        v["expires_at"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    let left = expires - time::OffsetDateTime::now_utc();
    assert!(
        left > time::Duration::minutes(9) && left <= time::Duration::minutes(10),
        "{v}"
    );
    let token = v["url"]
        .as_str()
        .unwrap()
        .strip_prefix(&format!("{PUBLIC}/portal/#t="))
        .unwrap()
        .to_owned();

    // Opened: a session; opened again: refused, saying so.
    let (status, started) = api.open(&token).await;
    assert_eq!(status, 201, "{started}");
    assert_eq!(
        (started["scope"].as_str(), started["tenant"].as_str()),
        (Some("read"), Some("acme"))
    );
    // The admin token minted it: the platform opened this session, and the page says so.
    assert_eq!(started["opened_by"], "platform", "{started}");
    let read = started["session"].as_str().unwrap().to_owned();
    assert!(read.starts_with("gps_"), "{started}");
    let (status, v) = api.open(&token).await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (401, Some("link_used")),
        "{v}"
    );
    assert!(
        v["error"]["message"].as_str().unwrap().contains("new one"),
        "{v}"
    );
    let (status, v) = api.open("gpl_nosuchlink").await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (401, Some("link_unknown")),
        "{v}"
    );

    // A read session looks and changes nothing.
    for path in [
        "/v1/tenants/acme".to_owned(),
        "/v1/tenants/acme/endpoints".to_owned(),
        format!("/v1/tenants/acme/endpoints/{acme_ep}"),
        format!("/v1/tenants/acme/endpoints/{acme_ep}/attempts"),
        "/v1/tenants/acme/dead-letters".to_owned(),
        "/v1/tenants/acme/jobs".to_owned(),
        "/v1/tenants/acme/event-types".to_owned(),
    ] {
        let (status, v) = api.call("GET", &path, &read, None).await;
        assert_eq!(status, 200, "GET {path}: {v}");
    }
    let writes = [
        (
            "POST",
            "/v1/tenants/acme/endpoints".to_owned(),
            Some(json!({"url": "https://hooks.example.com/x"})),
        ),
        (
            "PATCH",
            format!("/v1/tenants/acme/endpoints/{acme_ep}"),
            Some(json!({"description": "x"})),
        ),
        (
            "POST",
            format!("/v1/tenants/acme/endpoints/{acme_ep}/pause"),
            None,
        ),
        (
            "POST",
            format!("/v1/tenants/acme/endpoints/{acme_ep}/test"),
            Some(json!({"type": "charge.paid"})),
        ),
        (
            "POST",
            format!("/v1/tenants/acme/endpoints/{acme_ep}/recover"),
            Some(json!({"since": "2026-01-01T00:00:00Z"})),
        ),
        (
            "DELETE",
            format!("/v1/tenants/acme/endpoints/{acme_ep}"),
            None,
        ),
    ];
    for (method, path, body) in &writes {
        let (status, v) = api.call(method, path, &read, body.clone()).await;
        assert_eq!(status, 403, "{method} {path}: {v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("portal session lacks the \"manage\" scope"),
            "{v}"
        );
    }
    // Nothing outside its tenant, no admin route, no sessions or keys of its own making.
    let (status, v) = api
        .call(
            "GET",
            &format!("/v1/tenants/globex/endpoints/{globex_ep}"),
            &read,
            None,
        )
        .await;
    assert_eq!(status, 404, "{v}");
    let (status, v) = api.call("GET", "/v1/tenants", &read, None).await;
    assert_eq!(status, 403, "{v}");
    let (status, v) = api
        .call(
            "POST",
            "/v1/tenants/acme/api-keys",
            &read,
            Some(json!({"name": "x", "scopes": ["manage"]})),
        )
        .await;
    assert_eq!(status, 403, "{v}");

    // A manage session changes things, but starts no session either.
    let manage = api.session("acme", "manage").await;
    let (status, v) = api
        .call(
            "PATCH",
            &format!("/v1/tenants/acme/endpoints/{acme_ep}"),
            &manage,
            Some(json!({"description": "changed in the portal"})),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    let (status, v) = api
        .call(
            "POST",
            "/v1/tenants/acme/portal-sessions",
            &manage,
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 403, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("cannot start or end portal sessions"),
        "{v}"
    );

    // A link minted with the tenant's own manage key: the tenant opened the session.
    let key = api
        .admin(
            "POST",
            "/v1/tenants/acme/api-keys",
            Some(json!({"name": "dashboard", "scopes": ["manage"]})),
        )
        .await["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, v) = api
        .call(
            "POST",
            "/v1/tenants/acme/portal-sessions",
            &key,
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 201, "{v}");
    let own = v["url"].as_str().unwrap().split("#t=").nth(1).unwrap();
    let (status, started) = api.open(own).await;
    assert_eq!(status, 201, "{started}");
    assert_eq!(started["opened_by"], "tenant", "{started}");

    // Bad requests say what to fix.
    for (body, want) in [
        (json!({"scope": "admin"}), "use \"manage\" or \"read\""),
        (json!({"ttl": "30s"}), "from 1m to 24h"),
        (json!({"ttl": "soon"}), "not a duration"),
    ] {
        let (status, v) = api
            .call(
                "POST",
                "/v1/tenants/acme/portal-sessions",
                TOKEN,
                Some(body.clone()),
            )
            .await;
        assert_eq!(status, 422, "{body}: {v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains(want),
            "{v}"
        );
    }
    let (status, v) = api
        .call(
            "POST",
            "/v1/tenants/nosuch/portal-sessions",
            TOKEN,
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 404, "{v}");

    // A link not opened within 10 minutes starts nothing.
    let (id, token) = api.mint("acme", "read").await;
    env.age_portal_session("acme", &id, "link_expires_at").await;
    let (status, v) = api.open(&token).await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (401, Some("link_expired")),
        "{v}"
    );
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("within 10 minutes"),
        "{v}"
    );

    // Ended by DELETE: refused within 5 s; it is gone for a second DELETE.
    let endpoints = "/v1/tenants/acme/endpoints";
    let (id, token) = api.mint("acme", "read").await;
    let (_, started) = api.open(&token).await;
    let session = started["session"].as_str().unwrap().to_owned();
    assert_eq!(api.call("GET", endpoints, &session, None).await.0, 200);
    let end = format!("/v1/tenants/acme/portal-sessions/{id}");
    assert_eq!(api.call("DELETE", &end, TOKEN, None).await.0, 204);
    api.refused_within_5_s(&session, endpoints, "ended by DELETE")
        .await;
    let (status, v) = api.call("DELETE", &end, TOKEN, None).await;
    assert_eq!(status, 404, "{v}");
    // A link ended before it was opened starts nothing.
    let (id, token) = api.mint("acme", "read").await;
    let end = format!("/v1/tenants/acme/portal-sessions/{id}");
    assert_eq!(api.call("DELETE", &end, TOKEN, None).await.0, 204);
    let (status, v) = api.open(&token).await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (401, Some("link_unknown")),
        "{v}"
    );
    // Past its ttl.
    let (id, token) = api.mint("acme", "read").await;
    let (_, started) = api.open(&token).await;
    let session = started["session"].as_str().unwrap().to_owned();
    assert_eq!(api.call("GET", endpoints, &session, None).await.0, 200);
    env.age_portal_session("acme", &id, "expires_at").await;
    api.refused_within_5_s(&session, endpoints, "expired").await;
    // With its tenant.
    let session = api.session("globex", "manage").await;
    let globex = "/v1/tenants/globex/endpoints";
    assert_eq!(api.call("GET", globex, &session, None).await.0, 200);
    api.admin("DELETE", "/v1/tenants/globex", None).await;
    api.refused_within_5_s(&session, globex, "tenant deleted")
        .await;
    // The sessions not ended still work.
    assert_eq!(api.call("GET", endpoints, &read, None).await.0, 200);
    assert_eq!(api.call("GET", endpoints, &manage, None).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_without_a_public_url_mints_no_link_and_says_why() {
    let env = support::Env::new().await;
    let api = Api::start(&env, None).await;
    api.admin("POST", "/v1/tenants", Some(json!({"id": "acme"})))
        .await;
    let (status, v) = api
        .call(
            "POST",
            "/v1/tenants/acme/portal-sessions",
            TOKEN,
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 409, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("GANCHO_PORTAL_PUBLIC_URL"),
        "{v}"
    );
}

/// Two api processes given the same links at the same moment: each link starts exactly one
/// session, and the other process answers that it was used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_api_processes_given_the_same_link_at_once_start_one_session() {
    let env = support::Env::new().await;
    let a = Api::start(&env, Some(PUBLIC)).await;
    let b = Api::start(&env, Some(PUBLIC)).await;
    a.admin("POST", "/v1/tenants", Some(json!({"id": "acme"})))
        .await;
    // 10 links: within one address's burst of openings on each api (20).
    for _ in 0..10 {
        let (_, token) = a.mint("acme", "read").await;
        let ((sa, va), (sb, vb)) = tokio::join!(a.open(&token), b.open(&token));
        let mut statuses = [sa, sb];
        statuses.sort_unstable();
        assert_eq!(statuses, [201, 401], "{va} {vb}");
        let refused = if sa == 401 { &va } else { &vb };
        assert_eq!(
            refused["error"]["code"].as_str(),
            Some("link_used"),
            "{refused}"
        );
    }
}

/// Opening links is limited per client address: past the burst, 429 with `Retry-After`,
/// whatever `X-Forwarded-For` a client sends; behind a proxy listed in
/// `GANCHO_TRUSTED_PROXIES`, each forwarded client has a budget of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opening_links_is_limited_per_client_address() {
    let env = support::Env::new().await;
    let open = |base: String, forwarded: Option<String>| async move {
        let mut headers = vec![("content-type", "application/json".to_owned())];
        if let Some(f) = forwarded {
            headers.push(("x-forwarded-for", f));
        }
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (status, headers, body) = support::raw(
            "POST",
            &base,
            "/portal/session",
            &headers,
            r#"{"token": "gpl_not-a-link"}"#,
        )
        .await;
        let retry = headers
            .iter()
            .find(|(k, _)| k == "retry-after")
            .map(|(_, v)| v.clone());
        let v: Value = serde_json::from_str(&body).unwrap();
        (status, retry, v)
    };
    // No trusted proxy: the peer is the client, and its forwarded-for is not believed.
    let (mut plain, base) = env.spawn_api_with(TOKEN, &[]).await;
    for i in 0..20 {
        let (status, _, v) = open(base.clone(), Some(format!("203.0.113.{i}"))).await;
        assert_eq!(status, 401, "opening {i}: {v}");
        assert_eq!(v["error"]["code"], "link_unknown", "{v}");
    }
    let (status, retry, v) = open(base.clone(), Some("198.51.100.1".into())).await;
    assert_eq!(status, 429, "the 21st opening from one address: {v}");
    assert_eq!(v["error"]["code"], "too_many_requests", "{v}");
    let secs: u64 = retry.expect("a Retry-After").parse().unwrap();
    assert!((1..=2).contains(&secs), "Retry-After {secs}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("try again"),
        "{v}"
    );
    support::kill9(&mut plain);

    // Behind a trusted proxy (the tests' own address): each forwarded client counts alone.
    let (mut proxied, base) = env
        .spawn_api_with(TOKEN, &[("GANCHO_TRUSTED_PROXIES", "127.0.0.1/32, ::1")])
        .await;
    for i in 0..20 {
        let (status, _, v) = open(base.clone(), Some("203.0.113.7".into())).await;
        assert_eq!(status, 401, "opening {i}: {v}");
    }
    let (status, _, v) = open(base.clone(), Some("203.0.113.7".into())).await;
    assert_eq!(status, 429, "{v}");
    // A forged entry to the left of what the proxy wrote changes nothing.
    let (status, _, v) = open(base.clone(), Some("192.0.2.1, 203.0.113.7".into())).await;
    assert_eq!(status, 429, "{v}");
    let (status, _, v) = open(base.clone(), Some("203.0.113.8".into())).await;
    assert_eq!(status, 401, "another client behind the proxy: {v}");
    // The addresses the limits track are on /metrics: the two clients behind the proxy.
    gancho_test_harness::wait_until(
        "the link limits' addresses on /metrics",
        Duration::from_secs(15),
        || async {
            let (_, _, page) = get_raw(&base, "/metrics").await;
            page.lines()
                .any(|l| l == r#"gancho_retained_entries{structure="link_open_addresses"} 2"#)
        },
    )
    .await;
    support::kill9(&mut proxied);

    // A bad list stops start-up with one line that names the setting.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gancho"))
        .arg("api")
        .env("GANCHO_ADMIN_TOKEN", TOKEN)
        .env("GANCHO_TRUSTED_PROXIES", "10.0.0.0/40")
        .env("GANCHO_NATS_URL", "nats://127.0.0.1:1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("trusted_proxies") && stderr.contains("0 to 32"),
        "{stderr}"
    );
}

/// `gancho portal link` prints the link alone on its last line, and it opens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_prints_a_link_that_opens() {
    let env = support::Env::new().await;
    let api = Api::start(&env, Some(PUBLIC)).await;
    api.admin("POST", "/v1/tenants", Some(json!({"id": "acme"})))
        .await;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gancho"))
        .args([
            "portal",
            "link",
            "--tenant",
            "acme",
            "--read-only",
            "--ttl",
            "15m",
        ])
        .env("GANCHO_API_URL", &api.base)
        .env("GANCHO_TOKEN", TOKEN)
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let url = stdout.lines().last().unwrap();
    let token = url
        .strip_prefix(&format!("{PUBLIC}/portal/#t="))
        .unwrap_or_else(|| panic!("the last line is the link: {stdout}"));
    let (status, v) = api.open(token).await;
    assert_eq!(status, 201, "{v}");
    assert_eq!(v["scope"].as_str(), Some("read"), "{v}");
}

/// A GET as a browser makes it: (status, headers with lower-case names, body).
async fn get_raw(base: &str, path: &str) -> (u16, Vec<(String, String)>, String) {
    support::raw("GET", base, path, &[], "").await
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> &'a str {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map_or("", |(_, v)| v.as_str())
}

/// The page and its files come from the binary with the portal's headers: a policy that
/// allows this origin only, no inline script or style, Trusted Types, framing only by the
/// configured sites; every answer of the api says nosniff; the page names no other origin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_comes_from_the_binary_with_its_security_headers() {
    let env = support::Env::new().await;
    let (mut child, base) = env
        .spawn_api_with(
            TOKEN,
            &[
                ("GANCHO_PORTAL_PUBLIC_URL", PUBLIC),
                (
                    "GANCHO_PORTAL_FRAME_ANCESTORS",
                    "http://localhost:8123 'self'",
                ),
            ],
        )
        .await;
    let (status, headers, html) = get_raw(&base, "/portal/").await;
    assert_eq!(status, 200);
    assert!(
        header(&headers, "content-type").starts_with("text/html"),
        "{headers:?}"
    );
    let csp = header(&headers, "content-security-policy");
    for want in [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "frame-ancestors http://localhost:8123 'self'",
        "require-trusted-types-for 'script'",
    ] {
        assert!(csp.contains(want), "{want} in {csp}");
    }
    assert!(!csp.contains("unsafe"), "{csp}");
    assert_eq!(header(&headers, "x-content-type-options"), "nosniff");
    assert_eq!(header(&headers, "referrer-policy"), "no-referrer");
    // Every file the page loads is served here, with the same policy; nothing from elsewhere.
    let mut loaded = Vec::new();
    for attr in ["src=\"", "href=\""] {
        for part in html.split(attr).skip(1) {
            let value = part.split('"').next().unwrap();
            assert!(
                !value.contains("//"),
                "the page loads {value} from elsewhere"
            );
            if !value.starts_with('#') {
                loaded.push(value.to_owned());
            }
        }
    }
    assert!(loaded.len() >= 3, "{loaded:?}");
    for file in &loaded {
        let (status, headers, body) = get_raw(&base, &format!("/portal/{file}")).await;
        assert_eq!(status, 200, "{file}");
        assert!(!body.is_empty(), "{file}");
        assert_eq!(header(&headers, "content-security-policy"), csp, "{file}");
        assert_eq!(
            header(&headers, "x-content-type-options"),
            "nosniff",
            "{file}"
        );
    }
    let (_, headers, js) = get_raw(&base, "/portal/app.js").await;
    assert!(header(&headers, "content-type").starts_with("text/javascript"));
    for sink in [
        "innerHTML",
        "outerHTML",
        "insertAdjacentHTML",
        "document.write",
        "eval(",
    ] {
        assert!(!js.contains(sink), "app.js uses {sink}");
    }
    // The words: by Accept-Language, or the language asked for; English otherwise.
    for (accept, asked, want) in [
        ("pt-BR,pt;q=0.9,en;q=0.8", "", "pt-BR"),
        ("en-US,en;q=0.9", "", "en"),
        ("de-DE,pt;q=0.5", "", "pt-BR"),
        ("fr", "", "en"),
        ("pt-BR", "?lang=en", "en"),
    ] {
        let (status, headers, body) = support::raw(
            "GET",
            &base,
            &format!("/portal/strings.json{asked}"),
            &[("accept-language", accept)],
            "",
        )
        .await;
        assert_eq!(status, 200, "{accept}");
        assert_eq!(header(&headers, "vary"), "Accept-Language");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["lang"], want, "{accept} {asked}");
        let nav = if want == "en" { "Jobs" } else { "Tarefas" };
        assert_eq!(v["strings"]["nav.jobs"], nav, "{accept} {asked}");
    }
    // /portal goes to /portal/, relative to where it was asked (a proxy's path is kept).
    let (status, headers, _) = get_raw(&base, "/portal").await;
    assert_eq!((status, header(&headers, "location")), (308, "portal/"));
    // Every other answer says nosniff too.
    for path in ["/v1/tenants", "/nothing-here", "/openapi.json"] {
        let (_, headers, _) = get_raw(&base, path).await;
        assert_eq!(
            header(&headers, "x-content-type-options"),
            "nosniff",
            "{path}"
        );
    }
    support::kill9(&mut child);
    // By default no site may frame it.
    let api = Api::start(&env, Some(PUBLIC)).await;
    let (_, headers, _) = get_raw(&api.base, "/portal/").await;
    assert!(
        header(&headers, "content-security-policy").contains("frame-ancestors 'none';"),
        "{headers:?}"
    );
}

/// The endpoint list's search (`?q=`, what the portal's search box sends): a part of the URL
/// or of the description, in any case, a page at a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_endpoint_list_finds_endpoints_by_url_or_description() {
    let env = support::Env::new().await;
    let api = Api::start(&env, Some(PUBLIC)).await;
    api.admin("POST", "/v1/tenants", Some(json!({"id": "acme"})))
        .await;
    for (url, description) in [
        ("https://pay.example.com/a", "charges"),
        ("https://erp.example.com/b", "ERP sync"),
        ("https://pay.example.com/c", "refunds"),
        ("https://other.example.com/d", "PAYOUTS"),
    ] {
        api.admin(
            "POST",
            "/v1/tenants/acme/endpoints",
            Some(json!({"url": url, "description": description})),
        )
        .await;
    }
    let urls = |v: &Value| {
        let mut urls: Vec<String> = v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["url"].as_str().unwrap().to_owned())
            .collect();
        urls.sort();
        urls
    };
    let v = api
        .admin("GET", "/v1/tenants/acme/endpoints?q=Pay", None)
        .await;
    assert_eq!(
        urls(&v),
        [
            "https://other.example.com/d",
            "https://pay.example.com/a",
            "https://pay.example.com/c"
        ],
        "by URL and by description, in any case"
    );
    let v = api
        .admin("GET", "/v1/tenants/acme/endpoints?q=erp%20SYNC", None)
        .await;
    assert_eq!(urls(&v), ["https://erp.example.com/b"]);
    let v = api
        .admin("GET", "/v1/tenants/acme/endpoints?q=nothing", None)
        .await;
    assert!(urls(&v).is_empty() && v["next"].is_null(), "{v}");
    // A page at a time: the cursor keeps to the search.
    let first = api
        .admin("GET", "/v1/tenants/acme/endpoints?q=pay&limit=2", None)
        .await;
    let cursor = first["next"].as_str().expect("a second page").to_owned();
    let second = api
        .admin(
            "GET",
            &format!("/v1/tenants/acme/endpoints?q=pay&limit=2&cursor={cursor}"),
            None,
        )
        .await;
    assert!(second["next"].is_null(), "{second}");
    let mut both = [urls(&first), urls(&second)].concat();
    both.sort();
    assert_eq!(both.len(), 3, "{first} {second}");
    // Too long a search says what it takes.
    let (status, v) = api
        .call(
            "GET",
            &format!("/v1/tenants/acme/endpoints?q={}", "x".repeat(201)),
            TOKEN,
            None,
        )
        .await;
    assert_eq!(status, 400, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("at most 200"),
        "{v}"
    );
}
