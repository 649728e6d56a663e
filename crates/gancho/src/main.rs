//! The `gancho` binary: parses the command line and runs one role, or all of them.

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "gancho", version, about = "Webhook delivery on NATS JetStream")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Every role in one process, with its own nats-server (data under ./.gancho/).
    Dev,
}

fn main() {
    match Cli::parse().command {
        Command::Dev => {
            println!(
                "gancho {}: pipeline not built yet",
                env!("CARGO_PKG_VERSION")
            );
        }
    }
}
