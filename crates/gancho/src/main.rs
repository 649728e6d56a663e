//! The `gancho` binary: parses the command line and configuration, runs one role (or all of
//! them under `dev`), and exits 64 with one line when the configuration is invalid.

mod bench;
mod config;
mod dev;
mod manage;
mod publish;
mod roles;
mod sink;

/// mimalloc instead of the system allocator: in perf, glibc's malloc and free (their arena
/// locks and chunk consolidation) were about a fifth of the worker's CPU per delivery. The
/// `system-alloc` feature leaves it out, for heap profilers that watch malloc.
#[cfg(not(feature = "system-alloc"))]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{CommandFactory, FromArgMatches, Subcommand};
use config::{Config, ConfigError, Flags, EXIT_CONFIG};
use roles::Roles;
use tokio_util::sync::CancellationToken;

#[derive(clap::Parser)]
#[command(
    name = "gancho",
    version,
    about = "Webhook delivery on NATS JetStream",
    propagate_version = true
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// A command that runs roles: every setting of [`Flags`].
#[derive(clap::Args)]
struct RoleArgs {
    #[command(flatten)]
    flags: Flags,
}

#[derive(Subcommand)]
#[allow(
    clippy::large_enum_variant,
    reason = "parsed once at start-up; the roles' settings are inline for clap's derive"
)]
enum Command {
    /// Every role in one process, with its own nats-server (data under ./.gancho/) unless
    /// GANCHO_NATS_URL is set, and a demo receiver.
    Dev {
        #[command(flatten)]
        args: dev::DevArgs,
        #[command(flatten)]
        flags: Flags,
    },
    /// The router role: events in, one delivery per matching endpoint out.
    Router(RoleArgs),
    /// The worker role: deliveries in, signed HTTPS webhooks out.
    Worker(RoleArgs),
    /// The config service (REST API).
    Api(RoleArgs),
    /// Publish one event, as a platform service would.
    Publish {
        #[command(flatten)]
        args: publish::PublishArgs,
        #[command(flatten)]
        nats: config::NatsFlags,
    },
    /// Run a receiver that verifies signatures and prints each webhook.
    Sink(sink::SinkArgs),
    /// Measure gancho as operators run it: its own nats-server, a sink, the api, the router
    /// and N workers as separate processes; ingest and delivery rates, end-to-end latency,
    /// CPU and memory per process. Example: gancho bench --endpoints 100 --events 10000 --dead-share 0.2
    Bench {
        #[command(flatten)]
        args: bench::BenchArgs,
        /// The roles' settings, given to the processes it starts.
        #[command(flatten, next_help_heading = "Settings of the roles it starts")]
        flags: Flags,
    },
    /// Manage tenants through the API (admin token).
    Tenants(manage::Tenants),
    /// Manage a tenant's API keys through the API (admin token).
    #[command(name = "api-keys")]
    ApiKeys(manage::ApiKeys),
    /// Portal links: a page where a tenant's people manage endpoints and read the delivery
    /// log (the admin token or a key with the manage scope).
    Portal(manage::Portal),
    /// Manage a tenant's endpoints through the API.
    Endpoints(Box<manage::Endpoints>),
    /// Send events over HTTP (a key with the publish scope); see what happened to one.
    Events(manage::Events),
    /// An endpoint's delivery log: every attempt with its status code, newest first.
    Attempts(manage::Attempts),
    /// What gancho gave up on, and why.
    #[command(name = "dead-letters")]
    DeadLetters(manage::DeadLetters),
    /// Recover, replay and redrive: send again what an endpoint missed, as jobs.
    Jobs(manage::Jobs),
    /// Who changed what, and when: the audit log.
    Audit(manage::Audit),
    /// Manage a tenant's event catalog: descriptions, JSON Schemas, examples.
    #[command(name = "event-types")]
    EventTypes(manage::EventTypes),
    /// Print a new encryption key (base64 of 32 random bytes), alone on a line.
    /// Example: export GANCHO_ENCRYPTION_KEY=$(gancho keygen)
    Keygen,
    /// Endpoint secrets at rest.
    #[command(subcommand)]
    Secrets(SecretsCmd),
    /// Print the API's OpenAPI 3.1 document (the same as GET /openapi.json).
    /// Example: gancho openapi > openapi.json
    Openapi,
}

#[derive(Subcommand)]
enum SecretsCmd {
    /// Finish a key rotation (or a move from a store without encryption): seal every
    /// endpoint secret with GANCHO_ENCRYPTION_KEY, then purge every older revision from the
    /// config bucket. Afterwards GANCHO_ENCRYPTION_OLD_KEY can be removed.
    /// Example: GANCHO_ENCRYPTION_KEY=<new> GANCHO_ENCRYPTION_OLD_KEY=<old> gancho secrets re-encrypt
    #[command(name = "re-encrypt")]
    ReEncrypt(RoleArgs),
}

impl Command {
    /// The settings this command reads; the client commands read none.
    fn flags(&self) -> Flags {
        match self {
            Command::Dev { flags, .. } | Command::Bench { flags, .. } => flags.clone(),
            Command::Router(r)
            | Command::Worker(r)
            | Command::Api(r)
            | Command::Secrets(SecretsCmd::ReEncrypt(r)) => r.flags.clone(),
            Command::Publish { nats, .. } => nats.clone().into(),
            _ => Flags::default(),
        }
    }
}

/// Transparent huge pages off for this process (`PR_SET_THP_DISABLE`), unless the operator
/// chose with `MIMALLOC_ALLOW_THP`. With them, the allocator's memory is backed by 2 MiB
/// pages: what a backlog took stays resident after it is freed, since the allocator gives
/// memory back in 64 KiB pages. Measured (RELIABILITY.md, "What a backlog leaves"): a worker
/// at 1,000 deliveries/s held 38.7 MB before a 20-second backlog and 50.6 after it, with
/// huge pages; 26.7 and 31.3 without, at the same CPU per delivery.
fn no_huge_pages() {
    #[cfg(target_os = "linux")]
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_none() {
        // Best effort: a kernel without the flag keeps its huge pages.
        let _ = rustix::thread::disable_transparent_huge_pages(true);
    }
}

#[allow(clippy::too_many_lines, reason = "one match arm per command")]
fn main() {
    no_huge_pages();
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let config = match Config::load(&cli.command.flags()) {
        Ok(c) => c,
        Err(e) => exit_config(&e),
    };
    gancho_telemetry::init_tracing(config.log_json);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("build the tokio runtime");
    let result = runtime.block_on(async move {
        let role = |roles: Roles| {
            let config = config.clone();
            async move {
                let url = config.require_nats_url()?.to_owned();
                roles::start(&config, &url, roles, CancellationToken::new())
                    .await?
                    .wait()
                    .await
            }
        };
        match cli.command {
            Command::Dev { args, .. } => dev::run(config, args).await,
            Command::Router(_) => {
                role(Roles {
                    router: true,
                    ..Default::default()
                })
                .await
            }
            Command::Worker(_) => {
                role(Roles {
                    worker: true,
                    ..Default::default()
                })
                .await
            }
            Command::Api(_) => {
                role(Roles {
                    api: true,
                    ..Default::default()
                })
                .await
            }
            Command::Publish { args, .. } => publish::run(&config, args).await,
            Command::Sink(args) => sink::run(args).await,
            Command::Bench { args, .. } => {
                let matches = matches
                    .subcommand_matches("bench")
                    .expect("the bench command was parsed");
                bench::run(args, bench::forwarded(matches)?).await
            }
            Command::Tenants(args) => manage::tenants(args).await,
            Command::ApiKeys(args) => manage::api_keys(args).await,
            Command::Portal(args) => manage::portal(args).await,
            Command::Endpoints(args) => manage::endpoints(*args).await,
            Command::Events(args) => manage::events(args).await,
            Command::EventTypes(args) => manage::event_types(args).await,
            Command::Attempts(args) => manage::attempts(args).await,
            Command::DeadLetters(args) => manage::dead_letters(args).await,
            Command::Jobs(args) => manage::jobs(args).await,
            Command::Audit(args) => manage::audit(args).await,
            Command::Keygen => {
                use std::io::Write;
                writeln!(std::io::stdout(), "{}", gancho_store::Keyring::generate())?;
                Ok(())
            }
            Command::Secrets(SecretsCmd::ReEncrypt(_)) => roles::reencrypt(&config).await,
            Command::Openapi => {
                use std::io::Write;
                let spec = gancho_api::openapi().to_pretty_json()?;
                writeln!(std::io::stdout(), "{spec}")?;
                Ok(())
            }
        }
    });
    if let Err(e) = result {
        if let Some(c) = e.downcast_ref::<ConfigError>() {
            exit_config(c);
        }
        eprintln!("gancho: {e:#}");
        std::process::exit(1);
    }
}

fn exit_config(e: &ConfigError) -> ! {
    eprintln!("gancho: {e}");
    std::process::exit(EXIT_CONFIG);
}
