//! Writes to one stream through a JetStream fast batch (nats-server 2.14+, a stream with
//! `allow_batched`), each write confirmed when the server says it is stored: by a flow ack,
//! which covers every message of the batch up to its sequence (one every 100 or so), or by
//! the batch's end, whose answer counts the messages stored. Instead of a PubAck for each
//! message, the server answers about once per hundred, which is what a PubAck per message
//! cost it (and the writer).
//!
//! One batch is open at a time; it is ended (an end-of-batch commit, which stores nothing)
//! when no write came for [`IDLE`] or its oldest unconfirmed write has waited [`LONGEST`], so
//! that a write is confirmed within milliseconds however slowly writes come. The next write
//! opens a new batch. The batch is "fail on gap": the server stores its messages in order and
//! stops at the first one missing, so what it confirms is exactly what is stored.
//!
//! A write the batch cannot confirm (the batch broke: a gap, an error, the server restarted,
//! no answer in [`ANSWER_PATIENCE`]) is answered `Err`, and its caller writes it alone, with a
//! PubAck, as it would without batches: nothing is lost, and a write stored before its batch
//! broke may be stored twice (as after a PubAck lost in a failover). A stream that refuses
//! fast batches turns them off for a minute.

use async_nats::{Client, Subject};
use bytes::Bytes;
use futures::StreamExt;
use std::collections::VecDeque;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::{debug, info};

/// A batch with no write for this long is ended, to confirm its last writes.
pub const IDLE: Duration = Duration::from_millis(2);
/// A batch whose oldest unconfirmed write has waited this long is ended, to confirm it.
pub const LONGEST: Duration = Duration::from_millis(20);
/// How long a batch may go without an answer while writes wait on it before it is given up.
pub const ANSWER_PATIENCE: Duration = Duration::from_secs(5);
/// The flow the writer asks for: an ack every this many messages (the server may ask for
/// fewer).
const FLOW: u16 = 100;
/// Flow acks that may be outstanding: at most `flow × WINDOW` writes are sent ahead of the
/// last ack.
const WINDOW: u64 = 3;
/// How long fast batches stay off after the stream refused one.
const OFF_FOR: Duration = Duration::from_secs(60);
/// How long fast batches stay off after the server had too many of them in flight.
const BUSY_FOR: Duration = Duration::from_secs(5);

/// The server's codes for a stream that does not take fast batches, a reply subject it does
/// not read as one, and too many fast batches in flight.
const DISABLED: u64 = 10205;
const INVALID_PATTERN: u64 = 10206;
const TOO_MANY_INFLIGHT: u64 = 10211;

/// Why a write was not confirmed by its batch: the caller writes it alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unbatched {
    /// Fast batches are off (refused by the stream, or the writer is gone).
    Off,
    /// Its batch broke before confirming it; it may be stored.
    Broken,
}

impl Unbatched {
    /// Its name, as a metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Unbatched::Off => "off",
            Unbatched::Broken => "broken",
        }
    }
}

/// Where a write's confirmation (or why it has none) goes.
type Done = oneshot::Sender<Result<(), Unbatched>>;

struct Write {
    subject: Subject,
    payload: Bytes,
    done: Done,
}

/// The handle writes are made through; the writing is done by a task of its own.
#[derive(Clone)]
pub struct Batched {
    tx: mpsc::UnboundedSender<Write>,
}

impl Batched {
    /// Starts the writer task for `client`'s writes to one stream (every subject written
    /// must be of that stream). It ends when every handle is dropped, ending its batch.
    pub fn start(client: Client) -> Batched {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(client, rx));
        Batched { tx }
    }

    /// Writes `payload` on `subject`; `Ok` once the server has stored it.
    pub async fn write(&self, subject: Subject, payload: Bytes) -> Result<(), Unbatched> {
        let (done, confirmed) = oneshot::channel();
        self.tx
            .send(Write {
                subject,
                payload,
                done,
            })
            .map_err(|_| Unbatched::Off)?;
        confirmed.await.unwrap_or(Err(Unbatched::Off))
    }
}

/// One fast batch, open or ending.
struct Batch {
    /// Its id, the reply subject's token before the flow.
    id: String,
    /// `<inbox>.<id>.<flow>.fail.`: each message's reply subject goes on with
    /// `<sequence>.<operation>.$FI`.
    prefix: String,
    /// The first message's subject, which the end of the batch is sent to.
    first: Subject,
    /// The last sequence sent.
    sent: u64,
    /// Every message up to this sequence is stored.
    acked: u64,
    /// The server's flow: an ack every this many messages.
    flow: u64,
    /// Writes sent and not yet confirmed, by sequence.
    waiting: VecDeque<(u64, Instant, Done)>,
    last_sent: Instant,
    last_heard: Instant,
}

impl Batch {
    fn reply(&self, seq: u64, op: u8) -> Subject {
        Subject::from(format!("{}{seq}.{op}.$FI", self.prefix))
    }

    /// Confirms every write up to `seq`.
    fn confirm(&mut self, seq: u64) {
        self.acked = self.acked.max(seq);
        while self
            .waiting
            .front()
            .is_some_and(|(s, _, _)| *s <= self.acked)
        {
            if let Some((_, _, done)) = self.waiting.pop_front() {
                let _ = done.send(Ok(()));
            }
        }
    }

    /// When its oldest unconfirmed write was sent.
    fn oldest(&self) -> Option<Instant> {
        self.waiting.front().map(|(_, at, _)| *at)
    }

    /// Answers every write it has not confirmed: `Broken`.
    fn give_up(&mut self) {
        for (_, _, done) in self.waiting.drain(..) {
            let _ = done.send(Err(Unbatched::Broken));
        }
    }

    /// When its answer is overdue: [`ANSWER_PATIENCE`] after it was last heard from or sent
    /// to.
    fn overdue_at(&self) -> Instant {
        self.last_heard.max(self.last_sent) + ANSWER_PATIENCE
    }

    fn room(&self) -> bool {
        self.sent < self.acked + self.flow * WINDOW
    }
}

/// What the server answers on a batch's reply subjects: a flow ack (`type: ack`), a gap or
/// an error in the batch (`type: gap`, `type: err`), or a PubAck (the batch's end, with the
/// count stored) or an error (`error`).
#[derive(serde::Deserialize)]
struct Answer {
    #[serde(rename = "type")]
    kind: Option<String>,
    seq: Option<u64>,
    msgs: Option<u64>,
    count: Option<u64>,
    error: Option<ApiError>,
}

#[derive(serde::Deserialize)]
struct ApiError {
    #[serde(default)]
    err_code: u64,
    #[serde(default)]
    description: String,
}

struct Writer {
    client: Client,
    inbox: String,
    /// The batch writes go into, and those ending (at most a few, answered within
    /// milliseconds).
    open: Option<Batch>,
    ending: Vec<Batch>,
    /// Writes not yet sent: the open batch has no room for them.
    queue: VecDeque<Write>,
    batches: u64,
    off_until: Option<Instant>,
}

async fn run(client: Client, mut rx: mpsc::UnboundedReceiver<Write>) {
    let inbox = client.new_inbox();
    let mut replies = match client.subscribe(format!("{inbox}.>")).await {
        Ok(sub) => sub,
        Err(e) => {
            info!(error = %e, "Cannot subscribe for fast batch answers; attempt records are written one by one.");
            return refuse(rx).await;
        }
    };
    let mut w = Writer {
        client,
        inbox,
        open: None,
        ending: Vec::new(),
        queue: VecDeque::new(),
        batches: 0,
        off_until: None,
    };
    let timer = tokio::time::sleep(Duration::from_secs(3600));
    tokio::pin!(timer);
    let mut armed = None;
    let mut closed = false;
    loop {
        let deadline = w.deadline();
        if let Some(at) = deadline.filter(|at| armed != Some(*at)) {
            timer.as_mut().reset(at);
            armed = Some(at);
        }
        tokio::select! {
            biased;
            answer = replies.next() => match answer {
                Some(msg) => w.heard(&msg.subject, &msg.payload),
                None => {
                    // The connection is closed for good.
                    w.break_all();
                    for write in w.queue.drain(..) {
                        let _ = write.done.send(Err(Unbatched::Off));
                    }
                    return refuse(rx).await;
                }
            },
            write = rx.recv(), if !closed => match write {
                Some(write) => {
                    w.queue.push_back(write);
                    while let Ok(write) = rx.try_recv() {
                        w.queue.push_back(write);
                    }
                }
                None => closed = true,
            },
            () = &mut timer, if deadline.is_some() => w.timed_out().await,
        }
        w.send_queued().await;
        if closed && w.queue.is_empty() && w.open.is_none() && w.ending.is_empty() {
            return;
        }
        if closed && w.queue.is_empty() {
            if let Some(open) = w.open.take() {
                w.end(open).await;
            }
        }
    }
}

/// Answers every write `Off`, until every handle is dropped.
async fn refuse(mut rx: mpsc::UnboundedReceiver<Write>) {
    while let Some(write) = rx.recv().await {
        let _ = write.done.send(Err(Unbatched::Off));
    }
}

impl Writer {
    /// When the timer must next look at the batches.
    fn deadline(&self) -> Option<Instant> {
        let mut at: Option<Instant> = None;
        let mut earlier = |t: Instant| at = Some(at.map_or(t, |a| a.min(t)));
        if let Some(open) = &self.open {
            if self.queue.is_empty() {
                earlier(open.last_sent + IDLE);
            }
            if let Some(oldest) = open.oldest() {
                earlier(oldest + LONGEST);
                earlier(open.overdue_at());
            }
        }
        // An ending batch is dropped once its answer is overdue, confirmed writes or not.
        for b in &self.ending {
            earlier(b.overdue_at());
        }
        at
    }

    async fn timed_out(&mut self) {
        let now = Instant::now();
        // Batches that stopped answering (their end's answer lost, say to a restart): their
        // unconfirmed writes are made alone, and they are forgotten.
        let mut i = 0;
        while i < self.ending.len() {
            if now >= self.ending[i].overdue_at() {
                let mut b = self.ending.swap_remove(i);
                debug!(batch = %b.id, "A fast batch did not answer; its writes are made one by one.");
                b.give_up();
            } else {
                i += 1;
            }
        }
        let Some(open) = &self.open else { return };
        let silent = !open.waiting.is_empty() && now >= open.overdue_at();
        // Not idle while writes wait for room in it.
        let idle = self.queue.is_empty() && now >= open.last_sent + IDLE;
        let long = open.oldest().is_some_and(|o| now >= o + LONGEST);
        if silent {
            if let Some(mut open) = self.open.take() {
                debug!(batch = %open.id, "A fast batch did not answer; its writes are made one by one.");
                open.give_up();
            }
        } else if idle || long {
            if let Some(open) = self.open.take() {
                self.end(open).await;
            }
        }
    }

    /// Ends `batch` (an end-of-batch commit, which stores nothing): its answer counts what it
    /// stored.
    async fn end(&mut self, mut batch: Batch) {
        // Ended even when everything is confirmed: the server would keep it until its idle
        // time (10 s), and has room for only so many.
        batch.sent += 1;
        let reply = batch.reply(batch.sent, 3);
        if self
            .client
            .publish_with_reply(batch.first.clone(), reply, Bytes::new())
            .await
            .is_err()
        {
            batch.give_up();
            return;
        }
        batch.last_sent = Instant::now();
        self.ending.push(batch);
    }

    /// Sends the queued writes the open batch has room for, opening one if needed.
    async fn send_queued(&mut self) {
        if let Some(until) = self.off_until {
            if Instant::now() < until {
                for write in self.queue.drain(..) {
                    let _ = write.done.send(Err(Unbatched::Off));
                }
                return;
            }
            self.off_until = None;
        }
        while let Some(write) = self.queue.pop_front() {
            if self.open.as_ref().is_some_and(|b| !b.room()) {
                self.queue.push_front(write);
                return;
            }
            let batch = match &mut self.open {
                Some(batch) => batch,
                None => {
                    self.batches += 1;
                    let id = format!(
                        "{}{}",
                        self.inbox.rsplit('.').next().unwrap_or("b"),
                        self.batches
                    );
                    let now = Instant::now();
                    self.open.insert(Batch {
                        prefix: format!("{}.{id}.{FLOW}.fail.", self.inbox),
                        id,
                        first: write.subject.clone(),
                        sent: 0,
                        acked: 0,
                        flow: u64::from(FLOW),
                        waiting: VecDeque::new(),
                        last_sent: now,
                        last_heard: now,
                    })
                }
            };
            let seq = batch.sent + 1;
            let op = if seq == 1 { 0 } else { 1 };
            let reply = batch.reply(seq, op);
            match self
                .client
                .publish_with_reply(write.subject, reply, write.payload)
                .await
            {
                Ok(()) => {
                    let now = Instant::now();
                    batch.sent = seq;
                    batch.last_sent = now;
                    batch.waiting.push_back((seq, now, write.done));
                }
                Err(_) => {
                    // The connection is closing: this write, and the batch, are given up.
                    let _ = write.done.send(Err(Unbatched::Broken));
                    if let Some(mut open) = self.open.take() {
                        open.give_up();
                    }
                }
            }
        }
    }

    /// An answer on `subject` (`<inbox>.<id>.<flow>.<gap>.<seq>.<op>.$FI`).
    fn heard(&mut self, subject: &str, payload: &[u8]) {
        let Some(id) = subject
            .strip_prefix(self.inbox.as_str())
            .and_then(|rest| rest.strip_prefix('.'))
            .and_then(|rest| rest.split('.').next())
        else {
            return;
        };
        let Ok(answer) = serde_json::from_slice::<Answer>(payload) else {
            debug!("A fast batch answer did not parse; ignored.");
            return;
        };
        let in_open = self.open.as_ref().is_some_and(|b| b.id == id);
        let batch = if in_open {
            self.open.as_mut()
        } else {
            self.ending.iter_mut().find(|b| b.id == id)
        };
        let Some(batch) = batch else {
            // A batch already given up.
            return;
        };
        batch.last_heard = Instant::now();
        let finished = match (answer.kind.as_deref(), answer.error) {
            (Some("ack"), None) => {
                if let Some(msgs) = answer.msgs.filter(|m| *m > 0) {
                    batch.flow = msgs;
                }
                batch.confirm(answer.seq.unwrap_or(0));
                false
            }
            (None, None) => {
                // The batch's end: its first `count` messages are stored.
                batch.confirm(answer.count.unwrap_or(0));
                batch.give_up();
                true
            }
            (_, Some(error)) => {
                match error.err_code {
                    DISABLED | INVALID_PATTERN => {
                        info!(error = %error.description, "The attempts stream does not take fast batches; its records are written one by one for a minute.");
                        self.off_until = Some(Instant::now() + OFF_FOR);
                    }
                    TOO_MANY_INFLIGHT => {
                        debug!("The server has too many fast batches; records are written one by one for a few seconds.");
                        self.off_until = Some(Instant::now() + BUSY_FOR);
                    }
                    _ => {
                        debug!(error = %error.description, "A fast batch broke; its unconfirmed writes are made one by one.")
                    }
                }
                batch.give_up();
                true
            }
            (Some(kind), None) => {
                // A gap or a message's error: the server stores nothing more of the batch,
                // and its end (a PubAck with the count stored) follows.
                debug!(
                    kind,
                    "A fast batch broke; its unconfirmed writes are made one by one."
                );
                if in_open {
                    if let Some(open) = self.open.take() {
                        self.ending.push(open);
                    }
                }
                return;
            }
        };
        if finished {
            if in_open {
                self.open = None;
            } else {
                self.ending.retain(|b| b.id != id);
            }
        }
    }

    /// The answers' subscription ended: every batch is given up.
    fn break_all(&mut self) {
        if let Some(mut open) = self.open.take() {
            open.give_up();
        }
        for mut b in self.ending.drain(..) {
            b.give_up();
        }
    }
}
