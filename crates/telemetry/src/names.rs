//! Every metric gancho exports, in one place, named `gancho_<subsystem>_<name>_<unit>[_total]`.
//! Labels come only from the fixed sets written next to each metric.

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};

/// Entries of a structure that lives as long as the process, by `structure`. The worker's:
/// gates (endpoints with admission state in this worker; idle ones pruned past 4,096 or twice
/// those in use) | messages_finished (deliveries messages finished lately, for 90 s and at most
/// 200,000) | messages_handed_back (with outcomes stored or kept, at most 10,000) | failure_lines
/// (endpoints with a failed-attempt log line lately, at most 100,000). The api's:
/// key_lookups (API keys and portal sessions looked up in the last 2 s, at most 10,000) |
/// known_tenants (tenants HTTP ingest saw exist lately, at most 10,000) |
/// link_mint_addresses, link_open_addresses (client addresses the portal link limits track,
/// at most 10,000 each) | api_credentials (API keys and portal sessions the request limit
/// tracks, at most 10,000 per rate in use) | ingest_tenants (tenants the HTTP ingest rate
/// tracks, at most 10,000 per rate in use). The router's: filter_spend (tenants whose jq
/// filters spent part of their share of the router lately, at most 10,000). Each has a stated bound beside its definition; a value that climbs
/// with traffic is the next leak.
pub const RETAINED_ENTRIES: &str = "gancho_retained_entries";
/// The `structure` label values of [`RETAINED_ENTRIES`].
pub const RETAINED_STRUCTURES: [&str; 4] = [
    "gates",
    "messages_finished",
    "messages_handed_back",
    "failure_lines",
];
/// The api's `structure` label values of [`RETAINED_ENTRIES`].
pub const API_RETAINED_STRUCTURES: [&str; 6] = [
    "key_lookups",
    "known_tenants",
    "link_mint_addresses",
    "link_open_addresses",
    "api_credentials",
    "ingest_tenants",
];
/// `/v1` requests refused with 429 because their credential (an API key, a portal session)
/// was past its rate, by `group`: the route's resource (`endpoints`, `attempts`, `events`,
/// `dead-letters`, `jobs`, `event-types`, `api-keys`, `portal-sessions`, `audit-log`, `tenant`).
pub const API_RATE_LIMITED: &str = "gancho_api_rate_limited_total";
/// Changes made through the API whose audit record could not be stored (JetStream did not
/// take it): the change stands; the record is missing.
pub const AUDIT_UNRECORDED: &str = "gancho_audit_unrecorded_total";
/// Audit records the api's catch-up wrote for changes whose record was missing (their api
/// died between the change and its record, or JetStream did not take the record then).
pub const AUDIT_CAUGHT_UP: &str = "gancho_audit_caught_up_total";
/// The `group` label values of [`API_RATE_LIMITED`].
pub const API_ROUTE_GROUPS: [&str; 10] = [
    "endpoints",
    "attempts",
    "events",
    "dead-letters",
    "jobs",
    "event-types",
    "api-keys",
    "portal-sessions",
    "audit-log",
    "tenant",
];

/// Events the router received, once each. `path`: nats | http (HTTP ingest).
pub const EVENTS_RECEIVED: &str = "gancho_events_received_total";
/// Events the router consumed. `outcome`: routed | unmatched | invalid.
pub const ROUTER_EVENTS: &str = "gancho_router_events_total";
/// Events dead-lettered by the router. `reason`: undecodable | not_json | subject_mismatch | invalid | schema.
pub const ROUTER_EVENTS_INVALID: &str = "gancho_router_events_invalid_total";
/// Deliveries the router created (one per matching endpoint).
pub const ROUTER_DELIVERIES_CREATED: &str = "gancho_router_deliveries_created_total";
/// Events whose fan-out failed to publish and will be redelivered.
pub const ROUTER_PUBLISH_FAILURES: &str = "gancho_router_publish_failures_total";
/// Tenants whose events this router consumes (one events consumer each).
pub const ROUTER_TENANTS: &str = "gancho_router_tenants";
/// Events of a tenant not yet routed (its events consumer's pending and unacked), by `tenant`
/// (the listed tenants, the rest summed as `other`).
pub const TENANT_BACKLOG: &str = "gancho_tenant_backlog_events";
/// How long an event waited between being stored and being routed, by `tenant`: what a
/// tenant's webhooks wait behind its own backlog (and, were sharing unfair, behind others').
pub const TENANT_WAIT: &str = "gancho_tenant_wait_seconds";
/// Deliveries routed to the bulk lanes (their tenant had a backlog), by `tenant`.
pub const ROUTER_BULK: &str = "gancho_router_bulk_deliveries_total";

/// Attempts by `outcome`: success | http_error | timeout | connect_error | tls_error |
/// request_error | blocked | proxy_error; and `class` of the answer: 1xx | 2xx | 3xx | 4xx | 5xx | none.
pub const DELIVERY_ATTEMPTS: &str = "gancho_delivery_attempts_total";
/// Duration of one HTTP attempt. `outcome` as above.
pub const DELIVERY_ATTEMPT_DURATION: &str = "gancho_delivery_attempt_duration_seconds";
/// From the event's time to the 2xx that delivered it.
pub const DELIVERY_E2E: &str = "gancho_delivery_end_to_end_seconds";
/// HTTP requests in flight in this worker.
pub const DELIVERY_IN_FLIGHT: &str = "gancho_delivery_in_flight_requests";
/// Retries scheduled after a failed attempt.
pub const DELIVERY_RETRIES_SCHEDULED: &str = "gancho_delivery_retries_scheduled_total";
/// Deliveries deferred without an attempt. `reason` (`gancho_core::policy::Wait`):
/// rate_limited | retry_after (the receiver asked for a pause), rescheduled; in_flight_cap
/// (the endpoint's queue full) | circuit_open | stalled (no answer for 1 s with every slot
/// taken), parked.
pub const DELIVERY_DEFERRED: &str = "gancho_delivery_deferred_total";
/// Deliveries given up on. `reason`: exhausted | endpoint_gone | endpoint_disabled | undecodable |
/// invalid.
pub const DELIVERY_DEAD_LETTERED: &str = "gancho_delivery_dead_lettered_total";
/// Endpoints whose circuit is open in this worker.
pub const CIRCUITS_OPEN: &str = "gancho_delivery_circuits_open";
/// Partitions of the deliveries stream this worker serves (each served by one worker).
pub const WORKER_PARTITIONS: &str = "gancho_worker_partitions";
/// Workers alive, as this worker last read them from the workers bucket.
pub const WORKERS_ALIVE: &str = "gancho_workers_alive";
/// Api processes alive, as this api last read them from the api processes' bucket: each
/// enforces the per-credential request rate divided by this.
pub const API_PROCESSES_ALIVE: &str = "gancho_api_processes_alive";
/// Endpoints whose rate 429s lowered below their usual one in this worker (adaptive rate);
/// each change is a log line with the endpoint and its rate.
pub const ENDPOINTS_SLOWED: &str = "gancho_delivery_endpoints_slowed";
/// Endpoints paused by their receiver's `Retry-After` (429/503) in this worker.
pub const ENDPOINTS_PAUSED: &str = "gancho_delivery_endpoints_paused";
/// Endpoints disabled by the worker. `reason`: gone | failing.
pub const ENDPOINTS_DISABLED: &str = "gancho_delivery_endpoints_disabled_total";
/// 1 while the router waits for room in the deliveries stream (at its high-water mark).
pub const ROUTER_WAITING_FOR_ROOM: &str = "gancho_router_waiting_for_room";
/// 1 while the events stream is capped at the count it holds because the server's store is
/// full (the room freed by deliveries goes to routing; producers are refused meanwhile).
pub const EVENTS_CAPPED: &str = "gancho_router_events_capped";
/// Milliseconds a role spent waiting for storage room. `role`: router | worker | api.
pub const STORAGE_WAIT: &str = "gancho_storage_wait_milliseconds_total";
/// 1 while JetStream refuses this role's writes for lack of room (a stream at its limit, or
/// the server's store full). `role`: router | worker | api.
pub const STORAGE_FULL: &str = "gancho_storage_full";
/// CPU time this process used (user and system), as the kernel counts it.
pub const PROCESS_CPU: &str = "gancho_process_cpu_milliseconds_total";
/// Resident memory of this process.
pub const PROCESS_RSS: &str = "gancho_process_resident_memory_bytes";
/// 1, with the version and the roles this process runs. `version`: the crate version;
/// `roles`: e.g. `api`, `router+worker`.
pub const BUILD_INFO: &str = "gancho_build_info";
/// Operational events sent to tenants. `type`: gancho.delivery.exhausted |
/// gancho.endpoint.disabled | gancho.endpoint.recovered.
pub const OPERATIONAL_EVENTS: &str = "gancho_operational_events_total";
/// Attempt records not written because JetStream had no room; the delivery went on.
pub const ATTEMPTS_UNRECORDED: &str = "gancho_delivery_attempts_unrecorded_total";
/// Attempt records written alone (with a PubAck each) because their fast batch could not
/// take them, by why (`off`: the stream or the server does not take fast batches; `broken`:
/// the batch broke before confirming them).
pub const RECORDS_ALONE: &str = "gancho_delivery_records_alone_total";
/// Scheduled retries found overdue (JetStream did not fire them, which happens when its store
/// was full at their time) and scheduled again.
pub const RETRIES_REARMED: &str = "gancho_delivery_retries_rearmed_total";
/// Bytes JetStream stores for gancho's account, as of the last look.
pub const JETSTREAM_STORAGE: &str = "gancho_jetstream_storage_bytes";
/// JetStream's storage limit for gancho's account (the server's `max_file_store` unless the
/// account has its own).
pub const JETSTREAM_STORAGE_LIMIT: &str = "gancho_jetstream_storage_limit_bytes";
/// Messages in a stream, as of the last look. `stream`: events | deliveries | held | attempts |
/// dead.
pub const STREAM_MESSAGES: &str = "gancho_stream_messages";
/// Bytes in a stream, as of the last look. `stream`: events | deliveries | held | attempts |
/// dead.
pub const STREAM_BYTES: &str = "gancho_stream_bytes";
/// Bytes of deliveries against the router's room (`GANCHO_DELIVERIES_MAX_BYTES`, shown as
/// `gancho_stream_max_bytes{stream="deliveries"}`): the deliveries, held and ordered streams together,
/// as the router last read them. Set only by a router with a room.
pub const DELIVERIES_ROOM_USED: &str = "gancho_deliveries_room_used_bytes";
/// A stream's byte limit (-1: none of its own; for deliveries, the router's room).
/// `stream`: events | deliveries | held | attempts | dead.
pub const STREAM_MAX_BYTES: &str = "gancho_stream_max_bytes";
/// A stream's record limit (-1: none). `stream`: events | deliveries | held | attempts | dead.
pub const STREAM_MAX_MESSAGES: &str = "gancho_stream_max_messages";
/// Distinct subjects in a stream: nats-server holds an index entry in memory for each (about
/// 100 bytes). An attempt's or a dead letter's subject names its event, so for the logs it
/// follows their records. `stream`: events | deliveries | attempts | dead.
pub const STREAM_SUBJECTS: &str = "gancho_stream_subjects";
/// Routed events purged from a near-full events stream (the replay window shrank).
pub const EVENTS_TRIMMED: &str = "gancho_router_events_trimmed_total";
/// Attempt records purged by a router whose full store held nothing else it could free.
pub const ATTEMPTS_SHED: &str = "gancho_router_attempts_shed_total";
/// Deliveries set aside for a paused endpoint (`gancho.hold.<tenant>.<endpoint>`, in the held
/// stream), by the worker or the router.
pub const DELIVERY_HELD: &str = "gancho_delivery_held_total";
/// Ordered deliveries waiting in this worker's lanes (their index), by partition.
pub const ORDERED_WAITING: &str = "gancho_ordered_waiting";
/// Keys of ordered endpoints whose head has failed and holds the key's later deliveries, by
/// partition.
pub const ORDERED_KEYS_BLOCKED: &str = "gancho_ordered_keys_blocked";
/// How long the oldest blocked key's head has been failing, by partition.
pub const ORDERED_OLDEST_BLOCKED: &str = "gancho_ordered_oldest_blocked_seconds";
/// Spans handed to the OTLP exporter, by `result`: exported | failed (the collector did not
/// take them) | dropped (gancho's queue in front of the exporter was full; delivery never
/// waits for traces).
pub const TRACE_SPANS: &str = "gancho_trace_spans_total";
/// Held deliveries moved back for delivery after their endpoint was resumed, disabled or
/// deleted.
pub const DELIVERY_RELEASED: &str = "gancho_delivery_released_total";
/// Deliveries waiting in this worker for their endpoint's turn (its in-flight cap or rate
/// limit), holding no request slot.
pub const DELIVERIES_QUEUED: &str = "gancho_delivery_queued_deliveries";
/// From a publish to JetStream's acknowledgement. `role`: router (deliveries) | worker
/// (attempt records, retries, dead letters).
pub const JETSTREAM_PUBLISH: &str = "gancho_jetstream_publish_seconds";
/// Deliveries waiting for paused endpoints, as of this worker's last look.
pub const DELIVERIES_HELD_NOW: &str = "gancho_deliveries_held";
/// Deliveries handed back to JetStream for redelivery: their outcome could not be recorded,
/// or their endpoint is not in this worker's config snapshot yet.
pub const DELIVERY_REQUEUED: &str = "gancho_delivery_requeued_total";
/// Messages of the deliveries stream that came back to the worker that had them and were
/// answered without sending again, by `why`: finished (their outcomes were stored and the
/// ack was lost: acked) | in_hand (a copy while the first is worked on: answered with it) |
/// outcomes_kept (handed back with outcomes it could not store: stored now, not sent again).
pub const DELIVERY_COPIES: &str = "gancho_delivery_copies_total";
/// The `why` label values of [`DELIVERY_COPIES`].
pub const DELIVERY_COPY_WHYS: [&str; 3] = ["finished", "in_hand", "outcomes_kept"];

/// Messages not yet delivered to the consumer. `stream`: events | deliveries.
pub const CONSUMER_PENDING: &str = "gancho_consumer_pending_messages";
/// Messages delivered and not yet acked. `stream`: events | deliveries.
pub const CONSUMER_ACK_PENDING: &str = "gancho_consumer_ack_pending_messages";
/// Age of the oldest message this process is working on. `stream`: events | deliveries.
pub const CONSUMER_OLDEST_IN_HAND: &str = "gancho_consumer_oldest_in_hand_seconds";
/// Messages this process has taken and not yet finished. `stream`: events | deliveries.
pub const CONSUMER_IN_HAND: &str = "gancho_consumer_in_hand_messages";
/// Stalls: no message finished for the stall threshold while some were in hand.
/// `stream`: events | deliveries.
pub const CONSUMER_STALLS: &str = "gancho_consumer_stalls_total";
/// Seconds since the config snapshot last changed.
pub const CONFIG_SNAPSHOT_AGE: &str = "gancho_config_snapshot_age_seconds";
/// The config revision this process's snapshot reflects.
pub const CONFIG_SNAPSHOT_REVISION: &str = "gancho_config_snapshot_revision";
/// The config bucket's latest revision, as of this process's last look. Above the
/// snapshot's revision for long means the process stopped following config changes.
pub const CONFIG_REVISION: &str = "gancho_config_revision";
/// From a config change's write to the config bucket to this process's snapshot having it.
pub const CONFIG_CHANGE_LAG: &str = "gancho_config_change_lag_seconds";
/// Runs of an endpoint's jq filter that gave no answer, by `role` (`router`, `api` for a job's
/// filter) and `reason`: `error` (the program raised one), `empty` (no output), `budget`
/// (the tenant's operations for the event were spent), `depth`, `size` (cut off), `compile`
/// (a stored program this role cannot compile), `input` (the event cannot be read), `engine`.
/// Such an event does not match.
pub const FILTER_FAILURES: &str = "gancho_filter_failures_total";
/// Events a router handed back to wait, by `tenant`, because that tenant's jq filters had
/// spent their share of the router (2,000,000 operations a second, about a tenth of a core).
pub const FILTER_WAITS: &str = "gancho_filter_waits_total";
/// Slow-consumer events reported by the NATS client (messages were dropped).
pub const NATS_SLOW_CONSUMER: &str = "gancho_nats_slow_consumer_events_total";

/// Creates the dead-letter counters of `tenant` (a listed tenant or `other`) at 0.
pub(crate) fn zero_dead_letters(tenant: &'static str) {
    use gancho_core::policy::DeadKind;
    for kind in DeadKind::OF_DELIVERIES {
        metrics::counter!(DELIVERY_DEAD_LETTERED, "reason" => kind.as_str(), "tenant" => tenant)
            .increment(0);
    }
    for kind in DeadKind::OF_EVENTS {
        metrics::counter!(ROUTER_EVENTS_INVALID, "reason" => kind.as_str(), "tenant" => tenant)
            .increment(0);
    }
}

#[allow(
    clippy::too_many_lines,
    reason = "one describe call per metric: the list of them"
)]
pub fn describe_all() {
    // Dead-letter counters exist at 0 from the start: Prometheus's increase() does not count
    // a counter's first value, so without this the first dead letters after a restart would
    // never fire an alert.
    zero_dead_letters(crate::OTHER_TENANTS);
    describe_counter!(
        API_RATE_LIMITED,
        "/v1 requests refused with 429 because their API key or portal session was past its rate, by route group."
    );
    describe_counter!(
        AUDIT_UNRECORDED,
        "Changes made through the API whose audit record could not be stored when they were made."
    );
    describe_counter!(
        AUDIT_CAUGHT_UP,
        "Audit records written late by the catch-up, for changes whose record was missing."
    );
    describe_gauge!(
        RETAINED_ENTRIES,
        "Entries of a long-lived structure of this process, by structure; each is bounded (see the metric's doc)."
    );
    describe_gauge!(
        CIRCUITS_OPEN,
        "Endpoints whose circuit is open in this worker."
    );
    describe_gauge!(
        ENDPOINTS_SLOWED,
        "Endpoints whose rate 429s lowered (halved per 429, back up a tenth a second) in this worker."
    );
    describe_gauge!(
        WORKER_PARTITIONS,
        "Partitions of the deliveries stream this worker serves; each partition is served by one worker at a time."
    );
    describe_gauge!(
        API_PROCESSES_ALIVE,
        "Api processes alive, as this api last read them; each enforces the per-credential request rate divided by this."
    );
    describe_gauge!(
        WORKERS_ALIVE,
        "Workers alive, as this worker last read them from the workers bucket."
    );
    describe_gauge!(
        ENDPOINTS_PAUSED,
        "Endpoints paused by their receiver's Retry-After in this worker."
    );
    describe_counter!(ROUTER_EVENTS, "Events consumed by the router, by outcome.");
    describe_counter!(
        FILTER_WAITS,
        "Events handed back to wait because their tenant's jq filters had spent their share of the router, by tenant."
    );
    describe_counter!(
        FILTER_FAILURES,
        "Runs of an endpoint's jq filter that gave no answer (the event did not match), by role and reason."
    );
    describe_counter!(
        ROUTER_EVENTS_INVALID,
        "Events dead-lettered by the router, by reason."
    );
    describe_counter!(
        ROUTER_DELIVERIES_CREATED,
        "Deliveries created, one per matching endpoint."
    );
    describe_gauge!(
        ROUTER_TENANTS,
        "Tenants whose events this router consumes, one events consumer each."
    );
    describe_gauge!(
        TENANT_BACKLOG,
        "Events of a tenant not yet routed, by tenant (the unlisted summed as other)."
    );
    describe_histogram!(
        TENANT_WAIT,
        Unit::Seconds,
        "Time from an event being stored to its routing, by tenant."
    );
    describe_counter!(
        ROUTER_BULK,
        "Deliveries routed to the bulk lanes because their tenant had a backlog, by tenant."
    );
    describe_counter!(
        ROUTER_PUBLISH_FAILURES,
        "Fan-outs that failed to publish and were handed back."
    );
    describe_counter!(
        EVENTS_RECEIVED,
        "Events the router received, once each, by ingest path."
    );
    describe_counter!(DELIVERY_ATTEMPTS, "Delivery attempts, by outcome.");
    describe_histogram!(
        DELIVERY_ATTEMPT_DURATION,
        Unit::Seconds,
        "Duration of one HTTP delivery attempt."
    );
    describe_histogram!(
        DELIVERY_E2E,
        Unit::Seconds,
        "Time from the event's occurred_at to the 2xx that delivered it."
    );
    describe_gauge!(
        DELIVERY_IN_FLIGHT,
        "HTTP requests in flight in this worker."
    );
    describe_counter!(
        DELIVERY_RETRIES_SCHEDULED,
        "Retries scheduled after a failed attempt."
    );
    describe_counter!(
        DELIVERY_DEFERRED,
        "Deliveries deferred without an attempt, by reason."
    );
    describe_counter!(
        DELIVERY_DEAD_LETTERED,
        "Deliveries dead-lettered, by reason."
    );
    describe_counter!(
        ENDPOINTS_DISABLED,
        "Endpoints disabled by the worker, by reason."
    );
    metrics::describe_gauge!(
        ROUTER_WAITING_FOR_ROOM,
        "1 while the router waits for room in the deliveries stream."
    );
    metrics::describe_gauge!(
        EVENTS_CAPPED,
        "1 while a full server store caps the events stream at the count it holds."
    );
    describe_counter!(
        STORAGE_WAIT,
        "Milliseconds spent waiting for storage room, by role."
    );
    metrics::describe_gauge!(STREAM_BYTES, "Bytes in a stream, by stream.");
    describe_gauge!(
        DELIVERIES_ROOM_USED,
        "Bytes of deliveries (the deliveries, held and ordered streams) against the router's room."
    );
    describe_gauge!(STREAM_MESSAGES, "Messages in a stream, by stream.");
    describe_gauge!(
        STREAM_MAX_MESSAGES,
        "A stream's record limit (-1: none), by stream."
    );
    describe_gauge!(
        STREAM_SUBJECTS,
        "Distinct subjects in a stream (nats-server keeps an index entry in memory for each), by stream."
    );
    describe_gauge!(
        STORAGE_FULL,
        "1 while JetStream refuses this role's writes for lack of room."
    );
    describe_counter!(
        PROCESS_CPU,
        "CPU time this process used (user and system), in milliseconds."
    );
    describe_gauge!(PROCESS_RSS, Unit::Bytes, "Resident memory of this process.");
    describe_gauge!(
        BUILD_INFO,
        "1, with the version and the roles this process runs."
    );
    describe_counter!(
        OPERATIONAL_EVENTS,
        "Operational events sent to tenants, by type."
    );
    describe_counter!(
        ATTEMPTS_UNRECORDED,
        "Attempt records not written because JetStream had no room."
    );
    describe_counter!(
        RECORDS_ALONE,
        "Attempt records written alone, with a PubAck each, because their fast batch could not take them, by why (off, broken)."
    );
    describe_counter!(
        RETRIES_REARMED,
        "Overdue scheduled retries that JetStream had not fired, scheduled again."
    );
    describe_gauge!(
        JETSTREAM_STORAGE,
        Unit::Bytes,
        "Bytes JetStream stores for gancho's account."
    );
    describe_gauge!(
        JETSTREAM_STORAGE_LIMIT,
        Unit::Bytes,
        "JetStream's storage limit for gancho's account."
    );
    describe_counter!(
        EVENTS_TRIMMED,
        "Routed events purged from a near-full events stream (the replay window shrank)."
    );
    describe_counter!(
        ATTEMPTS_SHED,
        "Oldest attempt records purged to make room when a full store held nothing else to free."
    );
    metrics::describe_gauge!(
        STREAM_MAX_BYTES,
        "A stream's byte limit (-1: none of its own), by stream."
    );
    describe_counter!(DELIVERY_HELD, "Deliveries set aside for a paused endpoint.");
    describe_gauge!(
        ORDERED_WAITING,
        "Ordered deliveries waiting for their key's turn in this worker's lanes, by partition."
    );
    describe_gauge!(
        ORDERED_KEYS_BLOCKED,
        "Keys of ordered endpoints whose head has failed and holds their later deliveries, by partition."
    );
    describe_gauge!(
        ORDERED_OLDEST_BLOCKED,
        "Seconds the oldest blocked key's head has been failing, by partition."
    );
    describe_counter!(
        TRACE_SPANS,
        "Spans handed to the OTLP exporter, by result: exported | failed | dropped (queue full)."
    );
    describe_counter!(
        DELIVERY_RELEASED,
        "Held deliveries released after their endpoint was resumed, disabled or deleted."
    );
    metrics::describe_gauge!(
        DELIVERIES_HELD_NOW,
        "Deliveries waiting for paused endpoints (all tenants), as of the last look."
    );
    describe_counter!(
        DELIVERY_REQUEUED,
        "Deliveries handed back for redelivery (outcome not recorded, or config not loaded yet)."
    );
    describe_counter!(
        DELIVERY_COPIES,
        "Messages that came back to the worker that had them, answered without sending again, by why."
    );
    describe_gauge!(
        CONSUMER_PENDING,
        "Messages waiting for a consumer, by stream."
    );
    describe_gauge!(
        CONSUMER_ACK_PENDING,
        "Messages delivered and not yet acknowledged, by stream."
    );
    describe_gauge!(
        CONSUMER_OLDEST_IN_HAND,
        Unit::Seconds,
        "Age of the oldest message this process is working on, by stream."
    );
    describe_gauge!(
        CONSUMER_IN_HAND,
        "Messages taken and not yet finished in this process, by stream."
    );
    describe_counter!(
        CONSUMER_STALLS,
        "Times no message finished for the stall threshold while some were in hand, by stream."
    );
    describe_gauge!(
        CONFIG_SNAPSHOT_AGE,
        Unit::Seconds,
        "Seconds since the config snapshot last changed."
    );
    describe_gauge!(
        DELIVERIES_QUEUED,
        "Deliveries waiting in this worker for their endpoint's turn."
    );
    describe_histogram!(
        JETSTREAM_PUBLISH,
        Unit::Seconds,
        "From a publish to JetStream's acknowledgement, by role."
    );
    describe_gauge!(
        CONFIG_SNAPSHOT_REVISION,
        "The config revision this process's snapshot reflects."
    );
    describe_gauge!(
        CONFIG_REVISION,
        "The config bucket's latest revision, as of this process's last look."
    );
    describe_histogram!(
        CONFIG_CHANGE_LAG,
        Unit::Seconds,
        "From a config change's write to the config bucket to this process's snapshot having it."
    );
    describe_counter!(
        NATS_SLOW_CONSUMER,
        "Slow-consumer events from the NATS client."
    );
}
