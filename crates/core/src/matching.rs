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

/// Every subscription of a tenant, indexed by filter token: matching an event walks the
/// event type's tokens down a tree (a literal child, the `*` child, the `>` entries on the
/// way) instead of testing each endpoint's filters, so its cost follows the number of
/// matches and the type's length, not the number of endpoints.
#[derive(Debug, Default, Clone)]
pub struct Index {
    root: Node,
    /// Subscriptions without filters: every type except gancho's own.
    every_type: Vec<u32>,
    /// Each subscription's channels (empty: every event), by its number.
    channels: Vec<Vec<String>>,
}

#[derive(Debug, Default, Clone)]
struct Node {
    literal: std::collections::HashMap<String, Node>,
    one: Option<Box<Node>>,
    /// Subscriptions whose filter ends here with `>`: one or more tokens follow.
    tail: Vec<u32>,
    /// Subscriptions whose filter ends exactly here.
    end: Vec<u32>,
}

impl Index {
    /// Indexes `subs`; a match is reported as the subscription's position in `subs`.
    pub fn new<'a>(subs: impl IntoIterator<Item = &'a Subscription>) -> Self {
        let mut index = Self::default();
        for (n, sub) in subs.into_iter().enumerate() {
            let n = n as u32;
            index.channels.push(sub.channels.clone());
            if sub.filters.is_empty() {
                index.every_type.push(n);
            }
            for filter in &sub.filters {
                let mut node = &mut index.root;
                for token in &filter.tokens {
                    node = match token {
                        Token::Literal(word) => node.literal.entry(word.clone()).or_default(),
                        Token::One => node.one.get_or_insert_with(Box::default),
                        Token::Tail => break,
                    };
                }
                match filter.tokens.last() {
                    Some(Token::Tail) => node.tail.push(n),
                    _ => node.end.push(n),
                }
            }
        }
        index
    }

    /// The subscriptions that want an event of `event_type` tagged with `event_channels`,
    /// as positions in ascending order, each once (what [`Subscription::matches`] says for
    /// each), appended to `out` after clearing it.
    pub fn matching<S: AsRef<str>>(
        &self,
        event_type: &str,
        event_channels: &[S],
        out: &mut Vec<u32>,
    ) {
        out.clear();
        let reserved = event_type.starts_with(RESERVED_PREFIX);
        if !reserved {
            out.extend_from_slice(&self.every_type);
        }
        walk(&self.root, event_type.split('.'), true, reserved, out);
        out.sort_unstable();
        out.dedup();
        out.retain(|&n| {
            let mine = &self.channels[n as usize];
            mine.is_empty()
                || event_channels
                    .iter()
                    .any(|c| mine.iter().any(|m| m == c.as_ref()))
        });
    }
}

/// Collects the subscriptions under `node` that match the tokens `rest` still holds. At the
/// root of a reserved type only literal filters apply (`gancho.>` matches, `>` and `*.x` do
/// not), as in [`Subscription::matches`].
fn walk(
    node: &Node,
    mut rest: std::str::Split<'_, char>,
    at_root: bool,
    reserved: bool,
    out: &mut Vec<u32>,
) {
    let Some(token) = rest.next() else {
        out.extend_from_slice(&node.end);
        return;
    };
    if !(at_root && reserved) {
        // `>` takes this token and any after it.
        out.extend_from_slice(&node.tail);
        if let Some(one) = &node.one {
            walk(one, rest.clone(), false, reserved, out);
        }
    }
    if let Some(next) = node.literal.get(token) {
        walk(next, rest, false, reserved, out);
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

    #[test]
    fn the_index_says_what_each_subscription_says() {
        // Filters and types drawn from a small vocabulary, so that many of them meet.
        let words = ["charge", "paid", "pix", "v1", "gancho", "endpoint", "x"];
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        for _ in 0..200 {
            let subs: Vec<Subscription> = (0..next(12) + 1)
                .map(|_| {
                    let filters: Vec<String> = (0..next(3))
                        .map(|_| {
                            let len = next(3) + 1;
                            let mut tokens: Vec<&str> = (0..len)
                                .map(|_| match next(9) {
                                    0 | 1 => "*",
                                    i => words[i - 2],
                                })
                                .collect();
                            if next(3) == 0 {
                                tokens[len - 1] = ">";
                            }
                            tokens.join(".")
                        })
                        .collect();
                    let channels: Vec<String> = (0..next(3) / 2)
                        .map(|_| ["pix", "card"][next(2)].to_owned())
                        .collect();
                    let f: Vec<&str> = filters.iter().map(String::as_str).collect();
                    let c: Vec<&str> = channels.iter().map(String::as_str).collect();
                    Subscription::new(&f, &c).unwrap()
                })
                .collect();
            let index = Index::new(&subs);
            let mut out = Vec::new();
            for _ in 0..50 {
                let ty: Vec<&str> = (0..next(4) + 1).map(|_| words[next(words.len())]).collect();
                let ty = ty.join(".");
                let tags: Vec<&str> = (0..next(2)).map(|_| ["pix", "card"][next(2)]).collect();
                let want: Vec<u32> = (0..subs.len() as u32)
                    .filter(|&n| subs[n as usize].matches(&ty, &tags))
                    .collect();
                index.matching(&ty, &tags, &mut out);
                assert_eq!(out, want, "{ty} {tags:?} against {subs:?}");
            }
        }
    }
}
