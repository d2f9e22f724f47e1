//! gpt-2-cloud-run's API (its `app.py`): `GET /` with query parameters, `POST /` with a
//! JSON body (parsed whatever the Content-Type: its page posts a JSON string as a form),
//! `HEAD /` for health checks. Keys `length`, `temperature`, `top_k`, `top_p`, `prefix`
//! (cut to its first 500 characters, as the app does), `truncate`, `include_prefix`, and
//! `seed` (ours); values as numbers or strings. Answers `{"text": "..."}`.

use crate::app::{collect, App};
use crate::error::ApiError;
use crate::params::{self, Fields, Settings};
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};
use std::sync::Arc;

/// gpt-2-cloud-run's app keeps the first 500 characters of a prefix.
pub const PREFIX_CHARS: usize = 500;

pub const API: &str = "cloud-run";

/// The keys of this API: a query with any of them asks for text, not for the page.
pub const KEYS: &[&str] = &[
    "length",
    "temperature",
    "top_k",
    "top_p",
    "prefix",
    "truncate",
    "include_prefix",
    "seed",
];

/// Fields from a query string (all strings).
pub fn query_fields(pairs: Vec<(String, String)>) -> Fields {
    pairs
        .into_iter()
        .map(|(k, v)| (k, Value::String(v)))
        .collect()
}

/// Fields from a POST body: a JSON object.
pub fn body_fields(body: &[u8]) -> Result<Fields, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Fields::new());
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(other) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("the body must be a JSON object, not {}", kind_of(&other)),
        )),
        Err(e) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("the body is not valid JSON: {e}"),
        )),
    }
}

pub fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The request's settings over the server's defaults.
fn settings(app: &App, f: &Fields) -> Result<(Settings, String), ApiError> {
    let mut p = app.config.defaults.clone();
    if let Some(v) = params::count(f, "length")? {
        p.length = v;
    }
    if let Some(v) = params::float(f, "temperature")? {
        p.temperature = v;
    }
    if let Some(v) = params::count(f, "top_k")? {
        p.top_k = v;
    }
    if let Some(v) = params::float(f, "top_p")? {
        p.top_p = v;
    }
    if let Some(v) = params::text(f, "truncate")? {
        p.truncate = v.as_str().into();
    }
    if let Some(v) = params::boolean(f, "include_prefix")? {
        p.include_prefix = v;
    }
    let seed = params::count(f, "seed")?.map(|s| s as u64);
    let prefix = params::text(f, "prefix")?.unwrap_or_else(|| p.prefix.clone());
    let prefix: String = prefix.chars().take(PREFIX_CHARS).collect();
    p.nsamples = 1;
    params::check(&p, &[], app.config.max_length, app.config.max_batch)?;
    Ok((Settings { params: p, seed }, prefix))
}

/// Generates one sample for `fields`.
pub async fn generate(app: Arc<App>, fields: Fields) -> Result<Json<Value>, ApiError> {
    let mut timing = app.timing(API);
    let result = async {
        let (settings, prefix) = settings(&app, &fields)?;
        let job = app.job(&settings, &prefix, "prefix")?;
        let rx = app.submit(job, 1)?;
        let samples = collect(rx, 1, &mut timing).await?;
        Ok(Json(json!({"text": samples[0].text})))
    }
    .await;
    let status = result
        .as_ref()
        .map_or_else(|e: &ApiError| e.status, |_| StatusCode::OK);
    timing.finish(status.as_u16());
    result
}
