//! Identifiers that end up inside NATS subjects and KV keys. They are validated once, at the
//! edge (API, CLI, router), so nothing downstream has to worry about a `.` or a `*` sneaking
//! into a subject.

use std::fmt;

/// Longest tenant id, endpoint id or event-type token we accept.
pub const MAX_ID_LEN: usize = 64;
/// Longest event type, all tokens and dots included.
pub const MAX_EVENT_TYPE_LEN: usize = 255;

/// Why an identifier was rejected. The message names the rule so an API user can fix it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("{what} must not be empty")]
    Empty { what: &'static str },
    #[error("{what} is {len} characters long; the limit is {max}")]
    TooLong {
        what: &'static str,
        len: usize,
        max: usize,
    },
    #[error("{what} {value:?} contains {ch:?}; only letters, digits, '_' and '-' are allowed")]
    BadChar {
        what: &'static str,
        value: String,
        ch: char,
    },
    #[error("event type {value:?} has an empty token; use dotted words like \"invoice.paid\"")]
    EmptyToken { value: String },
}

fn is_id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

fn check_id(what: &'static str, value: &str) -> Result<(), IdError> {
    if value.is_empty() {
        return Err(IdError::Empty { what });
    }
    if value.len() > MAX_ID_LEN {
        return Err(IdError::TooLong {
            what,
            len: value.len(),
            max: MAX_ID_LEN,
        });
    }
    if let Some(ch) = value.chars().find(|c| !is_id_char(*c)) {
        return Err(IdError::BadChar {
            what,
            value: value.to_owned(),
            ch,
        });
    }
    Ok(())
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Validates `value` (`[A-Za-z0-9_-]{1,64}`).
            pub fn new(value: impl Into<String>) -> Result<Self, IdError> {
                let value = value.into();
                check_id($what, &value)?;
                Ok(Self(value))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::new(s)
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::new(s).map_err(serde::de::Error::custom)
            }
        }
    };
}

id_type!(
    /// A tenant: the owner of endpoints, and the second token of its event subjects.
    TenantId,
    "tenant id"
);
id_type!(
    /// An endpoint, unique within its tenant.
    EndpointId,
    "endpoint id"
);

/// A dotted event type such as `invoice.paid`. Each token follows the id rules, so the type
/// can be appended to a subject as is.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct EventType(String);

impl EventType {
    pub fn new(value: impl Into<String>) -> Result<Self, IdError> {
        let value = value.into();
        validate_event_type(&value)?;
        Ok(Self(value))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Checks a dotted event type without allocating (the router calls it once per event).
pub fn validate_event_type(value: &str) -> Result<(), IdError> {
    const WHAT: &str = "event type";
    if value.is_empty() {
        return Err(IdError::Empty { what: WHAT });
    }
    if value.len() > MAX_EVENT_TYPE_LEN {
        return Err(IdError::TooLong {
            what: WHAT,
            len: value.len(),
            max: MAX_EVENT_TYPE_LEN,
        });
    }
    for token in value.split('.') {
        if token.is_empty() {
            return Err(IdError::EmptyToken {
                value: value.to_owned(),
            });
        }
        if let Some(ch) = token.chars().find(|c| !is_id_char(*c)) {
            return Err(IdError::BadChar {
                what: WHAT,
                value: value.to_owned(),
                ch,
            });
        }
    }
    Ok(())
}

/// Checks a subject prefix: one token, same alphabet as ids.
pub fn check_prefix(value: &str) -> Result<(), IdError> {
    check_id("subject prefix", value)
}

/// Checks a tenant id without allocating.
pub fn validate_tenant(value: &str) -> Result<(), IdError> {
    check_id("tenant id", value)
}

/// Checks an endpoint id without allocating.
pub fn validate_endpoint(value: &str) -> Result<(), IdError> {
    check_id("endpoint id", value)
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for EventType {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        Self::new(s)
    }
}

impl<'de> serde::Deserialize<'de> for EventType {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::new(s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_accept_the_documented_alphabet() {
        assert!(TenantId::new("acme").is_ok());
        assert!(TenantId::new("Acme_Pagamentos-01").is_ok());
        assert!(EndpointId::new("ep_2f6c").is_ok());
        assert!(TenantId::new("a".repeat(64)).is_ok());
    }

    #[test]
    fn ids_reject_what_would_break_a_subject() {
        assert_eq!(
            TenantId::new("").unwrap_err(),
            IdError::Empty { what: "tenant id" }
        );
        for bad in ["ac.me", "ac*", "a>", "a b", "ação"] {
            let err = TenantId::new(bad).unwrap_err();
            assert!(matches!(err, IdError::BadChar { .. }), "{bad}: {err}");
            assert!(err.to_string().contains("only letters, digits"));
        }
        assert!(matches!(
            EndpointId::new("e".repeat(65)).unwrap_err(),
            IdError::TooLong { len: 65, .. }
        ));
    }

    #[test]
    fn event_types_are_dotted_tokens() {
        assert!(EventType::new("invoice.paid").is_ok());
        assert!(EventType::new("pix.payment.v3.accepted").is_ok());
        assert!(matches!(
            EventType::new("invoice..paid").unwrap_err(),
            IdError::EmptyToken { .. }
        ));
        assert!(matches!(
            EventType::new(".paid").unwrap_err(),
            IdError::EmptyToken { .. }
        ));
        assert!(matches!(
            EventType::new("invoice.*").unwrap_err(),
            IdError::BadChar { ch: '*', .. }
        ));
        assert!(matches!(
            EventType::new("invoice.>").unwrap_err(),
            IdError::BadChar { ch: '>', .. }
        ));
    }

    #[test]
    fn deserializing_validates() {
        let ok: TenantId = serde_json::from_str("\"acme\"").unwrap();
        assert_eq!(ok.as_str(), "acme");
        let err = serde_json::from_str::<TenantId>("\"a.b\"").unwrap_err();
        assert!(err.to_string().contains("tenant id"));
    }
}
