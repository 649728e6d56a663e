//! `gancho publish`: sends one `gancho.v1.Event` to JetStream, as a platform service would.

use crate::config::Config;
use anyhow::{bail, Context as _};
use async_nats::jetstream::{self, message::PublishMessage};
use bytes::Bytes;
use clap::Args;
use gancho_proto::{Event, Message as _};
use std::collections::HashMap;

/// Where `gancho dev` serves NATS when port 4222 is free; `publish` uses it when no URL is
/// configured and no dev of this directory wrote another (`.gancho/nats-url`).
pub const DEV_NATS_URL: &str = "nats://127.0.0.1:4222";

/// The NATS of the `gancho dev` started in this directory, or the default dev URL.
fn dev_nats_url() -> String {
    std::fs::read_to_string(crate::dev::NATS_URL_FILE)
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| DEV_NATS_URL.to_owned())
}

#[derive(Args, Debug)]
pub struct PublishArgs {
    /// Tenant the event belongs to.
    #[arg(long)]
    pub tenant: String,
    /// Dotted event type, like invoice.paid.
    #[arg(long = "type")]
    pub event_type: String,
    /// The JSON payload, delivered as "data".
    #[arg(long)]
    pub data: String,
    /// Event id (the idempotency key). Default: a fresh evt_... id.
    #[arg(long)]
    pub id: Option<String>,
    /// A channel to tag the event with; repeat for several.
    #[arg(long = "channel")]
    pub channels: Vec<String>,
    /// An attribute as key=value; repeat for several.
    #[arg(long = "attr")]
    pub attributes: Vec<String>,
}

pub async fn run(config: &Config, args: PublishArgs) -> anyhow::Result<()> {
    gancho_core::id::validate_tenant(&args.tenant).context("--tenant")?;
    gancho_core::id::validate_event_type(&args.event_type).context("--type")?;
    if !gancho_core::webhook::is_json(args.data.as_bytes()) {
        bail!("--data is not a JSON document: {}", args.data);
    }
    let mut attributes = HashMap::new();
    for kv in &args.attributes {
        let (k, v) = kv
            .split_once('=')
            .with_context(|| format!("--attr {kv:?} must be key=value"))?;
        attributes.insert(k.to_owned(), v.to_owned());
    }
    let id = args.id.unwrap_or_else(new_event_id);
    let event = Event {
        id: id.clone(),
        tenant: args.tenant.clone(),
        r#type: args.event_type.clone(),
        occurred_at: Some(gancho_proto::timestamp(time::OffsetDateTime::now_utc())),
        payload: Bytes::from(args.data.into_bytes()),
        attributes,
        channels: args.channels,
    };
    let url = config.nats_url.clone().unwrap_or_else(dev_nats_url);
    let client = crate::roles::connect(&url, "gancho-publish".into()).await?;
    let js = jetstream::new(client);
    let subject = config.subjects.event(&args.tenant, &args.event_type);
    let ack = js
        .send_publish(
            subject.clone(),
            PublishMessage::build()
                .payload(Bytes::from(event.encode_to_vec()))
                .message_id(gancho_core::subject::event_message_id(&args.tenant, &id)),
        )
        .await
        .context("cannot publish")?
        .await
        .with_context(|| {
            format!("no stream took {subject}; is gancho running against this NATS?")
        })?;
    let dup = if ack.duplicate {
        " (duplicate id: JetStream kept the first)"
    } else {
        ""
    };
    println!(
        "published {id} to {subject} (stream sequence {}){dup}",
        ack.sequence
    );
    Ok(())
}

/// `evt_` and 24 random base32 characters.
pub fn new_event_id() -> String {
    gancho_store::model::random_id("evt_", 24)
}
