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
    /// The model failed to load: the server stops.
    pub load_error: OnceLock<String>,
    pub metrics: Metrics,
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
            load_error: OnceLock::new(),
            metrics: Metrics::new(max_queue),
            max_batch,
        });
        let (tx, rx) = std::sync::mpsc::channel();
        let thread_shared = shared.clone();
        let handle = std::thread::Builder::new()
            .name("gptpipe-engine".into())
            .spawn(move || match open() {
                Ok(backend) => {
                    let _ = thread_shared.n_ctx.set(backend.n_ctx());
                    Batcher::new(backend, codec, thread_shared).run(rx);
                }
                Err(e) => {
                    let _ = thread_shared.load_error.set(format!("{e:#}"));
                }
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

/// A request admitted to the batch: what its samples share.
struct Admitted {
    job: Job,
    deadline: Instant,
    updates: UnboundedSender<Update>,
    /// Set once the request has failed, so that it fails once, not once per sample.
    failed: AtomicBool,
}

impl Admitted {
    fn fail(&self, failure: Failure) {
        if !self.failed.swap(true, Ordering::Relaxed) {
            let _ = self.updates.send(Update::Failed(failure));
        }
    }

    /// Whether its samples should stop: the client is gone, or it is too late.
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
    request: Arc<Admitted>,
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
    pending: VecDeque<Request>,
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

    fn run(mut self, rx: Receiver<Request>) {
        loop {
            if self.live.is_empty() && self.pending.is_empty() {
                match rx.recv_timeout(IDLE_POLL) {
                    Ok(r) => self.pending.push_back(r),
                    Err(RecvTimeoutError::Timeout) => continue,
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            }
            while let Ok(r) = rx.try_recv() {
                self.pending.push_back(r);
            }
            self.drop_abandoned_requests();
            if let Err(e) = self.turn() {
                // The backend's state is unknown after an error: fail everything in it and
                // start over with an empty batch.
                let message = format!("{e:#}");
                eprintln!("gptpipe serve: model error: {message}");
                for live in self.live.drain(..) {
                    live.request.fail(Failure::Model(message.clone()));
                }
            }
            self.shared.metrics.set_batch(self.live.len());
        }
    }

    /// One step: a token for every live sample, then the batch for the next step (rows
    /// that stop leave, rows past the context slide, new requests join).
    fn turn(&mut self) -> Result<()> {
        if !self.live.is_empty() {
            self.sample_all()?;
        }
        let now = Instant::now();
        // Rows that go on: stepped in place, or (past the context) joined again from the
        // last n_ctx - 1 tokens, as the batch driver restarts its rows.
        let mut keep = Vec::new();
        let mut slide = Vec::new();
        for (pos, live) in self.live.iter().enumerate() {
            if live.row.is_done(&live.request.job) || live.request.abandoned(now) {
                continue;
            }
            if live.cached < self.n_ctx {
                keep.push(pos);
            } else {
                slide.push(pos);
            }
        }
        let mut live: Vec<Option<Live>> = std::mem::take(&mut self.live)
            .into_iter()
            .map(Some)
            .collect();
        let mut next: Vec<Live> = keep.iter().map(|&p| live[p].take().unwrap()).collect();
        let sliding: Vec<Live> = slide.iter().map(|&p| live[p].take().unwrap()).collect();
        // An emptied batch that cannot join is replaced by `start` instead.
        if keep.len() < live.len() && (!keep.is_empty() || self.backend.can_join()) {
            self.backend.retain(&keep)?;
        }
        if !next.is_empty() {
            let tokens: Vec<u32> = next
                .iter()
                .map(|l| *l.row.generated().last().expect("sampled"))
                .collect();
            self.backend.step(&tokens)?;
            for l in &mut next {
                l.cached += 1;
            }
        }
        let mut joining: Vec<(Vec<u32>, Live)> = sliding
            .into_iter()
            .map(|mut l| {
                let context = l.row.context();
                let window = context[context.len() - (self.n_ctx - 1)..].to_vec();
                l.cached = window.len();
                (window, l)
            })
            .collect();
        self.admit(next.len() + joining.len(), now, &mut joining);
        if !joining.is_empty() {
            let prompts: Vec<Vec<u32>> = joining.iter().map(|(p, _)| p.clone()).collect();
            if self.backend.can_join() {
                self.backend.join(&prompts)?;
            } else {
                // Only when the batch is empty (see `admit`), and then all rows have one
                // length: the same prompt, or windows of rows that went in step.
                self.backend.start(&prompts)?;
            }
            next.extend(joining.into_iter().map(|(_, l)| l));
        }
        self.live = next;
        Ok(())
    }

    /// Forgets queued requests whose client left, and fails those past their time limit,
    /// without waiting for room in the batch.
    fn drop_abandoned_requests(&mut self) {
        let now = Instant::now();
        let metrics = &self.shared.metrics;
        self.pending.retain(|r| {
            let gone = r.updates.is_closed();
            if !gone && now >= r.deadline {
                let _ = r.updates.send(Update::Failed(Failure::TimedOut));
            }
            let keep = !gone && now < r.deadline;
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
        while let Some(request) = self.pending.front() {
            let fits = rows == 0 || rows + request.n <= self.shared.max_batch;
            if !fits || (!join && rows > 0) {
                break;
            }
            let request = self.pending.pop_front().expect("front");
            self.shared.metrics.dequeued();
            let admitted = Arc::new(Admitted {
                job: request.job,
                deadline: request.deadline,
                updates: request.updates,
                failed: AtomicBool::new(false),
            });
            if admitted.abandoned(now) {
                continue;
            }
            if admitted.job.length == 0 {
                for index in 0..request.n {
                    let row = SampleRow::new(&admitted.job, index);
                    let sample = row.finish(&admitted.job);
                    let _ = admitted.updates.send(Update::Done { index, sample });
                }
                continue;
            }
            for index in 0..request.n {
                let live = Live {
                    row: SampleRow::new(&admitted.job, index),
                    cached: admitted.job.prompt.len(),
                    sent: 0,
                    request: admitted.clone(),
                };
                joining.push((admitted.job.prompt.clone(), live));
            }
            rows += request.n;
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
            .map(|l| l.request.job.sampling.candidates_needed())
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
                        l.request.job.sampling.sample_row(row, l.row.context(), u)
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
/// how many bytes that is: a character split between two tokens is sent once whole.
fn complete_text(bytes: &[u8], last: bool) -> (String, usize) {
    let upto = match std::str::from_utf8(bytes) {
        Ok(_) => bytes.len(),
        // An unfinished character at the end waits for the next token...
        Err(e) if e.error_len().is_none() && !last => e.valid_up_to(),
        // ...an invalid one will never be whole: send it as U+FFFD now.
        Err(_) => bytes.len(),
    };
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
    }
}
