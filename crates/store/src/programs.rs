//! Endpoints' jq programs as the roles run them: what they read (the envelope the receiver
//! would get, plus the event's id and channels) and a filter's verdict, with its failures
//! counted in `gancho_filter_failures_total{role, reason}`.

use crate::LiveEndpoint;
use gancho_jq::{Budget, Input};
use gancho_telemetry::names;
use time::OffsetDateTime;
use tracing::debug;

/// The parts of an event a program reads.
#[derive(Clone, Copy)]
pub struct EventParts<'a> {
    pub id: &'a str,
    pub event_type: &'a str,
    pub occurred_at: OffsetDateTime,
    pub payload: &'a [u8],
    pub channels: &'a [String],
}

impl EventParts<'_> {
    /// What a program reads: `{"type", "timestamp", "data", "channels", "id"}`, the timestamp
    /// as the standard body writes it.
    pub fn input(&self) -> Result<Input, String> {
        Input::new(
            self.id,
            self.event_type,
            &gancho_core::webhook::timestamp(self.occurred_at),
            self.payload,
            self.channels,
        )
    }
}

/// The filters of one event: its input is read once, and every filter shares one budget (all
/// of a tenant's filters, so that one tenant's programs cannot slow routing for the others:
/// past it the rest do not match).
pub struct Filtering<'a> {
    role: &'static str,
    event: EventParts<'a>,
    input: Option<Result<Input, String>>,
    budget: Budget,
}

impl<'a> Filtering<'a> {
    pub fn new(role: &'static str, event: EventParts<'a>) -> Self {
        Self {
            role,
            event,
            input: None,
            budget: Budget::filters(),
        }
    }

    /// Whether `ep` gets the event: it has no filter, or its filter's first output is `true`.
    /// A filter that fails, yields nothing or is cut off does not match (counted).
    pub fn passes(&mut self, ep: &LiveEndpoint) -> bool {
        let Some(filter) = ep.filter() else {
            return true;
        };
        let program = match filter {
            Ok(p) => p,
            Err(_) => return self.failed("compile"),
        };
        let input = match self.input.get_or_insert_with(|| self.event.input()) {
            Ok(input) => input,
            Err(_) => return self.failed("input"),
        };
        match program.matches(input, &mut self.budget) {
            Ok(yes) => yes,
            Err(e) => {
                debug!(endpoint = %ep.config.id, event = %self.event.id, error = %e, "An endpoint's filter gave no answer; the event does not match.");
                self.failed(e.reason())
            }
        }
    }

    /// Operations the event's filters have spent so far.
    pub fn spent(&self) -> u64 {
        gancho_jq::FILTER_BUDGET - self.budget.left()
    }

    fn failed(&self, reason: &'static str) -> bool {
        metrics::counter!(names::FILTER_FAILURES, "role" => self.role, "reason" => reason)
            .increment(1);
        false
    }
}
