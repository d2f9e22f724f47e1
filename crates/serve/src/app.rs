//! What every handler shares: the engine, the tokenizer, the defaults and limits, and
//! turning checked settings into queued jobs.

use crate::engine::{Engine, Failure, Refused, Request, Update};
use crate::error::ApiError;
use crate::metrics::Timing;
use crate::params::Settings;
use crate::ServeConfig;
use axum::http::StatusCode;
use gptpipe_generate::stage::sampling_of;
use gptpipe_generate::{Job, Sample};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

pub struct App {
    pub engine: Engine,
    pub codec: gptpipe_text::Gpt2Tokenizer,
    pub config: ServeConfig,
    /// Set on SIGTERM: new requests get 503 while those in flight finish.
    pub stopping: AtomicBool,
    /// Mixed into the seeds of requests that give none, so each gets its own.
    seeds: AtomicU64,
}

impl App {
    pub fn new(engine: Engine, codec: gptpipe_text::Gpt2Tokenizer, config: ServeConfig) -> Self {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Self {
            engine,
            codec,
            config,
            stopping: AtomicBool::new(false),
            seeds: AtomicU64::new(now),
        }
    }

    /// The model's context once it is loaded; 503 before (and while stopping).
    pub fn ready(&self) -> Result<usize, ApiError> {
        if self.stopping.load(Ordering::Relaxed) {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the server is shutting down",
            ));
        }
        self.engine.shared.n_ctx.get().copied().ok_or_else(|| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the model is still loading",
            )
            .retry_after(1)
        })
    }

    /// Starts the metrics entry of a request of `api`.
    pub fn timing(&self, api: &'static str) -> Timing {
        Timing::start(self.engine.shared.metrics.clone(), api)
    }

    /// A seed for a request that gives none: different for every request.
    pub fn fresh_seed(&self) -> u64 {
        self.seeds
            .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
            .rotate_left(17)
    }

    /// The job of `settings` for `prefix` (`prefix_field` names it in errors), checked
    /// against the model's context.
    pub fn job(
        &self,
        settings: &Settings,
        prefix: &str,
        prefix_field: &str,
    ) -> Result<Job, ApiError> {
        let n_ctx = self.ready()?;
        let p = &settings.params;
        let seed = settings.seed.unwrap_or_else(|| self.fresh_seed());
        let job = Job::new(
            &self.codec,
            prefix,
            p.include_prefix,
            p.length,
            sampling_of(p),
            seed,
            &p.truncate.stops(),
        )
        .map_err(|e| ApiError::field(prefix_field, format!("{e:#}")))?;
        if job.prompt.len() > n_ctx {
            return Err(ApiError::field(
                prefix_field,
                format!(
                    "is {} tokens, longer than the model's context of {n_ctx} tokens",
                    job.prompt.len()
                ),
            ));
        }
        job.with_controls(
            &self.codec,
            p.min_length,
            p.no_repeat_ngram_size,
            &p.bad_words,
        )
        .map_err(|e| ApiError::field("bad_words", format!("{e:#}")))
    }

    /// Queues samples `0..n` of `job`; their updates arrive on the receiver.
    pub fn submit(&self, job: Job, n: usize) -> Result<UnboundedReceiver<Update>, ApiError> {
        self.ready()?;
        let (updates, rx) = unbounded_channel();
        let request = Request {
            job,
            n,
            deadline: Instant::now() + self.config.request_timeout,
            updates,
        };
        match self.engine.submit(request) {
            Ok(()) => Ok(rx),
            Err(Refused::QueueFull) => Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "the queue is full ({} requests wait); try again shortly",
                    self.config.max_queue
                ),
            )
            .retry_after(1)),
            Err(Refused::Stopped) => Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the generation engine has stopped",
            )),
        }
    }
}

/// The answer to a failed request.
pub fn failure_error(failure: Failure) -> ApiError {
    match failure {
        Failure::TimedOut => ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            "the request ran past the server's time limit (--request-timeout)",
        ),
        Failure::Model(m) => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the model failed: {m}"),
        ),
        Failure::ShuttingDown => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the server stopped (its grace period after SIGTERM ended) before this request was done",
        ),
    }
}

/// Waits for all `n` samples of a request, in index order.
pub async fn collect(
    mut rx: UnboundedReceiver<Update>,
    n: usize,
    timing: &mut Timing,
) -> Result<Vec<Sample>, ApiError> {
    let mut samples: Vec<Option<Sample>> = vec![None; n];
    let mut left = n;
    while left > 0 {
        match rx.recv().await {
            Some(Update::Text { .. }) => timing.first_text(),
            Some(Update::Prefix { .. }) => {}
            Some(Update::Done { index, sample }) => {
                if samples[index].replace(sample).is_none() {
                    left -= 1;
                }
            }
            Some(Update::Failed(f)) => return Err(failure_error(f)),
            None => {
                return Err(ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "the generation engine stopped",
                ))
            }
        }
    }
    Ok(samples.into_iter().map(|s| s.expect("all done")).collect())
}
