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
//!   the stage's `threads` key, else [`default_threads`] (the CPUs not busy with other
//!   work).
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

/// The thread count when nothing sets one: the CPUs this process may run on
/// (`std::thread::available_parallelism`: its affinity mask and a cgroup's CPU quota, which
/// libgomp's own default ignores), but no more than the machine's CPUs that are not busy
/// with other work as the worker starts, and at least one. On a machine busy with other
/// processes, threads that share cores with them wait for each other at every parallel
/// step: one thread was faster there (issue 16), and it is never slower than the cores left.
pub fn default_threads() -> NonZeroUsize {
    let usable = std::thread::available_parallelism().map_or(1, NonZeroUsize::get);
    let idle = idle_cpus().unwrap_or(usable);
    NonZeroUsize::new(usable.min(idle)).unwrap_or(NonZeroUsize::MIN)
}

/// The online CPUs less the tasks of other processes running or waiting to run now (the
/// median of a few readings of `/proc/loadavg`'s running count, which counts the reader).
fn idle_cpus() -> Option<usize> {
    // SAFETY: sysconf only reads a system value.
    let online = usize::try_from(unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }).ok()?;
    let mut running = Vec::new();
    for i in 0..5 {
        if i > 0 {
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        let text = std::fs::read_to_string("/proc/loadavg").ok()?;
        running.push(running_tasks(&text)?);
    }
    running.sort_unstable();
    let others = running[running.len() / 2].saturating_sub(1);
    Some(online.saturating_sub(others))
}

/// The running count of a `/proc/loadavg` line (`0.52 0.58 0.59 3/467 12345`: 3).
fn running_tasks(loadavg: &str) -> Option<usize> {
    loadavg
        .split_whitespace()
        .nth(3)?
        .split('/')
        .next()?
        .parse()
        .ok()
}

/// What to add to the environment of a process that loads libtorch, given the stage's
/// `threads` key (`None` outside a stage or when unset); see the module documentation.
/// Reads this process's environment.
pub fn worker_env(key: Option<NonZeroUsize>) -> Vec<(&'static str, String)> {
    env_for(|name| std::env::var(name).ok(), key, default_threads())
}

/// [`worker_env`] over the variables `var` returns, with `default` threads.
fn env_for(
    var: impl Fn(&str) -> Option<String>,
    key: Option<NonZeroUsize>,
    default: NonZeroUsize,
) -> Vec<(&'static str, String)> {
    let set = |name: &str| var(name).is_some_and(|v| !v.is_empty());
    let mut env = Vec::new();
    if !set("OMP_WAIT_POLICY") && !set("GOMP_SPINCOUNT") {
        env.push(("OMP_WAIT_POLICY", "PASSIVE".to_string()));
    }
    let flag = var(THREADS_ENV).and_then(|v| v.trim().parse::<NonZeroUsize>().ok());
    let count = match flag {
        Some(n) => Some(n),
        None if set("OMP_NUM_THREADS") => None,
        None => Some(key.unwrap_or(default)),
    };
    if let Some(n) = count {
        env.push(("OMP_NUM_THREADS", n.to_string()));
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
        env_for(var, key, n(4).unwrap())
    }

    fn pairs(p: &[(&'static str, &str)]) -> Vec<(&'static str, String)> {
        p.iter().map(|(k, v)| (*k, v.to_string())).collect()
    }

    #[test]
    fn the_running_count_of_loadavg() {
        assert_eq!(running_tasks("0.52 0.58 0.59 3/467 12345\n"), Some(3));
        assert_eq!(running_tasks("0.52 0.58"), None);
        // This test runs, so something is running.
        let text = std::fs::read_to_string("/proc/loadavg").unwrap();
        assert!(running_tasks(&text).unwrap() >= 1);
        assert!(idle_cpus().is_some());
    }

    #[test]
    fn passive_and_the_default_count_when_nothing_is_set() {
        assert!(default_threads().get() >= 1);
        let want = pairs(&[("OMP_WAIT_POLICY", "PASSIVE"), ("OMP_NUM_THREADS", "4")]);
        assert_eq!(env(&[], None), want);
        // An empty variable counts as unset.
        assert_eq!(env(&[("OMP_NUM_THREADS", "")], None), want);
    }

    #[test]
    fn the_flag_wins_then_the_users_environment_then_the_key() {
        let key = n(3);
        assert_eq!(env(&[], key)[1], ("OMP_NUM_THREADS", "3".into()));
        // The user's OMP_NUM_THREADS is left as it is, over the key.
        assert_eq!(
            env(&[("OMP_NUM_THREADS", "2")], key),
            pairs(&[("OMP_WAIT_POLICY", "PASSIVE")])
        );
        // --threads (GPTPIPE_THREADS) over both.
        let flag = [("OMP_NUM_THREADS", "2"), (THREADS_ENV, "1")];
        assert_eq!(env(&flag, key)[1], ("OMP_NUM_THREADS", "1".into()));
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
                pairs(&[("OMP_NUM_THREADS", "4")])
            );
        }
    }
}
