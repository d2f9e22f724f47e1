//! Where stages run: `[pipeline] executor` and each stage's `[stages.X.resources]`, which
//! become `sbatch` options under the Slurm executor. Neither changes what a stage computes,
//! so neither enters a cache key: they are read off the raw tables before stages are typed.

use super::error::ConfigError;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Runs stages as local processes, or as Slurm jobs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Executor {
    #[default]
    Local,
    Slurm,
}

/// The key of a stage's resources table.
pub const RESOURCES_KEY: &str = "resources";

/// What a stage's Slurm job asks for. Unset fields are left to the cluster's defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// GPUs per node (`--gres=gpu:N`).
    pub gpus: Option<u32>,
    /// CPUs for the job's one task (`--cpus-per-task`).
    pub cpus: Option<u32>,
    /// Memory per node, as Slurm writes it: `16G`, `500M` (`--mem`).
    pub mem: Option<String>,
    /// Time limit, as Slurm writes it: `90` (minutes), `1:30:00`, `2-00:00:00` (`--time`).
    pub time: Option<String>,
    /// Nodes (`--nodes`).
    pub nodes: Option<u32>,
    pub partition: Option<String>,
    pub account: Option<String>,
    pub qos: Option<String>,
    /// Any other `sbatch` options, one per element (`["--constraint=a100"]`). gptpipe's
    /// own (`--output`, `--parsable`, `--wrap`, ...) are refused.
    #[serde(default)]
    pub sbatch_args: Vec<String>,
}

/// Options gptpipe sets itself, or that would make the job something else.
const OWN_OPTIONS: [&str; 10] = [
    "--output",
    "--error",
    "--parsable",
    "--wrap",
    "--chdir",
    "--job-name",
    "--array",
    "--input",
    "--test-only",
    "--dependency",
];

impl Resources {
    /// Checks the values, naming the field.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        let word = |field: &'static str, v: &Option<String>, ok: fn(char) -> bool| match v {
            Some(s) if s.is_empty() || s.starts_with('-') || !s.chars().all(ok) => {
                Err((field, format!("{s:?} is not a valid value")))
            }
            _ => Ok(()),
        };
        word("mem", &self.mem, |c| {
            c.is_ascii_digit() || "KMGTkmgt".contains(c)
        })?;
        word("time", &self.time, |c| {
            c.is_ascii_digit() || c == ':' || c == '-'
        })?;
        fn name(c: char) -> bool {
            c.is_ascii_alphanumeric() || "-_.".contains(c)
        }
        word("partition", &self.partition, |c| name(c) || c == ',')?;
        word("account", &self.account, name)?;
        word("qos", &self.qos, name)?;
        for (field, v) in [
            ("gpus", self.gpus),
            ("cpus", self.cpus),
            ("nodes", self.nodes),
        ] {
            if v == Some(0) {
                return Err((field, "must be at least 1".into()));
            }
        }
        for arg in &self.sbatch_args {
            let option = arg.split('=').next().unwrap_or_default();
            if !arg.starts_with("--") || arg.contains(['\n', '\0']) {
                return Err((
                    "sbatch_args",
                    format!(
                        "{arg:?}: each element is one long option, such as \"--constraint=a100\""
                    ),
                ));
            }
            if OWN_OPTIONS.contains(&option) {
                return Err(("sbatch_args", format!("{option} is set by gptpipe")));
            }
        }
        Ok(())
    }

    /// The `sbatch` options these resources mean.
    pub fn sbatch_options(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut push = |flag: &str, v: Option<String>| {
            if let Some(v) = v {
                out.push(format!("--{flag}={v}"));
            }
        };
        push("gres", self.gpus.map(|n| format!("gpu:{n}")));
        push("cpus-per-task", self.cpus.map(|n| n.to_string()));
        push("mem", self.mem.clone());
        push("time", self.time.clone());
        push("nodes", self.nodes.map(|n| n.to_string()));
        push("partition", self.partition.clone());
        push("account", self.account.clone());
        push("qos", self.qos.clone());
        out.extend(self.sbatch_args.iter().cloned());
        out
    }
}

/// The error for a bad field of stage `stage`'s resources.
pub fn resources_error(stage: &str, field: &str, message: &str) -> ConfigError {
    ConfigError::new(format!("stage `{stage}`: `resources.{field}`: {message}"))
        .with_help("resources become sbatch options: see docs/cluster.md")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resources_become_sbatch_options() {
        let r = Resources {
            gpus: Some(2),
            cpus: Some(8),
            mem: Some("32G".into()),
            time: Some("2:00:00".into()),
            partition: Some("gpu".into()),
            sbatch_args: vec!["--constraint=a100".into()],
            ..Default::default()
        };
        assert_eq!(r.check(), Ok(()));
        assert_eq!(
            r.sbatch_options(),
            [
                "--gres=gpu:2",
                "--cpus-per-task=8",
                "--mem=32G",
                "--time=2:00:00",
                "--partition=gpu",
                "--constraint=a100"
            ]
        );
    }

    #[test]
    fn bad_values_name_their_field() {
        let bad = |r: Resources| r.check().unwrap_err().0;
        assert_eq!(
            bad(Resources {
                mem: Some("lots".into()),
                ..Default::default()
            }),
            "mem"
        );
        assert_eq!(
            bad(Resources {
                time: Some("-1".into()),
                ..Default::default()
            }),
            "time"
        );
        assert_eq!(
            bad(Resources {
                partition: Some("a b".into()),
                ..Default::default()
            }),
            "partition"
        );
        assert_eq!(
            bad(Resources {
                gpus: Some(0),
                ..Default::default()
            }),
            "gpus"
        );
        let args = |a: &str| Resources {
            sbatch_args: vec![a.into()],
            ..Default::default()
        };
        assert_eq!(bad(args("--output=/etc/passwd")), "sbatch_args");
        assert_eq!(bad(args("--wrap")), "sbatch_args");
        assert_eq!(bad(args("script.sh")), "sbatch_args");
        assert_eq!(args("--exclusive").check(), Ok(()));
    }
}
