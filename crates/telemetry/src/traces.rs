//! Traces: OpenTelemetry spans exported over OTLP/HTTP (protobuf), set with the standard
//! variables (`OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`,
//! `OTEL_SERVICE_NAME`, `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG`,
//! `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_EXPORTER_OTLP_TIMEOUT`).
//! Off (no span made, nothing exported) unless an endpoint is set.
//!
//! Finished spans go through a bounded queue of gancho's own ([`QUEUE`] spans by default) to one export
//! task: when the collector is slow or gone the queue fills and further spans are dropped and
//! counted (`gancho_trace_spans_total{result="dropped"}`), so delivery never waits for traces.
//! [`Exporting::shutdown`] exports what the queue holds before the process exits.
//!
//! Context crosses processes as W3C `traceparent` text ([`traceparent`], [`parse`]): on an
//! event's NATS message or HTTP request, and in a delivery's `trace_parent` field (not a
//! message header: retries and held deliveries are republished).

use crate::names;
use opentelemetry::trace::{
    SpanId, SpanKind, TraceContextExt as _, TraceFlags, TraceId, TraceState, Tracer as _,
};
use opentelemetry::Context;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider, SpanData, SpanExporter as _};
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Spans the queue in front of the exporter holds at most, by default.
pub const QUEUE: usize = 8_192;
/// Spans sent to the collector in one request at most.
const BATCH: usize = 512;
/// How long the export task gathers spans before it sends what it has.
const LINGER: Duration = Duration::from_millis(200);

static TRACER: OnceLock<SdkTracer> = OnceLock::new();

/// The export, running: [`Exporting::shutdown`] flushes it.
pub struct Exporting {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    provider: SdkTracerProvider,
}

impl Exporting {
    /// Exports what the queue holds (within `patience`), then stops.
    pub async fn shutdown(self, patience: Duration) {
        self.stop.cancel();
        if tokio::time::timeout(patience, self.task).await.is_err() {
            tracing::warn!(
                patience_secs = patience.as_secs_f64(),
                "Spans not exported before shutdown."
            );
        }
        let _ = self.provider.shutdown();
    }
}

/// Whether an OTLP endpoint is set for traces.
fn endpoint_set() -> bool {
    [
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    ]
    .iter()
    .any(|k| std::env::var(k).is_ok_and(|v| !v.trim().is_empty()))
}

/// Starts exporting when an OTLP endpoint is set (`None` when none is: traces are off).
/// `service` names the process when `OTEL_SERVICE_NAME` is not set (`gancho-worker`, ...).
/// `Err` says which variable is wrong and why. Needs a tokio runtime.
pub fn start(service: &str, queue: usize) -> Result<Option<Exporting>, String> {
    use opentelemetry_otlp::{Protocol, WithExportConfig as _, WithHttpConfig as _};
    if !endpoint_set() {
        return Ok(None);
    }
    for key in [
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    ] {
        if let Ok(v) = std::env::var(key) {
            let ok = v.trim().is_empty()
                || (v.starts_with("http://") || v.starts_with("https://"))
                    && v.parse::<hyper::http::Uri>().is_ok();
            if !ok {
                return Err(format!(
                    "{key}: {v:?} is not an http:// or https:// URL (e.g. http://otel-collector:4318)"
                ));
            }
        }
    }
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_webpki_roots()
        .https_or_http()
        .enable_http1()
        .build();
    let client = opentelemetry_http::hyper::HyperClient::new(https, Duration::from_secs(10), None);
    let mut exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_http_client(client)
        .build()
        .map_err(|e| format!("OTEL_EXPORTER_OTLP_ENDPOINT: cannot set up the exporter: {e}"))?;
    let mut resource = opentelemetry_sdk::Resource::builder();
    if std::env::var("OTEL_SERVICE_NAME").is_err() {
        resource = resource.with_service_name(service.to_owned());
    }
    let resource = resource
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .build();
    exporter.set_resource(&resource);
    let (tx, rx) = mpsc::channel(queue.max(1));
    let provider = SdkTracerProvider::builder()
        .with_resource(resource)
        .with_span_processor(Queue { tx })
        .build();
    let tracer = opentelemetry::trace::TracerProvider::tracer(&provider, "gancho");
    let _ = TRACER.set(tracer);
    let stop = CancellationToken::new();
    let task = tokio::spawn(export(rx, exporter, stop.clone()));
    Ok(Some(Exporting {
        stop,
        task,
        provider,
    }))
}

/// The tracer, when traces are on.
pub fn tracer() -> Option<&'static SdkTracer> {
    TRACER.get()
}

/// Whether traces are on (an OTLP endpoint is set): callers skip building spans otherwise.
pub fn on() -> bool {
    TRACER.get().is_some()
}

/// The W3C header that carries a trace's context into gancho and out to receivers.
pub const TRACEPARENT: &str = "traceparent";

pub use opentelemetry::trace::{Link, SpanContext, SpanKind as Kind};
pub use opentelemetry::KeyValue;

/// The queue in front of the exporter: a finished span is queued, or dropped and counted.
#[derive(Debug)]
struct Queue {
    tx: mpsc::Sender<SpanData>,
}

impl opentelemetry_sdk::trace::SpanProcessor for Queue {
    fn on_start(&self, _span: &mut opentelemetry_sdk::trace::Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        if !span.span_context.is_sampled() {
            return;
        }
        if let Err(mpsc::error::TrySendError::Full(_)) = self.tx.try_send(span) {
            metrics::counter!(names::TRACE_SPANS, "result" => "dropped").increment(1);
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }
}

/// Sends the queued spans to the collector in batches until `stop`, then what is left.
async fn export(
    mut rx: mpsc::Receiver<SpanData>,
    exporter: opentelemetry_otlp::SpanExporter,
    stop: CancellationToken,
) {
    let failures = crate::EverySecond::new();
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        let stopping = tokio::select! {
            n = rx.recv_many(&mut batch, BATCH) => n == 0,
            () = stop.cancelled() => true,
        };
        if !stopping && batch.len() < BATCH {
            // Gather a little more before the request.
            tokio::select! {
                () = tokio::time::sleep(LINGER) => {}
                () = stop.cancelled() => {}
            }
        }
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(span) => batch.push(span),
                Err(_) => break,
            }
        }
        if !batch.is_empty() {
            let n = batch.len() as u64;
            match exporter.export(std::mem::take(&mut batch)).await {
                Ok(()) => {
                    metrics::counter!(names::TRACE_SPANS, "result" => "exported").increment(n);
                }
                Err(e) => {
                    metrics::counter!(names::TRACE_SPANS, "result" => "failed").increment(n);
                    if let Some(left_out) = failures.allow() {
                        tracing::warn!(error = %e, spans = n, left_out, "The OTLP collector did not take spans.");
                    }
                }
            }
        }
        if (stopping || stop.is_cancelled()) && rx.is_empty() {
            return;
        }
    }
}

/// The W3C `traceparent` of `cx`: `00-<trace id>-<span id>-<flags>`.
pub fn traceparent(cx: &SpanContext) -> String {
    format!(
        "00-{}-{}-{:02x}",
        cx.trace_id(),
        cx.span_id(),
        cx.trace_flags().to_u8()
    )
}

/// The remote span context a W3C `traceparent` names; `None` when it is not one (a wrong
/// length, version ff, an all-zero id, bad hex).
pub fn parse(traceparent: &str) -> Option<SpanContext> {
    let parts: Vec<&str> = traceparent.trim().split('-').collect();
    let [version, trace, span, flags, ..] = parts[..] else {
        return None;
    };
    let hex = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
    if !hex(version, 2) || version == "ff" || (version == "00" && parts.len() != 4) {
        return None;
    }
    if !hex(trace, 32) || !hex(span, 16) || !hex(flags, 2) {
        return None;
    }
    let trace_id = TraceId::from_hex(trace).ok()?;
    let span_id = SpanId::from_hex(span).ok()?;
    if trace_id == TraceId::INVALID || span_id == SpanId::INVALID {
        return None;
    }
    let flags = u8::from_str_radix(flags, 16).ok()?;
    Some(SpanContext::new(
        trace_id,
        span_id,
        TraceFlags::new(flags) & TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    ))
}

/// `parent` with its sampled flag as gancho's sampler would decide for a new trace with its
/// trace id (`OTEL_TRACES_SAMPLER` and its argument), not as the caller set it: for callers
/// who may not choose to be sampled (a tenant's key on HTTP ingest).
pub fn resampled(parent: &SpanContext) -> SpanContext {
    use opentelemetry_sdk::trace::{Sampler, ShouldSample as _};
    static RATIO: std::sync::LazyLock<f64> = std::sync::LazyLock::new(|| {
        let arg = std::env::var("OTEL_TRACES_SAMPLER_ARG")
            .ok()
            .and_then(|a| a.trim().parse::<f64>().ok())
            .filter(|r| (0.0..=1.0).contains(r))
            .unwrap_or(1.0);
        match std::env::var("OTEL_TRACES_SAMPLER").as_deref() {
            Ok("always_off" | "parentbased_always_off") => 0.0,
            Ok("traceidratio" | "parentbased_traceidratio") => arg,
            _ => 1.0,
        }
    });
    let decision = Sampler::TraceIdRatioBased(*RATIO).should_sample(
        None,
        parent.trace_id(),
        "",
        &SpanKind::Server,
        &[],
        &[],
    );
    let flags = match decision.decision {
        opentelemetry_sdk::trace::SamplingDecision::RecordAndSample => TraceFlags::SAMPLED,
        _ => TraceFlags::default(),
    };
    SpanContext::new(
        parent.trace_id(),
        parent.span_id(),
        flags,
        true,
        TraceState::default(),
    )
}

/// A span to start: its name, kind, parent (a remote context, or none for a new trace), start
/// time and attributes. Ended by [`Started::end`].
pub struct SpanStart<'a> {
    pub name: &'static str,
    pub kind: SpanKind,
    pub parent: Option<&'a SpanContext>,
    pub start: SystemTime,
    pub attributes: Vec<KeyValue>,
    pub links: Vec<opentelemetry::trace::Link>,
}

/// A started span (traces on).
pub struct Started(opentelemetry_sdk::trace::Span);

impl SpanStart<'_> {
    /// Starts the span; `None` when traces are off.
    pub fn start(self) -> Option<Started> {
        let tracer = tracer()?;
        let cx = match self.parent {
            Some(parent) => Context::new().with_remote_span_context(parent.clone()),
            None => Context::new(),
        };
        let span = tracer
            .span_builder(self.name)
            .with_kind(self.kind)
            .with_start_time(self.start)
            .with_attributes(self.attributes)
            .with_links(self.links)
            .start_with_context(tracer, &cx);
        Some(Started(span))
    }
}

impl Started {
    /// The span's context, to pass on as a parent.
    pub fn context(&self) -> SpanContext {
        opentelemetry::trace::Span::span_context(&self.0).clone()
    }

    /// Adds attributes known only at the end.
    pub fn set(&mut self, attributes: Vec<KeyValue>) {
        opentelemetry::trace::Span::set_attributes(&mut self.0, attributes);
    }

    /// Marks the span failed with `description`.
    pub fn error(&mut self, description: String) {
        opentelemetry::trace::Span::set_status(
            &mut self.0,
            opentelemetry::trace::Status::error(description),
        );
    }

    /// Ends the span now, or at `at`.
    pub fn end(mut self, at: Option<SystemTime>) {
        match at {
            Some(at) => opentelemetry::trace::Span::end_with_timestamp(&mut self.0, at),
            None => opentelemetry::trace::Span::end(&mut self.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_round_trips_and_bad_ones_are_refused() {
        let text = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let cx = parse(text).unwrap();
        assert!(cx.is_remote() && cx.is_sampled());
        assert_eq!(traceparent(&cx), text);
        let unsampled = parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00").unwrap();
        assert!(!unsampled.is_sampled());
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            assert!(parse(bad).is_none(), "{bad:?} was taken");
        }
        // A later version may add fields after the flags.
        assert!(parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra").is_some());
    }
}
