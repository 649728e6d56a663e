//! What a JetStream error means to the one who made the request, told once, here, from
//! async-nats' error kinds and JetStream's error codes: never from an error's text, which
//! changes between server versions and languages of the client.
//!
//! Every role decides the same few things from it: wait for room ([`Refusal::Full`]), try
//! again soon ([`Refusal::Unavailable`]), take the thing as gone ([`Refusal::NotFound`]), or
//! give up on the request ([`Refusal::Refused`]). The error itself is kept by the caller and
//! logged whole.

use async_nats::jetstream::{self, context, kv, stream, ErrorCode};
use std::error::Error as StdError;

/// What `error` calls for: [`Refusal::of`].
pub fn of(error: &(dyn StdError + 'static)) -> Refusal {
    Refusal::of(error)
}

/// Whether `error` says JetStream has no room.
pub fn is_full(error: &(dyn StdError + 'static)) -> bool {
    Refusal::of(error) == Refusal::Full
}

/// What a failed JetStream request calls for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No room: a stream at its own limit with `discard: new` (JetStream's 10077, store
    /// failed: maximum bytes or messages), or the server's or account's store full (10023,
    /// 10047). Nothing stored was dropped; wait for room and write again.
    Full,
    /// JetStream did not answer: the request timed out, nobody answered (a stream without a
    /// leader during an election), the connection was lost, or JetStream said it is not
    /// available (a 503). Try again.
    Unavailable,
    /// What was asked for is not there: no such message (10037), stream (10059) or consumer
    /// (10014).
    NotFound,
    /// JetStream (or the client, before sending) refused the request itself: sending it again
    /// as it is does not help.
    Refused,
}

impl Refusal {
    pub const ALL: [Refusal; 4] = [
        Refusal::Full,
        Refusal::Unavailable,
        Refusal::NotFound,
        Refusal::Refused,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Refusal::Full => "full",
            Refusal::Unavailable => "unavailable",
            Refusal::NotFound => "not_found",
            Refusal::Refused => "refused",
        }
    }

    /// Classifies `error`, looking through its sources for the first that says what it is
    /// (an async-nats error whose kind only wraps another defers to its source).
    pub fn of(error: &(dyn StdError + 'static)) -> Refusal {
        let mut next = Some(error);
        while let Some(e) = next {
            if let Some(r) = Self::told_by(e) {
                return r;
            }
            next = e.source();
        }
        Refusal::Refused
    }

    /// What JetStream's own error code says.
    pub fn of_code(e: &jetstream::Error) -> Refusal {
        match e.error_code() {
            ErrorCode::INSUFFICIENT_RESOURCES
            | ErrorCode::STORAGE_RESOURCES_EXCEEDED
            | ErrorCode::STREAM_STORE_FAILED => Refusal::Full,
            ErrorCode::NO_MESSAGE_FOUND
            | ErrorCode::SEQUENCE_NOT_FOUND
            | ErrorCode::STREAM_NOT_FOUND
            | ErrorCode::CONSUMER_NOT_FOUND => Refusal::NotFound,
            ErrorCode::CLUSTER_NOT_AVAILABLE
            | ErrorCode::CLUSTER_NOT_LEADER
            | ErrorCode::STREAM_OFFLINE
            | ErrorCode::JETSTREAM_NOT_ENABLED => Refusal::Unavailable,
            _ if e.code() == 503 => Refusal::Unavailable,
            _ => Refusal::Refused,
        }
    }

    /// What one error says by itself, if it says anything.
    fn told_by(e: &(dyn StdError + 'static)) -> Option<Refusal> {
        use context::{CreateStreamErrorKind as Create, PublishErrorKind as Publish};
        if let Some(js) = e.downcast_ref::<jetstream::Error>() {
            return Some(Self::of_code(js));
        }
        if let Some(p) = e.downcast_ref::<context::PublishError>() {
            return match p.kind() {
                Publish::TimedOut
                | Publish::BrokenPipe
                | Publish::MaxAckPending
                // No responders: the stream has no leader at the moment (an election).
                | Publish::StreamNotFound => Some(Refusal::Unavailable),
                Publish::WrongLastMessageId
                | Publish::WrongLastSequence
                | Publish::MaxPayloadExceeded => Some(Refusal::Refused),
                // JetStream's answer, if it gave one, is the source.
                Publish::Other => None,
            };
        }
        if let Some(c) = e.downcast_ref::<context::CreateStreamError>() {
            return match c.kind() {
                Create::JetStream(js) => Some(Self::of_code(&js)),
                Create::TimedOut | Create::JetStreamUnavailable => Some(Refusal::Unavailable),
                Create::NotFound => Some(Refusal::NotFound),
                Create::EmptyStreamName
                | Create::InvalidStreamName
                | Create::DomainAndExternalSet => Some(Refusal::Refused),
                Create::Response | Create::ResponseParse => None,
            };
        }
        if let Some(g) = e.downcast_ref::<context::GetStreamError>() {
            return match g.kind() {
                context::GetStreamErrorKind::JetStream(js) => Some(Self::of_code(&js)),
                context::GetStreamErrorKind::EmptyName
                | context::GetStreamErrorKind::InvalidStreamName => Some(Refusal::Refused),
                context::GetStreamErrorKind::Request => None,
            };
        }
        if let Some(c) = e.downcast_ref::<context::CreateKeyValueError>() {
            return match c.kind() {
                context::CreateKeyValueErrorKind::TimedOut => Some(Refusal::Unavailable),
                context::CreateKeyValueErrorKind::InvalidStoreName
                | context::CreateKeyValueErrorKind::TooLongHistory
                | context::CreateKeyValueErrorKind::LimitMarkersNotSupported => {
                    Some(Refusal::Refused)
                }
                context::CreateKeyValueErrorKind::JetStream
                | context::CreateKeyValueErrorKind::BucketCreate => None,
            };
        }
        if let Some(r) = e.downcast_ref::<context::RequestError>() {
            return match r.kind() {
                context::RequestErrorKind::NoResponders | context::RequestErrorKind::TimedOut => {
                    Some(Refusal::Unavailable)
                }
                context::RequestErrorKind::InvalidSubject => Some(Refusal::Refused),
                context::RequestErrorKind::Other => None,
            };
        }
        if let Some(r) = e.downcast_ref::<async_nats::RequestError>() {
            return match r.kind() {
                async_nats::RequestErrorKind::NoResponders
                | async_nats::RequestErrorKind::TimedOut => Some(Refusal::Unavailable),
                _ => None,
            };
        }
        if let Some(d) = e.downcast_ref::<stream::DeleteMessageError>() {
            return match d.kind() {
                stream::DeleteMessageErrorKind::JetStream(js) => Some(Self::of_code(&js)),
                stream::DeleteMessageErrorKind::TimedOut => Some(Refusal::Unavailable),
                stream::DeleteMessageErrorKind::Request => None,
            };
        }
        if let Some(p) = e.downcast_ref::<kv::PutError>() {
            return match p.kind() {
                kv::PutErrorKind::InvalidKey => Some(Refusal::Refused),
                kv::PutErrorKind::Publish | kv::PutErrorKind::Ack => None,
            };
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn js(code: u64, status: usize) -> jetstream::Error {
        serde_json::from_value(serde_json::json!({
            "code": status,
            "err_code": code,
            "description": "whatever the server's words are"
        }))
        .unwrap()
    }

    #[test]
    fn jetstream_codes_say_what_a_refusal_is() {
        assert_eq!(Refusal::of_code(&js(10023, 503)), Refusal::Full);
        assert_eq!(Refusal::of_code(&js(10047, 500)), Refusal::Full);
        assert_eq!(Refusal::of_code(&js(10077, 503)), Refusal::Full);
        assert_eq!(Refusal::of_code(&js(10037, 404)), Refusal::NotFound);
        assert_eq!(Refusal::of_code(&js(10059, 404)), Refusal::NotFound);
        assert_eq!(Refusal::of_code(&js(10008, 503)), Refusal::Unavailable);
        assert_eq!(Refusal::of_code(&js(99999, 503)), Refusal::Unavailable);
        assert_eq!(Refusal::of_code(&js(10071, 400)), Refusal::Refused);
    }

    #[test]
    fn a_publish_error_is_told_by_its_kind_or_by_jetstream_answer_beneath_it() {
        use context::{PublishError, PublishErrorKind};
        let full = PublishError::with_source(PublishErrorKind::Other, js(10023, 503));
        assert_eq!(Refusal::of(&full), Refusal::Full);
        assert!(is_full(&full));
        let timed_out = PublishError::new(PublishErrorKind::TimedOut);
        assert_eq!(Refusal::of(&timed_out), Refusal::Unavailable);
        let no_leader = PublishError::new(PublishErrorKind::StreamNotFound);
        assert_eq!(Refusal::of(&no_leader), Refusal::Unavailable);
        let too_big = PublishError::new(PublishErrorKind::MaxPayloadExceeded);
        assert_eq!(Refusal::of(&too_big), Refusal::Refused);
        // Boxed, as `async_nats::Error` and the layout's errors carry it.
        let boxed: async_nats::Error = Box::new(full);
        assert_eq!(Refusal::of(boxed.as_ref()), Refusal::Full);
        let put = kv::PutError::with_source(
            kv::PutErrorKind::Publish,
            PublishError::with_source(PublishErrorKind::Other, js(10077, 503)),
        );
        assert_eq!(Refusal::of(&put), Refusal::Full);
    }

    #[test]
    fn the_text_of_an_error_decides_nothing() {
        let said = std::io::Error::other("insufficient resources, maximum bytes exceeded");
        assert_eq!(Refusal::of(&said), Refusal::Refused);
    }
}
