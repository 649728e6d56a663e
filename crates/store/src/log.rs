//! Reading gancho's logs (the attempt log, the dead letters) newest first. JetStream reads
//! forward only, so a page is found by walking back in windows of sequences: each window is
//! read forward with one batched direct get filtered by subject (the server skips what does
//! not match through its subject index), and a window that holds too few matches makes the
//! next one four times larger. A page of 50 thus costs a handful of requests whether the
//! filter matches every record or one in a hundred. The streams need `allow_direct`.

use async_nats::jetstream;
use async_nats::HeaderMap;
use bytes::Bytes;
use futures::StreamExt as _;
use std::time::Duration;
use time::OffsetDateTime;

/// How long one batched read may take.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Messages asked for in one batched read.
const BATCH: usize = 512;
/// Bytes asked for in one batched read.
const BATCH_BYTES: usize = 4 << 20;

/// One record of a log.
#[derive(Debug, Clone)]
pub struct Record {
    pub seq: u64,
    pub subject: String,
    pub time: OffsetDateTime,
    pub payload: Bytes,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot read {stream}: {why}")]
pub struct LogError {
    stream: String,
    why: String,
}

/// A log stream, read with direct gets.
#[derive(Clone)]
pub struct Log {
    js: jetstream::Context,
    stream: String,
}

/// One page, newest first, and the cursor (a sequence to read below) of the next one.
pub struct Page {
    pub records: Vec<Record>,
    pub next: Option<u64>,
}

impl Log {
    pub fn new(js: jetstream::Context, stream: String) -> Self {
        Self { js, stream }
    }

    fn err(&self, why: impl ToString) -> LogError {
        LogError {
            stream: self.stream.clone(),
            why: why.to_string(),
        }
    }

    /// The sequence the next record will get (one past the last).
    pub async fn end(&self) -> Result<u64, LogError> {
        let mut s = self
            .js
            .get_stream(&self.stream)
            .await
            .map_err(|e| self.err(e))?;
        let info = s.info().await.map_err(|e| self.err(e))?;
        Ok(info.state.last_sequence + 1)
    }

    /// The first sequence stored at or after `t` (any subject), or [`Log::end`] if none.
    /// nats-server answers a time after the last record with the stream's first record, so
    /// a record older than `t` means none: without this check, `since` in the future read
    /// the whole log, `until` in the future read nothing, and a replay from a time after the
    /// last event replayed every event.
    pub async fn sequence_at(&self, t: OffsetDateTime) -> Result<u64, LogError> {
        let req = serde_json::json!({
            "start_time": t.format(&time::format_description::well_known::Rfc3339).map_err(|e| self.err(e))?,
        });
        match self.request(req).await? {
            Some(first) if first.time >= t => Ok(first.seq),
            _ => self.end().await,
        }
    }

    /// The record at `seq`, `None` when none is stored there (removed, or aged out).
    pub async fn at(&self, seq: u64) -> Result<Option<Record>, LogError> {
        self.request(serde_json::json!({ "seq": seq })).await
    }

    /// Records matching `filter` with a sequence in `from..to`, oldest first, at most `max`.
    pub async fn range(
        &self,
        filter: &str,
        from: u64,
        to: u64,
        max: usize,
    ) -> Result<Vec<Record>, LogError> {
        let mut out = Vec::new();
        let mut seq = from.max(1);
        while seq < to && out.len() < max {
            let batch = self.batch(filter, seq, BATCH.min(max - out.len())).await?;
            let Some(last) = batch.last().map(|r| r.seq) else {
                break;
            };
            let short = batch.len() < BATCH.min(max - out.len());
            out.extend(batch.into_iter().filter(|r| r.seq < to));
            if last + 1 >= to || short {
                break;
            }
            seq = last + 1;
        }
        Ok(out)
    }

    /// Up to `limit` records matching `filter` and `keep`, with a sequence in
    /// `after..before`, newest first.
    pub async fn newest_first(
        &self,
        filter: &str,
        after: u64,
        before: u64,
        limit: usize,
        mut keep: impl FnMut(&Record) -> bool,
    ) -> Result<Page, LogError> {
        let mut found: Vec<Record> = Vec::new();
        let mut hi = before;
        let mut window = (limit as u64 * 2).max(64);
        while hi > after.max(1) {
            let lo = hi.saturating_sub(window).max(after).max(1);
            let mut chunk = self.range(filter, lo, hi, usize::MAX).await?;
            chunk.retain(&mut keep);
            chunk.reverse();
            found.extend(chunk);
            if found.len() >= limit {
                found.truncate(limit);
                let next = found.last().map(|r| r.seq);
                return Ok(Page {
                    records: found,
                    next,
                });
            }
            hi = lo;
            window = window.saturating_mul(4);
        }
        Ok(Page {
            records: found,
            next: None,
        })
    }

    /// One batched direct get: up to `n` records matching `filter` from `seq` on.
    async fn batch(&self, filter: &str, seq: u64, n: usize) -> Result<Vec<Record>, LogError> {
        let req = serde_json::json!({
            "seq": seq, "next_by_subj": filter, "batch": n, "max_bytes": BATCH_BYTES,
        });
        self.request_many(req).await
    }

    async fn request(&self, req: serde_json::Value) -> Result<Option<Record>, LogError> {
        let subject = format!("$JS.API.DIRECT.GET.{}", self.stream);
        let client = self.js.client();
        let answer = tokio::time::timeout(
            READ_TIMEOUT,
            client.request(subject, Bytes::from(req.to_string())),
        )
        .await
        .map_err(|_| self.err("timed out"))?
        .map_err(|e| self.err(e))?;
        if answer.status.is_some_and(|s| s.as_u16() == 404) {
            return Ok(None);
        }
        record(&answer)
            .map(Some)
            .ok_or_else(|| self.err(describe(&answer)))
    }

    async fn request_many(&self, req: serde_json::Value) -> Result<Vec<Record>, LogError> {
        let subject = format!("$JS.API.DIRECT.GET.{}", self.stream);
        let client = self.js.client();
        let inbox = client.new_inbox();
        let mut sub = client
            .subscribe(inbox.clone())
            .await
            .map_err(|e| self.err(e))?;
        client
            .publish_with_reply(subject, inbox, Bytes::from(req.to_string()))
            .await
            .map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        let read = async {
            while let Some(m) = sub.next().await {
                match m.status.map(|s| s.as_u16()) {
                    // End of batch, or nothing at or after the sequence.
                    Some(204) | Some(404) => return Ok(()),
                    Some(_) => return Err(self.err(describe(&m))),
                    None => out.push(record(&m).ok_or_else(|| self.err(describe(&m)))?),
                }
            }
            Err(self.err("the answer ended early"))
        };
        tokio::time::timeout(READ_TIMEOUT, read)
            .await
            .map_err(|_| self.err("timed out"))??;
        Ok(out)
    }
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).map(|v| v.as_str())
}

fn record(m: &async_nats::Message) -> Option<Record> {
    let h = m.headers.as_ref()?;
    Some(Record {
        seq: header(h, "Nats-Sequence")?.parse().ok()?,
        subject: header(h, "Nats-Subject")?.to_owned(),
        time: OffsetDateTime::parse(
            header(h, "Nats-Time-Stamp")?,
            &time::format_description::well_known::Rfc3339,
        )
        .ok()?,
        payload: m.payload.clone(),
    })
}

fn describe(m: &async_nats::Message) -> String {
    match (&m.status, &m.description) {
        (Some(s), Some(d)) => format!("{s}: {d}"),
        (Some(s), None) => s.to_string(),
        _ => "an answer without the headers of a stored message".into(),
    }
}
