//! Data-parallel finetuning: which rank this process is, the other ranks it starts, and
//! libtorch's c10d collectives over them (`csrc/collectives.cpp`, `cfg(gptpipe_dist)`).
//!
//! A rank learns who it is from the torchrun convention (`RANK`, `LOCAL_RANK`,
//! `WORLD_SIZE`, `MASTER_ADDR`, `MASTER_PORT`), so torchrun, srun (through the Slurm job
//! script, which exports them) or a Kubernetes job can start the ranks. A finetune with
//! `devices = N` that no launcher started is rank 0 and starts the N - 1 others itself, on
//! this machine: copies of this worker given the same stage request, killed with it.
//! Rank 0 serves the rendezvous (c10d's TCP store); Gloo carries CPU tensors, NCCL CUDA
//! ones when the shim was built with it.

use anyhow::{anyhow, bail, Context, Result};
use gptpipe_core::config::Devices;
use gptpipe_core::events::{Event, EventSink, JsonSink};
use gptpipe_core::remote::{ended_how, start_run_stage, StageRequest};
use gptpipe_core::stage::StageContext;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tch::{Device, Kind, Tensor};

/// How long a collective waits for the other ranks before it fails (seconds): long
/// enough for rank 0 to save a checkpoint or validate while the others wait, short
/// enough that a hung rank ends the stage. A rank that dies is noticed at once.
const TIMEOUT_ENV: &str = "GPTPIPE_DIST_TIMEOUT";
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// This process's place among the ranks, as a launcher announced it.
#[derive(Debug, Clone, PartialEq)]
pub struct Rank {
    pub rank: usize,
    pub local_rank: usize,
    pub world: usize,
    pub master_addr: String,
    pub master_port: u16,
}

impl Rank {
    /// The torchrun variables of this process's environment; `None` when `WORLD_SIZE` is
    /// unset (no launcher). A partial or inconsistent set is an error naming the variable.
    pub fn from_env() -> Result<Option<Rank>> {
        Self::from_vars(|k| std::env::var(k).ok())
    }

    fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Option<Rank>> {
        let Some(world) = var("WORLD_SIZE") else {
            return Ok(None);
        };
        let number = |key: &str, value: Option<String>| -> Result<usize> {
            let value = value.ok_or_else(|| anyhow!("WORLD_SIZE is set but {key} is not"))?;
            value
                .trim()
                .parse()
                .map_err(|_| anyhow!("{key} = {value:?} is not a number"))
        };
        let world = number("WORLD_SIZE", Some(world))?;
        let rank = number("RANK", var("RANK"))?;
        let local_rank = match var("LOCAL_RANK") {
            Some(v) => number("LOCAL_RANK", Some(v))?,
            None => rank,
        };
        if world == 0 || rank >= world {
            bail!("RANK = {rank} is not a rank of WORLD_SIZE = {world}");
        }
        let master_addr = var("MASTER_ADDR").unwrap_or_else(|| "127.0.0.1".into());
        let port = var("MASTER_PORT")
            .ok_or_else(|| anyhow!("WORLD_SIZE is set but MASTER_PORT is not"))?;
        let master_port = port
            .trim()
            .parse::<u16>()
            .ok()
            .filter(|&p| p > 0)
            .ok_or_else(|| anyhow!("MASTER_PORT = {port:?} is not a port"))?;
        Ok(Some(Rank {
            rank,
            local_rank,
            world,
            master_addr,
            master_port,
        }))
    }
}

/// The ranks `devices` asks for where the stage runs on `device`: `"all"` is every CUDA
/// device, and one process on the CPU (which one process uses whole).
fn ranks_wanted(devices: Devices, device: Device) -> usize {
    match devices {
        Devices::Count(n) => n.get(),
        Devices::All if device.is_cuda() => (tch::Cuda::device_count() as usize).max(1),
        Devices::All => 1,
    }
}

/// The process group of the ranks, joined; rank 0 of a local launch also owns the other
/// ranks' processes (killed when it is dropped).
pub struct Group {
    pub rank: usize,
    pub world: usize,
    /// Where this rank trains: `cuda:LOCAL_RANK` (modulo the GPUs it sees: a site may give
    /// each task its own one) when the ranks train on CUDA, else the CPU. The collectives'
    /// own small tensors live there too (NCCL takes CUDA tensors only).
    pub device: Device,
    comm: Comm,
    children: Vec<RankProcess>,
}

/// A rank this process started: its process, and what tells how it ended.
struct RankProcess {
    child: Child,
    watch: Watch,
}

/// What tells whether a started rank has ended, and how: its number, its process id and
/// the error it reported, if any.
#[derive(Clone)]
struct Watch {
    rank: usize,
    pid: u32,
    failure: Arc<Mutex<Option<String>>>,
}

/// "rank R of N ended (how): its error", for the first of `ranks` that has ended.
fn ended(ranks: &[Watch], world: usize) -> Option<String> {
    ranks.iter().find_map(|w| {
        let status = exited(w.pid)?;
        let said = w.failure.lock().unwrap_or_else(|e| e.into_inner()).clone();
        Some(format!(
            "rank {} of {world} ended ({status}){}",
            w.rank,
            said.map(|s| format!(": {s}")).unwrap_or_default()
        ))
    })
}

impl Group {
    /// The group `ctx`'s finetune trains in on `device`, or `None` for one rank: joins the
    /// ranks a launcher started, or starts the others `devices` asks for on this machine.
    pub fn for_stage(
        ctx: &StageContext,
        devices: Devices,
        device: Device,
    ) -> Result<Option<Group>> {
        let (wanted, cuda) = (ranks_wanted(devices, device), device.is_cuda());
        // Only a data-parallel finetune is a rank: torchrun's variables, wherever they came
        // from, never make an ordinary one wait for others.
        let launched = match devices.is_one() {
            true => None,
            false => Rank::from_env()?,
        };
        if let Some(rank) = launched {
            if rank.world != wanted {
                ctx.warn(format!(
                    "devices asks for {wanted} ranks, but the launcher started {} \
                     (WORLD_SIZE): training with {}",
                    rank.world, rank.world
                ));
            }
            if rank.world == 1 {
                return Ok(None);
            }
            ctx.log(format!(
                "data-parallel: rank {} of {}, started by a launcher (rank 0's store at {}:{})",
                rank.rank, rank.world, rank.master_addr, rank.master_port
            ));
            return Self::join(&rank, cuda).map(Some);
        }
        if wanted == 1 {
            return Ok(None);
        }
        Self::launch(ctx, wanted, cuda).map(Some)
    }

    fn join(rank: &Rank, cuda: bool) -> Result<Group> {
        let timeout = timeout()?;
        let store = Store::new(
            &rank.master_addr,
            rank.master_port,
            rank.rank == 0,
            None,
            rank.world,
            timeout,
        )
        .with_context(|| {
            format!(
                "rank {} cannot reach rank 0's store at {}:{}",
                rank.rank, rank.master_addr, rank.master_port
            )
        })?;
        let comm = Comm::new(
            store,
            &rank.master_addr,
            rank.rank,
            rank.world,
            timeout,
            cuda,
        )?;
        Ok(Group {
            rank: rank.rank,
            world: rank.world,
            device: rank_device(rank.local_rank, cuda),
            comm,
            children: Vec::new(),
        })
    }

    /// Rank 0 of `world` ranks on this machine: serves the store on a free loopback port,
    /// starts ranks 1.. as copies of this worker running the same request, and joins them.
    /// Each rank gets an equal share of this process's CPU threads.
    fn launch(ctx: &StageContext, world: usize, cuda: bool) -> Result<Group> {
        let timeout = timeout()?;
        let host = "127.0.0.1";
        let limit = local_devices(cuda);
        if world > limit {
            bail!(
                "devices = {world}, but this machine has {limit} {}: one rank per device",
                if cuda { "CUDA devices" } else { "CPUs" }
            );
        }
        // Bound here, to loopback only: c10d's store would listen on every interface, and
        // anyone reaching it could join or stall the rendezvous.
        let listener = std::net::TcpListener::bind((host, 0))
            .context("cannot open a loopback port for the ranks' rendezvous")?;
        let store = Store::new(host, 0, true, Some(listener), world, timeout)?;
        let threads = (tch::get_num_threads().max(1) as usize / world).max(1);
        tch::set_num_threads(threads as i32);
        let request = serde_json::to_vec(&StageRequest::of(ctx))?;
        let worker = std::env::current_exe().context("cannot find this worker's executable")?;
        let mut children = Vec::new();
        for rank in 1..world {
            let mut command = Command::new(&worker);
            command.envs([
                ("RANK", rank.to_string()),
                ("LOCAL_RANK", rank.to_string()),
                ("WORLD_SIZE", world.to_string()),
                ("MASTER_ADDR", host.to_string()),
                ("MASTER_PORT", store.port.to_string()),
                ("OMP_NUM_THREADS", threads.to_string()),
                ("MKL_NUM_THREADS", threads.to_string()),
            ]);
            let mut child = start_run_stage(&mut command, &request)
                .with_context(|| format!("rank {rank} of {world}"))?;
            let failure = Arc::new(Mutex::new(None));
            let stdout = child.stdout.take().expect("piped");
            let keep = failure.clone();
            // Only a failure matters: rank 0 alone reports the stage's progress.
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    if let Ok(Event::StageFailed { error, .. }) = serde_json::from_str(&line) {
                        *keep.lock().unwrap_or_else(|e| e.into_inner()) = Some(error);
                    }
                }
            });
            let pid = child.id();
            children.push(RankProcess {
                child,
                watch: Watch { rank, pid, failure },
            });
        }
        ctx.log(format!(
            "data-parallel: {world} ranks on this machine, {threads} CPU thread(s) each, {}",
            if cuda {
                "CUDA device = rank"
            } else {
                "on the CPU"
            }
        ));
        let mut group = Group {
            rank: 0,
            world,
            device: rank_device(0, cuda),
            comm: Comm::detached(),
            children,
        };
        // Meeting the ranks waits for every one of them until the timeout, and c10d cannot
        // be interrupted: a rank that ends before it has met the others ends this worker.
        let meeting = Arc::new(AtomicBool::new(true));
        let watched: Vec<Watch> = group.children.iter().map(|p| p.watch.clone()).collect();
        let still = meeting.clone();
        std::thread::spawn(move || {
            while still.load(Ordering::Relaxed) {
                if let Some(why) = ended(&watched, world) {
                    fail_now(&format!("{why}, before the ranks had met"));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        let joined = Comm::new(store, host, 0, world, timeout, cuda);
        meeting.store(false, Ordering::Relaxed);
        group.comm = joined.map_err(|e| group.explain(e))?;
        Ok(group)
    }

    /// Sums `t` over the ranks and divides by their number, in place.
    pub fn all_reduce_mean(&self, t: &Tensor) -> Result<()> {
        self.comm.all_reduce_sum(t).map_err(|e| self.explain(e))?;
        let _ = tch::no_grad(|| t.shallow_clone().g_div_scalar_(self.world as f64));
        Ok(())
    }

    /// Gives every rank rank 0's `t` (same shape on every rank), in place.
    pub fn broadcast(&self, t: &Tensor) -> Result<()> {
        self.comm.broadcast(t, 0).map_err(|e| self.explain(e))
    }

    /// Rank 0's `value` on every rank.
    pub fn broadcast_f64(&self, value: f64) -> Result<f64> {
        let t = Tensor::from_slice(&[value]).to_device(self.device);
        self.broadcast(&t)?;
        Ok(t.to_device(Device::Cpu).double_value(&[0]))
    }

    /// Rank 0's `bytes` on every rank (the others pass anything).
    pub fn broadcast_bytes(&self, bytes: &[u8]) -> Result<Vec<u8>> {
        let len = self.broadcast_f64(bytes.len() as f64)? as usize;
        let data = if self.rank == 0 {
            Tensor::from_slice(bytes).to_device(self.device)
        } else {
            Tensor::zeros([len as i64], (Kind::Uint8, self.device))
        };
        self.broadcast(&data)?;
        Ok(Vec::<u8>::try_from(&data.to_device(Device::Cpu))?)
    }

    /// A collective's failure, told by its cause when it is a rank this process started
    /// that ended (waiting a moment for it to be seen).
    fn explain(&self, e: anyhow::Error) -> anyhow::Error {
        let start = Instant::now();
        let watched: Vec<Watch> = self.children.iter().map(|p| p.watch.clone()).collect();
        loop {
            if let Some(why) = ended(&watched, self.world) {
                return anyhow!(why);
            }
            if watched.is_empty() || start.elapsed() > Duration::from_secs(5) {
                return e.context(format!(
                    "rank {} of {}: a collective failed (another rank ended or stopped \
                     answering)",
                    self.rank, self.world
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Ends this worker at once with `error` as its stage's failure (what `remote::serve`
/// reports on return), from any thread: `_exit` runs no destructors, which the thread
/// blocked in libtorch could be using. The ranks it started die with it.
fn fail_now(error: &str) -> ! {
    JsonSink.emit(Event::StageFailed {
        stage: String::new(),
        error: error.to_owned(),
        cancelled: false,
    });
    let _ = std::io::stdout().flush();
    // SAFETY: _exit ends the process; nothing runs after it.
    unsafe { libc::_exit(1) }
}

impl Drop for Group {
    fn drop(&mut self) {
        // The other ranks cannot finish without this one.
        for p in &mut self.children {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
    }
}

/// How the child process `pid` ended, if it has: `waitpid` without reaping (the child
/// stays `Child`'s to wait for), through `waitid`'s WNOWAIT.
fn exited(pid: u32) -> Option<String> {
    // SAFETY: waitid writes only into `info`, which lives for the call; WNOWAIT leaves the
    // child for `Child::wait` to reap.
    unsafe {
        let mut info: libc::siginfo_t = std::mem::zeroed();
        let rc = libc::waitid(
            libc::P_PID,
            pid,
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        );
        if rc != 0 || info.si_pid() == 0 {
            return None;
        }
        // As a wait status: the exit code in the second byte, else the signal.
        let raw = match info.si_code {
            libc::CLD_EXITED => (info.si_status() & 0xff) << 8,
            _ => info.si_status() & 0x7f,
        };
        Some(ended_how(std::process::ExitStatus::from_raw(raw)))
    }
}

/// Whether this process reports, samples and saves for its stage: the only one (`None`),
/// or rank 0.
pub fn is_main(group: Option<&Group>) -> bool {
    group.is_none_or(|g| g.rank == 0)
}

/// Where rank `local_rank` of this machine trains (see [`Group::device`]).
fn rank_device(local_rank: usize, cuda: bool) -> Device {
    match cuda {
        true => Device::Cuda(local_rank % (tch::Cuda::device_count().max(1) as usize)),
        false => Device::Cpu,
    }
}

/// The ranks this machine can hold: one per CUDA device, or per CPU it lets us use.
fn local_devices(cuda: bool) -> usize {
    if cuda {
        tch::Cuda::device_count().max(0) as usize
    } else {
        std::thread::available_parallelism().map_or(1, usize::from)
    }
}

fn timeout() -> Result<Duration> {
    match std::env::var(TIMEOUT_ENV) {
        Ok(v) => v
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|s| s.is_finite() && *s > 0.0)
            .map(Duration::from_secs_f64)
            .ok_or_else(|| anyhow!("{TIMEOUT_ENV} = {v:?} is not a number of seconds")),
        Err(_) => Ok(DEFAULT_TIMEOUT),
    }
}

/// Whether this build has the collectives (gloo's headers were found at build time).
pub const BUILT: bool = cfg!(gptpipe_dist);

#[cfg(gptpipe_dist)]
use imp::{Comm, Store};
#[cfg(not(gptpipe_dist))]
use missing::{Comm, Store};

#[cfg(gptpipe_dist)]
mod imp {
    use crate::ffi::{self, ptr};
    use anyhow::{anyhow, Result};
    use std::ffi::{c_void, CString};
    use std::time::Duration;
    use tch::Tensor;

    fn last_error() -> anyhow::Error {
        anyhow!(ffi::check(1).unwrap_err())
    }

    /// c10d's TCP store (rank 0 serves it), as the shim holds it.
    pub struct Store {
        handle: *mut c_void,
        pub port: u16,
    }

    impl Store {
        /// `listener`: a socket bound for rank 0's store, which takes it over.
        pub fn new(
            host: &str,
            port: u16,
            serve: bool,
            listener: Option<std::net::TcpListener>,
            world: usize,
            timeout: Duration,
        ) -> Result<Self> {
            use std::os::fd::IntoRawFd;
            let host = CString::new(host)?;
            let mut bound = 0;
            let fd = listener.map_or(-1, IntoRawFd::into_raw_fd);
            // SAFETY: `host` outlives the call; the shim writes `bound` only; the store
            // owns `fd` from here on.
            let handle = unsafe {
                ffi::gptpipe_dist_store_new(
                    host.as_ptr(),
                    port.into(),
                    serve.into(),
                    fd,
                    world as i32,
                    timeout.as_millis() as i64,
                    &mut bound,
                )
            };
            if handle.is_null() {
                return Err(last_error());
            }
            Ok(Self {
                handle,
                port: bound as u16,
            })
        }
    }

    impl Drop for Store {
        fn drop(&mut self) {
            // SAFETY: the handle came from gptpipe_dist_store_new and is freed once.
            unsafe { ffi::gptpipe_dist_store_free(self.handle) }
        }
    }

    /// A joined process group; it keeps its store.
    pub struct Comm {
        handle: *mut c_void,
        _store: Option<Store>,
    }

    impl Comm {
        pub fn new(
            store: Store,
            master: &str,
            rank: usize,
            world: usize,
            timeout: Duration,
            nccl: bool,
        ) -> Result<Self> {
            let master = CString::new(master)?;
            // SAFETY: the store handle is live (owned by `store`); `master` outlives the call.
            let handle = unsafe {
                ffi::gptpipe_dist_group_new(
                    store.handle,
                    master.as_ptr(),
                    rank as i32,
                    world as i32,
                    timeout.as_millis() as i64,
                    (nccl && ffi::NCCL).into(),
                )
            };
            if handle.is_null() {
                return Err(last_error());
            }
            Ok(Self {
                handle,
                _store: Some(store),
            })
        }

        /// A placeholder, until the group is joined.
        pub fn detached() -> Self {
            Self {
                handle: std::ptr::null_mut(),
                _store: None,
            }
        }

        pub fn all_reduce_sum(&self, t: &Tensor) -> Result<()> {
            // SAFETY: the group handle is live; `t` is a live tch tensor for the call.
            ffi::check(unsafe { ffi::gptpipe_dist_all_reduce_sum(self.handle, ptr(t)) })
                .map_err(|e| anyhow!(e))
        }

        pub fn broadcast(&self, t: &Tensor, root: usize) -> Result<()> {
            // SAFETY: as for all_reduce_sum.
            ffi::check(unsafe { ffi::gptpipe_dist_broadcast(self.handle, ptr(t), root as i32) })
                .map_err(|e| anyhow!(e))
        }
    }

    impl Drop for Comm {
        fn drop(&mut self) {
            if !self.handle.is_null() {
                // SAFETY: the handle came from gptpipe_dist_group_new and is freed once.
                unsafe { ffi::gptpipe_dist_group_free(self.handle) }
            }
        }
    }
}

#[cfg(not(gptpipe_dist))]
mod missing {
    use anyhow::{bail, Result};
    use std::time::Duration;
    use tch::Tensor;

    const WHY: &str = "this gptpipe was built without libtorch's collectives (gloo's headers \
                       were missing: install Debian's libgloo-dev, or set \
                       GPTPIPE_GLOO_INCLUDE, and rebuild): devices must be 1";

    pub struct Store {
        pub port: u16,
    }

    impl Store {
        pub fn new(
            _: &str,
            _: u16,
            _: bool,
            _: Option<std::net::TcpListener>,
            _: usize,
            _: Duration,
        ) -> Result<Self> {
            bail!(WHY)
        }
    }

    pub struct Comm;

    impl Comm {
        pub fn new(_: Store, _: &str, _: usize, _: usize, _: Duration, _: bool) -> Result<Self> {
            bail!(WHY)
        }
        pub fn detached() -> Self {
            Self
        }
        pub fn all_reduce_sum(&self, _: &Tensor) -> Result<()> {
            bail!(WHY)
        }
        pub fn broadcast(&self, _: &Tensor, _: usize) -> Result<()> {
            bail!(WHY)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn rank_of(vars: &[(&str, &str)]) -> Result<Option<Rank>> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Rank::from_vars(|k| map.get(k).cloned())
    }

    #[test]
    fn torchrun_variables_read_as_a_rank() {
        assert_eq!(rank_of(&[]).unwrap(), None);
        let r = rank_of(&[
            ("WORLD_SIZE", "4"),
            ("RANK", "3"),
            ("LOCAL_RANK", "1"),
            ("MASTER_ADDR", "node1"),
            ("MASTER_PORT", "29500"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!((r.rank, r.local_rank, r.world), (3, 1, 4));
        assert_eq!((r.master_addr.as_str(), r.master_port), ("node1", 29500));
        for (bad, says) in [
            (
                vec![("WORLD_SIZE", "2"), ("MASTER_PORT", "1")],
                "RANK is not",
            ),
            (
                vec![("WORLD_SIZE", "2"), ("RANK", "2"), ("MASTER_PORT", "1")],
                "not a rank",
            ),
            (
                vec![("WORLD_SIZE", "x"), ("RANK", "0"), ("MASTER_PORT", "1")],
                "WORLD_SIZE = \"x\"",
            ),
            (
                vec![("WORLD_SIZE", "2"), ("RANK", "0")],
                "MASTER_PORT is not",
            ),
            (
                vec![("WORLD_SIZE", "2"), ("RANK", "0"), ("MASTER_PORT", "0")],
                "not a port",
            ),
        ] {
            let e = rank_of(&bad).unwrap_err().to_string();
            assert!(e.contains(says), "{bad:?}: {e}");
        }
    }
}
