//! One pagination shape for every list: `?limit=&cursor=` in, `{"data": [...], "next":
//! "<cursor>" | null}` out. Lists are ordered by a unique key (an id) and the cursor is the
//! last key of the page, opaque to clients (URL-safe base64), so a page boundary never moves
//! when items are inserted or deleted elsewhere: every item that exists for the whole walk
//! is returned exactly once.

use crate::error::ApiError;
use base64::Engine as _;
use serde::{Deserialize, Serialize};

/// Items per page when `limit` is not given.
pub const DEFAULT_LIMIT: usize = 100;
/// The largest `limit` accepted.
pub const MAX_LIMIT: usize = 1000;

/// `?limit=&cursor=` of every list.
#[derive(Deserialize, Default, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// Items per page, 1 to 1000 (default 100).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1000)]
    pub limit: Option<String>,
    /// The `next` value of the previous page; leave out for the first page.
    pub cursor: Option<String>,
}

/// One page of a list, ordered by id (jobs: newest first).
#[derive(Serialize, utoipa::ToSchema)]
pub struct Page<T> {
    pub data: Vec<T>,
    /// The cursor of the next page; null on the last page.
    pub next: Option<String>,
}

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

impl PageQuery {
    /// The page size, and the key after which the page starts.
    pub fn parse(&self) -> Result<(usize, Option<String>), ApiError> {
        let limit = match self.limit.as_deref() {
            None => DEFAULT_LIMIT,
            Some(v) => match v.parse::<usize>() {
                Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
                _ => {
                    return Err(ApiError::bad_request(format!(
                        "limit must be a whole number from 1 to {MAX_LIMIT}, got {v:?}"
                    )))
                }
            },
        };
        let after = match self.cursor.as_deref() {
            None | Some("") => None,
            Some(c) => Some(
                B64.decode(c)
                    .ok()
                    .and_then(|b| String::from_utf8(b).ok())
                    .ok_or_else(|| {
                        ApiError::bad_request(
                            "cursor is not one this API returned; pass the \"next\" value of the previous page as it was",
                        )
                    })?,
            ),
        };
        Ok((limit, after))
    }
}

/// The cursor of a page whose last item has key `last`.
pub fn cursor(last: &str) -> String {
    B64.encode(last)
}

/// The page of `items` (sorted by `key`, ascending) that `query` asks for.
pub fn page<T>(
    items: Vec<T>,
    query: &PageQuery,
    key: impl Fn(&T) -> &str,
) -> Result<Page<T>, ApiError> {
    let (limit, after) = query.parse()?;
    let mut data: Vec<T> = items
        .into_iter()
        .filter(|item| after.as_deref().is_none_or(|a| key(item) > a))
        .take(limit + 1)
        .collect();
    let next = if data.len() > limit {
        data.truncate(limit);
        data.last().map(|last| cursor(key(last)))
    } else {
        None
    };
    Ok(Page { data, next })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(limit: Option<&str>, cursor: Option<String>) -> PageQuery {
        PageQuery {
            limit: limit.map(str::to_owned),
            cursor,
        }
    }

    #[test]
    fn walks_every_item_once_across_inserts() {
        let mut items: Vec<String> = (0..25).map(|i| format!("k{i:03}")).collect();
        let mut seen = Vec::new();
        let mut cursor = None;
        loop {
            let p = page(items.clone(), &q(Some("10"), cursor.clone()), |s| s).unwrap();
            seen.extend(p.data);
            // Inserted between pages, before and after the boundary.
            items.push(format!("a{}", seen.len()));
            items.sort();
            match p.next {
                Some(n) => cursor = Some(n),
                None => break,
            }
        }
        let original: Vec<String> = (0..25).map(|i| format!("k{i:03}")).collect();
        for k in &original {
            assert_eq!(seen.iter().filter(|s| *s == k).count(), 1, "{k}");
        }
    }

    #[test]
    fn bad_limits_and_cursors_say_what_to_fix() {
        for bad in ["0", "1001", "ten", "-1"] {
            let e = q(Some(bad), None).parse().unwrap_err();
            assert_eq!(e.status, 400);
            assert!(e.message.contains("limit must be"), "{}", e.message);
        }
        let e = q(None, Some("***".into())).parse().unwrap_err();
        assert!(e.message.contains("cursor"), "{}", e.message);
        assert_eq!(q(None, None).parse().unwrap().0, DEFAULT_LIMIT);
    }
}
