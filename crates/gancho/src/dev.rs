//! `gancho dev`: every role in one process, plus (when no NATS URL is configured) a child
//! `nats-server -js` with its data under `./.gancho/`, and a demo receiver that prints each
//! webhook it gets. Meant for a laptop: http:// and private endpoints are allowed.

use crate::config::Config;
use crate::roles::{self, Roles};
use anyhow::{bail, Context as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

const DATA_DIR: &str = ".gancho";
/// NATS's own port, taken when free; otherwise dev's nats-server takes any free port.
const DEV_NATS_PORT: u16 = 4222;
/// Where dev writes its nats-server's URL, for `gancho publish` run from the same directory.
pub(crate) const NATS_URL_FILE: &str = ".gancho/nats-url";

#[derive(clap::Args, Debug)]
pub struct DevArgs {
    /// Address of the demo receiver (port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:8099")]
    pub demo_listen: SocketAddr,
}

pub async fn run(mut config: Config, args: DevArgs) -> anyhow::Result<()> {
    let data = PathBuf::from(DATA_DIR);
    std::fs::create_dir_all(&data).with_context(|| format!("cannot create {DATA_DIR}/"))?;

    // Kept alive for the whole run: dropping the child kills nats-server.
    let mut _nats: Option<Child> = None;
    let nats_url = match config.nats_url.clone() {
        Some(url) => url,
        None => {
            let (child, port) = start_nats(&data).await?;
            _nats = Some(child);
            let url = format!("nats://127.0.0.1:{port}");
            std::fs::write(NATS_URL_FILE, format!("{url}\n"))
                .with_context(|| format!("cannot write {NATS_URL_FILE}"))?;
            url
        }
    };
    let token = match config.admin_token.clone() {
        Some(t) => t,
        None => dev_token(&data)?,
    };
    config.admin_token = Some(token.clone());
    if config.keys.is_none() {
        config.keys = Some(crate::config::Keys {
            current: dev_key(&data)?,
            old: None,
        });
    }
    config.allow_http_endpoints = true;
    config.allow_private_endpoints = true;
    if config.portal_public_url.is_none() {
        // Links are built from this URL, so a listen port of 0 becomes a real one first.
        if config.api_listen.port() == 0 {
            let probe = std::net::TcpListener::bind(config.api_listen)
                .with_context(|| format!("cannot listen for the API on {}", config.api_listen))?;
            config.api_listen = probe.local_addr()?;
        }
        config.portal_public_url = Some(format!("http://{}", config.api_listen));
    }

    let cancel = CancellationToken::new();
    let all = Roles {
        router: true,
        worker: true,
        api: true,
    };
    let running = roles::start(&config, &nats_url, all, cancel.clone()).await?;
    let demo = args.demo_listen;
    let demo = crate::sink::start_dev(demo, running.live.clone(), cancel.clone())
        .await
        .with_context(|| format!("cannot listen for the demo receiver on {demo}"))?;
    let api = running.api_addr.expect("dev runs the API");
    let portal = match demo_portal_link(api, &token).await {
        Ok(url) => format!(
            "{url}\n                  (tenant demo; opens once, within 10 minutes: `gancho portal link --tenant demo` mints another)"
        ),
        Err(e) => format!("no link: {e:#}"),
    };
    println!(
        "\ngancho dev is running (Ctrl-C to stop)\n\
         \n  API             http://{api}/v1\
         \n  admin token     {token}   (also in {DATA_DIR}/admin-token)\
         \n  encryption key  {DATA_DIR}/encryption-key (seals endpoint secrets at rest)\
         \n  metrics         http://{metrics}/metrics\
         \n  NATS            {nats_url}\
         \n  demo receiver   http://{demo}/<any path>   prints each webhook it gets\
         \n  portal          {portal}\
         \n\
         \n  For the CLI (gancho tenants|api-keys|endpoints ...):\
         \n    export GANCHO_API_URL=http://{api} GANCHO_TOKEN=$(cat {DATA_DIR}/admin-token)\
         \n\
         \n  dev mode delivers to http:// and private addresses; production does not by default.\
         \n  Try it: the three steps under \"Try it\" in README.md.\n",
        metrics = running.metrics_addr,
    );
    let done = running.wait().await;
    if _nats.is_some() {
        let _ = std::fs::remove_file(NATS_URL_FILE);
    }
    done
}

/// A fresh portal link (a day's `manage` session) for the tenant `demo`, made the first time.
async fn demo_portal_link(api: SocketAddr, token: &str) -> anyhow::Result<String> {
    use crate::manage::{call, Conn};
    let c = Conn::new(format!("http://{api}"), token.to_owned());
    if call(&c, "GET", "/v1/tenants/demo", None).await.is_err() {
        let tenant = serde_json::json!({"id": "demo", "name": "Demo tenant"});
        call(&c, "POST", "/v1/tenants", Some(tenant)).await?;
    }
    let session = serde_json::json!({"scope": "manage", "ttl": "24h"});
    let v = call(
        &c,
        "POST",
        "/v1/tenants/demo/portal-sessions",
        Some(session),
    )
    .await?;
    Ok(v["url"].as_str().unwrap_or_default().to_owned())
}

/// The admin token of this data directory: created once, then reused so the README's
/// `$(cat .gancho/admin-token)` keeps working across restarts.
fn dev_token(data: &Path) -> anyhow::Result<String> {
    let path = data.join("admin-token");
    if let Ok(t) = std::fs::read_to_string(&path) {
        if t.trim().len() >= 16 {
            return Ok(t.trim().to_owned());
        }
    }
    use rand::Rng;
    let token: String = rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(32)
        .map(char::from)
        .collect();
    write_private(&path, &token)?;
    Ok(token)
}

/// The encryption key of this data directory (`encryption-key`): created once, then reused,
/// since the secrets stored in `.gancho/` are sealed with it.
fn dev_key(data: &Path) -> anyhow::Result<String> {
    let path = data.join("encryption-key");
    if let Ok(k) = std::fs::read_to_string(&path) {
        if gancho_store::Keyring::new(k.trim(), None).is_ok() {
            return Ok(k.trim().to_owned());
        }
    }
    let key = gancho_store::Keyring::generate();
    write_private(&path, &key)?;
    Ok(key)
}

fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)?;
        f.write_all(contents.as_bytes())?;
    }
    #[cfg(not(unix))]
    std::fs::write(path, contents)?;
    Ok(())
}

/// nats-server: `$GANCHO_NATS_SERVER`, `.tools/bin/nats-server` (what `make setup`
/// installs), or the `PATH`.
pub(crate) fn nats_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("GANCHO_NATS_SERVER") {
        return PathBuf::from(p);
    }
    let tools = PathBuf::from(".tools/bin/nats-server");
    if tools.exists() {
        return tools;
    }
    PathBuf::from("nats-server")
}

/// Starts dev's nats-server on port 4222 when it is free, else on a free port (a second
/// `gancho dev`, or another NATS on this machine, holds 4222), and says which.
async fn start_nats(data: &Path) -> anyhow::Result<(Child, u16)> {
    let addr: SocketAddr = ([127, 0, 0, 1], DEV_NATS_PORT).into();
    let port = match std::net::TcpListener::bind(addr) {
        Ok(_) => DEV_NATS_PORT,
        _ => {
            let free = std::net::TcpListener::bind(("127.0.0.1", 0))
                .and_then(|l| l.local_addr())
                .context("cannot find a free port for nats-server")?
                .port();
            println!(
                "Port {DEV_NATS_PORT} is taken; this gancho dev's nats-server listens on {free} \
                 (`gancho publish` run from this directory finds it in {NATS_URL_FILE})."
            );
            free
        }
    };
    Ok((spawn_nats(data, port).await?, port))
}

/// Starts `nats-server -js` on 127.0.0.1:`port` with its store and log under `data`, and
/// waits until it listens. The child is killed when dropped.
pub(crate) async fn spawn_nats(data: &Path, port: u16) -> anyhow::Result<Child> {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(data.join("nats-server.log"))?;
    let bin = nats_binary();
    let mut child = Command::new(&bin)
        .args(["-js", "-a", "127.0.0.1", "-p"])
        .arg(port.to_string())
        .arg("-sd")
        .arg(data.join("nats"))
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| {
            format!(
                "cannot start {}; run `make setup` to install nats-server into .tools/",
                bin.display()
            )
        })?;
    let deadline = Instant::now() + Duration::from_secs(15);
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        if let Some(status) = child.try_wait()? {
            bail!(
                "nats-server exited ({status}); see {}/nats-server.log",
                data.display()
            );
        }
        if Instant::now() > deadline {
            bail!(
                "nats-server did not listen on {addr} within 15 s; see {}/nats-server.log",
                data.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(child)
}
