//! The config service over real HTTP: admin auth, tenants and endpoints CRUD, and errors that
//! say what to fix. The API runs as the built `gancho api` binary.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod support;

use serde_json::{json, Value};
use std::time::Duration;

const TOKEN: &str = "test-admin-token-0123456789";

struct Api {
    base: String,
    _child: ChildGuard,
}

struct ChildGuard(std::process::Child);
impl Drop for ChildGuard {
    fn drop(&mut self) {
        support::kill9(&mut self.0);
    }
}

async fn start(env: &support::Env) -> Api {
    let port = gancho_test_harness::nats::free_port();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_gancho"))
        .arg("api")
        .env("GANCHO_NATS_URL", env.nats.url())
        .env("GANCHO_ADMIN_TOKEN", TOKEN)
        .env("GANCHO_API_LISTEN", format!("127.0.0.1:{port}"))
        .env("GANCHO_METRICS_LISTEN", "127.0.0.1:0")
        .env("RUST_LOG", "warn")
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let api = Api {
        base: base.clone(),
        _child: ChildGuard(child),
    };
    gancho_test_harness::wait_until(
        "the API to answer /readyz",
        Duration::from_secs(20),
        || async { call("GET", &format!("{base}/readyz"), None, None).await.0 == 200 },
    )
    .await;
    api
}

use support::http as call;

fn err_msg(v: &Value) -> &str {
    v["error"]["message"].as_str().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_and_endpoints_crud() {
    let env = support::Env::new().await;
    let api = start(&env).await;
    let url = |p: &str| format!("{}{p}", api.base);
    let admin = Some(TOKEN);

    // Auth.
    let (s, v) = call("POST", &url("/v1/tenants"), None, Some(r#"{"id":"acme"}"#)).await;
    assert_eq!(s, 401);
    assert!(err_msg(&v).contains("Authorization"), "{v}");
    let (s, _) = call(
        "POST",
        &url("/v1/tenants"),
        Some("wrong-token-wrong-token"),
        Some(r#"{"id":"acme"}"#),
    )
    .await;
    assert_eq!(s, 401);

    // Tenants.
    let (s, v) = call(
        "POST",
        &url("/v1/tenants"),
        admin,
        Some(r#"{"id":"acme","name":"Acme Pagamentos"}"#),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["name"], "Acme Pagamentos");
    let (s, v) = call("POST", &url("/v1/tenants"), admin, Some(r#"{"id":"acme"}"#)).await;
    assert_eq!(s, 409);
    assert_eq!(v["error"]["code"], "conflict");
    let (s, v) = call(
        "POST",
        &url("/v1/tenants"),
        admin,
        Some(r#"{"id":"ac.me"}"#),
    )
    .await;
    assert_eq!(s, 422);
    assert!(err_msg(&v).contains("only letters, digits"), "{v}");
    let (s, v) = call("POST", &url("/v1/tenants"), admin, Some(r#"{"id":"#)).await;
    assert_eq!(s, 400);
    assert_eq!(v["error"]["code"], "bad_request");
    let (s, _) = call("GET", &url("/v1/tenants/acme"), admin, None).await;
    assert_eq!(s, 200);
    let (s, _) = call("GET", &url("/v1/tenants/nobody"), admin, None).await;
    assert_eq!(s, 404);

    // Endpoints.
    let body = json!({
        "url": "https://hooks.example.com/gancho", "description": "billing",
        "filter_types": ["invoice.*", "charge.paid"], "channels": [],
        "rate_limit_per_sec": 50, "max_in_flight": 8, "timeout_ms": 15000, "profile": "standard"
    })
    .to_string();
    let (s, created) = call(
        "POST",
        &url("/v1/tenants/acme/endpoints"),
        admin,
        Some(&body),
    )
    .await;
    assert_eq!(s, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("ep_"));
    assert!(created["secret"].as_str().unwrap().starts_with("whsec_"));
    assert_eq!(created["disabled"], false);
    assert_eq!(created["tenant"], "acme");
    assert_eq!(created["filter_types"], json!(["invoice.*", "charge.paid"]));

    let (s, got) = call(
        "GET",
        &url(&format!("/v1/tenants/acme/endpoints/{id}")),
        admin,
        None,
    )
    .await;
    assert_eq!(s, 200);
    assert!(
        got.get("secret").is_none(),
        "the secret is shown only on create"
    );
    assert_eq!(got["url"], "https://hooks.example.com/gancho");

    let (s, list) = call("GET", &url("/v1/tenants/acme/endpoints"), admin, None).await;
    assert_eq!(s, 200);
    assert_eq!(list["data"].as_array().unwrap().len(), 1);

    let (s, patched) = call(
        "PATCH",
        &url(&format!("/v1/tenants/acme/endpoints/{id}")),
        admin,
        Some(r#"{"filter_types":[">"],"rate_limit_per_sec":null,"disabled":true}"#),
    )
    .await;
    assert_eq!(s, 200, "{patched}");
    assert_eq!(patched["filter_types"], json!([">"]));
    assert_eq!(patched["rate_limit_per_sec"], Value::Null);
    assert_eq!(
        patched["max_in_flight"], 8,
        "fields not in the patch are kept"
    );
    assert_eq!(patched["disabled"], true);

    // Validation says what to fix.
    let cases = [
        (
            json!({"url": "http://hooks.example.com/x"}),
            "GANCHO_ALLOW_HTTP_ENDPOINTS",
        ),
        (
            json!({"url": "https://10.0.0.5/hook"}),
            "GANCHO_ALLOW_PRIVATE_ENDPOINTS",
        ),
        (json!({"url": "not a url"}), "not a valid URL"),
        (
            json!({"url": "https://h.example.com", "filter_types": ["invoice..paid"]}),
            "empty token",
        ),
        (
            json!({"url": "https://h.example.com", "filter_types": [">.paid"]}),
            "may only end a filter",
        ),
        (
            json!({"url": "https://h.example.com", "timeout_ms": 120000}),
            "timeout_ms must be 1 to 30000",
        ),
        (
            json!({"url": "https://h.example.com", "profile": "soap"}),
            "profile \"soap\" is not supported",
        ),
        (
            json!({"url": "https://h.example.com", "headers": {"webhook-signature": "x"}}),
            "cannot be overridden",
        ),
        (
            json!({"url": "https://h.example.com", "secret": "abc"}),
            "whsec_",
        ),
        (
            json!({"url": "https://h.example.com", "retry_schedule": "0s,5x"}),
            "\"5x\"",
        ),
    ];
    for (body, want) in cases {
        let (s, v) = call(
            "POST",
            &url("/v1/tenants/acme/endpoints"),
            admin,
            Some(&body.to_string()),
        )
        .await;
        assert_eq!(s, 422, "{body} -> {v}");
        assert!(err_msg(&v).contains(want), "{body}: {v}");
    }
    let (s, v) = call(
        "POST",
        &url("/v1/tenants/acme/endpoints"),
        admin,
        Some(r#"{"url":"https://h.example.com","filters":[">"]}"#),
    )
    .await;
    assert_eq!(s, 400);
    assert!(
        err_msg(&v).contains("filters"),
        "unknown fields are named: {v}"
    );
    let (s, _) = call(
        "POST",
        &url("/v1/tenants/nobody/endpoints"),
        admin,
        Some(r#"{"url":"https://h.example.com"}"#),
    )
    .await;
    assert_eq!(s, 404);

    // Delete.
    let (s, _) = call(
        "DELETE",
        &url(&format!("/v1/tenants/acme/endpoints/{id}")),
        admin,
        None,
    )
    .await;
    assert_eq!(s, 204);
    let (s, _) = call(
        "GET",
        &url(&format!("/v1/tenants/acme/endpoints/{id}")),
        admin,
        None,
    )
    .await;
    assert_eq!(s, 404);
    let (s, _) = call("DELETE", &url("/v1/tenants/acme"), admin, None).await;
    assert_eq!(s, 204);
    let (s, _) = call("GET", &url("/v1/tenants/acme"), admin, None).await;
    assert_eq!(s, 404);

    // Health and metrics on the API role.
    let (s, _) = call("GET", &url("/healthz"), None, None).await;
    assert_eq!(s, 200);
}
