//! The audit log over real HTTP, with `gancho api` as the built binary: every kind of change
//! appears once with who made it (the admin token, an API key, a portal session and the key
//! that minted it), a refused change does not appear, the log is read per tenant with
//! filters and across tenants by the admin only, it outlives its tenant, and nothing secret
//! reaches the stream's files.
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

    /// `method path` with `token`, which must succeed.
    async fn ok(&self, token: &str, method: &str, path: &str, body: Option<Value>) -> Value {
        let (status, v) = self.call(method, path, token, body).await;
        assert!(
            (200..300).contains(&status),
            "{method} {path}: {status} {v}"
        );
        v
    }

    /// Every record of `path`'s log, oldest first, following the pages.
    async fn log(&self, token: &str, path: &str) -> Vec<Value> {
        let mut all = Vec::new();
        let mut cursor = String::new();
        loop {
            let sep = if path.contains('?') { '&' } else { '?' };
            let v = self
                .ok(token, "GET", &format!("{path}{sep}limit=7{cursor}"), None)
                .await;
            all.extend(v["data"].as_array().unwrap().iter().cloned());
            match v["next"].as_str() {
                Some(next) => cursor = format!("&cursor={next}"),
                None => break,
            }
        }
        all.reverse();
        all
    }
}

/// (resource, resource id, action, actor) of each record.
fn rows(records: &[Value]) -> Vec<(String, String, String, String)> {
    records
        .iter()
        .map(|r| {
            let a = &r["actor"];
            let mut who = a["id"]
                .as_str()
                .unwrap_or(a["kind"].as_str().unwrap())
                .to_owned();
            if let Some(by) = a["minted_by"]["id"].as_str() {
                who = format!("{who} by {by}");
            }
            (
                r["resource"].as_str().unwrap().to_owned(),
                r["resource_id"].as_str().unwrap().to_owned(),
                r["action"].as_str().unwrap().to_owned(),
                who,
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_change_is_recorded_once_with_who_made_it_and_nothing_secret() {
    let env = support::Env::new().await;
    let (child, base) = env
        .spawn_api_with(TOKEN, &[("GANCHO_PORTAL_PUBLIC_URL", PUBLIC)])
        .await;
    let api = Api { base, child };
    let t = "/v1/tenants/acme";
    api.ok(TOKEN, "POST", "/v1/tenants", Some(json!({"id": "acme"})))
        .await;
    api.ok(TOKEN, "POST", "/v1/tenants", Some(json!({"id": "globex"})))
        .await;
    let key = api
        .ok(
            TOKEN,
            "POST",
            &format!("{t}/api-keys"),
            Some(json!({"name": "ops", "scopes": ["manage"]})),
        )
        .await;
    let (key_id, key) = (
        key["id"].as_str().unwrap().to_owned(),
        key["key"].as_str().unwrap().to_owned(),
    );
    let spare = api
        .ok(
            TOKEN,
            "POST",
            &format!("{t}/api-keys"),
            Some(json!({"name": "spare", "scopes": ["read"]})),
        )
        .await;
    let (spare_id, reader) = (
        spare["id"].as_str().unwrap().to_owned(),
        spare["key"].as_str().unwrap().to_owned(),
    );

    // The secrets a record must never hold.
    let (token_value, header_value, query_value) =
        ("tok-s3cret-0001", "hdr-s3cret-0002", "qry-s3cret-0003");
    let ep = api
        .ok(
            &key,
            "POST",
            &format!("{t}/endpoints"),
            Some(json!({
                "id": "ep1",
                "url": format!("https://hooks.example.com/in?sig={query_value}"),
                "profile": "token",
                "token": {"header": "x-partner-token", "value": token_value},
                "headers": {"x-partner-auth": header_value},
            })),
        )
        .await;
    let first_secret = ep["secret"].as_str().unwrap().to_owned();
    let e = format!("{t}/endpoints/ep1");
    api.ok(
        &key,
        "PATCH",
        &e,
        Some(json!({"description": "payments", "rate_limit_per_sec": 50})),
    )
    .await;
    api.ok(&key, "POST", &format!("{e}/pause"), None).await;
    api.ok(&key, "POST", &format!("{e}/resume"), None).await;
    let rotated = api
        .ok(&key, "POST", &format!("{e}/secret/rotate"), Some(json!({})))
        .await;
    let second_secret = rotated["secret"].as_str().unwrap().to_owned();
    api.ok(&key, "PATCH", &e, Some(json!({"disabled": true})))
        .await;
    api.ok(&key, "PATCH", &e, Some(json!({"disabled": false})))
        .await;
    // Refused: nothing changed, nothing recorded.
    let (status, _) = api
        .call("PATCH", &e, &key, Some(json!({"url": "ftp://nowhere"})))
        .await;
    assert_eq!(status, 422);
    let (status, _) = api
        .call("PATCH", &e, &reader, Some(json!({"description": "no"})))
        .await;
    assert_eq!(status, 403);

    let et = format!("{t}/event-types/charge.paid");
    api.ok(
        &key,
        "PUT",
        &et,
        Some(json!({"description": "a charge was paid"})),
    )
    .await;
    api.ok(
        &key,
        "PUT",
        &et,
        Some(json!({"description": "a charge was paid in full"})),
    )
    .await;
    api.ok(&key, "DELETE", &et, None).await;

    // A portal session minted by the key makes a change of its own.
    let minted = api
        .ok(
            &key,
            "POST",
            &format!("{t}/portal-sessions"),
            Some(json!({"scope": "manage", "ttl": "15m"})),
        )
        .await;
    let session_id = minted["id"].as_str().unwrap().to_owned();
    let link = minted["url"].as_str().unwrap();
    let link_token = link.strip_prefix(&format!("{PUBLIC}/portal/#t=")).unwrap();
    let (status, opened) = http(
        "POST",
        &format!("{}/portal/session", api.base),
        None,
        Some(&json!({"token": link_token}).to_string()),
    )
    .await;
    assert_eq!(status, 201, "{opened}");
    let session = opened["session"].as_str().unwrap().to_owned();
    api.ok(
        &session,
        "PATCH",
        &e,
        Some(json!({"description": "from the portal"})),
    )
    .await;

    // Jobs: started by the key, one cancelled by the admin while it runs (a slow replay over
    // events that are there to read).
    env.publish_many(
        "acme",
        "charge.paid",
        (0..30).map(|i| (format!("evt-{i}"), b"{}".to_vec())),
    )
    .await;
    let since = "2020-01-01T00:00:00Z";
    let recover = api
        .ok(
            &key,
            "POST",
            &format!("{e}/recover"),
            Some(json!({"since": since})),
        )
        .await;
    let replay = api
        .ok(
            &key,
            "POST",
            &format!("{e}/replay"),
            Some(json!({"since": since, "pace": 1})),
        )
        .await;
    let redrive = api
        .ok(
            &key,
            "POST",
            &format!("{t}/dead-letters/redrive"),
            Some(json!({})),
        )
        .await;
    let replay_id = replay["id"].as_str().unwrap().to_owned();
    api.ok(TOKEN, "DELETE", &format!("{t}/jobs/{replay_id}"), None)
        .await;

    api.ok(
        TOKEN,
        "DELETE",
        &format!("{t}/portal-sessions/{session_id}"),
        None,
    )
    .await;
    api.ok(TOKEN, "DELETE", &format!("{t}/api-keys/{spare_id}"), None)
        .await;
    api.ok(
        TOKEN,
        "PATCH",
        t,
        Some(json!({"api_rate_limit_per_sec": 20})),
    )
    .await;
    api.ok(&key, "DELETE", &e, None).await;
    // Another tenant's change, which acme's log must not show.
    api.ok(
        TOKEN,
        "PATCH",
        "/v1/tenants/globex",
        Some(json!({"api_rate_limit_per_sec": 30})),
    )
    .await;

    let by_session = format!("{session_id} by {key_id}");
    let job = |v: &Value| v["id"].as_str().unwrap().to_owned();
    let want: Vec<(String, String, &str, &str)> = vec![
        ("tenant".into(), "acme".into(), "created", "admin"),
        ("api_key".into(), key_id.clone(), "created", "admin"),
        ("api_key".into(), spare_id.clone(), "created", "admin"),
        ("endpoint".into(), "ep1".into(), "created", &key_id),
        ("endpoint".into(), "ep1".into(), "updated", &key_id),
        ("endpoint".into(), "ep1".into(), "paused", &key_id),
        ("endpoint".into(), "ep1".into(), "resumed", &key_id),
        ("endpoint".into(), "ep1".into(), "secret_rotated", &key_id),
        ("endpoint".into(), "ep1".into(), "disabled", &key_id),
        ("endpoint".into(), "ep1".into(), "enabled", &key_id),
        (
            "event_type".into(),
            "charge.paid".into(),
            "created",
            &key_id,
        ),
        (
            "event_type".into(),
            "charge.paid".into(),
            "updated",
            &key_id,
        ),
        (
            "event_type".into(),
            "charge.paid".into(),
            "deleted",
            &key_id,
        ),
        (
            "portal_session".into(),
            session_id.clone(),
            "minted",
            &key_id,
        ),
        ("endpoint".into(), "ep1".into(), "updated", &by_session),
        ("job".into(), job(&recover), "recover", &key_id),
        ("job".into(), replay_id.clone(), "replay", &key_id),
        ("job".into(), job(&redrive), "redrive", &key_id),
        ("job".into(), replay_id.clone(), "cancelled", "admin"),
        (
            "portal_session".into(),
            session_id.clone(),
            "ended",
            "admin",
        ),
        ("api_key".into(), spare_id.clone(), "revoked", "admin"),
        ("tenant".into(), "acme".into(), "updated", "admin"),
        ("endpoint".into(), "ep1".into(), "deleted", &key_id),
    ];
    let want: Vec<(String, String, String, String)> = want
        .into_iter()
        .map(|(r, id, a, who)| (r, id, a.to_owned(), who.to_owned()))
        .collect();
    let log = api.log(&key, &format!("{t}/audit-log")).await;
    assert_eq!(rows(&log), want);
    // What each change set, by name only; the request that made it.
    let patched = &log[4];
    assert_eq!(
        patched["fields"],
        json!(["description", "rate_limit_per_sec"])
    );
    assert_eq!(
        patched["request"],
        json!("PATCH /v1/tenants/acme/endpoints/ep1")
    );
    assert_eq!(
        log[3]["fields"],
        json!(["headers", "id", "profile", "token", "url"])
    );
    assert_eq!(log[0]["actor"], json!({"kind": "admin"}));
    assert_eq!(
        log[14]["actor"],
        json!({"kind": "portal_session", "id": session_id, "minted_by": {"kind": "api_key", "id": key_id}})
    );

    // Filters: a resource, an actor, a time range.
    let endpoints = api
        .log(&key, &format!("{t}/audit-log?resource=endpoint"))
        .await;
    assert_eq!(endpoints.len(), 9);
    let by_admin = api.log(&key, &format!("{t}/audit-log?actor=admin")).await;
    assert_eq!(by_admin.len(), 7, "{:?}", rows(&by_admin));
    let by_session_only = api
        .log(&key, &format!("{t}/audit-log?actor={session_id}"))
        .await;
    assert_eq!(by_session_only.len(), 1);
    let future = api
        .log(&key, &format!("{t}/audit-log?since=2999-01-01T00:00:00Z"))
        .await;
    assert!(future.is_empty(), "{:?}", rows(&future));
    let until_later = api
        .log(&key, &format!("{t}/audit-log?until=2999-01-01T00:00:00Z"))
        .await;
    assert_eq!(until_later.len(), want.len());
    let (status, v) = api
        .call(
            "GET",
            &format!("{t}/audit-log?resource=widgets"),
            &key,
            None,
        )
        .await;
    assert_eq!(status, 400, "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("endpoint"),
        "{v}"
    );

    // Another tenant's key sees nothing of acme's; only the admin reads every tenant's.
    let globex_key = api
        .ok(
            TOKEN,
            "POST",
            "/v1/tenants/globex/api-keys",
            Some(json!({"name": "g", "scopes": ["read"]})),
        )
        .await["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, _) = api
        .call("GET", &format!("{t}/audit-log"), &globex_key, None)
        .await;
    assert_eq!(status, 404);
    let (status, _) = api.call("GET", "/v1/audit-log", &key, None).await;
    assert_eq!(status, 403);
    let everything = api.log(TOKEN, "/v1/audit-log").await;
    let globex_rows = everything
        .iter()
        .filter(|r| r["tenant"] == "globex")
        .count();
    assert_eq!(globex_rows, 3, "globex: created, updated, its key created");
    assert_eq!(everything.len(), want.len() + globex_rows);

    // The log outlives its tenant.
    api.ok(TOKEN, "DELETE", t, None).await;
    let after = api.log(TOKEN, &format!("{t}/audit-log")).await;
    assert_eq!(after.len(), want.len() + 1);
    assert_eq!(
        rows(&after[want.len()..]),
        [(
            "tenant".into(),
            "acme".into(),
            "deleted".into(),
            "admin".into()
        )]
    );

    // Nothing secret reaches the stream's files, while what is recorded does.
    let stream_dir = find_dir(env.nats.store_dir(), &env.layout.subjects.audit_stream())
        .expect("the audit stream's directory in the server's store");
    let mut bytes = Vec::new();
    collect(&stream_dir, &mut bytes);
    let text = String::from_utf8_lossy(&bytes);
    assert!(text.contains(&key_id), "the records are in these files");
    for secret in [
        token_value,
        header_value,
        query_value,
        &first_secret,
        &second_secret,
        &key,
        &session,
        link_token,
    ] {
        assert!(
            !text.contains(secret),
            "a secret in the audit stream's files"
        );
    }
    // Nobody removes a record: the stream refuses purges.
    let purged = env
        .js
        .get_stream(env.layout.subjects.audit_stream())
        .await
        .unwrap()
        .purge()
        .await;
    assert!(purged.is_err(), "the audit stream let itself be purged");
}

/// The directory named `name` under `root`.
fn find_dir(root: &std::path::Path, name: &str) -> Option<std::path::PathBuf> {
    for entry in std::fs::read_dir(root).ok()?.flatten() {
        let path = entry.path();
        if path.is_dir() {
            if path.file_name().is_some_and(|n| n == name) {
                return Some(path);
            }
            if let Some(found) = find_dir(&path, name) {
                return Some(found);
            }
        }
    }
    None
}

/// Every file's bytes under `dir`.
fn collect(dir: &std::path::Path, out: &mut Vec<u8>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect(&path, out);
        } else {
            out.extend(std::fs::read(&path).unwrap_or_default());
        }
    }
}

/// A read-scope key reads its tenant's log; a change it is refused is not in it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_key_reads_the_log_and_cannot_change_anything() {
    let env = support::Env::new().await;
    let (child, base) = env.spawn_api_with(TOKEN, &[]).await;
    let api = Api { base, child };
    api.ok(TOKEN, "POST", "/v1/tenants", Some(json!({"id": "acme"})))
        .await;
    let reader = api
        .ok(
            TOKEN,
            "POST",
            "/v1/tenants/acme/api-keys",
            Some(json!({"name": "support", "scopes": ["read"]})),
        )
        .await["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, _) = api
        .call(
            "POST",
            "/v1/tenants/acme/endpoints",
            &reader,
            Some(json!({"url": "https://hooks.example.com/a"})),
        )
        .await;
    assert_eq!(status, 403);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let log = api.log(&reader, "/v1/tenants/acme/audit-log").await;
    assert_eq!(
        rows(&log)
            .into_iter()
            .map(|r| (r.0, r.2))
            .collect::<Vec<_>>(),
        [
            ("tenant".into(), "created".into()),
            ("api_key".into(), "created".into())
        ]
    );
    // The CLI prints the same, who made each change in one column.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gancho"))
        .args(["audit", "list", "--tenant", "acme"])
        .env("GANCHO_API_URL", &api.base)
        .env("GANCHO_TOKEN", &reader)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].starts_with("AT") && lines[0].contains("BY"),
        "{text}"
    );
    assert!(
        lines[1].contains("admin") && lines[1].contains("api_key") && lines[1].contains("created"),
        "{text}"
    );
    assert!(
        lines[2].contains("tenant") && lines[2].contains("acme"),
        "{text}"
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gancho"))
        .args(["audit", "list"])
        .env("GANCHO_API_URL", &api.base)
        .env("GANCHO_TOKEN", &reader)
        .output()
        .unwrap();
    assert!(!out.status.success(), "a key read every tenant's log");
}

/// A change whose audit record was not stored when it was made (the audit stream is gone for
/// the moment, so JetStream refuses the record) and whose api is then SIGKILLed, as if it
/// died between the change and its record, is recorded by the next api's catch-up at
/// start-up, with who made it; a change that was refused is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_whose_api_died_before_its_record_is_recorded_after_restart() {
    let env = support::Env::new().await;
    let (child, base) = env.spawn_api_with(TOKEN, &[]).await;
    let mut api = Api { base, child };
    api.ok(TOKEN, "POST", "/v1/tenants", Some(json!({"id": "acme"})))
        .await;
    let key = api
        .ok(
            TOKEN,
            "POST",
            "/v1/tenants/acme/api-keys",
            Some(json!({"name": "ops", "scopes": ["manage"]})),
        )
        .await;
    let (key_id, key) = (
        key["id"].as_str().unwrap().to_owned(),
        key["key"].as_str().unwrap().to_owned(),
    );
    env.js
        .delete_stream(env.layout.subjects.audit_stream())
        .await
        .unwrap();
    // Made (answered 2xx), their records refused.
    api.ok(
        &key,
        "POST",
        "/v1/tenants/acme/endpoints",
        Some(json!({"id": "ep1", "url": "https://hooks.example.com/a"})),
    )
    .await;
    let made = api
        .ok(
            TOKEN,
            "POST",
            "/v1/tenants/acme/api-keys",
            Some(json!({"name": "ci", "scopes": ["read"]})),
        )
        .await;
    let (status, _) = api
        .call(
            "POST",
            "/v1/tenants/acme/api-keys",
            &key,
            Some(json!({"name": "x", "scopes": ["read"]})),
        )
        .await;
    assert_eq!(status, 403, "a manage key may not make keys");
    api.ok(&key, "POST", "/v1/tenants/acme/endpoints/ep1/pause", None)
        .await;
    support::kill9(&mut api.child);
    // Its entry among the live api processes expires (6 s); a new api settles its changes at
    // start-up.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let (child, base) = env.spawn_api_with(TOKEN, &[]).await;
    let api = Api { base, child };
    let mut log = Vec::new();
    for _ in 0..100 {
        log = api.log(TOKEN, "/v1/tenants/acme/audit-log").await;
        if log.len() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let made_id = made["id"].as_str().unwrap().to_owned();
    assert_eq!(
        rows(&log),
        [
            (
                "endpoint".into(),
                "ep1".into(),
                "created".into(),
                key_id.clone()
            ),
            ("api_key".into(), made_id, "created".into(), "admin".into()),
            (
                "endpoint".into(),
                "ep1".into(),
                "paused".into(),
                key_id.clone()
            ),
        ]
    );
    assert_eq!(log[0]["fields"], json!(["id", "url"]));
    // Settled: nothing is left under way, and a second pass writes nothing again.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let again = api.log(TOKEN, "/v1/tenants/acme/audit-log").await;
    assert_eq!(again.len(), 3);
}
