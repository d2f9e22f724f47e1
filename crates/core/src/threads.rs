//! CPU threads of the processes that run model code (`gptpipe-worker`): how many, and how
//! they wait.
//!
//! libtorch computes on the CPU with an OpenMP team (GNU libgomp) whose threads, between
//! two parallel operations, spin for a while before they sleep (libgomp's default wait
//! policy). On an idle machine that saves a wake-up; on a machine busy with other work the
//! spinning threads take the cores from the one thread that has work, and a 100-token
//! generation that takes about a second on one thread took 5 to 7.5 s (issue 16). libgomp
//! reads its settings from the environment once, when the library is loaded, before `main`
//! runs: so the process that starts the worker sets them ([`worker_env`], through
//! `remote::worker_command`), and a worker started some other way restarts itself with them
//! (`gptpipe-worker`'s `main`).
//!
//! What is set, unless the user set it:
//! - `OMP_WAIT_POLICY=PASSIVE`: waiting threads sleep at once (not when `OMP_WAIT_POLICY` or
//!   `GOMP_SPINCOUNT` is already set);
//! - `OMP_NUM_THREADS`: the thread count, first of: `--threads` (which sets
//!   [`THREADS_ENV`] for the processes a command starts), the user's own `OMP_NUM_THREADS`,
//!   the stage's `threads` key, else [`default_threads`] (the CPUs this process may use).
//!
//! The thread count never changes what is computed, only how a sum is split between
//! threads, so results may differ between thread counts in the last bits of a float, as
//! they do between machines; `threads` is therefore not part of a stage's cache key (a
//! pipeline run with `--threads 1` is as fresh as one without).

use std::num::NonZeroUsize;

/// The variable `--threads N` sets for the worker processes a command starts; also read
/// when a user sets it. Wins over everything else.
pub const THREADS_ENV: &str = "GPTPIPE_THREADS";

/// The count a `--threads` flag (or [`THREADS_ENV`]) asks for, if any.
pub fn flag_threads() -> Option<NonZeroUsize> {
    std::env::var(THREADS_ENV).ok()?.trim().parse().ok()
}

/// The thread count when nothing sets one: the physical cores this process may run on (its
/// affinity mask, as libtorch's own default counts cores but ignores the mask), no more
/// than `std::thread::available_parallelism` (which also reads a cgroup's CPU quota). It
/// does not follow the machine's load: a finetune's last bits depend on its thread count,
/// and a pipeline's outputs must not depend on what else ran at that moment. The passive
/// wait policy is what keeps a busy machine usable.
pub fn default_threads() -> NonZeroUsize {
    let usable = std::thread::available_parallelism().unwrap_or(NonZeroUsize::MIN);
    cores_in_affinity()
        .and_then(NonZeroUsize::new)
        .map_or(usable, |cores| cores.min(usable))
}

/// The distinct (package, core) pairs among the CPUs of this process's affinity mask: one
/// per physical core, whatever the hyperthreads.
fn cores_in_affinity() -> Option<usize> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set, which sched_getaffinity fills.
    let set = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return None;
        }
        set
    };
    let topology = |cpu: usize, file: &str| {
        std::fs::read_to_string(format!("/sys/devices/system/cpu/cpu{cpu}/topology/{file}"))
            .ok()
            .map(|s| s.trim().to_owned())
    };
    let mut cores = std::collections::BTreeSet::new();
    // SAFETY: CPU_ISSET reads the set within its size.
    for cpu in (0..libc::CPU_SETSIZE as usize).filter(|&c| unsafe { libc::CPU_ISSET(c, &set) }) {
        cores.insert((
            topology(cpu, "physical_package_id")?,
            topology(cpu, "core_id")?,
        ));
    }
    Some(cores.len())
}

/// What to add to the environment of a process that loads libtorch, given the stage's
/// `threads` key (`None` outside a stage or when unset); see the module documentation.
/// Reads this process's environment.
pub fn worker_env(key: Option<NonZeroUsize>) -> Vec<(&'static str, String)> {
    env_for(
        |name| std::env::var(name).ok(),
        key,
        || default_threads().to_string(),
    )
}

/// [`worker_env`] for a Slurm job's script, which exports each value as it is: the default
/// count is the shell's `$(nproc)` (the CPUs of the job's allocation), which only the job's
/// machine knows. The job inherits the runner's environment, so what the user set there
/// is left out, as for a local worker.
pub fn job_env(key: Option<NonZeroUsize>) -> Vec<(&'static str, String)> {
    env_for(
        |name| std::env::var(name).ok(),
        key,
        || "$(nproc)".to_owned(),
    )
}

/// [`worker_env`] over the variables `var` returns, with `default` giving the default count
/// (asked only when nothing else sets one: the machine's is read from sysfs).
fn env_for(
    var: impl Fn(&str) -> Option<String>,
    key: Option<NonZeroUsize>,
    default: impl FnOnce() -> String,
) -> Vec<(&'static str, String)> {
    let set = |name: &str| var(name).is_some_and(|v| !v.is_empty());
    let mut env = Vec::new();
    if !set("OMP_WAIT_POLICY") && !set("GOMP_SPINCOUNT") {
        env.push(("OMP_WAIT_POLICY", "PASSIVE".to_string()));
    }
    let flag = var(THREADS_ENV).and_then(|v| v.trim().parse::<NonZeroUsize>().ok());
    // libtorch takes OMP_NUM_THREADS, then lets MKL_NUM_THREADS override it: a count set
    // here sets both, and a user's own either one stands.
    let count = match flag {
        Some(n) => Some(n.to_string()),
        None if set("OMP_NUM_THREADS") || set("MKL_NUM_THREADS") => None,
        None => Some(key.map_or_else(default, |n| n.to_string())),
    };
    if let Some(n) = count {
        env.push(("OMP_NUM_THREADS", n.clone()));
        env.push(("MKL_NUM_THREADS", n));
    }
    env
}

/// Whether this process was started without the wait policy [`worker_env`] gives (libgomp
/// has then read its defaults): a worker restarts itself with them.
pub fn missing_in_this_process() -> bool {
    let set = |name: &str| std::env::var_os(name).is_some_and(|v| !v.is_empty());
    !set("OMP_WAIT_POLICY") && !set("GOMP_SPINCOUNT")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(v: usize) -> Option<NonZeroUsize> {
        NonZeroUsize::new(v)
    }

    fn env(vars: &[(&str, &str)], key: Option<NonZeroUsize>) -> Vec<(&'static str, String)> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let var = |name: &str| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        env_for(var, key, || "4".to_owned())
    }

    fn pairs(p: &[(&'static str, &str)]) -> Vec<(&'static str, String)> {
        p.iter().map(|(k, v)| (*k, v.to_string())).collect()
    }

    #[test]
    fn passive_and_the_default_count_when_nothing_is_set() {
        assert!(default_threads().get() >= 1);
        assert!(default_threads() <= std::thread::available_parallelism().unwrap());
        let want = pairs(&[
            ("OMP_WAIT_POLICY", "PASSIVE"),
            ("OMP_NUM_THREADS", "4"),
            ("MKL_NUM_THREADS", "4"),
        ]);
        assert_eq!(env(&[], None), want);
        // An empty variable counts as unset.
        assert_eq!(env(&[("OMP_NUM_THREADS", "")], None), want);
    }

    #[test]
    fn the_flag_wins_then_the_users_environment_then_the_key() {
        let key = n(3);
        assert_eq!(env(&[], key)[1], ("OMP_NUM_THREADS", "3".into()));
        // The user's OMP_NUM_THREADS or MKL_NUM_THREADS is left as it is, over the key.
        for user in ["OMP_NUM_THREADS", "MKL_NUM_THREADS"] {
            assert_eq!(
                env(&[(user, "2")], key),
                pairs(&[("OMP_WAIT_POLICY", "PASSIVE")])
            );
        }
        // --threads (GPTPIPE_THREADS) over both, for both libraries.
        let flag = [
            ("OMP_NUM_THREADS", "2"),
            ("MKL_NUM_THREADS", "2"),
            (THREADS_ENV, "1"),
        ];
        assert_eq!(
            env(&flag, key)[1..],
            pairs(&[("OMP_NUM_THREADS", "1"), ("MKL_NUM_THREADS", "1")])
        );
        // A flag that is not a count is ignored.
        assert_eq!(
            env(&[(THREADS_ENV, "0")], key)[1],
            ("OMP_NUM_THREADS", "3".into())
        );
    }

    #[test]
    fn the_users_wait_policy_or_spin_count_is_kept() {
        for user in ["OMP_WAIT_POLICY", "GOMP_SPINCOUNT"] {
            assert_eq!(
                env(&[(user, "ACTIVE")], None),
                pairs(&[("OMP_NUM_THREADS", "4"), ("MKL_NUM_THREADS", "4")])
            );
        }
    }

    #[test]
    fn a_slurm_job_counts_its_own_cpus() {
        let job = job_env(None);
        if std::env::var_os("OMP_NUM_THREADS").is_none() && std::env::var_os(THREADS_ENV).is_none()
        {
            assert!(
                job.contains(&("OMP_NUM_THREADS", "$(nproc)".into())),
                "{job:?}"
            );
        }
    }
}
