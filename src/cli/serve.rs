//! `gptpipe serve [PIPELINE] [STAGE]` and `gptpipe serve --model MODEL`: a model behind
//! HTTP (crates/serve). With a pipeline, the generate stage's keys are every request's
//! defaults and its upstream is brought up to date (or restored from the cache) first, as
//! `run` would.

use super::generate::{invalid, model_source, BackendArg};
use super::pipeline_args;
use clap::Args;
use gptpipe_core::config::{ConfigError, Device, GenerateParams, ModelRef, StageKind, StageParams};
use gptpipe_core::report::HumanSink;
use gptpipe_core::runner::{RunError, RunOptions, Runner};
use gptpipe_core::stage::{ModelSource, Registry};
use gptpipe_generate::stage::open_backend;
use gptpipe_generate::Backends;
use gptpipe_serve::ServeConfig;
use std::time::Duration;

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Pipeline file (default gptpipe.toml), then the generate stage to serve (may be left
    /// out when the pipeline has one)
    #[arg(value_name = "PIPELINE] [STAGE", conflicts_with = "model")]
    pub positionals: Vec<String>,
    /// Serve this model without a pipeline: a hub id, a model folder or an export folder
    #[arg(long)]
    pub model: Option<String>,
    /// Override a key of the pipeline: --set stages.generate.length=200
    #[arg(long = "set", value_name = "KEY=VALUE", conflicts_with = "model")]
    pub sets: Vec<String>,
    /// Address to listen on
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on (Cloud Run sets PORT)
    #[arg(long, env = "PORT", default_value_t = 8080)]
    pub port: u16,
    /// Overrides the stage's backend
    #[arg(long, value_enum)]
    pub backend: Option<BackendArg>,
    /// Overrides the stage's device: "auto", "cpu", "cuda" or "cuda:N"
    #[arg(long)]
    pub device: Option<String>,
    /// CPU threads of the model code (default: the CPUs available; a user's
    /// OMP_NUM_THREADS; a stage's `threads` key); wins over all of them
    #[arg(long, value_name = "N")]
    pub threads: Option<std::num::NonZeroUsize>,
    /// Samples decoded together at most (continuous batching)
    #[arg(long, default_value_t = 32, value_parser = super::at_least_one)]
    pub max_batch: usize,
    /// Requests that may wait for room in the batch; more get 429 with Retry-After
    #[arg(long, default_value_t = 256, value_parser = super::at_least_one)]
    pub max_queue: usize,
    /// New tokens per sample a request may ask for at most
    #[arg(long, default_value_t = 1024, value_parser = super::at_least_one)]
    pub max_length: usize,
    /// Seconds a request may take, queue included; later it gets 504
    #[arg(
        long,
        default_value_t = 300.0,
        value_name = "SECONDS",
        allow_negative_numbers = true
    )]
    pub request_timeout: f64,
    /// Seconds requests in flight may take to finish after SIGTERM
    #[arg(
        long,
        default_value_t = 10.0,
        value_name = "SECONDS",
        allow_negative_numbers = true
    )]
    pub grace: f64,
    /// Seconds a client may take to send a request's headers or body; also how long an
    /// idle keep-alive connection stays open (keep it above a proxy's idle timeout: nginx
    /// 60 s, AWS load balancers 60 s)
    #[arg(
        long,
        default_value_t = 75.0,
        value_name = "SECONDS",
        allow_negative_numbers = true
    )]
    pub client_timeout: f64,
}

/// Request bodies larger than this get 413: a prompt is at most a context of tokens.
const MAX_BODY: usize = 1 << 20;

/// A number of seconds: positive, or also 0 when `zero` is allowed.
fn seconds(flag: &str, s: f64, zero: bool) -> Result<Duration, RunError> {
    let least = if zero { 0.0 } else { f64::MIN_POSITIVE };
    if s.is_finite() && s >= least && s < 1e9 {
        Ok(Duration::from_secs_f64(s))
    } else {
        let what = if zero { "0 or more" } else { "more than 0" };
        Err(invalid(flag, format!("must be {what} seconds, not {s}")))
    }
}

pub fn run(args: ServeArgs, registry: &Registry, backends: &Backends) -> Result<(), RunError> {
    let (mut defaults, source, model_name) = match &args.model {
        Some(model) => served_model(model)?,
        None => served_stage(&args, registry)?,
    };
    if let Some(b) = args.backend {
        defaults.backend = b.into();
    }
    if let Some(d) = &args.device {
        defaults.device = d.parse::<Device>().map_err(|e| invalid("device", e))?;
    }
    let config = ServeConfig {
        host: args.host.clone(),
        port: args.port,
        max_batch: args.max_batch,
        max_queue: args.max_queue,
        max_length: args.max_length,
        request_timeout: seconds("request-timeout", args.request_timeout, false)?,
        grace: seconds("grace", args.grace, true)?,
        client_timeout: seconds("client-timeout", args.client_timeout, false)?,
        max_body: MAX_BODY,
        model_name,
        defaults: defaults.clone(),
    };
    let backends = backends.clone();
    gptpipe_serve::serve(config, move || {
        open_backend(&backends, defaults.backend, &source, &defaults.device)
    })
    .map_err(RunError::Other)
}

/// `--model`: `gptpipe generate`'s defaults, but gpt-2-cloud-run's length (100) and stop
/// (`<|endoftext|>`).
fn served_model(model: &str) -> Result<(GenerateParams, ModelSource, String), RunError> {
    let model_ref = ModelRef::from(model);
    let source = model_source(&model_ref)?;
    let defaults = GenerateParams {
        model: model_ref,
        length: 100,
        truncate: "<|endoftext|>".into(),
        ..Default::default()
    };
    Ok((defaults, source, model.to_owned()))
}

/// The `threads` key of the stage `args` serve, if any (read before the worker starts:
/// its OpenMP settings are set from outside; errors are the worker's to report).
pub fn stage_threads(args: &ServeArgs) -> Option<std::num::NonZeroUsize> {
    if args.model.is_some() {
        return None;
    }
    let (path, _) = pipeline_args::split(&args.positionals);
    let pipeline = pipeline_args::load(&path, &args.sets).ok()?;
    let (params, _) = served_params(args, &pipeline).ok()?;
    params.threads
}

/// The generate stage `args` name in `pipeline` (or its only one): its keys and name.
fn served_params(
    args: &ServeArgs,
    pipeline: &gptpipe_core::config::Pipeline,
) -> Result<(GenerateParams, String), RunError> {
    let (path, targets) = pipeline_args::split(&args.positionals);
    let generate_stages: Vec<&str> = pipeline
        .stages
        .iter()
        .filter(|(_, p)| p.kind() == StageKind::Generate)
        .map(|(name, _)| name.as_str())
        .collect();
    let listed = generate_stages.join(", ");
    let name = match targets.as_slice() {
        [name] => name.clone(),
        [] if generate_stages.len() == 1 => generate_stages[0].to_owned(),
        [] => {
            return Err(RunError::Config(ConfigError::new(format!(
                "{} has {} generate stages ({listed}): name the one to serve",
                path.display(),
                generate_stages.len(),
            ))))
        }
        _ => {
            return Err(RunError::Config(ConfigError::new(
                "serve takes one stage: the generate stage whose model to serve",
            )))
        }
    };
    let params = match pipeline.stages.get(&name) {
        Some(StageParams::Generate(p)) => p.clone(),
        Some(other) => {
            return Err(RunError::Config(ConfigError::new(format!(
                "stage {name:?} is a {} stage: serve a generate stage ({listed})",
                other.kind().name(),
            ))))
        }
        None => {
            return Err(RunError::Config(ConfigError::new(format!(
                "{} has no stage {name:?}",
                path.display()
            ))))
        }
    };
    Ok((params, name))
}

/// A generate stage of a pipeline: its keys, and its model brought up to date.
fn served_stage(
    args: &ServeArgs,
    registry: &Registry,
) -> Result<(GenerateParams, ModelSource, String), RunError> {
    let (path, _) = pipeline_args::split(&args.positionals);
    let pipeline = pipeline_args::load(&path, &args.sets).map_err(RunError::Config)?;
    let (params, name) = served_params(args, &pipeline)?;
    // Bring the stage's upstream up to date (not the stage itself: serving replaces it).
    let runner = Runner::new(&pipeline, registry)?;
    let upstream: Vec<String> = runner
        .dag()
        .select(std::slice::from_ref(&name))
        .map_err(RunError::Config)?
        .into_iter()
        .filter(|s| *s != name)
        .collect();
    if !upstream.is_empty() {
        let options = RunOptions {
            targets: upstream,
            force: false,
            dry_run: false,
            frozen: false,
            jobs: 1,
            keep_going: false,
        };
        runner.run(&options, &HumanSink::new(), &Default::default())?;
    }
    let (source, model_name) = match &params.model {
        ModelRef::Stage(r) => {
            let up = r.name().to_owned();
            let kind = pipeline
                .stages
                .get(&up)
                .map_or(StageKind::Finetune, |p| p.kind());
            let dir = pipeline.workdir.join(&up);
            (
                ModelSource::Stage {
                    name: up.clone(),
                    kind,
                    dir,
                },
                up,
            )
        }
        other => {
            let written = other.as_written().unwrap_or_default().into_owned();
            let written = if written.is_empty() {
                name.clone()
            } else {
                written
            };
            let source = gptpipe_core::stage::resolve_model(&pipeline, &Default::default(), other);
            (source, written)
        }
    };
    Ok((params, source, model_name))
}
