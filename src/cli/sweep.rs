//! `gptpipe sweep`: the finetunes of a matrix side by side: final and best validation loss
//! per combination, as a table (or JSON) and an SVG plot of the loss curves. It reads the
//! published outputs' `metrics.jsonl` and writes nothing but the plot it is asked for.

use super::pipeline_args;
use clap::Args;
use gptpipe_core::config::{Pipeline, StageParams};
use gptpipe_core::runner::{RunError, Runner, State};
use gptpipe_core::stage::Registry;
use serde::Serialize;
use std::path::{Path, PathBuf};

#[derive(Args)]
pub struct SweepArgs {
    /// Pipeline file (default gptpipe.toml), then matrix stages as written (default: every
    /// finetune with a matrix)
    #[arg(value_name = "PIPELINE] [STAGE")]
    pub positionals: Vec<String>,
    /// Print one JSON array instead of the table
    #[arg(long)]
    pub json: bool,
    /// Write the loss curves (validation loss, else the smoothed training loss) as SVG
    #[arg(long, value_name = "FILE")]
    pub plot: Option<PathBuf>,
    /// Override a key, as for `run`
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
}

/// One combination's figures; `None` where its output or that figure does not exist.
#[derive(Debug, Serialize)]
pub struct Row {
    pub stage: String,
    /// "fresh", "stale" (the output is from other settings or inputs) or "missing".
    pub state: &'static str,
    pub steps: Option<u64>,
    pub final_loss: Option<f64>,
    pub final_val_loss: Option<f64>,
    pub best_val_loss: Option<f64>,
    pub best_step: Option<u64>,
    #[serde(skip)]
    curve: Vec<(f64, f64)>,
}

pub fn run(args: SweepArgs, registry: &Registry) -> Result<(), RunError> {
    let (path, targets) = pipeline_args::split(&args.positionals);
    let pipeline = pipeline_args::load(&path, &args.sets).map_err(RunError::Config)?;
    let stages = matrix_finetunes(&pipeline, &targets)?;
    let rows = rows(&Runner::new(&pipeline, registry)?, &pipeline, &stages)?;
    if let Some(plot) = &args.plot {
        std::fs::write(plot, svg(&rows)).map_err(|e| {
            RunError::Other(anyhow::anyhow!("cannot write {}: {e}", plot.display()))
        })?;
    }
    if args.json {
        println!("{}", serde_json::to_string(&rows).expect("rows serialize"));
    } else {
        print!("{}", table(&rows));
    }
    Ok(())
}

/// The folder of the workdir's own (`.gptpipe/`) where a run leaves each sweep's summary:
/// never an input (a glob over the workdir skips `.gptpipe/`), never a stage's output
/// folder, and checked not to be a link as the rest of `.gptpipe/` is.
pub const SUMMARY_DIR: &str = "sweeps";

/// After a run: every matrix of finetunes with a stage among `ran` gets its summary, as
/// `gptpipe sweep` prints it, in `<workdir>/.gptpipe/sweeps/`: `<stage>.txt` (the table),
/// `<stage>.json` and `<stage>.svg` (the loss curves), `<stage>` as written in the
/// pipeline. Returns the tables written; a summary that cannot be written is a warning, not
/// a failed run. `runner` is the run's.
pub fn write_summaries<'a>(
    runner: &Runner,
    pipeline: &Pipeline,
    ran: impl IntoIterator<Item = &'a String>,
) -> Vec<PathBuf> {
    let bases: std::collections::BTreeSet<String> = ran
        .into_iter()
        .filter(|s| matches!(pipeline.stages.get(*s), Some(StageParams::Finetune(_))))
        .filter_map(|s| s.split_once('[').map(|(base, _)| base.to_owned()))
        .collect();
    let mut written = Vec::new();
    for base in bases {
        let result = matrix_finetunes(pipeline, std::slice::from_ref(&base))
            .and_then(|stages| rows(runner, pipeline, &stages))
            .map_err(|e| match e {
                RunError::Other(e) => e,
                other => anyhow::anyhow!("{other:?}"),
            })
            .and_then(|rows| write_summary(&pipeline.workdir, &base, &rows));
        match result {
            Ok(path) => written.push(path),
            Err(e) => eprintln!("warning: no sweep summary for {base}: {e:#}"),
        }
    }
    written
}

fn write_summary(workdir: &Path, base: &str, rows: &[Row]) -> anyhow::Result<PathBuf> {
    let dir = workdir
        .join(gptpipe_core::runner::META_DIR)
        .join(SUMMARY_DIR);
    std::fs::create_dir_all(&dir)?;
    // Written into, so never through a link planted there.
    if !std::fs::symlink_metadata(&dir)?.is_dir() {
        anyhow::bail!(
            "{} is not a folder (a link?): not writing into it",
            dir.display()
        );
    }
    let json = serde_json::to_string_pretty(rows)? + "\n";
    for (ext, text) in [("json", json), ("svg", svg(rows)), ("txt", table(rows))] {
        gptpipe_core::fsutil::write_atomic(&dir.join(format!("{base}.{ext}")), text.as_bytes())?;
    }
    Ok(dir.join(format!("{base}.txt")))
}

/// The figures of `stages` of `runner`'s `pipeline`, best first.
fn rows(runner: &Runner, pipeline: &Pipeline, stages: &[String]) -> Result<Vec<Row>, RunError> {
    let statuses = runner.status(stages)?;
    let workdir = gptpipe_core::runner::Workdir::open(&pipeline.workdir);
    let mut rows: Vec<Row> = stages
        .iter()
        .map(|stage| {
            let state = statuses
                .iter()
                .find(|s| &s.stage == stage)
                .map_or(State::Stale, |s| s.state);
            row(stage, state, &workdir.output(stage))
        })
        .collect();
    // Best first: by best validation loss, else by final loss; the missing last.
    rows.sort_by(|a, b| {
        let key = |r: &Row| r.best_val_loss.or(r.final_loss).unwrap_or(f64::INFINITY);
        key(a).total_cmp(&key(b))
    });
    Ok(rows)
}

/// The finetunes that a matrix made, of the stages written in `targets` (all when empty).
fn matrix_finetunes(pipeline: &Pipeline, targets: &[String]) -> Result<Vec<String>, RunError> {
    let written = |name: &str| name.split_once('[').map(|(w, _)| w.to_owned());
    let stages: Vec<String> = pipeline
        .stages
        .iter()
        .filter(|(name, params)| {
            matches!(params, StageParams::Finetune(_))
                && written(name).is_some_and(|w| targets.is_empty() || targets.contains(&w))
        })
        .map(|(name, _)| name.clone())
        .collect();
    if stages.is_empty() {
        let which = if targets.is_empty() {
            "the pipeline has no finetune stage with a matrix".to_owned()
        } else {
            format!(
                "no finetune stage with a matrix is named {}",
                targets.join(", ")
            )
        };
        return Err(RunError::Other(anyhow::anyhow!(
            "{which}: add [stages.NAME.matrix] with lists of values, such as learning_rate = [1e-4, 3e-4]"
        )));
    }
    Ok(stages)
}

fn row(stage: &str, state: State, output: &Path) -> Row {
    let metrics: Vec<serde_json::Value> = std::fs::read_to_string(output.join("metrics.jsonl"))
        .map(|text| {
            text.lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect()
        })
        .unwrap_or_default();
    let field = |m: &serde_json::Value, k: &str| m.get(k).and_then(|v| v.as_f64());
    let step = |m: &serde_json::Value| m.get("step").and_then(|v| v.as_u64());
    let vals: Vec<(u64, f64)> = metrics
        .iter()
        .filter_map(|m| Some((step(m)?, field(m, "val_loss")?)))
        .collect();
    let best = vals.iter().copied().min_by(|a, b| a.1.total_cmp(&b.1));
    let curve: Vec<(f64, f64)> = if vals.is_empty() {
        metrics
            .iter()
            .filter_map(|m| Some((step(m)? as f64, field(m, "avg_loss")?)))
            .collect()
    } else {
        vals.iter().map(|(s, v)| (*s as f64, *v)).collect()
    };
    Row {
        stage: stage.to_owned(),
        state: match (metrics.is_empty(), state) {
            (true, _) => "missing",
            (false, State::Fresh) => "fresh",
            (false, State::Stale) => "stale",
        },
        steps: metrics.last().and_then(step),
        final_loss: metrics.last().and_then(|m| field(m, "avg_loss")),
        final_val_loss: vals.last().map(|v| v.1),
        best_val_loss: best.map(|b| b.1),
        best_step: best.map(|b| b.0),
        curve: curve.into_iter().filter(|p| p.1.is_finite()).collect(),
    }
}

fn table(rows: &[Row]) -> String {
    let num = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.4}"));
    let int = |v: Option<u64>| v.map_or("-".to_owned(), |v| v.to_string());
    let mut lines = vec![[
        "stage".to_owned(),
        "state".into(),
        "steps".into(),
        "final loss".into(),
        "final val".into(),
        "best val".into(),
        "at step".into(),
    ]];
    for r in rows {
        lines.push([
            r.stage.clone(),
            r.state.into(),
            int(r.steps),
            num(r.final_loss),
            num(r.final_val_loss),
            num(r.best_val_loss),
            int(r.best_step),
        ]);
    }
    let widths: Vec<usize> = (0..7)
        .map(|i| lines.iter().map(|l| l[i].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for l in lines {
        let cells: Vec<String> = l
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(i, (c, w))| {
                if i < 2 {
                    format!("{c:<w$}")
                } else {
                    format!("{c:>w$}")
                }
            })
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// A plain SVG line chart: one curve per combination, with a legend.
fn svg(rows: &[Row]) -> String {
    const COLORS: [&str; 8] = [
        "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
    ];
    let (w, h, left, right, top, bottom) = (800.0, 480.0, 60.0, 260.0, 30.0, 40.0);
    let points: Vec<&(f64, f64)> = rows.iter().flat_map(|r| &r.curve).collect();
    let fold = |f: fn(f64, f64) -> f64, init: f64, pick: fn(&(f64, f64)) -> f64| {
        points.iter().map(|p| pick(p)).fold(init, f)
    };
    let (x_min, x_max) = (
        fold(f64::min, f64::INFINITY, |p| p.0),
        fold(f64::max, f64::NEG_INFINITY, |p| p.0),
    );
    let (y_min, y_max) = (
        fold(f64::min, f64::INFINITY, |p| p.1),
        fold(f64::max, f64::NEG_INFINITY, |p| p.1),
    );
    let span = |a: f64, b: f64| if b > a { b - a } else { 1.0 };
    let x = |v: f64| left + (v - x_min) / span(x_min, x_max) * (w - left - right);
    let y = |v: f64| h - bottom - (v - y_min) / span(y_min, y_max) * (h - top - bottom);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{left}\" y=\"20\" font-size=\"15\">sweep: loss by combination</text>\n\
         <line x1=\"{left}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>\n\
         <line x1=\"{left}\" y1=\"{top}\" x2=\"{left}\" y2=\"{}\" stroke=\"black\"/>\n",
        h - bottom,
        w - right,
        h - bottom,
        h - bottom
    );
    if !points.is_empty() {
        s.push_str(&format!(
            "<text x=\"{left}\" y=\"{}\">step {x_min}</text><text x=\"{}\" y=\"{}\" text-anchor=\"end\">{x_max}</text>\n\
             <text x=\"{}\" y=\"{}\" text-anchor=\"end\">{y_max:.3}</text><text x=\"{}\" y=\"{}\" text-anchor=\"end\">{y_min:.3}</text>\n",
            h - bottom + 16.0,
            w - right,
            h - bottom + 16.0,
            left - 4.0,
            top + 4.0,
            left - 4.0,
            h - bottom
        ));
    }
    for (i, r) in rows.iter().filter(|r| !r.curve.is_empty()).enumerate() {
        let color = COLORS[i % COLORS.len()];
        let line: Vec<String> = r
            .curve
            .iter()
            .map(|(a, b)| format!("{:.1},{:.1}", x(*a), y(*b)))
            .collect();
        s.push_str(&format!(
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"1.5\" points=\"{}\"/>\n\
             <text x=\"{}\" y=\"{}\" fill=\"{color}\">{}</text>\n",
            line.join(" "),
            w - right + 10.0,
            top + 16.0 * (i as f64 + 1.0),
            xml_escape(&r.stage)
        ));
    }
    s.push_str("</svg>\n");
    s
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
