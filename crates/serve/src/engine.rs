//! Continuous batching: one thread owns the model and decodes every live sample together.
//! A request's samples join the running batch at the next step ([`Backend::join`]) and
//! leave it when they stop (length, a stop string, a client gone, the time limit), so a
//! short request never waits for a long one. Each sample is a [`SampleRow`], the type the
//! batch driver of `gptpipe generate` uses, with its own sampling settings and random
//! stream: its text is the one `gptpipe generate` gives with the same model, seed and
//! settings, whatever else shares the batch.
//!
//! A backend that cannot join rows (an ONNX export made before the graph had an
//! attention mask) still serves: one request at a time, its samples batched together.

use crate::metrics::Metrics;
use anyhow::Result;
use gptpipe_generate::{Backend, Codec, Job, Sample, SampleRow};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::mpsc::UnboundedSender;

/// What a request hears about its samples, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Update {
    /// The prefix an echoed sample starts with (before the model has run on it).
    Prefix { index: usize, text: String },
    /// More text of sample `index` (text that a later token can no longer change).
    Text { index: usize, text: String },
    /// Sample `index` is finished.
    Done { index: usize, sample: Sample },
    /// The request ends without its samples.
    Failed(Failure),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Failure {
    /// Past the per-request time limit.
    TimedOut,
    /// The model failed; the message says why.
    Model(String),
    /// The server stopped before the request was done (its grace period ended).
    ShuttingDown,
}

/// One request: samples `0..n` of `job`, numbered as `gptpipe generate` numbers them.
pub struct Request {
    pub job: Job,
    pub n: usize,
    pub deadline: Instant,
    pub updates: UnboundedSender<Update>,
}

/// What the HTTP side and the engine thread share.
pub struct Shared {
    /// The model's context, once it is loaded (`/health` is ready then).
    pub n_ctx: OnceLock<usize>,
    /// The model failed to load, or the engine died: the server stops (exit 1), so that
    /// whatever runs it starts a new one.
    pub fatal: OnceLock<String>,
    /// Set when the server stops: the engine returns after its current step.
    pub stop: AtomicBool,
    pub metrics: Arc<Metrics>,
    pub max_batch: usize,
}

/// The sending side, cloned into every handler.
#[derive(Clone)]
pub struct Engine {
    tx: Sender<Request>,
    pub shared: Arc<Shared>,
}

/// Why a request was not queued.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// The queue is full: try again later (429).
    QueueFull,
    /// The engine has stopped (shutting down, or the model failed).
    Stopped,
}

impl Engine {
    /// Starts the engine thread: it builds the backend with `open` (so the backend never
    /// crosses threads), then serves requests until every [`Engine`] is dropped and the
    /// batch is empty.
    pub fn start(
        open: impl FnOnce() -> Result<Box<dyn Backend>> + Send + 'static,
        codec: Arc<dyn Codec + Send + Sync>,
        max_batch: usize,
        max_queue: usize,
    ) -> (Self, std::thread::JoinHandle<()>) {
        let shared = Arc::new(Shared {
            n_ctx: OnceLock::new(),
            fatal: OnceLock::new(),
            stop: AtomicBool::new(false),
            metrics: Arc::new(Metrics::new(max_queue)),
            max_batch,
        });
        let (tx, rx) = std::sync::mpsc::channel();
        let thread_shared = shared.clone();
        let handle = std::thread::Builder::new()
            .name("gptpipe-engine".into())
            .spawn(move || {
                let backend = match open() {
                    Ok(backend) => backend,
                    Err(e) => {
                        let _ = thread_shared
                            .fatal
                            .set(format!("cannot load the model: {e:#}"));
                        return;
                    }
                };
                let _ = thread_shared.n_ctx.set(backend.n_ctx());
                let batcher = Batcher::new(backend, codec, thread_shared.clone());
                // A panic in model code (libtorch reports some errors so) must not leave a
                // server that says it is ready and answers nothing.
                let run =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| batcher.run(rx)));
                let died = match run {
                    Ok(Ok(())) => return,
                    Ok(Err(e)) => format!("{e:#}"),
                    Err(panic) => panic
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                        .unwrap_or_else(|| "a panic".into()),
                };
                let _ = thread_shared
                    .fatal
                    .set(format!("the generation engine died: {died}"));
            })
            .expect("cannot start the engine thread");
        (Self { tx, shared }, handle)
    }

    /// Queues a request, or refuses it when `max_queue` requests already wait.
    pub fn submit(&self, request: Request) -> Result<(), Refused> {
        if !self.shared.metrics.try_enqueue() {
            return Err(Refused::QueueFull);
        }
        self.tx.send(request).map_err(|_| {
            self.shared.metrics.dequeued();
            Refused::Stopped
        })
    }
}

/// A request the engine has taken, queued or in the batch: what its samples share.
struct Accepted {
    job: Job,
    deadline: Instant,
    updates: UnboundedSender<Update>,
    /// Set once the request has failed, so that it fails once, not once per sample.
    failed: AtomicBool,
}

/// A request waiting for room in the batch, for its `n` samples.
struct Queued {
    request: Arc<Accepted>,
    n: usize,
}

impl From<Request> for Queued {
    fn from(r: Request) -> Self {
        Self {
            n: r.n,
            request: Arc::new(Accepted {
                job: r.job,
                deadline: r.deadline,
                updates: r.updates,
                failed: AtomicBool::new(false),
            }),
        }
    }
}

impl Accepted {
    fn fail(&self, failure: Failure) {
        if !self.failed.swap(true, Ordering::Relaxed) {
            let _ = self.updates.send(Update::Failed(failure));
        }
    }

    /// Whether it should stop (or not start): the client is gone, or it is too late (and
    /// then it fails, once).
    fn abandoned(&self, now: Instant) -> bool {
        if self.failed.load(Ordering::Relaxed) || self.updates.is_closed() {
            return true;
        }
        if now >= self.deadline {
            self.fail(Failure::TimedOut);
            return true;
        }
        false
    }
}

/// One sample in the batch.
struct Live {
    request: Arc<Accepted>,
    row: SampleRow,
    /// Tokens of this row in the backend's cache.
    cached: usize,
    /// Bytes of settled text already sent.
    sent: usize,
}

struct Batcher {
    backend: Box<dyn Backend>,
    codec: Arc<dyn Codec + Send + Sync>,
    shared: Arc<Shared>,
    n_ctx: usize,
    /// In the backend's row order.
    live: Vec<Live>,
    pending: VecDeque<Queued>,
}

/// How long an idle engine sleeps between looks at the queue.
const IDLE_POLL: Duration = Duration::from_millis(200);

impl Batcher {
    fn new(
        backend: Box<dyn Backend>,
        codec: Arc<dyn Codec + Send + Sync>,
        shared: Arc<Shared>,
    ) -> Self {
        let n_ctx = backend.n_ctx();
        Self {
            backend,
            codec,
            shared,
            n_ctx,
            live: Vec::new(),
            pending: VecDeque::new(),
        }
    }

    /// Serves until every sender is gone or the server stops; an error only when the
    /// backend cannot be brought back to an empty batch after a failure.
    fn run(mut self, rx: Receiver<Request>) -> Result<()> {
        while !self.shared.stop.load(Ordering::Relaxed) {
            if self.live.is_empty() && self.pending.is_empty() {
                match rx.recv_timeout(IDLE_POLL) {
                    Ok(r) => self.pending.push_back(r.into()),
                    Err(RecvTimeoutError::Timeout) => continue,
                    Err(RecvTimeoutError::Disconnected) => return Ok(()),
                }
            }
            while let Ok(r) = rx.try_recv() {
                self.pending.push_back(r.into());
            }
            self.drop_abandoned_requests();
            if let Err(e) = self.turn() {
                // Fail every sample of the batch with the model's error, and empty the
                // backend (a later batch must not find rows of this one).
                let message = format!("{e:#}");
                eprintln!("gptpipe serve: model error: {message}");
                for live in self.live.drain(..) {
                    live.request.fail(Failure::Model(message.clone()));
                }
                if self.backend.can_join() {
                    self.backend.retain(&[]).map_err(|reset| {
                        anyhow::anyhow!("{message}; then the batch could not be emptied: {reset:#}")
                    })?;
                }
            }
            self.shared.metrics.set_batch(self.live.len());
        }
        // Stopped: what is left is cut, and says so.
        for live in self.live.drain(..) {
            live.request.fail(Failure::ShuttingDown);
        }
        for queued in self.pending.drain(..) {
            queued.request.fail(Failure::ShuttingDown);
        }
        Ok(())
    }

    /// One step: a token for every live sample, then the batch for the next step (rows
    /// that stop leave, rows past the context slide, new requests join). After an error,
    /// `live` holds every sample the backend may hold, for the caller to fail.
    fn turn(&mut self) -> Result<()> {
        if !self.live.is_empty() {
            self.sample_all()?;
        }
        let now = Instant::now();
        let before = self.live.len();
        // Rows that go on: stepped in place (`next`, at `kept` in the old order), or, past
        // the context, joined again from their last n_ctx - 1 tokens (`joining`), as the
        // batch driver restarts its rows.
        let mut kept = Vec::new();
        let mut next = Vec::new();
        let mut joining: Vec<(Vec<u32>, Live)> = Vec::new();
        for (pos, mut live) in std::mem::take(&mut self.live).into_iter().enumerate() {
            if live.row.is_done(&live.request.job) || live.request.abandoned(now) {
                continue;
            }
            if live.cached < self.n_ctx {
                kept.push(pos);
                next.push(live);
            } else {
                let context = live.row.context();
                let window = context[context.len() - (self.n_ctx - 1)..].to_vec();
                live.cached = window.len();
                joining.push((window, live));
            }
        }
        let result = self.next_batch(before, &kept, &mut next, &mut joining, now);
        self.live = next;
        self.live.extend(joining.into_iter().map(|(_, l)| l));
        result
    }

    /// Brings the backend to the next step's batch: `next` (rows `kept` of `before`)
    /// stepped, then `joining` (with the requests admitted now) joined after them.
    fn next_batch(
        &mut self,
        before: usize,
        kept: &[usize],
        next: &mut [Live],
        joining: &mut Vec<(Vec<u32>, Live)>,
        now: Instant,
    ) -> Result<()> {
        // An emptied batch that cannot join is replaced by `start` instead.
        if kept.len() < before && (!kept.is_empty() || self.backend.can_join()) {
            self.backend.retain(kept)?;
        }
        if !next.is_empty() {
            let tokens: Vec<u32> = next
                .iter()
                .map(|l| *l.row.generated().last().expect("sampled"))
                .collect();
            self.backend.step(&tokens)?;
            for l in next.iter_mut() {
                l.cached += 1;
            }
        }
        self.admit(next.len() + joining.len(), now, joining);
        if !joining.is_empty() {
            let prompts: Vec<Vec<u32>> = joining.iter().map(|(p, _)| p.clone()).collect();
            if self.backend.can_join() {
                self.backend.join(&prompts)?;
            } else {
                // Only when the batch is empty (see `admit`), and then all rows have one
                // length: the same prompt, or windows of rows that went in step.
                self.backend.start(&prompts)?;
            }
        }
        Ok(())
    }

    /// Forgets queued requests whose client left, and fails those past their time limit,
    /// without waiting for room in the batch.
    fn drop_abandoned_requests(&mut self) {
        let now = Instant::now();
        let metrics = &self.shared.metrics;
        self.pending.retain(|queued| {
            let keep = !queued.request.abandoned(now);
            if !keep {
                metrics.dequeued();
            }
            keep
        });
    }

    /// Moves queued requests into `joining` while their samples fit the batch.
    fn admit(&mut self, in_batch: usize, now: Instant, joining: &mut Vec<(Vec<u32>, Live)>) {
        let join = self.backend.can_join();
        let mut rows = in_batch + joining.len();
        while let Some(queued) = self.pending.front() {
            let fits = rows == 0 || rows + queued.n <= self.shared.max_batch;
            if !fits || (!join && rows > 0) {
                break;
            }
            let Queued {
                request: admitted,
                n,
            } = self.pending.pop_front().expect("front");
            self.shared.metrics.dequeued();
            if admitted.abandoned(now) {
                continue;
            }
            if admitted.job.length == 0 {
                for index in 0..n {
                    let row = SampleRow::new(&admitted.job, index);
                    let sample = row.finish(&admitted.job);
                    let _ = admitted.updates.send(Update::Done { index, sample });
                }
                continue;
            }
            for index in 0..n {
                if admitted.job.include_prefix && !admitted.job.prefix.is_empty() {
                    // The text of an echoed sample starts with its prefix: so does its stream.
                    let _ = admitted.updates.send(Update::Prefix {
                        index,
                        text: admitted.job.prefix.clone(),
                    });
                }
                let live = Live {
                    row: SampleRow::new(&admitted.job, index),
                    cached: admitted.job.prompt.len(),
                    sent: 0,
                    request: admitted.clone(),
                };
                joining.push((admitted.job.prompt.clone(), live));
            }
            rows += n;
            if !join {
                break;
            }
        }
    }

    /// Picks every live sample's next token from the logits, as the batch driver does,
    /// and tells each request its new text.
    fn sample_all(&mut self) -> Result<()> {
        let candidates: Option<Vec<usize>> = self
            .live
            .iter()
            .map(|l| l.request.job.candidates_needed())
            .collect();
        let tokens: Vec<u32> = match candidates.and_then(|ks| ks.into_iter().max()) {
            Some(k) => {
                let cands = self.backend.top_k(k)?;
                anyhow::ensure!(cands.len() == self.live.len(), "backend rows");
                self.live
                    .iter_mut()
                    .zip(&cands)
                    .map(|(l, c)| {
                        let u = l.row.next_uniform();
                        l.request.job.sampling.sample_candidates(c, u)
                    })
                    .collect()
            }
            None => {
                let mut logits = self.backend.logits()?;
                anyhow::ensure!(logits.rows == self.live.len(), "backend rows");
                let v = logits.vocab;
                self.live
                    .iter_mut()
                    .enumerate()
                    .map(|(pos, l)| {
                        let u = l.row.next_uniform();
                        let row = &mut logits.data[pos * v..(pos + 1) * v];
                        l.row.sample(&l.request.job, row, u)
                    })
                    .collect()
            }
        };
        self.shared.metrics.add_tokens(tokens.len());
        for (l, token) in self.live.iter_mut().zip(tokens) {
            let job = &l.request.job;
            let going = l.row.push(token, self.codec.as_ref(), job);
            let settled = l.row.settled_bytes(job);
            if settled.len() > l.sent {
                let (text, used) = complete_text(&settled[l.sent..], !going);
                if used > 0 {
                    l.sent += used;
                    let _ = l.request.updates.send(Update::Text {
                        index: l.row.index(),
                        text,
                    });
                }
            }
            if !going {
                let sample = l.row.finish(job);
                let _ = l.request.updates.send(Update::Done {
                    index: l.row.index(),
                    sample,
                });
            }
        }
        Ok(())
    }
}

/// The text of `bytes` up to the last whole UTF-8 character (all of it when `last`), and
/// how many bytes that is: a character split between two tokens is sent once whole, and an
/// invalid sequence as one U+FFFD, exactly as the whole text's lossy decoding shows it, so
/// the pieces always add up to the sample's text.
fn complete_text(bytes: &[u8], last: bool) -> (String, usize) {
    let mut upto = 0;
    while upto < bytes.len() {
        match std::str::from_utf8(&bytes[upto..]) {
            Ok(_) => upto = bytes.len(),
            // An invalid sequence: it stays invalid whatever follows.
            Err(e) => match e.error_len() {
                Some(n) => upto += e.valid_up_to() + n,
                // An unfinished character at the end waits for the next token.
                None if !last => {
                    upto += e.valid_up_to();
                    break;
                }
                None => upto = bytes.len(),
            },
        }
    }
    (String::from_utf8_lossy(&bytes[..upto]).into_owned(), upto)
}

#[cfg(test)]
mod tests {
    use super::complete_text;

    #[test]
    fn split_characters_wait_for_their_last_byte() {
        let e = "é".as_bytes();
        assert_eq!(complete_text(&[b'a', e[0]], false), ("a".into(), 1));
        assert_eq!(complete_text(e, false), ("é".into(), 2));
        assert_eq!(complete_text(&[b'a', e[0]], true), ("a\u{fffd}".into(), 2));
        assert_eq!(complete_text(&[0xff, b'b'], false), ("\u{fffd}b".into(), 2));
        // An invalid byte, then the start of a character: the invalid byte goes now, the
        // character waits.
        assert_eq!(complete_text(&[0xff, e[0]], false), ("\u{fffd}".into(), 1));
    }

    #[test]
    fn pieces_add_up_to_the_lossy_text_wherever_the_bytes_are_cut() {
        let text: Vec<u8> = [
            &b"ab"[..],
            "é士".as_bytes(),
            &[0xe5, 0x41, 0xff],
            "ü".as_bytes(),
        ]
        .concat();
        for cut in 0..=text.len() {
            for cut2 in cut..=text.len() {
                let mut sent = 0;
                let mut out = String::new();
                for (end, last) in [(cut, false), (cut2, false), (text.len(), true)] {
                    if end > sent {
                        let (piece, used) = complete_text(&text[sent..end], last);
                        out.push_str(&piece);
                        sent += used;
                    }
                }
                assert_eq!(out, String::from_utf8_lossy(&text), "cuts {cut} {cut2}");
            }
        }
    }
}
