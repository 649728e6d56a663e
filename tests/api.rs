//! The config service over real HTTP: admin auth, tenants and endpoints CRUD, and errors that
//! say what to fix. The API runs as the built `gancho api` binary.
#![allow(
    clippy::too_many_lines,
    reason = "a test reads top to bottom: its set-up, its load and its checks in one place"
)]
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
        .env("GANCHO_ENCRYPTION_KEY", &env.key)
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
    assert_eq!(v["error"]["field"], "id", "a 422 names its field: {v}");
    let (s, v) = call("POST", &url("/v1/tenants"), admin, Some(r#"{"id":"#)).await;
    assert_eq!(s, 400);
    assert_eq!(v["error"]["code"], "bad_request");
    let (s, _) = call("GET", &url("/v1/tenants/acme"), admin, None).await;
    assert_eq!(s, 200);
    let (s, _) = call("GET", &url("/v1/tenants/nobody"), admin, None).await;
    assert_eq!(s, 404);

    // A tenant's weight: 1 by default, 1 to 100, changed by PATCH (admin only).
    let (_, v) = call("GET", &url("/v1/tenants/acme"), admin, None).await;
    assert_eq!(v["weight"], 1, "{v}");
    let (s, v) = call(
        "POST",
        &url("/v1/tenants"),
        admin,
        Some(r#"{"id":"gold","weight":0}"#),
    )
    .await;
    assert_eq!(s, 422);
    assert!(err_msg(&v).contains("weight must be from 1 to 100"), "{v}");
    assert_eq!(v["error"]["field"], "weight", "{v}");
    let (s, v) = call(
        "POST",
        &url("/v1/tenants"),
        admin,
        Some(r#"{"id":"gold","weight":3}"#),
    )
    .await;
    assert_eq!((s, v["weight"].as_u64()), (201, Some(3)), "{v}");
    let (s, v) = call(
        "PATCH",
        &url("/v1/tenants/gold"),
        admin,
        Some(r#"{"weight":101}"#),
    )
    .await;
    assert_eq!(s, 422);
    assert!(err_msg(&v).contains("got 101"), "{v}");
    let (s, v) = call(
        "PATCH",
        &url("/v1/tenants/gold"),
        admin,
        Some(r#"{"weight":5,"name":"Gold"}"#),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        (v["weight"].as_u64(), v["name"].as_str()),
        (Some(5), Some("Gold"))
    );
    let (_, v) = call("GET", &url("/v1/tenants/gold"), admin, None).await;
    assert_eq!(v["weight"], 5, "{v}");
    let (s, _) = call(
        "PATCH",
        &url("/v1/tenants/nobody"),
        admin,
        Some(r#"{"weight":2}"#),
    )
    .await;
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
        (
            json!({"url": "https://h.example.com", "retry_schedule": ["0s", "5x"]}),
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

/// PATCH, field by field: each one changes what it names and nothing else; each bad value is
/// refused with a message naming the field, and leaves the endpoint as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patch_changes_every_field_and_refuses_bad_values() {
    let env = support::Env::new().await;
    let api = start(&env).await;
    let admin = Some(TOKEN);
    let url = |p: &str| format!("{}/v1/tenants/acme{p}", api.base);
    let (s, _) = call(
        "POST",
        &format!("{}/v1/tenants", api.base),
        admin,
        Some(r#"{"id":"acme"}"#),
    )
    .await;
    assert_eq!(s, 201);
    let (s, created) = call(
        "POST",
        &url("/endpoints"),
        admin,
        Some(r#"{"url":"https://hooks.example.com/a","rate_limit_per_sec":5,"max_in_flight":4,"retry_schedule":"0s,1m"}"#),
    )
    .await;
    assert_eq!(s, 201, "{created}");
    let ep = url(&format!("/endpoints/{}", created["id"].as_str().unwrap()));

    // (patch, the field as read back afterwards)
    let good = [
        (
            json!({"url": "https://hooks.example.com/b"}),
            "url",
            json!("https://hooks.example.com/b"),
        ),
        (
            json!({"description": "billing"}),
            "description",
            json!("billing"),
        ),
        (
            json!({"filter_types": ["invoice.*", "charge.paid"]}),
            "filter_types",
            json!(["invoice.*", "charge.paid"]),
        ),
        (json!({"channels": ["pix"]}), "channels", json!(["pix"])),
        (
            json!({"rate_limit_per_sec": 50}),
            "rate_limit_per_sec",
            json!(50),
        ),
        (
            json!({"rate_limit_per_sec": null}),
            "rate_limit_per_sec",
            Value::Null,
        ),
        (json!({"max_in_flight": 16}), "max_in_flight", json!(16)),
        (json!({"max_in_flight": null}), "max_in_flight", Value::Null),
        (json!({"timeout_ms": 2500}), "timeout_ms", json!(2500)),
        (json!({"profile": "standard"}), "profile", json!("standard")),
        (
            json!({"headers": {"authorization": "Bearer t"}}),
            "headers",
            json!({"authorization": "Bearer t"}),
        ),
        (
            json!({"retry_schedule": "0s,5s,1h"}),
            "retry_schedule",
            json!("0s,5s,1h"),
        ),
        // A JSON list of delays, as a JSON API takes a list.
        (
            json!({"retry_schedule": ["0s", "30s", "2h"]}),
            "retry_schedule",
            json!("0s,30s,2h"),
        ),
        (json!({"disabled": true}), "disabled", json!(true)),
        (json!({"disabled": false}), "disabled", json!(false)),
        (json!({"paused": true}), "paused", json!(true)),
        (json!({"paused": false}), "paused", json!(false)),
    ];
    for (patch, field, want) in good {
        let (_, before) = call("GET", &ep, admin, None).await;
        let (s, after) = call("PATCH", &ep, admin, Some(&patch.to_string())).await;
        assert_eq!(s, 200, "{patch} -> {after}");
        assert_eq!(after.get(field).unwrap_or(&Value::Null), &want, "{patch}");
        let (_, read) = call("GET", &ep, admin, None).await;
        assert_eq!(
            read.get(field).unwrap_or(&Value::Null),
            &want,
            "{patch} read back"
        );
        for (k, v) in before.as_object().unwrap() {
            if !["updated_at", "paused_at", "held", field].contains(&k.as_str()) {
                assert_eq!(read.get(k), Some(v), "{patch} changed {k}");
            }
        }
    }
    // OpenAPI describes the list (a string is still taken).
    let (_, spec) = call("GET", &format!("{}/openapi.json", api.base), None, None).await;
    for schema in ["CreateEndpoint", "PatchEndpoint"] {
        let field = &spec["components"]["schemas"][schema]["properties"]["retry_schedule"];
        assert!(
            field.to_string().contains("\"array\""),
            "{schema}.retry_schedule is a list in OpenAPI: {field}"
        );
    }
    // A retry schedule reset to null is left out of the answer (the default applies).
    let (s, v) = call("PATCH", &ep, admin, Some(r#"{"retry_schedule":null}"#)).await;
    assert_eq!(s, 200);
    assert!(v.get("retry_schedule").is_none(), "{v}");

    // (patch, status, what the message must name)
    let bad = [
        (json!({"url": "ftp://x.example.com"}), 422, "https://"),
        (json!({"url": null}), 400, "url"),
        (json!({"url": "https://u:p@x.example.com/"}), 422, "headers"),
        (json!({"description": "x".repeat(1025)}), 422, "description"),
        (json!({"filter_types": ["a..b"]}), 422, "filter_types"),
        (json!({"filter_types": null}), 400, "filter_types"),
        (json!({"channels": ["no spaces"]}), 422, "channels"),
        (json!({"rate_limit_per_sec": 0}), 422, "rate_limit_per_sec"),
        (json!({"rate_limit_per_sec": -1}), 400, "rate_limit_per_sec"),
        (json!({"max_in_flight": 0}), 422, "max_in_flight"),
        (json!({"max_in_flight": 5000}), 422, "max_in_flight"),
        (json!({"timeout_ms": 0}), 422, "timeout_ms"),
        (json!({"timeout_ms": "1s"}), 400, "timeout_ms"),
        (json!({"profile": "soap"}), 422, "profile"),
        (json!({"headers": {"Webhook-Id": "x"}}), 422, "Webhook-Id"),
        (
            json!({"headers": {"connection": "close"}}),
            422,
            "connection",
        ),
        (json!({"retry_schedule": "0s,soon"}), 422, "retry_schedule"),
        (json!({"retry_schedule": ["0s", "soon"]}), 422, "\"soon\""),
        (json!({"retry_schedule": [5, 10]}), 400, "list of delays"),
        (
            json!({"retry_schedule": ["0s,5s"]}),
            400,
            "one delay per item",
        ),
        (json!({"disabled": "yes"}), 400, "disabled"),
        (json!({"paused": null}), 400, "paused"),
        (json!({"secret": "whsec_abc"}), 422, "secret/rotate"),
        (json!({"id": "other"}), 422, "id cannot be changed"),
        (json!({"filters": [">"]}), 400, "filters"),
    ];
    let (_, before) = call("GET", &ep, admin, None).await;
    for (patch, status, want) in bad {
        let (s, v) = call("PATCH", &ep, admin, Some(&patch.to_string())).await;
        assert_eq!(s, status, "{patch} -> {v}");
        assert!(err_msg(&v).contains(want), "{patch}: {v}");
        // A 422 names the field it is about, so a form can show it there.
        if status == 422 {
            let key = patch.as_object().unwrap().keys().next().unwrap();
            assert_eq!(v["error"]["field"], json!(key), "{patch}: {v}");
        }
    }
    let (_, after) = call("GET", &ep, admin, None).await;
    assert_eq!(before, after, "a refused PATCH changed the endpoint");
    let (s, _) = call(
        "PATCH",
        &url("/endpoints/ep_nobody"),
        admin,
        Some(r#"{"paused":true}"#),
    )
    .await;
    assert_eq!(s, 404);
}

/// 100 PATCHes of one endpoint at once, half changing its description and half its timeout:
/// every one applies, each on top of the others (the API tries its compare-and-set again
/// instead of answering 409), and the endpoint ends with one of each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_patches_of_one_endpoint_all_apply() {
    let env = support::Env::new().await;
    let api = start(&env).await;
    let admin = Some(TOKEN);
    let (s, _) = call(
        "POST",
        &format!("{}/v1/tenants", api.base),
        admin,
        Some(r#"{"id":"acme"}"#),
    )
    .await;
    assert_eq!(s, 201);
    let (s, created) = call(
        "POST",
        &format!("{}/v1/tenants/acme/endpoints", api.base),
        admin,
        Some(r#"{"url":"https://hooks.example.com/a","description":"before","timeout_ms":500}"#),
    )
    .await;
    assert_eq!(s, 201, "{created}");
    let ep = format!(
        "{}/v1/tenants/acme/endpoints/{}",
        api.base,
        created["id"].as_str().unwrap()
    );
    let answers = futures::future::join_all((0..100).map(|i| {
        let body = match i % 2 {
            0 => json!({ "description": format!("d{i}") }),
            _ => json!({ "timeout_ms": 1000 + i }),
        }
        .to_string();
        let ep = ep.clone();
        async move { call("PATCH", &ep, admin, Some(&body)).await }
    }))
    .await;
    let refused: Vec<&(u16, Value)> = answers.iter().filter(|(s, _)| *s != 200).collect();
    assert!(
        refused.is_empty(),
        "{} of 100 concurrent PATCHes refused, e.g. {:?}",
        refused.len(),
        refused.first()
    );
    let (_, read) = call("GET", &ep, admin, None).await;
    let description = read["description"].as_str().unwrap();
    let timeout = read["timeout_ms"].as_u64().unwrap();
    assert!(
        description.starts_with('d') && (1001..1100).contains(&timeout),
        "the endpoint holds one of the new descriptions and one of the new timeouts: {read}"
    );
}
