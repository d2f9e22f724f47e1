//! `gptpipe serve`: a model behind HTTP, for many people at once on cheap hardware.
//!
//! - [`engine`]: continuous batching on one thread that owns the model;
//! - [`api`]: gpt-2-cloud-run's API (`/`), the OpenAI-compatible API (`/v1/...`) and the
//!   page for people (`GET /` from a browser);
//! - [`params`]: request values (numbers or strings) over the served stage's keys, checked
//!   as the generate stage checks them;
//! - [`metrics`]: `/metrics` in Prometheus' format.
//!
//! HTTP is axum on tokio; the model never runs on tokio's threads.

pub mod api;
mod app;
pub mod engine;
pub mod error;
pub mod metrics;
pub mod params;

use anyhow::{Context, Result};
use app::App;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use gptpipe_core::config::GenerateParams;
use gptpipe_generate::Backend;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tower_http::cors::CorsLayer;

/// How the server runs.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub host: String,
    pub port: u16,
    /// Samples decoded together at most.
    pub max_batch: usize,
    /// Requests waiting for room at most; more get 429.
    pub max_queue: usize,
    /// New tokens per sample at most.
    pub max_length: usize,
    pub request_timeout: Duration,
    /// After SIGTERM, how long requests in flight may take to finish.
    pub grace: Duration,
    /// Request bodies larger than this get 413.
    pub max_body: usize,
    /// How long a client may take to send a request's headers, or its body, and how long
    /// an idle keep-alive connection stays open.
    pub client_timeout: Duration,
    /// The name `/v1/models` and the page show, and OpenAI requests name.
    pub model_name: String,
    /// The served stage's keys (or `gptpipe generate`'s defaults): every request's defaults.
    pub defaults: GenerateParams,
}

/// Serves until SIGTERM or SIGINT, then lets requests in flight finish (up to
/// `config.grace`) and returns. `open` builds the backend on the engine's thread; the
/// socket is bound first, and `/health` says ready once the model is loaded. A model that
/// fails to load ends the server with its error.
pub fn serve(
    config: ServeConfig,
    open: impl FnOnce() -> Result<Box<dyn Backend>> + Send + 'static,
) -> Result<()> {
    let codec = gptpipe_text::Gpt2Tokenizer::new()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the server's runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind((config.host.as_str(), config.port))
            .await
            .with_context(|| format!("cannot listen on {}:{}", config.host, config.port))?;
        let addr = listener.local_addr()?;
        let (engine, engine_thread) = engine::Engine::start(
            open,
            Arc::new(codec.clone()),
            config.max_batch,
            config.max_queue,
        );
        let grace = config.grace;
        let app = Arc::new(App::new(engine, codec, config));
        eprintln!(
            "gptpipe serve: {} on http://{addr} (loading the model; GET /health says when it is ready)",
            app.config.model_name
        );
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let mut signals = Signals::new()?;
        let server = accept_loop(listener, router(app.clone()), app.clone(), stop_rx);
        // The first SIGTERM or SIGINT starts the grace period; a second one, or its end,
        // stops at once.
        let stopping = async move {
            let why = signals.next().await;
            eprintln!(
                "gptpipe serve: {why}: no new requests; finishing those in flight (at most {} s)",
                grace.as_secs_f64()
            );
            let _ = stop_tx.send(true);
            tokio::select! {
                () = tokio::time::sleep(grace) => "grace period over",
                why = signals.next() => why,
            }
        };
        let result = tokio::select! {
            () = server => Ok(()),
            cut = stopping => {
                eprintln!("gptpipe serve: {cut}; requests still in flight were cut");
                Ok(())
            }
            e = fatal(app.clone()) => Err(anyhow::anyhow!(e)),
        };
        // The engine finishes its step and returns before the process (and the libraries
        // it runs on) goes away.
        app.engine.shared.stop.store(true, Ordering::Relaxed);
        let deadline = Instant::now() + Duration::from_secs(5);
        while !engine_thread.is_finished() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if result.is_ok() {
            eprintln!("gptpipe serve: stopped");
        }
        result
    })
}

/// Connections served at once, at most (the rest wait to be accepted): file descriptors
/// are not for one client to use up.
const MAX_CONNECTIONS: usize = 4096;

/// Accepts connections until `stop`, then lets those open finish their requests (the
/// caller bounds how long). HTTP/1.1 by hyper: a request's headers must arrive within
/// `client_timeout` of the connection's last request (or of its opening), or the
/// connection is closed, so a client that sends them a byte at a time (slowloris) holds
/// nothing for long, and an idle keep-alive connection closes after as long.
async fn accept_loop(
    listener: tokio::net::TcpListener,
    router: Router,
    app: Arc<App>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let slot = tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            slot = slots.clone().acquire_owned() => slot,
        };
        let Ok(slot) = slot else { break };
        let accepted = tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            a = listener.accept() => a.map(|(stream, _)| (stream, slot)),
        };
        let (stream, slot) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors, say: wait a little rather than spin.
                eprintln!("gptpipe serve: cannot accept a connection: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let service = hyper_util::service::TowerToHyperService::new(router.clone());
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(app.config.client_timeout)
            .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            let _ = connection.await;
            drop(slot);
        });
    }
    // No new connections; requests on open ones get 503 while those in flight finish.
    drop(listener);
    app.stopping.store(true, Ordering::Relaxed);
    graceful.shutdown().await;
}

/// Resolves with the engine's fatal error (the model did not load, or the engine died).
async fn fatal(app: Arc<App>) -> String {
    loop {
        if let Some(e) = app.engine.shared.fatal.get() {
            return e.clone();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// SIGTERM (what Cloud Run and Kubernetes send) and SIGINT, as they come.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Self {
            term: signal(SignalKind::terminate()).context("cannot handle SIGTERM")?,
            int: signal(SignalKind::interrupt()).context("cannot handle SIGINT")?,
        })
    }

    async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}

fn router(app: Arc<App>) -> Router {
    let max_body = app.config.max_body;
    Router::new()
        .route("/", get(root_get).post(root_post).head(root_head))
        .route("/v1/completions", axum::routing::post(completions))
        .route("/v1/models", get(models))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .layer(DefaultBodyLimit::max(max_body))
        // A body that trickles in is cut off, as headers that do are (`accept_loop`).
        .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
            app.config.client_timeout,
        ))
        // gpt-2-cloud-run answers every origin; pages elsewhere call the API.
        .layer(CorsLayer::permissive())
        .layer(middleware::from_fn(log_request))
        .with_state(app)
}

/// One line per request on stderr.
async fn log_request(request: Request, next: Next) -> Response {
    let start = Instant::now();
    let (method, path) = (request.method().clone(), request.uri().path().to_owned());
    let response = next.run(request).await;
    eprintln!(
        "{method} {path} {} {:.1} ms",
        response.status().as_u16(),
        start.elapsed().as_secs_f64() * 1e3
    );
    response
}

/// A browser asking for a page (and no API parameters) gets the page; anything else is
/// gpt-2-cloud-run's API.
async fn root_get(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    query: Result<Query<Vec<(String, String)>>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Query(pairs) = match query {
        Ok(q) => q,
        Err(e) => {
            let e = error::ApiError::new(StatusCode::BAD_REQUEST, format!("bad query string: {e}"));
            app.timing(api::cloud_run::API).finish(400);
            return e.into_response();
        }
    };
    let wants_html = headers
        .get(header::ACCEPT)
        .and_then(|a| a.to_str().ok())
        .is_some_and(|a| a.contains("text/html"));
    // A browser gets the page unless the query asks for text (a link with `?utm_source=`
    // still shows the page).
    let asks_for_text = pairs
        .iter()
        .any(|(k, _)| api::cloud_run::KEYS.contains(&k.as_str()));
    if wants_html && !asks_for_text {
        let n_ctx = app.engine.shared.n_ctx.get().copied();
        return Html(api::page::render(&app.config, n_ctx)).into_response();
    }
    api::cloud_run::generate(app, api::cloud_run::query_fields(pairs))
        .await
        .into_response()
}

async fn root_post(State(app): State<Arc<App>>, body: Result<Bytes, BytesRejection>) -> Response {
    match body_fields(body) {
        Ok(fields) => api::cloud_run::generate(app, fields).await.into_response(),
        Err(e) => {
            app.timing(api::cloud_run::API).finish(e.status.as_u16());
            e.into_response()
        }
    }
}

/// A POST body as request fields: a JSON object. A body too large (413) or too slow (408)
/// is answered in the same JSON shape as any other error.
fn body_fields(body: Result<Bytes, BytesRejection>) -> Result<params::Fields, error::ApiError> {
    let body = body.map_err(|rejection| {
        let timed_out = std::iter::successors(
            Some(&rejection as &(dyn std::error::Error + 'static)),
            |e| e.source(),
        )
        .any(|e| e.is::<tower_http::timeout::TimeoutError>());
        if timed_out {
            error::ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "the request body did not arrive in time (--client-timeout)",
            )
        } else {
            error::ApiError::new(rejection.status(), rejection.body_text())
        }
    })?;
    api::cloud_run::body_fields(&body)
}

/// gpt-2-cloud-run answers HEAD with an empty text (a liveness probe).
async fn root_head() -> Response {
    Json(serde_json::json!({"text": ""})).into_response()
}

async fn completions(State(app): State<Arc<App>>, body: Result<Bytes, BytesRejection>) -> Response {
    match body_fields(body) {
        Ok(fields) => api::openai::completions(app, fields).await,
        Err(e) => {
            app.timing(api::openai::API).finish(e.status.as_u16());
            e.into_response()
        }
    }
}

async fn models(State(app): State<Arc<App>>) -> Json<serde_json::Value> {
    Json(api::openai::models(&app))
}

/// 200 once the model is loaded, 503 while loading, stopping or failed.
async fn health(State(app): State<Arc<App>>) -> Response {
    let status = match app.ready() {
        _ if app.engine.shared.fatal.get().is_some() => "failed",
        Ok(_) => "ready",
        Err(_) if app.stopping.load(Ordering::Relaxed) => "stopping",
        Err(_) => "loading",
    };
    let code = if status == "ready" {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = serde_json::json!({
        "status": status,
        "model": app.config.model_name,
        "queue": app.engine.shared.metrics.queued(),
    });
    (code, Json(body)).into_response()
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        app.engine.shared.metrics.render(),
    )
        .into_response()
}
