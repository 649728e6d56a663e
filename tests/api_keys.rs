//! Tenant API keys over real HTTP, with `gancho api` as the built binary: a table over every
//! route of who gets what (admin, a key of the tenant with and without the scope, a key of
//! another tenant, no token, a bad token), a revoked key refused by a second api process
//! within 5 s, and pages that return each item once while items are inserted.
#![allow(
    clippy::too_many_lines,
    reason = "a test reads top to bottom: its set-up, its load and its checks in one place"
)]
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod support;

use serde_json::{json, Value};
use std::collections::HashSet;
use std::process::Child;
use std::time::{Duration, Instant};
use support::http as call;

const TOKEN: &str = "test-admin-token-0123456789";

struct Api {
    base: String,
    child: Child,
}

impl Drop for Api {
    fn drop(&mut self) {
        support::kill9(&mut self.child);
    }
}

async fn start(env: &support::Env) -> Api {
    let (child, base) = env
        .spawn_api_with(
            TOKEN,
            &[("GANCHO_PORTAL_PUBLIC_URL", "https://hooks.example.com")],
        )
        .await;
    Api { base, child }
}

impl Api {
    async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let body = body.map(|b| b.to_string());
        call(
            method,
            &format!("{}{path}", self.base),
            token,
            body.as_deref(),
        )
        .await
    }

    async fn admin(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let (status, v) = self.call(method, path, Some(TOKEN), body).await;
        assert!(
            (200..300).contains(&status),
            "{method} {path}: {status} {v}"
        );
        v
    }

    async fn key(&self, tenant: &str, scopes: &[&str]) -> String {
        let v = self
            .admin(
                "POST",
                &format!("/v1/tenants/{tenant}/api-keys"),
                Some(json!({"name": "test", "scopes": scopes})),
            )
            .await;
        v["key"].as_str().unwrap().to_owned()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_each_caller_as_documented() {
    let env = support::Env::new().await;
    let api = start(&env).await;
    for t in ["acme", "globex"] {
        api.admin("POST", "/v1/tenants", Some(json!({"id": t})))
            .await;
    }
    let ep = api
        .admin(
            "POST",
            "/v1/tenants/acme/endpoints",
            Some(json!({"url": "https://hooks.example.com/a"})),
        )
        .await;
    let ep_id = ep["id"].as_str().unwrap().to_owned();
    let other = api
        .admin(
            "POST",
            "/v1/tenants/globex/endpoints",
            Some(json!({"url": "https://hooks.example.com/g"})),
        )
        .await;
    let other_id = other["id"].as_str().unwrap().to_owned();
    let manage = api.key("acme", &["manage"]).await;
    let publish = api.key("acme", &["publish"]).await;
    let read = api.key("acme", &["read"]).await;
    let victim = api.key("globex", &["manage"]).await;
    let victim_id = {
        let v = api.admin("GET", "/v1/tenants/globex/api-keys", None).await;
        v["data"][0]["id"].as_str().unwrap().to_owned()
    };

    // (method, path, body, status with: manage key of acme, publish key of acme)
    // A read key of acme gets what the manage key gets on a GET of a tenant route, and 403
    // on everything else. Another tenant's key, no token and a bad token are the same for
    // every row.
    let ep_body = json!({"url": "https://hooks.example.com/new"});
    let rows: Vec<(&str, String, Option<Value>, u16, u16)> = vec![
        ("GET", "/v1/tenants".into(), None, 403, 403),
        (
            "POST",
            "/v1/tenants".into(),
            Some(json!({"id": "initech"})),
            403,
            403,
        ),
        ("GET", "/v1/tenants/acme".into(), None, 200, 200),
        (
            "PATCH",
            "/v1/tenants/acme".into(),
            Some(json!({"weight": 100})),
            403,
            403,
        ),
        ("DELETE", "/v1/tenants/acme".into(), None, 403, 403),
        ("GET", "/v1/tenants/acme/api-keys".into(), None, 403, 403),
        (
            "POST",
            "/v1/tenants/acme/api-keys".into(),
            Some(json!({"name": "x", "scopes": ["manage"]})),
            403,
            403,
        ),
        (
            "DELETE",
            format!("/v1/tenants/acme/api-keys/{victim_id}"),
            None,
            403,
            403,
        ),
        // Portal links: a manage key may mint and end them (a portal session may not:
        // tests/portal.rs).
        (
            "POST",
            "/v1/tenants/acme/portal-sessions".into(),
            Some(json!({"scope": "read", "ttl": "15m"})),
            201,
            403,
        ),
        (
            "DELETE",
            "/v1/tenants/acme/portal-sessions/ps_none".into(),
            None,
            404,
            403,
        ),
        ("GET", "/v1/tenants/acme/endpoints".into(), None, 200, 403),
        (
            "POST",
            "/v1/tenants/acme/endpoints".into(),
            Some(ep_body.clone()),
            201,
            403,
        ),
        (
            "GET",
            format!("/v1/tenants/acme/endpoints/{ep_id}"),
            None,
            200,
            403,
        ),
        (
            "PATCH",
            format!("/v1/tenants/acme/endpoints/{ep_id}"),
            Some(json!({"description": "x"})),
            200,
            403,
        ),
        (
            "POST",
            format!("/v1/tenants/acme/endpoints/{ep_id}/secret/rotate"),
            Some(json!({"grace": "1h"})),
            200,
            403,
        ),
        (
            "POST",
            format!("/v1/tenants/acme/endpoints/{ep_id}/pause"),
            None,
            200,
            403,
        ),
        (
            "POST",
            format!("/v1/tenants/acme/endpoints/{ep_id}/resume"),
            None,
            200,
            403,
        ),
        (
            "GET",
            format!("/v1/tenants/acme/endpoints/{ep_id}/attempts"),
            None,
            200,
            403,
        ),
        ("GET", "/v1/tenants/acme/attempts".into(), None, 200, 403),
        ("GET", "/v1/tenants/acme/audit-log".into(), None, 200, 403),
        ("GET", "/v1/audit-log".into(), None, 403, 403),
        (
            "GET",
            "/v1/tenants/acme/dead-letters".into(),
            None,
            200,
            403,
        ),
        // An event type not in the catalog: the manage key gets past access to the 404.
        (
            "POST",
            format!("/v1/tenants/acme/endpoints/{ep_id}/test"),
            Some(json!({"type": "nope.none"})),
            404,
            403,
        ),
        // Trying programs changes nothing, but writes them: `manage`.
        (
            "POST",
            "/v1/tenants/acme/endpoints/try".into(),
            Some(json!({"filter": "true", "event": {"type": "a.b", "data": {}}})),
            200,
            403,
        ),
        (
            "POST",
            "/v1/tenants/acme/dead-letters/redrive".into(),
            Some(json!({"kind": "exhausted"})),
            202,
            403,
        ),
        (
            "POST",
            format!("/v1/tenants/acme/endpoints/{ep_id}/replay"),
            Some(json!({"since": "2026-01-01T00:00:00Z"})),
            202,
            403,
        ),
        (
            "POST",
            format!("/v1/tenants/acme/endpoints/{ep_id}/recover"),
            Some(json!({"since": "2026-01-01T00:00:00Z"})),
            202,
            403,
        ),
        ("GET", "/v1/tenants/acme/jobs".into(), None, 200, 403),
        (
            "GET",
            "/v1/tenants/acme/jobs/job_none".into(),
            None,
            404,
            403,
        ),
        (
            "DELETE",
            "/v1/tenants/acme/jobs/job_none".into(),
            None,
            404,
            403,
        ),
        // No such event yet: the manage key gets past access to the 404.
        (
            "GET",
            "/v1/tenants/acme/events/evt-none".into(),
            None,
            404,
            403,
        ),
        (
            "DELETE",
            format!("/v1/tenants/acme/endpoints/{ep_id}"),
            None,
            204,
            403,
        ),
        (
            "PUT",
            "/v1/tenants/acme/event-types/charge.paid".into(),
            Some(json!({"description": "a charge was paid"})),
            201,
            403,
        ),
        (
            "GET",
            "/v1/tenants/acme/event-types/charge.paid".into(),
            None,
            200,
            403,
        ),
        ("GET", "/v1/tenants/acme/event-types".into(), None, 200, 403),
        (
            "DELETE",
            "/v1/tenants/acme/event-types/charge.paid".into(),
            None,
            204,
            403,
        ),
        (
            "POST",
            "/v1/tenants/acme/events".into(),
            Some(json!({"type": "charge.paid", "data": {}})),
            403,
            202,
        ),
        (
            "POST",
            "/v1/tenants/acme/events/batch".into(),
            Some(json!({"events": [{"type": "charge.paid", "data": {}}]})),
            403,
            200,
        ),
    ];
    for (method, path, body, want_manage, want_publish) in &rows {
        let tenant_route = *want_manage != 403 || *want_publish != 403;
        let want_read = if *method == "GET" && tenant_route {
            *want_manage
        } else {
            403
        };
        for (who, token, want) in [
            ("manage key", manage.as_str(), *want_manage),
            ("publish key", publish.as_str(), *want_publish),
            ("read key", read.as_str(), want_read),
        ] {
            let (status, v) = api.call(method, path, Some(token), body.clone()).await;
            assert_eq!(status, want, "{who}: {method} {path}: {v}");
            if status == 403 {
                assert!(!v["error"]["message"].as_str().unwrap().is_empty());
            }
        }
        // A key of another tenant: 404 on tenant routes (no existence leak), 403 on admin
        // routes.
        let (status, v) = api.call(method, path, Some(&victim), body.clone()).await;
        let want = if tenant_route { 404 } else { 403 };
        assert_eq!(status, want, "other tenant's key: {method} {path}: {v}");
        for (who, token) in [
            ("no token", None),
            ("bad token", Some("gk_not-a-real-key")),
            ("bad admin", Some("test-admin-token-0123456780")),
        ] {
            let (status, v) = api.call(method, path, token, body.clone()).await;
            assert_eq!(status, 401, "{who}: {method} {path}: {v}");
        }
    }
    // The table covers every route the API describes: a route added without a row fails here.
    let (status, spec) = api.call("GET", "/openapi.json", None, None).await;
    assert_eq!(status, 200, "/openapi.json is served without a token");
    for (template, item) in spec["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            let method = method.to_uppercase();
            let covered = rows
                .iter()
                .any(|(m, path, ..)| *m == method && matches_template(template, path));
            assert!(
                covered,
                "no row in the access table for {method} {template}"
            );
        }
    }

    // The error names the missing scope: either of two for reading, `manage` for the rest.
    let (_, v) = api
        .call("GET", "/v1/tenants/acme/endpoints", Some(&publish), None)
        .await;
    let said = v["error"]["message"].as_str().unwrap();
    assert!(
        said.contains("\"read\"") && said.contains("\"manage\""),
        "{v}"
    );
    let (_, v) = api
        .call(
            "POST",
            "/v1/tenants/acme/endpoints",
            Some(&read),
            Some(ep_body.clone()),
        )
        .await;
    let said = v["error"]["message"].as_str().unwrap();
    assert!(said.contains("lacks the \"manage\" scope"), "{v}");
    // Another tenant's endpoint looks the same as a missing one.
    let (s1, v1) = api
        .call(
            "GET",
            &format!("/v1/tenants/globex/endpoints/{other_id}"),
            Some(&manage),
            None,
        )
        .await;
    let (s2, v2) = api
        .call(
            "GET",
            "/v1/tenants/nosuch/endpoints/ep_x",
            Some(&manage),
            None,
        )
        .await;
    assert_eq!((s1, s2), (404, 404), "{v1} {v2}");
    // The admin may do everything a key may, on any tenant (the last rows, as admin).
    let (status, _) = api
        .call(
            "DELETE",
            &format!("/v1/tenants/globex/endpoints/{other_id}"),
            Some(TOKEN),
            None,
        )
        .await;
    assert_eq!(status, 204);

    // Bad input names the field.
    let (status, v) = api
        .call(
            "POST",
            "/v1/tenants/acme/api-keys",
            Some(TOKEN),
            Some(json!({"name": "x", "scopes": ["admin"]})),
        )
        .await;
    assert_eq!(status, 422, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("unknown scope \"admin\""),
        "{v}"
    );
    assert_eq!(v["error"]["field"], "scopes", "{v}");
    let (status, v) = api
        .call("GET", "/v1/tenants?limit=5000", Some(TOKEN), None)
        .await;
    assert_eq!(status, 400, "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("limit"),
        "{v}"
    );

    // Listing shows the prefix, scopes and last use, never the key or its hash.
    let v = api.admin("GET", "/v1/tenants/acme/api-keys", None).await;
    let keys = v["data"].as_array().unwrap();
    assert_eq!(keys.len(), 3);
    for k in keys {
        assert!(k.get("key").is_none() && k.get("hash").is_none(), "{k}");
        let prefix = k["prefix"].as_str().unwrap();
        assert!(
            [&manage, &publish, &read]
                .iter()
                .any(|key| key.starts_with(prefix)),
            "{k}"
        );
    }
    gancho_test_harness::wait_until(
        "last_used_at to be recorded",
        Duration::from_secs(10),
        || async {
            let v = api.admin("GET", "/v1/tenants/acme/api-keys", None).await;
            v["data"]
                .as_array()
                .unwrap()
                .iter()
                .all(|k| k["last_used_at"].is_string())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_key_is_refused_by_every_api_process_within_5_s() {
    let env = support::Env::new().await;
    let (a, b) = (start(&env).await, start(&env).await);
    a.admin("POST", "/v1/tenants", Some(json!({"id": "acme"})))
        .await;
    let key = a.key("acme", &["manage"]).await;
    // Both processes have seen (and cached) the key as valid.
    for api in [&a, &b] {
        let (status, v) = api
            .call("GET", "/v1/tenants/acme/endpoints", Some(&key), None)
            .await;
        assert_eq!(status, 200, "{v}");
    }
    let id = a.admin("GET", "/v1/tenants/acme/api-keys", None).await["data"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    a.admin("DELETE", &format!("/v1/tenants/acme/api-keys/{id}"), None)
        .await;
    let revoked = Instant::now();
    loop {
        let (status, _) = b
            .call("GET", "/v1/tenants/acme/endpoints", Some(&key), None)
            .await;
        if status == 401 {
            break;
        }
        assert_eq!(status, 200);
        assert!(
            revoked.elapsed() < Duration::from_secs(5),
            "the second api process still accepts a revoked key after 5 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, v) = a.call("GET", "/v1/tenants/acme", Some(&key), None).await;
    assert_eq!(status, 401, "{v}");
    println!(
        "revoked key refused by the second api process after {:?}",
        revoked.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paging_through_2500_endpoints_with_inserts_returns_each_once() {
    let env = support::Env::new().await;
    let api = start(&env).await;
    env.tenant("acme").await;
    let mut before = HashSet::new();
    for i in 0..2_500 {
        let ep = env
            .endpoint(
                "acme",
                &format!("ep{i:05}"),
                "https://hooks.example.com/x",
                &[],
                &[],
                None,
            )
            .await;
        before.insert(ep.id.to_string());
    }
    let mut seen: Vec<String> = Vec::new();
    let mut cursor: Option<String> = None;
    let mut page_no = 0;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/tenants/acme/endpoints?limit=100&cursor={c}"),
            None => "/v1/tenants/acme/endpoints?limit=100".into(),
        };
        let v = api.admin("GET", &path, None).await;
        let data = v["data"].as_array().unwrap();
        assert!(data.len() <= 100);
        seen.extend(data.iter().map(|e| e["id"].as_str().unwrap().to_owned()));
        // Inserts between pages: some sort before the cursor, some after.
        for id in [format!("a{page_no}"), format!("ep{:05}x", page_no * 97)] {
            env.endpoint("acme", &id, "https://hooks.example.com/x", &[], &[], None)
                .await;
        }
        page_no += 1;
        match v["next"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    for id in &before {
        assert_eq!(
            seen.iter().filter(|s| *s == id).count(),
            1,
            "{id} not seen exactly once"
        );
    }
    let unique: HashSet<_> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "an id appeared on two pages");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_4xx_that_says_what_to_fix() {
    let env = support::Env::new().await;
    let api = start(&env).await;
    api.admin("POST", "/v1/tenants", Some(json!({"id": "acme"})))
        .await;
    let path = "/v1/tenants/acme/endpoints";
    let big = "x".repeat(100 * 1024);
    let (status, v) = api
        .call(
            "POST",
            path,
            Some(TOKEN),
            Some(json!({"url": "https://a.example.com", "description": big})),
        )
        .await;
    assert_eq!(status, 413, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("larger than"),
        "{v}"
    );

    let (status, v) = api
        .call(
            "POST",
            path,
            Some(TOKEN),
            Some(json!({"url": "https://bob:s3cr3t@hooks.example.com/x"})),
        )
        .await;
    assert_eq!(status, 422, "{v}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("headers") && !msg.contains("s3cr3t"), "{msg}");

    for name in ["webhook-version", "TE", "Proxy-Authorization", "host"] {
        let (status, v) = api
            .call(
                "POST",
                path,
                Some(TOKEN),
                Some(json!({"url": "https://hooks.example.com/x", "headers": {name: "1"}})),
            )
            .await;
        assert_eq!(status, 422, "{name}: {v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains(name),
            "{v}"
        );
    }
}

/// Whether `path` is an instance of the OpenAPI path `template` (`{name}` is one segment).
fn matches_template(template: &str, path: &str) -> bool {
    let (t, p): (Vec<&str>, Vec<&str>) = (template.split('/').collect(), path.split('/').collect());
    t.len() == p.len()
        && t.iter()
            .zip(&p)
            .all(|(t, p)| (t.starts_with('{') && !p.is_empty()) || t == p)
}

/// One credential's requests are limited (`GANCHO_API_RATE_LIMIT`, bursts of twice that):
/// past the burst, 429 with `Retry-After` and a message that says so, counted on /metrics by
/// route group; another key and the admin token go on; a bad setting stops start-up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_credential_cannot_flood_the_api() {
    let env = support::Env::new().await;
    let (child, base) = env
        .spawn_api_with(
            TOKEN,
            &[
                ("GANCHO_API_RATE_LIMIT", "5"),
                ("GANCHO_PORTAL_PUBLIC_URL", "https://hooks.example.com"),
            ],
        )
        .await;
    let api = Api { base, child };
    api.admin("POST", "/v1/tenants", Some(json!({"id": "acme"})))
        .await;
    let (flood, calm) = (
        api.key("acme", &["read"]).await,
        api.key("acme", &["read"]).await,
    );
    // A burst of 10 (twice the rate) goes through, back to back.
    for i in 0..10 {
        let (status, v) = api
            .call("GET", "/v1/tenants/acme/endpoints", Some(&flood), None)
            .await;
        assert_eq!(status, 200, "request {i} of the burst: {v}");
    }
    let (status, headers, body) = support::raw(
        "GET",
        &api.base,
        "/v1/tenants/acme/endpoints",
        &[("authorization", &format!("Bearer {flood}"))],
        "",
    )
    .await;
    assert_eq!(status, 429, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["code"], "too_many_requests", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("at most 5 a second"),
        "{v}"
    );
    let retry: u64 = headers
        .iter()
        .find(|(k, _)| k == "retry-after")
        .map(|(_, v)| v.parse().unwrap())
        .expect("a Retry-After");
    assert_eq!(retry, 1);
    // Others are not held up by it: another key, and the admin token (not limited unless
    // its operator says so, below).
    let (status, _) = api
        .call("GET", "/v1/tenants/acme/attempts", Some(&calm), None)
        .await;
    assert_eq!(status, 200);
    for _ in 0..30 {
        api.admin("GET", "/v1/tenants/acme/endpoints", None).await;
    }
    // A second later the flooding key has its rate back.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (status, v) = api
        .call("GET", "/v1/tenants/acme/endpoints", Some(&flood), None)
        .await;
    assert_eq!(status, 200, "{v}");
    // Counted by route group; the credentials it tracks are on /metrics too.
    let (_, _, page) = support::raw("GET", &api.base, "/metrics", &[], "").await;
    assert!(
        page.lines()
            .any(|l| l == r#"gancho_api_rate_limited_total{group="endpoints"} 1"#),
        "{page}"
    );

    // A bad value stops start-up with one line that names the setting.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gancho"))
        .arg("api")
        .env("GANCHO_ADMIN_TOKEN", TOKEN)
        .env("GANCHO_API_RATE_LIMIT", "fifty")
        .env("GANCHO_NATS_URL", "nats://127.0.0.1:1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("api_rate_limit"), "{stderr}");
    drop(api);

    // The admin token is limited only when its operator says so.
    let (child, base) = env
        .spawn_api_with(TOKEN, &[("GANCHO_ADMIN_RATE_LIMIT", "3")])
        .await;
    let api = Api { base, child };
    let statuses: Vec<u16> = {
        let mut all = Vec::new();
        for _ in 0..8 {
            all.push(api.call("GET", "/v1/tenants", Some(TOKEN), None).await.0);
        }
        all
    };
    // A burst of 6 at most (the start-up check took some): then 429s.
    let ok = statuses.iter().take_while(|s| **s == 200).count();
    assert!((1..=6).contains(&ok), "{statuses:?}");
    assert!(statuses[ok..].iter().all(|s| *s == 429), "{statuses:?}");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        api.call("GET", "/v1/tenants", Some(TOKEN), None).await.0,
        200
    );
}

/// Two api processes share each credential's rate: a key spread over both gets the rate
/// (bursts of twice it), not twice that; when one process dies, the other takes the whole
/// rate within seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_processes_share_each_credentials_rate() {
    const RATE: usize = 10;
    let env = support::Env::new().await;
    let limit = RATE.to_string();
    let envs = [("GANCHO_API_RATE_LIMIT", limit.as_str())];
    let (a, a_base) = env.spawn_api_with(TOKEN, &envs).await;
    let (b, b_base) = env.spawn_api_with(TOKEN, &envs).await;
    let (a, mut b) = (
        Api {
            base: a_base,
            child: a,
        },
        Api {
            base: b_base,
            child: b,
        },
    );
    let alive = |api: &Api, n: usize| {
        let base = api.base.clone();
        async move {
            let (_, _, page) = support::raw("GET", &base, "/metrics", &[], "").await;
            page.lines()
                .any(|l| l == format!("gancho_api_processes_alive {n}"))
        }
    };
    gancho_test_harness::wait_until("both apis see two", Duration::from_secs(15), || async {
        alive(&a, 2).await && alive(&b, 2).await
    })
    .await;
    a.admin("POST", "/v1/tenants", Some(json!({"id": "acme"})))
        .await;
    let key = a.key("acme", &["read"]).await;

    // One key, its requests alternating between the two, back to back.
    let started = Instant::now();
    let (mut ok, mut refused) = (0usize, None);
    for i in 0..(6 * RATE) {
        let api = if i % 2 == 0 { &a } else { &b };
        let (status, v) = api
            .call("GET", "/v1/tenants/acme/endpoints", Some(&key), None)
            .await;
        match status {
            200 => ok += 1,
            429 => refused = Some(v),
            other => panic!("{other}: {v}"),
        }
    }
    let took = started.elapsed().as_secs_f64();
    // Bursts of twice the rate in all, plus what the rate refilled while this ran.
    let most = 2 * RATE + (RATE as f64 * took).ceil() as usize + 2;
    assert!(
        ok >= 2 * RATE && ok <= most,
        "{ok} of {} went through in {took:.2} s (at most {most})",
        6 * RATE
    );
    let refused = refused.expect("some were refused");
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("shared by 2 api processes"),
        "{refused}"
    );

    // One process dies (no goodbye): the other takes the whole rate once it has noticed.
    support::kill9(&mut b.child);
    gancho_test_harness::wait_until("a sees itself alone", Duration::from_secs(20), || {
        alive(&a, 1)
    })
    .await;
    let fresh = a.key("acme", &["read"]).await;
    for i in 0..(2 * RATE) {
        let (status, v) = a
            .call("GET", "/v1/tenants/acme/endpoints", Some(&fresh), None)
            .await;
        assert_eq!(status, 200, "request {i} of a whole burst on one api: {v}");
    }
}

/// A tenant's own rates: `api_rate_limit_per_sec` replaces the api's for its credentials, and
/// `ingest_rate_limit_per_sec` limits its HTTP ingest, a batch counted as its events and
/// refused whole past the rate; what got 202 is stored, what got 429 is not; null puts the
/// default back; bad values get a 422 that says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_own_rates_limit_its_keys_and_its_ingest() {
    let env = support::Env::new().await;
    let api = start(&env).await;
    api.admin("POST", "/v1/tenants", Some(json!({"id": "acme"})))
        .await;
    for (body, field) in [
        (
            json!({"api_rate_limit_per_sec": 0}),
            "api_rate_limit_per_sec",
        ),
        (
            json!({"ingest_rate_limit_per_sec": 100_001}),
            "ingest_rate_limit_per_sec",
        ),
    ] {
        let (status, v) = api
            .call("PATCH", "/v1/tenants/acme", Some(TOKEN), Some(body))
            .await;
        assert_eq!(status, 422, "{v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains(field),
            "{v}"
        );
        assert_eq!(v["error"]["field"], field, "a 422 names its field: {v}");
    }
    let v = api
        .admin(
            "PATCH",
            "/v1/tenants/acme",
            Some(json!({"api_rate_limit_per_sec": 2, "ingest_rate_limit_per_sec": 10})),
        )
        .await;
    assert_eq!(v["api_rate_limit_per_sec"], 2, "{v}");
    assert_eq!(v["ingest_rate_limit_per_sec"], 10, "{v}");
    let (read, publish) = (
        api.key("acme", &["read"]).await,
        api.key("acme", &["publish"]).await,
    );
    // The api's snapshot of the tenant follows the change within moments.
    gancho_test_harness::wait_until(
        "the tenant's request rate applies",
        Duration::from_secs(10),
        || async {
            let mut refused = false;
            for _ in 0..5 {
                let (status, _) = api
                    .call("GET", "/v1/tenants/acme/endpoints", Some(&read), None)
                    .await;
                refused |= status == 429;
            }
            refused
        },
    )
    .await;

    // Ingest: a batch of 20 (the burst, twice the rate) is taken whole; the next is refused
    // whole, with nothing of it stored.
    let batch = |from: usize, n: usize| {
        let events: Vec<Value> = (from..from + n)
            .map(|i| json!({"id": format!("evt-{i}"), "type": "charge.paid", "data": {}}))
            .collect();
        json!({ "events": events })
    };
    let send = |from: usize, n: usize| {
        api.call(
            "POST",
            "/v1/tenants/acme/events/batch",
            Some(&publish),
            Some(batch(from, n)),
        )
    };
    let (status, v) = send(0, 20).await;
    assert_eq!(status, 200, "{v}");
    let (status, v) = send(20, 5).await;
    assert_eq!(status, 429, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("events through HTTP ingest"),
        "{v}"
    );
    // A batch larger than the burst could never pass: the message says how large one may be.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (status, v) = send(100, 21).await;
    assert_eq!(status, 429, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("at most 20"),
        "{v}"
    );
    // After a second, one more event is taken.
    let (status, v) = api
        .call(
            "POST",
            "/v1/tenants/acme/events",
            Some(&publish),
            Some(json!({"id": "evt-late", "type": "charge.paid", "data": {}})),
        )
        .await;
    assert_eq!(status, 202, "{v}");
    let mut events = env
        .js
        .get_stream(env.layout.subjects.events_stream())
        .await
        .unwrap();
    let stored = events.info().await.unwrap().state.messages;
    assert_eq!(
        stored, 21,
        "the 20 of the first batch and evt-late, nothing refused"
    );

    // null (from the CLI): back to the api's rate (50) and no ingest limit.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gancho"))
        .args([
            "tenants",
            "update",
            "acme",
            "--api-rate-limit",
            "default",
            "--ingest-rate-limit",
            "none",
            "--json",
        ])
        .env("GANCHO_API_URL", &api.base)
        .env("GANCHO_TOKEN", TOKEN)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["api_rate_limit_per_sec"].is_null(), "{v}");
    assert!(v["ingest_rate_limit_per_sec"].is_null(), "{v}");
    gancho_test_harness::wait_until(
        "the default applies again",
        Duration::from_secs(10),
        || async {
            let fresh = api.key("acme", &["publish"]).await;
            let (status, _) = api
                .call(
                    "POST",
                    "/v1/tenants/acme/events/batch",
                    Some(&fresh),
                    Some(batch(200, 30)),
                )
                .await;
            status == 200
        },
    )
    .await;
}
