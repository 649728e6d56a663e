//! `gancho tenants|api-keys|portal|endpoints|events|attempts|dead-letters|jobs ...`: the config API from a shell. Aligned tables for
//! people, `--json` for scripts; an API error prints the API's message and exits 1.

use anyhow::{bail, Context as _};
use bytes::Bytes;
use clap::{Args, Subcommand};
use http_body_util::{BodyExt, Full};
use serde_json::{json, Value};

#[derive(Args, Debug, Clone)]
pub struct Conn {
    /// Base URL of the config API.
    #[arg(
        long,
        env = "GANCHO_API_URL",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    api_url: String,
    /// Bearer token: the admin token or a tenant's API key.
    #[arg(long, env = "GANCHO_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// Print the API's JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Args, Debug)]
pub struct Tenants {
    #[command(flatten)]
    conn: Conn,
    #[command(subcommand)]
    cmd: TenantsCmd,
}

#[derive(Subcommand, Debug)]
enum TenantsCmd {
    /// Create a tenant. Example: gancho tenants create acme --name "Acme Pagamentos"
    Create {
        id: String,
        #[arg(long, default_value = "")]
        name: String,
        /// Its share against other tenants with a backlog, 1 to 100 (a tenant alone gets
        /// all the capacity whatever its weight).
        #[arg(long, default_value_t = 1)]
        weight: u32,
    },
    /// Change a tenant's name, weight or rate limits. Example: gancho tenants update acme
    /// --weight 3 --ingest-rate-limit 500
    Update {
        id: String,
        #[arg(long)]
        name: Option<String>,
        /// 1 to 100.
        #[arg(long)]
        weight: Option<u32>,
        /// Requests a second per API key or portal session of this tenant, 1 to 100000, or
        /// `default` for the api's GANCHO_API_RATE_LIMIT.
        #[arg(long)]
        api_rate_limit: Option<String>,
        /// Events a second through HTTP ingest, 1 to 100000, or `none` for no limit.
        #[arg(long)]
        ingest_rate_limit: Option<String>,
    },
    /// List tenants, a page at a time. Example: gancho tenants list --limit 50
    List(PageArgs),
    /// Show one tenant. Example: gancho tenants get acme
    Get { id: String },
    /// Delete a tenant with its endpoints and API keys. Example: gancho tenants delete acme
    Delete { id: String },
}

#[derive(Args, Debug)]
pub struct Portal {
    #[command(flatten)]
    conn: Conn,
    #[command(subcommand)]
    cmd: PortalCmd,
}

#[derive(Subcommand, Debug)]
enum PortalCmd {
    /// Mint a one-time portal link for a tenant; its URL is the last line printed. It must be
    /// opened within 10 minutes, once.
    /// Example: gancho portal link --tenant acme --read-only --ttl 15m
    Link {
        #[arg(long)]
        tenant: String,
        /// A session that can look at everything and change or send nothing.
        #[arg(long)]
        read_only: bool,
        /// How long the session lasts once the link is opened, 1m to 24h.
        #[arg(long, default_value = "1h")]
        ttl: String,
    },
    /// End a portal session (or a link not opened yet) by its id.
    /// Example: gancho portal end --tenant acme ps_abc
    End {
        #[arg(long)]
        tenant: String,
        id: String,
    },
}

pub async fn portal(p: Portal) -> anyhow::Result<()> {
    let c = &p.conn;
    match p.cmd {
        PortalCmd::Link {
            tenant,
            read_only,
            ttl,
        } => {
            let scope = if read_only { "read" } else { "manage" };
            let body = json!({"scope": scope, "ttl": ttl});
            let v = call(
                c,
                "POST",
                &format!("/v1/tenants/{tenant}/portal-sessions"),
                Some(body),
            )
            .await?;
            if c.json {
                println!("{v}");
            } else {
                println!(
                    "A {scope} session of tenant {tenant} for {ttl}, id {}; open the link by {} (once):",
                    cell(&v["id"]),
                    cell(&v["expires_at"])
                );
                println!("{}", cell(&v["url"]));
            }
        }
        PortalCmd::End { tenant, id } => {
            call(
                c,
                "DELETE",
                &format!("/v1/tenants/{tenant}/portal-sessions/{id}"),
                None,
            )
            .await?;
            done(c, &format!("Ended portal session {id}."));
        }
    }
    Ok(())
}

#[derive(Args, Debug)]
pub struct ApiKeys {
    #[command(flatten)]
    conn: Conn,
    #[command(subcommand)]
    cmd: ApiKeysCmd,
}

#[derive(Subcommand, Debug)]
enum ApiKeysCmd {
    /// Create a key for a tenant; the key is printed once.
    /// Example: gancho api-keys create --tenant acme --name billing --scopes manage,publish
    Create {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        name: String,
        /// Comma-separated: manage (the tenant's endpoints, event types, delivery log and
        /// recovery), read (only reading those: for support people), publish (sending events).
        #[arg(long, value_delimiter = ',', required = true)]
        scopes: Vec<String>,
    },
    /// List a tenant's keys (never the keys themselves). Example: gancho api-keys list --tenant acme
    List {
        #[arg(long)]
        tenant: String,
        #[command(flatten)]
        page: PageArgs,
    },
    /// Revoke a key: refused everywhere within seconds. Example: gancho api-keys revoke --tenant acme key_...
    Revoke {
        #[arg(long)]
        tenant: String,
        id: String,
    },
}

#[derive(Args, Debug)]
pub struct Events {
    #[command(flatten)]
    conn: Conn,
    #[command(subcommand)]
    cmd: EventsCmd,
}

#[derive(Subcommand, Debug)]
enum EventsCmd {
    /// Send one event over HTTP (needs a key with the publish scope, or the admin token), or
    /// every line of a JSON-lines file in batches of 500, with a progress bar.
    /// Example: gancho events send --tenant acme --type charge.paid --data '{"amount":1990}'
    /// Example: gancho events send --tenant acme --file events.jsonl
    Send {
        #[arg(long)]
        tenant: String,
        /// Dotted event type, e.g. charge.paid.
        #[arg(long = "type", required_unless_present = "file")]
        event_type: Option<String>,
        /// The payload: a JSON object or array.
        #[arg(long, required_unless_present = "file")]
        data: Option<String>,
        /// The event's id (default: generated); the same id again is delivered once.
        #[arg(long)]
        id: Option<String>,
        /// A JSON-lines file, one event per line: {"id"?, "type", "data", ...}.
        #[arg(long, conflicts_with_all = ["event_type", "data", "id"])]
        file: Option<std::path::PathBuf>,
    },
    /// What happened to one event: each endpoint's delivery, its state (delivered, retrying,
    /// dead, in_progress) and every attempt with its status.
    /// Example: gancho events get --tenant acme inv-2026-0001
    Get {
        #[arg(long)]
        tenant: String,
        /// The event's id.
        id: String,
    },
}

#[derive(Args, Debug)]
pub struct EventTypes {
    #[command(flatten)]
    conn: Conn,
    #[command(subcommand)]
    cmd: EventTypesCmd,
}

#[derive(Subcommand, Debug)]
enum EventTypesCmd {
    /// Create or replace an event type, with a JSON Schema its payloads must meet.
    /// Example: gancho event-types put --tenant acme charge.paid --schema charge-paid.schema.json
    Put {
        #[arg(long)]
        tenant: String,
        name: String,
        #[arg(long, default_value = "")]
        description: String,
        /// A file holding a JSON Schema (draft 2020-12).
        #[arg(long)]
        schema: Option<std::path::PathBuf>,
        /// A file holding an example payload (checked against the schema).
        #[arg(long)]
        example: Option<std::path::PathBuf>,
        #[arg(long)]
        archived: bool,
    },
    /// Show one. Example: gancho event-types get --tenant acme charge.paid
    Get {
        #[arg(long)]
        tenant: String,
        name: String,
    },
    /// List a tenant's event types. Example: gancho event-types list --tenant acme
    List {
        #[arg(long)]
        tenant: String,
        #[command(flatten)]
        page: PageArgs,
    },
    /// Delete one; its schema stops applying. Example: gancho event-types delete --tenant acme charge.paid
    Delete {
        #[arg(long)]
        tenant: String,
        name: String,
    },
}

fn read_json(path: &std::path::Path) -> anyhow::Result<Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))
}

pub async fn event_types(a: EventTypes) -> anyhow::Result<()> {
    let c = &a.conn;
    match a.cmd {
        EventTypesCmd::Put {
            tenant,
            name,
            description,
            schema,
            example,
            archived,
        } => {
            let mut body = json!({"description": description, "archived": archived});
            if let Some(p) = schema {
                body["schema"] = read_json(&p)?;
            }
            if let Some(p) = example {
                body["example"] = read_json(&p)?;
            }
            let path = format!("/v1/tenants/{tenant}/event-types/{name}");
            show(c, &call(c, "PUT", &path, Some(body)).await?);
        }
        EventTypesCmd::Get { tenant, name } => {
            let path = format!("/v1/tenants/{tenant}/event-types/{name}");
            show(c, &call(c, "GET", &path, None).await?);
        }
        EventTypesCmd::List { tenant, page } => {
            let path = format!("/v1/tenants/{tenant}/event-types{}", page.query());
            let v = call(c, "GET", &path, None).await?;
            table(c, &v, &["name", "description", "archived", "updated_at"]);
        }
        EventTypesCmd::Delete { tenant, name } => {
            let path = format!("/v1/tenants/{tenant}/event-types/{name}");
            call(c, "DELETE", &path, None).await?;
            done(c, &format!("Deleted event type {name}."));
        }
    }
    Ok(())
}

/// Events per batch request when sending a file.
const SEND_BATCH: usize = 500;

#[allow(
    clippy::too_many_lines,
    reason = "one match arm per `gancho events` subcommand, each a request and its print"
)]
pub async fn events(a: Events) -> anyhow::Result<()> {
    let c = &a.conn;
    let (tenant, event_type, data, id, file) = match a.cmd {
        EventsCmd::Get { tenant, id } => {
            let v = call(c, "GET", &format!("/v1/tenants/{tenant}/events/{id}"), None).await?;
            show_event(c, &v);
            return Ok(());
        }
        EventsCmd::Send {
            tenant,
            event_type,
            data,
            id,
            file,
        } => (tenant, event_type, data, id, file),
    };
    let path = format!("/v1/tenants/{tenant}/events");
    let Some(file) = file else {
        let data: Value = serde_json::from_str(data.as_deref().unwrap_or_default())
            .context("--data is not JSON")?;
        let mut body = json!({"type": event_type, "data": data});
        if let Some(id) = id {
            body["id"] = json!(id);
        }
        let v = call(c, "POST", &path, Some(body)).await?;
        show(c, &v);
        return Ok(());
    };
    let text = std::fs::read_to_string(&file)
        .with_context(|| format!("cannot read {}", file.display()))?;
    let mut events = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let ev: Value = serde_json::from_str(line)
            .with_context(|| format!("{} line {}: not JSON", file.display(), n + 1))?;
        events.push((n + 1, ev));
    }
    let bar = if c.json {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(events.len() as u64)
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} events  {per_sec}  {msg}")
            .expect("a valid template"),
    );
    let mut counts = std::collections::BTreeMap::<String, usize>::new();
    let mut problems = Vec::new();
    for chunk in events.chunks(SEND_BATCH) {
        let body = json!({"events": chunk.iter().map(|(_, e)| e).collect::<Vec<_>>()});
        let v = call(c, "POST", &format!("{path}/batch"), Some(body)).await?;
        for ((line, _), r) in chunk
            .iter()
            .zip(v["results"].as_array().into_iter().flatten())
        {
            let status = r["status"].as_str().unwrap_or("unknown").to_owned();
            if let Some(e) = r["error"].as_str() {
                problems.push(format!("line {line}: {status}: {e}"));
            }
            *counts.entry(status).or_default() += 1;
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    if c.json {
        println!("{}", json!({"counts": counts, "problems": problems}));
    } else {
        let summary: Vec<String> = counts.iter().map(|(k, v)| format!("{k} {v}")).collect();
        println!("{}", summary.join(", "));
        for p in &problems {
            eprintln!("{p}");
        }
    }
    if !problems.is_empty() {
        bail!(
            "{} event(s) not accepted; fix the invalid ones, send the unavailable ones again (same ids are safe)",
            problems.len()
        );
    }
    Ok(())
}

/// One event's deliveries, each with its state and an attempts table.
fn show_event(c: &Conn, v: &Value) {
    if c.json {
        println!("{v}");
        return;
    }
    println!("event {}  type {}", cell(&v["id"]), cell(&v["type"]));
    for d in v["deliveries"].as_array().into_iter().flatten() {
        let mut head = format!(
            "\nendpoint {}  state {}",
            cell(&d["endpoint_id"]),
            cell(&d["state"])
        );
        if let Some(t) = d["next_attempt_at"].as_str() {
            head.push_str(&format!("  next attempt {t}"));
        }
        println!("{head}");
        table(
            c,
            &json!({"data": d["attempts"]}),
            &["attempt", "at", "status", "latency_ms", "outcome", "error"],
        );
        if d["dead_letter"].is_object() {
            println!(
                "dead letter: {}: {}",
                cell(&d["dead_letter"]["kind"]),
                cell(&d["dead_letter"]["reason"])
            );
        }
    }
    for dl in v["dead_letters"].as_array().into_iter().flatten() {
        println!(
            "\nnot routed: {}: {}",
            cell(&dl["kind"]),
            cell(&dl["reason"])
        );
    }
}

#[derive(Args, Debug)]
pub struct Attempts {
    #[command(flatten)]
    conn: Conn,
    #[command(subcommand)]
    cmd: AttemptsCmd,
}

#[derive(Subcommand, Debug)]
enum AttemptsCmd {
    /// The delivery log, newest first: every attempt with its status, latency and outcome, of
    /// one endpoint or of the whole tenant. Example: gancho attempts list --tenant acme
    /// --endpoint ep_1 --status 5xx
    List {
        #[arg(long)]
        tenant: String,
        /// Only this endpoint's attempts; without it, every endpoint's of the tenant.
        #[arg(long)]
        endpoint: Option<String>,
        /// A status class (2xx, 3xx, 4xx, 5xx), a code (503), or none (no answer).
        #[arg(long)]
        status: Option<String>,
        /// success, http_error, timeout, connect_error, tls_error, request_error, blocked or
        /// proxy_error.
        #[arg(long)]
        outcome: Option<String>,
        /// Only attempts at or after this time (RFC 3339).
        #[arg(long)]
        since: Option<String>,
        /// Only attempts before this time (RFC 3339).
        #[arg(long)]
        until: Option<String>,
        #[arg(long)]
        limit: Option<u32>,
        /// Where the page starts: the value printed after "More:".
        #[arg(long)]
        cursor: Option<String>,
        /// Print the newest 10, then every new attempt as it happens (Ctrl-C stops).
        #[arg(long, conflicts_with_all = ["cursor", "until"])]
        follow: bool,
    },
}

#[derive(Args, Debug)]
pub struct DeadLetters {
    #[command(flatten)]
    conn: Conn,
    #[command(subcommand)]
    cmd: DeadLettersCmd,
}

#[derive(Subcommand, Debug)]
enum DeadLettersCmd {
    /// What gancho gave up on, newest first, with the kind, the reason and the event.
    /// Example: gancho dead-letters list --tenant acme --kind exhausted
    List {
        #[arg(long)]
        tenant: String,
        /// Only one endpoint's (or _events: events the router could not deliver anywhere).
        #[arg(long)]
        endpoint: Option<String>,
        /// exhausted, endpoint_gone, endpoint_disabled, undecodable, not_json,
        /// subject_mismatch, invalid or schema.
        #[arg(long)]
        kind: Option<String>,
        #[arg(long)]
        since: Option<String>,
        #[arg(long)]
        until: Option<String>,
        #[arg(long)]
        limit: Option<u32>,
        #[arg(long)]
        cursor: Option<String>,
    },
}

/// `?a=b&c=d` of the options that are set, percent-encoded.
fn query(pairs: &[(&str, Option<String>)]) -> String {
    let set: Vec<String> = pairs
        .iter()
        .filter_map(|(k, v)| {
            v.as_ref().map(|v| {
                let v: String = v
                    .bytes()
                    .map(|b| match b {
                        b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                            (b as char).to_string()
                        }
                        _ => format!("%{b:02X}"),
                    })
                    .collect();
                format!("{k}={v}")
            })
        })
        .collect();
    if set.is_empty() {
        String::new()
    } else {
        format!("?{}", set.join("&"))
    }
}

/// Attempts `--follow` prints before the new ones.
const FOLLOW_FIRST: usize = 10;

/// The delivery log's columns; `endpoint_id` only in the tenant's log.
const ATTEMPT_COLUMNS: &[&str] = &[
    "seq",
    "at",
    "endpoint_id",
    "event_id",
    "attempt",
    "status",
    "latency_ms",
    "outcome",
    "error",
];

pub async fn attempts(a: Attempts) -> anyhow::Result<()> {
    let c = &a.conn;
    let AttemptsCmd::List {
        tenant,
        endpoint,
        status,
        outcome,
        since,
        until,
        limit,
        cursor,
        follow,
    } = a.cmd;
    let base = match &endpoint {
        Some(endpoint) => format!("/v1/tenants/{tenant}/endpoints/{endpoint}/attempts"),
        None => format!("/v1/tenants/{tenant}/attempts"),
    };
    let columns: Vec<&str> = ATTEMPT_COLUMNS
        .iter()
        .copied()
        .filter(|c| endpoint.is_none() || *c != "endpoint_id")
        .collect();
    let q = |cursor: Option<String>, limit: Option<u32>| {
        query(&[
            ("status", status.clone()),
            ("outcome", outcome.clone()),
            ("since", since.clone()),
            ("until", until.clone()),
            ("limit", limit.map(|l| l.to_string())),
            ("cursor", cursor),
        ])
    };
    if follow {
        return follow_attempts(c, &format!("{base}{}", q(None, Some(1000))), &columns).await;
    }
    let v = call(c, "GET", &format!("{base}{}", q(cursor, limit)), None).await?;
    table(c, &v, &columns);
    Ok(())
}

/// `attempts list --follow`: the newest page of `path` every second; prints what is newer
/// than what was printed, until Ctrl-C.
async fn follow_attempts(c: &Conn, path: &str, columns: &[&str]) -> anyhow::Result<()> {
    let mut last = None::<u64>;
    let mut header = !c.json;
    loop {
        let v = call(c, "GET", path, None).await?;
        // At first the newest few, as `tail -f` does; then only what is new.
        let mut fresh: Vec<&Value> = v["data"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|a| last.is_none_or(|l| a["seq"].as_u64().unwrap_or(0) > l))
            .take(if last.is_none() {
                FOLLOW_FIRST
            } else {
                usize::MAX
            })
            .collect();
        fresh.reverse();
        for a in &fresh {
            if c.json {
                println!("{a}");
                continue;
            }
            if header {
                println!(
                    "{}",
                    columns
                        .iter()
                        .map(|h| h.to_uppercase())
                        .collect::<Vec<_>>()
                        .join("  ")
                );
                header = false;
            }
            let cells: Vec<String> = columns.iter().map(|col| cell(&a[*col])).collect();
            println!("{}", cells.join("  "));
        }
        if let Some(newest) = fresh.last().and_then(|a| a["seq"].as_u64()) {
            last = Some(newest);
        } else if last.is_none() {
            last = Some(0);
        }
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(()),
            _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
        }
    }
}

pub async fn dead_letters(a: DeadLetters) -> anyhow::Result<()> {
    let c = &a.conn;
    let DeadLettersCmd::List {
        tenant,
        endpoint,
        kind,
        since,
        until,
        limit,
        cursor,
    } = a.cmd;
    let path = format!(
        "/v1/tenants/{tenant}/dead-letters{}",
        query(&[
            ("endpoint", endpoint),
            ("kind", kind),
            ("since", since),
            ("until", until),
            ("limit", limit.map(|l| l.to_string())),
            ("cursor", cursor),
        ])
    );
    let mut v = call(c, "GET", &path, None).await?;
    // The event's id as a column of its own.
    if let Some(rows) = v["data"].as_array_mut() {
        for r in rows {
            r["event_id"] = r["event"]["id"].clone();
        }
    }
    table(
        c,
        &v,
        &["seq", "at", "endpoint_id", "kind", "event_id", "reason"],
    );
    Ok(())
}

#[derive(Args, Debug)]
pub struct Audit {
    #[command(flatten)]
    conn: Conn,
    #[command(subcommand)]
    cmd: AuditCmd,
}

#[derive(Subcommand, Debug)]
enum AuditCmd {
    /// Every change made through the API, newest first: who (the admin token, an API key, a
    /// portal session and who minted it), what, when, and the fields it set (never their
    /// values). Without --tenant, every tenant's (the admin token only).
    /// Example: gancho audit list --tenant acme --resource endpoint
    List {
        #[arg(long)]
        tenant: Option<String>,
        /// tenant, endpoint, api_key, event_type, portal_session or job.
        #[arg(long)]
        resource: Option<String>,
        /// admin, or an API key's or portal session's id.
        #[arg(long)]
        actor: Option<String>,
        /// Only changes at or after this time (RFC 3339).
        #[arg(long)]
        since: Option<String>,
        /// Only changes before this time (RFC 3339).
        #[arg(long)]
        until: Option<String>,
        #[arg(long)]
        limit: Option<u32>,
        /// Where the page starts: the value printed after "More:".
        #[arg(long)]
        cursor: Option<String>,
    },
}

pub async fn audit(a: Audit) -> anyhow::Result<()> {
    let c = &a.conn;
    let AuditCmd::List {
        tenant,
        resource,
        actor,
        since,
        until,
        limit,
        cursor,
    } = a.cmd;
    let base = match &tenant {
        Some(t) => format!("/v1/tenants/{t}/audit-log"),
        None => "/v1/audit-log".to_owned(),
    };
    let path = format!(
        "{base}{}",
        query(&[
            ("resource", resource),
            ("actor", actor),
            ("since", since),
            ("until", until),
            ("limit", limit.map(|l| l.to_string())),
            ("cursor", cursor),
        ])
    );
    let mut v = call(c, "GET", &path, None).await?;
    // Who, in one column: `api_key key_..`, `portal_session ps_.. (api_key key_..)`, `admin`.
    if let Some(rows) = v["data"].as_array_mut().filter(|_| !c.json) {
        for r in rows {
            let who = |a: &Value| {
                let kind = a["kind"].as_str().unwrap_or("?");
                match a["id"].as_str() {
                    Some(id) => format!("{kind} {id}"),
                    None => kind.to_owned(),
                }
            };
            let mut by = who(&r["actor"]);
            if r["actor"]["minted_by"].is_object() {
                by = format!("{by} ({})", who(&r["actor"]["minted_by"]));
            }
            r["by"] = Value::String(by);
            let fields: Vec<&str> = r["fields"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            r["changed"] = if fields.is_empty() {
                Value::Null
            } else {
                Value::String(fields.join(","))
            };
        }
    }
    let mut columns = vec!["at"];
    if tenant.is_none() {
        columns.push("tenant");
    }
    columns.extend(["by", "resource", "resource_id", "action", "changed"]);
    table(c, &v, &columns);
    Ok(())
}

#[derive(Args, Debug)]
pub struct Jobs {
    #[command(flatten)]
    conn: Conn,
    #[command(subcommand)]
    cmd: JobsCmd,
}

#[derive(Args, Debug)]
struct JobWait {
    /// Records read per second at most (1 to 10000; default 200).
    #[arg(long)]
    pace: Option<u32>,
    /// Wait for the job to finish, with a progress bar; exit 1 unless it is done.
    #[arg(long)]
    wait: bool,
}

#[derive(Subcommand, Debug)]
enum JobsCmd {
    /// Redeliver an endpoint's deliveries given up on since a time (not those delivered
    /// since). Example: gancho jobs recover --tenant acme --endpoint ep_1 --since 2026-11-28T00:00:00Z --wait
    Recover {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        endpoint: String,
        /// RFC 3339.
        #[arg(long)]
        since: String,
        #[command(flatten)]
        job: JobWait,
    },
    /// Redeliver every event an endpoint subscribes to in a time range, delivered ones
    /// included. Example: gancho jobs replay --tenant acme --endpoint ep_1 --since 2026-11-28T09:00:00Z
    Replay {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        endpoint: String,
        /// RFC 3339.
        #[arg(long)]
        since: String,
        /// RFC 3339 (default: now).
        #[arg(long)]
        until: Option<String>,
        #[command(flatten)]
        job: JobWait,
    },
    /// Send dead letters again, removing each once sent (all of the tenant's, or filtered).
    /// Example: gancho jobs redrive --tenant acme --kind exhausted --wait
    Redrive {
        #[arg(long)]
        tenant: String,
        /// Only this endpoint's (or _events for the router's).
        #[arg(long)]
        endpoint: Option<String>,
        /// Only this kind (exhausted, endpoint_gone, ...).
        #[arg(long)]
        kind: Option<String>,
        #[arg(long)]
        since: Option<String>,
        #[arg(long)]
        until: Option<String>,
        /// Exactly this dead letter (its SEQ in `dead-letters list`); repeat for more, up to
        /// 1,000. Instead of --endpoint, --kind, --since and --until.
        #[arg(long = "seq", conflicts_with_all = ["endpoint", "kind", "since", "until"])]
        sequences: Vec<u64>,
        #[command(flatten)]
        job: JobWait,
    },
    /// The tenant's jobs.
    List {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        limit: Option<u32>,
        #[arg(long)]
        cursor: Option<String>,
    },
    /// One job's progress.
    Get {
        #[arg(long)]
        tenant: String,
        id: String,
    },
    /// Cancel a running job.
    Cancel {
        #[arg(long)]
        tenant: String,
        id: String,
    },
}

const JOB_COLUMNS: &[&str] = &[
    "id",
    "kind",
    "state",
    "endpoint",
    "done",
    "total",
    "sent",
    "skipped",
    "created_at",
];

#[allow(
    clippy::too_many_lines,
    reason = "one match arm per `gancho jobs` subcommand, each a request and its print"
)]
pub async fn jobs(a: Jobs) -> anyhow::Result<()> {
    let c = &a.conn;
    let (tenant, path, body, job) = match a.cmd {
        JobsCmd::Recover {
            tenant,
            endpoint,
            since,
            job,
        } => (
            tenant.clone(),
            format!("/v1/tenants/{tenant}/endpoints/{endpoint}/recover"),
            json!({"since": since, "pace": job.pace}),
            job,
        ),
        JobsCmd::Replay {
            tenant,
            endpoint,
            since,
            until,
            job,
        } => (
            tenant.clone(),
            format!("/v1/tenants/{tenant}/endpoints/{endpoint}/replay"),
            json!({"since": since, "until": until, "pace": job.pace}),
            job,
        ),
        JobsCmd::Redrive {
            tenant,
            endpoint,
            kind,
            since,
            until,
            sequences,
            job,
        } => (
            tenant.clone(),
            format!("/v1/tenants/{tenant}/dead-letters/redrive"),
            if sequences.is_empty() {
                json!({"endpoint": endpoint, "kind": kind, "since": since, "until": until, "pace": job.pace})
            } else {
                json!({"sequences": sequences, "pace": job.pace})
            },
            job,
        ),
        JobsCmd::List {
            tenant,
            limit,
            cursor,
        } => {
            let q = query(&[("limit", limit.map(|l| l.to_string())), ("cursor", cursor)]);
            let v = call(c, "GET", &format!("/v1/tenants/{tenant}/jobs{q}"), None).await?;
            table(c, &v, JOB_COLUMNS);
            return Ok(());
        }
        JobsCmd::Get { tenant, id } => {
            let v = call(c, "GET", &format!("/v1/tenants/{tenant}/jobs/{id}"), None).await?;
            show(c, &v);
            return Ok(());
        }
        JobsCmd::Cancel { tenant, id } => {
            let v = call(
                c,
                "DELETE",
                &format!("/v1/tenants/{tenant}/jobs/{id}"),
                None,
            )
            .await?;
            show(c, &v);
            return Ok(());
        }
    };
    // Leave out the options not given: the API takes absent fields as defaults.
    let body = Value::Object(
        body.as_object()
            .into_iter()
            .flatten()
            .filter(|(_, v)| !v.is_null())
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    );
    let mut v = call(c, "POST", &path, Some(body)).await?;
    if !job.wait {
        show(c, &v);
        return Ok(());
    }
    let id = v["id"].as_str().unwrap_or_default().to_owned();
    let bar = if c.json {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(v["total"].as_u64().unwrap_or(0))
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len}  {msg}")
            .expect("a valid template"),
    );
    while v["state"] == "running" {
        bar.set_position(v["done"].as_u64().unwrap_or(0));
        bar.set_message(format!("sent {}", cell(&v["sent"])));
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        v = call(c, "GET", &format!("/v1/tenants/{tenant}/jobs/{id}"), None).await?;
    }
    bar.finish_and_clear();
    show(c, &v);
    if v["state"] != "done" {
        bail!(
            "job {id} ended {}: {}",
            cell(&v["state"]),
            cell(&v["error"])
        );
    }
    Ok(())
}

#[derive(Args, Debug)]
pub struct Endpoints {
    #[command(flatten)]
    conn: Conn,
    #[command(subcommand)]
    cmd: EndpointsCmd,
}

#[derive(Subcommand, Debug)]
enum EndpointsCmd {
    /// Create an endpoint; an hmac secret is printed once, an ed25519 endpoint shows its
    /// public key. Example: gancho endpoints create --tenant acme --url https://hooks.example.com/x --type 'invoice.*' --filter '.data.amount >= 100000'
    Create {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        url: String,
        /// Event types it subscribes to (NATS wildcards); repeat for more (none: every type).
        #[arg(long = "type")]
        filters: Vec<String>,
        #[command(flatten)]
        programs: ProgramArgs,
        #[command(flatten)]
        ordering: DeliveryArgs,
        #[arg(long, default_value = "")]
        description: String,
        /// hmac (v1, a shared secret) or ed25519 (v1a: receivers verify with the public key).
        #[arg(long, value_parser = ["hmac", "ed25519"])]
        signing: Option<String>,
        #[command(flatten)]
        profile: ProfileArgs,
    },
    /// List a tenant's endpoints. Example: gancho endpoints list --tenant acme
    List {
        #[arg(long)]
        tenant: String,
        #[command(flatten)]
        page: PageArgs,
    },
    /// Show one endpoint. Example: gancho endpoints get --tenant acme ep_...
    Get {
        #[arg(long)]
        tenant: String,
        id: String,
    },
    /// Change an endpoint. Example: gancho endpoints update --tenant acme ep_... --url https://new.example.com/x
    Update {
        #[arg(long)]
        tenant: String,
        id: String,
        #[arg(long)]
        url: Option<String>,
        #[arg(long)]
        description: Option<String>,
        /// Replaces the event types it subscribes to; repeat for more.
        #[arg(long = "type")]
        filters: Option<Vec<String>>,
        #[command(flatten)]
        programs: ProgramArgs,
        #[command(flatten)]
        ordering: DeliveryArgs,
        /// Removes the jq filter (every event of its types and channels again).
        #[arg(long, conflicts_with = "filter")]
        no_filter: bool,
        /// Removes the jq transform (the standard body again).
        #[arg(long, conflicts_with = "transform")]
        no_transform: bool,
        #[command(flatten)]
        profile: ProfileArgs,
        /// true or false. A disabled endpoint gets no new deliveries and the ones on their
        /// way are dead-lettered (endpoint_disabled); false re-enables one (also after a 410).
        #[arg(long)]
        disabled: Option<bool>,
    },
    /// Send a test event now and print the first attempt's outcome (gancho.test, or the
    /// catalog's example of --type). Example: gancho endpoints test --tenant acme ep_...
    Test {
        #[arg(long)]
        tenant: String,
        id: String,
        /// An event type of the catalog with an example.
        #[arg(long = "type")]
        event_type: Option<String>,
    },
    /// What a jq filter and transform would do with an event, without storing anything.
    /// Example: gancho endpoints try --tenant acme --filter '.data.amount >= 100000' --event '{"type": "charge.paid", "data": {"amount": 150000}}'
    Try {
        #[arg(long)]
        tenant: String,
        #[command(flatten)]
        programs: ProgramArgs,
        /// The event: {"type", "data", "id"?, "timestamp"?, "channels"?}, or @FILE.
        #[arg(long)]
        event: String,
    },
    /// Pause an endpoint: its deliveries are held, not attempted, until it is resumed.
    /// Example: gancho endpoints pause --tenant acme ep_...
    Pause {
        #[arg(long)]
        tenant: String,
        id: String,
    },
    /// Resume a paused endpoint: the held deliveries go out.
    /// Example: gancho endpoints resume --tenant acme ep_...
    Resume {
        #[arg(long)]
        tenant: String,
        id: String,
    },
    /// Delete an endpoint; deliveries still on their way are dead-lettered as endpoint_gone.
    /// Example: gancho endpoints delete --tenant acme ep_...
    Delete {
        #[arg(long)]
        tenant: String,
        id: String,
    },
    /// New signing key (an hmac secret is printed once, an ed25519 key shows as its public
    /// key); the old one keeps signing for the grace.
    /// Example: gancho endpoints rotate --tenant acme ep_... --grace 24h --signing ed25519
    Rotate {
        #[arg(long)]
        tenant: String,
        id: String,
        #[arg(long, default_value = "24h")]
        grace: String,
        /// The new key's kind (default: the current one's).
        #[arg(long, value_parser = ["hmac", "ed25519"])]
        signing: Option<String>,
    },
}

/// An endpoint's jq programs, each given as its text or as @FILE.
#[derive(Args, Debug)]
struct ProgramArgs {
    /// A jq program run on each event of its types and channels: the endpoint gets the event
    /// only when the first output is true. Example: --filter '.data.amount >= 100000'
    #[arg(long)]
    filter: Option<String>,
    /// A jq program whose first output is the webhook's body.
    /// Example: --transform '{id: .data.charge_id, status: .type}'
    #[arg(long)]
    transform: Option<String>,
}

/// How deliveries go: in order, and with trace context.
#[derive(Args, Debug)]
struct DeliveryArgs {
    /// none (default: in parallel), key (one at a time per value of --ordering-key, in the
    /// order of the events) or endpoint (the whole endpoint one at a time).
    /// Example: --ordering key --ordering-key /charge_id
    #[arg(long, value_parser = ["none", "key", "endpoint"])]
    ordering: Option<String>,
    /// With --ordering key: a JSON Pointer into the event's payload (RFC 6901).
    #[arg(long)]
    ordering_key: Option<String>,
    /// true: webhooks carry a W3C traceparent header (a trace of their own per delivery,
    /// the same for every attempt, never the platform's trace id); false stops it.
    #[arg(long)]
    trace_context: Option<bool>,
}

impl DeliveryArgs {
    fn apply(&self, body: &mut serde_json::Map<String, Value>) {
        if let Some(o) = &self.ordering {
            body.insert("ordering".into(), json!(o));
        }
        if let Some(k) = &self.ordering_key {
            body.insert("ordering_key".into(), json!(k));
        }
        if let Some(t) = self.trace_context {
            body.insert("trace_context".into(), json!(t));
        }
    }
}

/// `text`, or the contents of the file when it is `@FILE`.
fn text_or_file(text: &str) -> anyhow::Result<String> {
    match text.strip_prefix('@') {
        Some(path) => std::fs::read_to_string(path).with_context(|| format!("cannot read {path}")),
        None => Ok(text.to_owned()),
    }
}

impl ProgramArgs {
    /// Adds `filter` and `transform` to a request body. An event-type pattern given to
    /// --filter (its meaning before jq filters) is pointed at --type.
    fn apply(&self, body: &mut serde_json::Map<String, Value>) -> anyhow::Result<()> {
        if let Some(f) = &self.filter {
            let f = text_or_file(f)?;
            let looks_like_types = gancho_core::Filter::parse(&f).is_ok()
                && f.contains(['.', '*', '>'])
                && gancho_jq::Program::compile(&f).is_err();
            if looks_like_types {
                bail!("--filter is a jq program; for the event types an endpoint subscribes to, use --type {f:?}");
            }
            body.insert("filter".into(), json!(f));
        }
        if let Some(t) = &self.transform {
            body.insert("transform".into(), json!(text_or_file(t)?));
        }
        Ok(())
    }
}

/// The delivery profile and its settings.
#[derive(Args, Debug)]
struct ProfileArgs {
    /// standard (default), token or openfinance-br (needs --client-cert).
    /// Example: --profile token --token-header validationtoken --token-value "$TOKEN"
    #[arg(long)]
    profile: Option<String>,
    /// Profile token: the header that carries the token.
    #[arg(long, conflicts_with = "token_query")]
    token_header: Option<String>,
    /// Profile token: the query parameter that carries the token.
    #[arg(long)]
    token_query: Option<String>,
    /// Profile token: the token (or set GANCHO_ENDPOINT_TOKEN, kept out of shell history).
    #[arg(long, env = "GANCHO_ENDPOINT_TOKEN", hide_env_values = true)]
    token_value: Option<String>,
    /// mTLS: a PEM file with the client certificate chain to present (needs --client-key).
    #[arg(long, requires = "client_key")]
    client_cert: Option<std::path::PathBuf>,
    /// mTLS: a PEM file with the client certificate's private key (sealed at rest).
    #[arg(long, requires = "client_cert")]
    client_key: Option<std::path::PathBuf>,
    /// A PEM file of CA certificates to trust for this endpoint (ICP-Brasil, a private CA).
    #[arg(long)]
    ca: Option<std::path::PathBuf>,
    /// Profile openfinance-br: the path after --url, {attribute}s from the event.
    /// Default: /open-banking/webhook/v1/payments/v3/pix/payments/{paymentId}
    #[arg(long)]
    path_template: Option<String>,
}

impl ProfileArgs {
    /// Adds `profile` and `token` to a request body.
    fn apply(&self, body: &mut serde_json::Map<String, Value>) -> anyhow::Result<()> {
        if let Some(p) = &self.profile {
            body.insert("profile".into(), json!(p));
        }
        if let Some(t) = &self.path_template {
            body.insert("path_template".into(), json!(t));
        }
        let place = match (&self.token_header, &self.token_query) {
            (Some(h), _) => Some(("header", h)),
            (_, Some(q)) => Some(("query", q)),
            _ => None,
        };
        match (place, &self.token_value) {
            (Some((k, name)), Some(v)) => {
                body.insert("token".into(), json!({k: name, "value": v}));
            }
            (None, None) => {}
            _ => bail!("a token needs --token-header or --token-query, and --token-value"),
        }
        for (field, path) in [
            ("client_cert", &self.client_cert),
            ("client_key", &self.client_key),
            ("ca", &self.ca),
        ] {
            if let Some(path) = path {
                let pem = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read {}", path.display()))?;
                body.insert(field.into(), json!(pem));
            }
        }
        Ok(())
    }
}

#[derive(Args, Debug)]
struct PageArgs {
    /// Items per page, 1 to 1000.
    #[arg(long)]
    limit: Option<u32>,
    /// The `next` cursor a previous page printed.
    #[arg(long)]
    cursor: Option<String>,
}

impl PageArgs {
    fn query(&self) -> String {
        let mut q = Vec::new();
        if let Some(l) = self.limit {
            q.push(format!("limit={l}"));
        }
        if let Some(c) = &self.cursor {
            q.push(format!("cursor={c}"));
        }
        if q.is_empty() {
            String::new()
        } else {
            format!("?{}", q.join("&"))
        }
    }
}

pub async fn tenants(a: Tenants) -> anyhow::Result<()> {
    let c = &a.conn;
    match a.cmd {
        TenantsCmd::Create { id, name, weight } => {
            let v = call(
                c,
                "POST",
                "/v1/tenants",
                Some(json!({"id": id, "name": name, "weight": weight})),
            )
            .await?;
            show(c, &v);
        }
        TenantsCmd::Update {
            id,
            name,
            weight,
            api_rate_limit,
            ingest_rate_limit,
        } => {
            let mut body = serde_json::Map::new();
            if let Some(name) = name {
                body.insert("name".into(), json!(name));
            }
            if let Some(weight) = weight {
                body.insert("weight".into(), json!(weight));
            }
            for (field, v, unset) in [
                ("api_rate_limit_per_sec", api_rate_limit, "default"),
                ("ingest_rate_limit_per_sec", ingest_rate_limit, "none"),
            ] {
                if let Some(v) = v {
                    let value = if v == unset {
                        Value::Null
                    } else {
                        json!(v.parse::<u32>().map_err(|_| anyhow::anyhow!(
                            "--{}: a number of requests a second, or {unset}; got {v:?}",
                            field.trim_end_matches("_per_sec").replace('_', "-")
                        ))?)
                    };
                    body.insert(field.into(), value);
                }
            }
            if body.is_empty() {
                anyhow::bail!(
                    "nothing to change: give --name, --weight, --api-rate-limit or --ingest-rate-limit"
                );
            }
            let path = format!("/v1/tenants/{id}");
            show(c, &call(c, "PATCH", &path, Some(body.into())).await?);
        }
        TenantsCmd::List(p) => {
            let v = call(c, "GET", &format!("/v1/tenants{}", p.query()), None).await?;
            table(c, &v, &["id", "name", "weight", "created_at"]);
        }
        TenantsCmd::Get { id } => show(
            c,
            &call(c, "GET", &format!("/v1/tenants/{id}"), None).await?,
        ),
        TenantsCmd::Delete { id } => {
            call(c, "DELETE", &format!("/v1/tenants/{id}"), None).await?;
            done(c, &format!("Deleted tenant {id}."));
        }
    }
    Ok(())
}

pub async fn api_keys(a: ApiKeys) -> anyhow::Result<()> {
    let c = &a.conn;
    match a.cmd {
        ApiKeysCmd::Create {
            tenant,
            name,
            scopes,
        } => {
            let body = json!({"name": name, "scopes": scopes});
            let v = call(
                c,
                "POST",
                &format!("/v1/tenants/{tenant}/api-keys"),
                Some(body),
            )
            .await?;
            show(c, &v);
            if !c.json {
                println!("\nThe key is shown only now: store it as a secret.");
            }
        }
        ApiKeysCmd::List { tenant, page } => {
            let path = format!("/v1/tenants/{tenant}/api-keys{}", page.query());
            let v = call(c, "GET", &path, None).await?;
            table(
                c,
                &v,
                &[
                    "id",
                    "name",
                    "prefix",
                    "scopes",
                    "created_at",
                    "last_used_at",
                ],
            );
        }
        ApiKeysCmd::Revoke { tenant, id } => {
            call(
                c,
                "DELETE",
                &format!("/v1/tenants/{tenant}/api-keys/{id}"),
                None,
            )
            .await?;
            done(c, &format!("Revoked API key {id}."));
        }
    }
    Ok(())
}

#[allow(
    clippy::too_many_lines,
    reason = "one match arm per `gancho endpoints` subcommand, each a request and its print"
)]
pub async fn endpoints(a: Endpoints) -> anyhow::Result<()> {
    let c = &a.conn;
    match a.cmd {
        EndpointsCmd::Create {
            tenant,
            url,
            filters,
            programs,
            ordering,
            description,
            signing,
            profile,
        } => {
            let mut body = serde_json::Map::new();
            body.insert("url".into(), json!(url));
            body.insert("filter_types".into(), json!(filters));
            body.insert("description".into(), json!(description));
            if let Some(s) = signing {
                body.insert("signing".into(), json!(s));
            }
            programs.apply(&mut body)?;
            ordering.apply(&mut body);
            profile.apply(&mut body)?;
            let body = Value::Object(body);
            let v = call(
                c,
                "POST",
                &format!("/v1/tenants/{tenant}/endpoints"),
                Some(body),
            )
            .await?;
            show(c, &v);
        }
        EndpointsCmd::List { tenant, page } => {
            let path = format!("/v1/tenants/{tenant}/endpoints{}", page.query());
            let v = call(c, "GET", &path, None).await?;
            table(
                c,
                &v,
                &["id", "url", "profile", "filter_types", "disabled", "paused"],
            );
        }
        EndpointsCmd::Get { tenant, id } => {
            let path = format!("/v1/tenants/{tenant}/endpoints/{id}");
            show(c, &call(c, "GET", &path, None).await?);
        }
        EndpointsCmd::Update {
            tenant,
            id,
            url,
            description,
            filters,
            programs,
            ordering,
            no_filter,
            no_transform,
            disabled,
            profile,
        } => {
            let mut body = serde_json::Map::new();
            programs.apply(&mut body)?;
            ordering.apply(&mut body);
            if no_filter {
                body.insert("filter".into(), Value::Null);
            }
            if no_transform {
                body.insert("transform".into(), Value::Null);
            }
            if let Some(v) = url {
                body.insert("url".into(), json!(v));
            }
            if let Some(v) = description {
                body.insert("description".into(), json!(v));
            }
            if let Some(v) = filters {
                body.insert("filter_types".into(), json!(v));
            }
            if let Some(v) = disabled {
                body.insert("disabled".into(), json!(v));
            }
            profile.apply(&mut body)?;
            if body.is_empty() {
                bail!("nothing to change: give --url, --description, --type, --filter, --transform, --ordering, --disabled, --profile or a token");
            }
            let path = format!("/v1/tenants/{tenant}/endpoints/{id}");
            show(
                c,
                &call(c, "PATCH", &path, Some(Value::Object(body))).await?,
            );
        }
        EndpointsCmd::Delete { tenant, id } => {
            call(
                c,
                "DELETE",
                &format!("/v1/tenants/{tenant}/endpoints/{id}"),
                None,
            )
            .await?;
            done(c, &format!("Deleted endpoint {id}."));
        }
        EndpointsCmd::Test {
            tenant,
            id,
            event_type,
        } => {
            let path = format!("/v1/tenants/{tenant}/endpoints/{id}/test");
            let body = event_type.map(|t| json!({"type": t}));
            let v = call(c, "POST", &path, body).await?;
            if c.json {
                println!("{v}");
            } else if v["attempt"].is_object() {
                println!("event {}  type {}", cell(&v["event_id"]), cell(&v["type"]));
                show(c, &v["attempt"]);
            } else {
                println!(
                    "event {} sent; no attempt ended yet: gancho events get --tenant {tenant} {}",
                    cell(&v["event_id"]),
                    cell(&v["event_id"])
                );
            }
        }
        EndpointsCmd::Try {
            tenant,
            programs,
            event,
        } => {
            let event: Value = serde_json::from_str(&text_or_file(&event)?).context(
                "--event is not JSON: give {\"type\": \"...\", \"data\": {...}} or @FILE",
            )?;
            let mut body = serde_json::Map::new();
            programs.apply(&mut body)?;
            body.insert("event".into(), event);
            let path = format!("/v1/tenants/{tenant}/endpoints/try");
            let v = call(c, "POST", &path, Some(Value::Object(body))).await?;
            if c.json {
                println!("{v}");
            } else {
                if let Some(f) = v.get("filter") {
                    match f["error"].as_str() {
                        Some(e) => println!("filter     does not match: {e}"),
                        None if f["matches"] == true => println!("filter     matches"),
                        None => println!("filter     does not match"),
                    }
                }
                if let Some(t) = v.get("transform") {
                    match t["error"].as_str() {
                        Some(e) => {
                            println!("transform  fails (the delivery would be dead-lettered): {e}")
                        }
                        None => println!("transform  {}", t["body"]),
                    }
                }
            }
        }
        EndpointsCmd::Pause { tenant, id } => {
            let path = format!("/v1/tenants/{tenant}/endpoints/{id}/pause");
            show(c, &call(c, "POST", &path, None).await?);
        }
        EndpointsCmd::Resume { tenant, id } => {
            let path = format!("/v1/tenants/{tenant}/endpoints/{id}/resume");
            show(c, &call(c, "POST", &path, None).await?);
        }
        EndpointsCmd::Rotate {
            tenant,
            id,
            grace,
            signing,
        } => {
            let path = format!("/v1/tenants/{tenant}/endpoints/{id}/secret/rotate");
            let mut body = json!({ "grace": grace });
            if let Some(s) = signing {
                body["signing"] = json!(s);
            }
            let v = call(c, "POST", &path, Some(body)).await?;
            show(c, &v);
        }
    }
    Ok(())
}

/// One request; a non-2xx answer becomes an error carrying the API's message.
impl Conn {
    /// A connection to the API at `api_url` with `token` (for `gancho bench`).
    pub(crate) fn new(api_url: String, token: String) -> Self {
        Self {
            api_url,
            token: Some(token),
            json: true,
        }
    }
}

pub(crate) async fn call(
    c: &Conn,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> anyhow::Result<Value> {
    let token = c.token.as_deref().context(
        "no token: pass --token or set GANCHO_TOKEN (the admin token, or a tenant's API key)",
    )?;
    let url = format!("{}{path}", c.api_url.trim_end_matches('/'));
    let mut req = http::Request::builder()
        .method(method)
        .uri(&url)
        .header(http::header::AUTHORIZATION, format!("Bearer {token}"));
    let payload = match body {
        Some(b) => {
            req = req.header(http::header::CONTENT_TYPE, "application/json");
            Bytes::from(b.to_string())
        }
        None => Bytes::new(),
    };
    let req = req
        .body(Full::new(payload))
        .with_context(|| format!("invalid API URL {url:?}"))?;
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_webpki_roots()
        .https_or_http()
        .enable_http1()
        .build();
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build::<_, Full<Bytes>>(https);
    let resp = client
        .request(req)
        .await
        .with_context(|| format!("cannot reach the API at {}", c.api_url))?;
    let status = resp.status();
    let bytes = resp.into_body().collect().await?.to_bytes();
    let value: Value = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into()))
    };
    if !status.is_success() {
        let msg = value["error"]["message"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| value.to_string());
        bail!(
            "{} {}: {msg}",
            status.as_u16(),
            status.canonical_reason().unwrap_or("")
        );
    }
    Ok(value)
}

fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Array(a) => a.iter().map(cell).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

/// One object as `field: value` lines.
fn show(c: &Conn, v: &Value) {
    if c.json {
        println!("{v}");
        return;
    }
    if let Value::Object(map) = v {
        let width = map.keys().map(String::len).max().unwrap_or(0);
        for (k, val) in map {
            println!("{k:width$}  {}", cell(val));
        }
    }
}

/// A page as an aligned table, then where the next page starts.
fn table(c: &Conn, v: &Value, columns: &[&str]) {
    if c.json {
        println!("{v}");
        return;
    }
    let rows: Vec<Vec<String>> = v["data"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|item| columns.iter().map(|col| cell(&item[*col])).collect())
                .collect()
        })
        .unwrap_or_default();
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, h)| {
            rows.iter()
                .map(|r| r[i].len())
                .chain([h.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: Vec<String>| {
        let parts: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:w$}"))
            .collect();
        println!("{}", parts.join("  ").trim_end());
    };
    line(columns.iter().map(|h| h.to_uppercase()).collect());
    for r in rows {
        line(r);
    }
    if let Some(next) = v["next"].as_str() {
        println!("\nMore: add --cursor {next}");
    }
}

fn done(c: &Conn, msg: &str) {
    if c.json {
        println!("{}", json!({"ok": true}));
    } else {
        println!("{msg}");
    }
}
