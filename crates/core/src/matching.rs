//! Which endpoints want an event. An endpoint subscribes with event-type filters that use
//! NATS wildcard semantics on the dotted type (`*` matches exactly one token, `>` one or more
//! trailing tokens) and, optionally, with channels: when an endpoint lists channels, it only
//! gets events tagged with at least one of them.

use std::fmt;

/// Longest filter we accept, same bound as an event type.
const MAX_FILTER_LEN: usize = crate::id::MAX_EVENT_TYPE_LEN;

/// Why a filter pattern was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    #[error("filter must not be empty; use \">\" to match every event type")]
    Empty,
    #[error("filter {0:?} is longer than 255 characters")]
    TooLong(String),
    #[error("filter {0:?} has an empty token; write dotted words like \"invoice.*\"")]
    EmptyToken(String),
    #[error("filter {0:?} uses '>' before the last token; '>' may only end a filter")]
    TailNotLast(String),
    #[error("filter {pattern:?} has token {token:?}; a token is a word of letters, digits, '_' or '-', or a lone '*' or '>'")]
    BadToken { pattern: String, token: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Literal(String),
    /// `*`: exactly one token.
    One,
    /// `>`: one or more tokens, last position only.
    Tail,
}

/// One validated event-type filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    pattern: String,
    tokens: Vec<Token>,
}

impl Filter {
    pub fn parse(pattern: &str) -> Result<Self, FilterError> {
        if pattern.is_empty() {
            return Err(FilterError::Empty);
        }
        if pattern.len() > MAX_FILTER_LEN {
            return Err(FilterError::TooLong(pattern.to_owned()));
        }
        let parts: Vec<&str> = pattern.split('.').collect();
        let last = parts.len() - 1;
        let mut tokens = Vec::with_capacity(parts.len());
        for (i, part) in parts.into_iter().enumerate() {
            let token = match part {
                "" => return Err(FilterError::EmptyToken(pattern.to_owned())),
                "*" => Token::One,
                ">" if i == last => Token::Tail,
                ">" => return Err(FilterError::TailNotLast(pattern.to_owned())),
                word if word
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') =>
                {
                    Token::Literal(word.to_owned())
                }
                other => {
                    return Err(FilterError::BadToken {
                        pattern: pattern.to_owned(),
                        token: other.to_owned(),
                    })
                }
            };
            tokens.push(token);
        }
        Ok(Self {
            pattern: pattern.to_owned(),
            tokens,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.pattern
    }

    /// Whether a (valid, dotted) event type matches. Does not allocate.
    pub fn matches(&self, event_type: &str) -> bool {
        let mut parts = event_type.split('.');
        for token in &self.tokens {
            match token {
                Token::Tail => return parts.next().is_some(),
                Token::One => {
                    if parts.next().is_none() {
                        return false;
                    }
                }
                Token::Literal(word) => {
                    if parts.next() != Some(word.as_str()) {
                        return false;
                    }
                }
            }
        }
        parts.next().is_none()
    }
}

impl fmt::Display for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.pattern)
    }
}

/// Event types under this prefix are gancho's own (operational events, test events). They
/// match only filters that name the prefix (`gancho.>`, `gancho.endpoint.disabled`), never
/// an empty filter list or `>`: an endpoint gets them only when it asks for them.
pub const RESERVED_PREFIX: &str = "gancho.";

/// What one endpoint subscribes to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Subscription {
    /// Empty means every event type.
    filters: Vec<Filter>,
    /// Empty means every event, tagged or not.
    channels: Vec<String>,
}

impl Subscription {
    /// Parses every filter; the first bad one is reported.
    pub fn new<S: AsRef<str>>(filters: &[S], channels: &[S]) -> Result<Self, FilterError> {
        let filters = filters
            .iter()
            .map(|f| Filter::parse(f.as_ref()))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            filters,
            channels: channels.iter().map(|c| c.as_ref().to_owned()).collect(),
        })
    }

    /// Whether an event of `event_type` tagged with `event_channels` is wanted.
    pub fn matches<S: AsRef<str>>(&self, event_type: &str, event_channels: &[S]) -> bool {
        let type_ok = if event_type.starts_with(RESERVED_PREFIX) {
            self.filters
                .iter()
                .any(|f| f.pattern.starts_with(RESERVED_PREFIX) && f.matches(event_type))
        } else {
            self.filters.is_empty() || self.filters.iter().any(|f| f.matches(event_type))
        };
        let channel_ok = self.channels.is_empty()
            || event_channels
                .iter()
                .any(|c| self.channels.iter().any(|mine| mine == c.as_ref()));
        type_ok && channel_ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_types_match_only_filters_that_name_them() {
        let none: &[&str] = &[];
        let all = Subscription::new(&[">"], none).unwrap();
        let every = Subscription::new(none, none).unwrap();
        let ops = Subscription::new(&["gancho.>"], none).unwrap();
        let one = Subscription::new(&["gancho.endpoint.disabled"], none).unwrap();
        for s in [&all, &every] {
            assert!(!s.matches("gancho.endpoint.disabled", none));
            assert!(s.matches("charge.paid", none));
        }
        assert!(ops.matches("gancho.delivery.exhausted", none));
        assert!(!ops.matches("charge.paid", none));
        assert!(one.matches("gancho.endpoint.disabled", none));
        assert!(!one.matches("gancho.endpoint.recovered", none));
    }

    fn m(pattern: &str, ty: &str) -> bool {
        Filter::parse(pattern).unwrap().matches(ty)
    }

    #[test]
    fn exact() {
        assert!(m("invoice.paid", "invoice.paid"));
        assert!(!m("invoice.paid", "invoice.paid.late"));
        assert!(!m("invoice.paid", "invoice"));
        assert!(!m("invoice.paid", "invoice.created"));
    }

    #[test]
    fn star_is_exactly_one_token() {
        assert!(m("invoice.*", "invoice.paid"));
        assert!(m("invoice.*", "invoice.created"));
        assert!(!m("invoice.*", "invoice"));
        assert!(!m("invoice.*", "invoice.paid.late"));
        assert!(m("*.paid", "charge.paid"));
        assert!(!m("*.paid", "charge.refunded"));
        assert!(m("*", "ping"));
        assert!(!m("*", "ping.pong"));
    }

    #[test]
    fn tail_is_one_or_more_tokens() {
        assert!(m("invoice.>", "invoice.paid"));
        assert!(m("invoice.>", "invoice.paid.late"));
        assert!(!m("invoice.>", "invoice"));
        assert!(!m("invoice.>", "charge.paid"));
        assert!(m(">", "anything"));
        assert!(m(">", "any.thing.at.all"));
        assert!(m("*.payment.>", "pix.payment.v3.accepted"));
    }

    #[test]
    fn invalid_patterns_say_why() {
        assert_eq!(Filter::parse("").unwrap_err(), FilterError::Empty);
        assert!(matches!(
            Filter::parse("invoice..paid").unwrap_err(),
            FilterError::EmptyToken(_)
        ));
        assert!(matches!(
            Filter::parse("invoice.").unwrap_err(),
            FilterError::EmptyToken(_)
        ));
        let err = Filter::parse(">.paid").unwrap_err();
        assert!(matches!(err, FilterError::TailNotLast(_)));
        assert!(err.to_string().contains("may only end a filter"));
        let err = Filter::parse("invoice.pa*d").unwrap_err();
        assert!(matches!(err, FilterError::BadToken { ref token, .. } if token == "pa*d"));
        assert!(matches!(
            Filter::parse("invoice paid").unwrap_err(),
            FilterError::BadToken { .. }
        ));
        assert!(matches!(
            Filter::parse(&"a".repeat(300)).unwrap_err(),
            FilterError::TooLong(_)
        ));
    }

    #[test]
    fn subscription_without_filters_takes_every_type() {
        let s = Subscription::new::<&str>(&[], &[]).unwrap();
        assert!(s.matches::<&str>("invoice.paid", &[]));
        assert!(s.matches("x.y.z", &["anything"]));
    }

    #[test]
    fn subscription_any_filter_matches() {
        let s = Subscription::new(&["invoice.*", "charge.paid"], &[]).unwrap();
        assert!(s.matches::<&str>("invoice.paid", &[]));
        assert!(s.matches::<&str>("charge.paid", &[]));
        assert!(!s.matches::<&str>("charge.refunded", &[]));
    }

    #[test]
    fn channels_narrow_a_subscription() {
        let s = Subscription::new(&[">"], &["pix", "boleto"]).unwrap();
        assert!(s.matches("charge.paid", &["pix"]));
        assert!(s.matches("charge.paid", &["card", "boleto"]));
        assert!(!s.matches("charge.paid", &["card"]));
        assert!(!s.matches::<&str>("charge.paid", &[]));
        // An endpoint without channels gets tagged and untagged events alike.
        let all = Subscription::new(&[">"], &[]).unwrap();
        assert!(all.matches("charge.paid", &["card"]));
    }

    #[test]
    fn subscription_reports_the_bad_filter() {
        let err = Subscription::new(&["invoice.*", "in>voice"], &[]).unwrap_err();
        assert!(err.to_string().contains("in>voice"));
    }
}
