//! The OpenAI-compatible API: `POST /v1/completions` and `GET /v1/models`, as the
//! `openai` Python client speaks it. Fields: `model`, `prompt` (a string or a list of
//! strings), `max_tokens`, `temperature`, `top_p`, `n`, `stop` (a string or up to 4),
//! `seed`, `echo`, `stream` (server-sent events, `stream_options.include_usage`), and
//! `top_k`, `min_tokens`, `no_repeat_ngram_size` and `bad_words` as vLLM accepts them.
//! Defaults are the served stage's keys, not OpenAI's.

use crate::api::cloud_run::kind_of;
use crate::app::{collect, failure_error, App};
use crate::engine::Update;
use crate::error::ApiError;
use crate::metrics::Timing;
use crate::params::{self, Fields, Settings};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::stream::{self, Stream, StreamExt};
use gptpipe_core::config::Truncate;
use gptpipe_generate::Sample;
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc::UnboundedReceiver;

pub const API: &str = "openai";

/// OpenAI's limit on stop strings.
const MAX_STOPS: usize = 4;

/// Stage key -> this API's field, for error messages.
const NAMES: params::Names = &[
    ("length", "max_tokens"),
    ("nsamples", "n"),
    ("include_prefix", "echo"),
    ("truncate", "stop"),
    ("min_length", "min_tokens"),
];

/// A checked completion request.
struct Completion {
    settings: Settings,
    prompts: Vec<String>,
    stream: bool,
    include_usage: bool,
}

fn parse(app: &App, f: &Fields) -> Result<Completion, ApiError> {
    if let Some(model) = f.get("model").filter(|m| !m.is_null()) {
        if model.as_str() != Some(app.config.model_name.as_str()) {
            return Err(ApiError {
                param: Some("model".into()),
                ..ApiError::new(
                    StatusCode::NOT_FOUND,
                    format!(
                        "model {model} is not served here; this server serves {:?}",
                        app.config.model_name
                    ),
                )
            });
        }
    }
    let prompts = match f.get("prompt") {
        None | Some(Value::Null) => vec![app.config.defaults.prefix.clone()],
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) if !items.is_empty() => items
            .iter()
            .map(|v| match v {
                Value::String(s) => Ok(s.clone()),
                other => Err(ApiError::field(
                    "prompt",
                    format!(
                        "must be a string or a list of strings (token ids are not supported), \
                         not a list holding {}",
                        kind_of(other)
                    ),
                )),
            })
            .collect::<Result<_, _>>()?,
        Some(other) => {
            return Err(ApiError::field(
                "prompt",
                format!(
                    "must be a string or a non-empty list of strings, not {}",
                    kind_of(other)
                ),
            ))
        }
    };
    let mut p = app.config.defaults.clone();
    // The request's stop strings replace the served stage's `truncate`.
    if let Some(stops) = strings(f, "stop", MAX_STOPS)? {
        p.truncate = Truncate::from_list(stops);
    }
    // vLLM's names for the stop and shape controls.
    if let Some(v) = params::count(f, "min_tokens")? {
        p.min_length = v;
    }
    if let Some(v) = params::count(f, "no_repeat_ngram_size")? {
        p.no_repeat_ngram_size = v;
    }
    if let Some(words) = strings(f, "bad_words", gptpipe_core::config::MAX_BAD_WORDS)? {
        p.bad_words = words;
    }
    if let Some(v) = params::count(f, "max_tokens")? {
        p.length = v;
    }
    if let Some(v) = params::float(f, "temperature")? {
        p.temperature = v;
    }
    if let Some(v) = params::float(f, "top_p")? {
        p.top_p = v;
    }
    // vLLM's convention: -1 turns top-k off, as 0 does here.
    match params::int(f, "top_k")? {
        Some(-1) => p.top_k = 0,
        Some(_) => p.top_k = params::count(f, "top_k")?.unwrap_or(0),
        None => {}
    }
    p.nsamples = params::count(f, "n")?.unwrap_or(1);
    p.include_prefix = params::boolean(f, "echo")?.unwrap_or(false);
    let seed = params::count(f, "seed")?.map(|s| s as u64);
    params::check(&p, NAMES, app.config.max_length, app.config.max_batch)?;
    if prompts.len() * p.nsamples > app.config.max_batch {
        return Err(ApiError::field(
            "n",
            format!(
                "{} prompts of n = {} are more samples than this server batches (--max-batch {})",
                prompts.len(),
                p.nsamples,
                app.config.max_batch
            ),
        ));
    }
    let include_usage = f
        .get("stream_options")
        .and_then(|o| o.get("include_usage"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    Ok(Completion {
        settings: Settings { params: p, seed },
        prompts,
        stream: params::boolean(f, "stream")?.unwrap_or(false),
        include_usage,
    })
}

/// Reads `field` as a string or a list of at most `max` strings; `None` when absent or
/// null.
fn strings(f: &Fields, field: &str, max: usize) -> Result<Option<Vec<String>>, ApiError> {
    match f.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(vec![s.clone()])),
        Some(Value::Array(items)) if items.len() <= max => items
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| ApiError::field(field, "must hold strings only"))
            })
            .collect::<Result<_, _>>()
            .map(Some),
        Some(_) if max == usize::MAX => Err(ApiError::field(
            field,
            "must be a string or a list of strings",
        )),
        Some(_) => Err(ApiError::field(
            field,
            format!("must be a string or a list of at most {max} strings"),
        )),
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn finish_reason(sample: &Sample) -> &'static str {
    if sample.truncated() {
        "stop"
    } else {
        "length"
    }
}

/// `POST /v1/completions`.
pub async fn completions(app: Arc<App>, fields: Fields) -> Response {
    let mut timing = app.timing(API);
    match completions_inner(&app, fields, &mut timing).await {
        Ok(Answer::Json(v)) => {
            timing.finish(200);
            Json(v).into_response()
        }
        // A stream's metrics entry ends with the stream.
        Ok(Answer::Stream(answer)) => answer(timing),
        Err(e) => {
            timing.finish(e.status.as_u16());
            e.into_response()
        }
    }
}

enum Answer {
    Json(Value),
    /// The streamed answer, given the request's metrics entry to end when it ends.
    Stream(Box<dyn FnOnce(Timing) -> Response + Send>),
}

async fn completions_inner(
    app: &Arc<App>,
    fields: Fields,
    timing: &mut Timing,
) -> Result<Answer, ApiError> {
    let c = parse(app, &fields)?;
    let n = c.settings.params.nsamples;
    let mut prompt_tokens = 0;
    let mut jobs = Vec::new();
    for (i, prompt) in c.prompts.iter().enumerate() {
        let field = if c.prompts.len() > 1 {
            format!("prompt[{i}]")
        } else {
            "prompt".into()
        };
        let job = app.job(&c.settings, prompt, &field)?;
        prompt_tokens += job.prompt.len();
        jobs.push(job);
    }
    let mut receivers = Vec::new();
    for job in jobs {
        receivers.push(app.submit(job, n)?);
    }
    let id = format!("cmpl-{:016x}", app.fresh_seed());
    let created = now_secs();
    let model = app.config.model_name.clone();
    if c.stream {
        let head = Head { id, created, model };
        let include_usage = c.include_usage;
        return Ok(Answer::Stream(Box::new(move |timing| {
            let stream = sse_stream(receivers, n, head, prompt_tokens, include_usage, timing);
            Sse::new(stream)
                .keep_alive(KeepAlive::default())
                .into_response()
        })));
    }
    let mut choices = Vec::new();
    let mut completion_tokens = 0;
    for (p, rx) in receivers.into_iter().enumerate() {
        let samples = collect(rx, n, timing).await?;
        for s in samples {
            completion_tokens += s.tokens.len();
            choices.push(json!({
                "text": s.text,
                "index": p * n + s.index,
                "logprobs": null,
                "finish_reason": finish_reason(&s),
            }));
        }
    }
    Ok(Answer::Json(json!({
        "id": id,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": choices,
        "usage": usage(prompt_tokens, completion_tokens),
    })))
}

fn usage(prompt: usize, completion: usize) -> Value {
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    })
}

struct Head {
    id: String,
    created: u64,
    model: String,
}

impl Head {
    fn json(&self, choices: Value) -> Value {
        json!({
            "id": self.id,
            "object": "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": choices,
        })
    }

    fn event(&self, choices: Value) -> Event {
        Event::default().data(self.json(choices).to_string())
    }
}

/// The events of a streamed completion: text as it settles, a last chunk per choice with
/// its finish reason, the usage if asked, then `[DONE]`.
fn sse_stream(
    receivers: Vec<UnboundedReceiver<Update>>,
    n: usize,
    head: Head,
    prompt_tokens: usize,
    include_usage: bool,
    timing: Timing,
) -> impl Stream<Item = Result<Event, Infallible>> {
    let left = receivers.len() * n;
    // Each prompt's updates, tagged with the index of the prompt's first choice.
    let merged = stream::select_all(receivers.into_iter().enumerate().map(|(p, rx)| {
        stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|u| (u, rx)) })
            .map(move |u| (p * n, u))
            .boxed()
    }));
    let state = Streaming {
        timing: Some(timing),
        head,
        merged,
        left,
        completion_tokens: 0,
        queue: VecDeque::new(),
        finished: false,
    };
    stream::unfold(state, move |mut st| async move {
        loop {
            if let Some(event) = st.queue.pop_front() {
                return Some((Ok(event), st));
            }
            if st.finished {
                return None;
            }
            let outcome = match st.merged.next().await {
                Some((base, update)) => st.on_update(base, update),
                None => Some(failure_error(crate::engine::Failure::Model(
                    "the generation engine stopped".into(),
                ))),
            };
            if let Some(error) = outcome {
                st.queue.push_back(
                    Event::default().data(
                        json!({"error": {"message": error.message, "type": "server_error",
                                     "param": null, "code": error.status.as_u16()}})
                        .to_string(),
                    ),
                );
                st.finish(error.status.as_u16());
            } else if st.left == 0 {
                if include_usage {
                    let mut chunk = st.head.json(json!([]));
                    chunk["usage"] = usage(prompt_tokens, st.completion_tokens);
                    st.queue.push_back(Event::default().data(chunk.to_string()));
                }
                st.finish(200);
            }
        }
    })
}

struct Streaming<S> {
    /// Ended with the stream; dropped with it if the client leaves first.
    timing: Option<Timing>,
    head: Head,
    merged: S,
    /// Choices not finished yet.
    left: usize,
    completion_tokens: usize,
    queue: VecDeque<Event>,
    finished: bool,
}

impl<S> Streaming<S> {
    /// Queues the events of one update; an error ends the stream.
    fn on_update(&mut self, base: usize, update: Update) -> Option<ApiError> {
        match update {
            Update::Prefix { index, text } => {
                self.text(base + index, text);
                None
            }
            Update::Text { index, text } => {
                if let Some(timing) = &mut self.timing {
                    timing.first_text();
                }
                self.text(base + index, text);
                None
            }
            Update::Done { index, sample } => {
                self.left -= 1;
                self.completion_tokens += sample.tokens.len();
                let choice = json!([{"text": "", "index": base + index, "logprobs": null,
                                     "finish_reason": finish_reason(&sample)}]);
                self.queue.push_back(self.head.event(choice));
                None
            }
            Update::Failed(f) => Some(failure_error(f)),
        }
    }

    /// Queues a chunk of text of choice `index`.
    fn text(&mut self, index: usize, text: String) {
        let choice = json!([{"text": text, "index": index, "logprobs": null,
                             "finish_reason": null}]);
        self.queue.push_back(self.head.event(choice));
    }

    fn finish(&mut self, status: u16) {
        self.queue.push_back(Event::default().data("[DONE]"));
        self.finished = true;
        if let Some(timing) = self.timing.take() {
            timing.finish(status);
        }
    }
}

/// `GET /v1/models`.
pub fn models(app: &App) -> Value {
    json!({
        "object": "list",
        "data": [{
            "id": app.config.model_name,
            "object": "model",
            "created": 0,
            "owned_by": "gptpipe",
        }],
    })
}
