//! Makes binaries and test binaries of this crate run without `LD_LIBRARY_PATH`, and with
//! CUDA: an rpath to libtorch's lib folder, and `torch_cuda` linked even though no symbol of
//! it is referenced (under `--as-needed` the linker drops it and CUDA is never found).
//! The folder is re-exported as `DEP_GPTPIPE_TORCH_LIBTORCH_LIB` for the gptpipe binary.
//!
//! Where the CUDA headers come from (see README.md): `GPTPIPE_CUDA_INCLUDE`, else
//! `CUDA_HOME` / `CUDA_PATH`, else the nvidia wheels beside a pip-installed libtorch.

use std::path::{Path, PathBuf};

/// Folders (separated like `PATH`) holding the CUDA headers; overrides the others.
const ENV_INCLUDE: &str = "GPTPIPE_CUDA_INCLUDE";
/// A CUDA toolkit, whose `include/` holds the headers; `CUDA_HOME` first.
const ENV_TOOLKIT: [&str; 2] = ["CUDA_HOME", "CUDA_PATH"];

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    println!("cargo::rustc-check-cfg=cfg(gptpipe_cuda_kernels)");
    println!("cargo::rustc-check-cfg=cfg(gptpipe_shim)");
    println!("cargo::rustc-check-cfg=cfg(gptpipe_cuda_props)");
    println!("cargo::rustc-check-cfg=cfg(gptpipe_dist)");
    println!("cargo::rustc-check-cfg=cfg(gptpipe_nccl)");
    let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        return;
    };
    println!("cargo:libtorch_lib={lib}");
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    if Path::new(&lib).join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-L{lib}");
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
        if cuda_kernels(Path::new(&lib)) {
            return;
        }
    }
    cpu_shim(Path::new(&lib));
}

/// A C++ build of `files` (in `csrc/`) against libtorch's headers.
fn shim_build(torch: &Path, files: &[&str]) -> cc::Build {
    let mut build = cc::Build::new();
    build
        .cpp(true)
        .std("c++17")
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        .include(torch.join("include"))
        .include(torch.join("include/torch/csrc/api/include"));
    for f in files {
        build.file(format!("csrc/{f}"));
    }
    build.warnings(false);
    build
}

/// The shim's CPU part alone (the fused Adam update, which libtorch runs on the CPU too),
/// for a libtorch without CUDA or without its headers: sets `cfg(gptpipe_shim)`.
fn cpu_shim(lib: &Path) {
    println!("cargo:rerun-if-changed=csrc");
    match shim_build(&lib.join(".."), &CPU_FILES).try_compile("gptpipe_shim") {
        Ok(()) => {
            println!("cargo:rustc-cfg=gptpipe_shim");
            dist_shim(&lib.join(".."), &[]);
        }
        Err(e) => println!(
            "cargo:warning=libtorch shim not built ({e}): the CPU trains with the unfused Adam update"
        ),
    }
}

/// The shim's files that need no CUDA.
const CPU_FILES: [&str; 2] = ["shim.cpp", "fused_adam.cpp"];

/// Where the CUDA headers may be, in order of preference, and what each is (for warnings):
/// `GPTPIPE_CUDA_INCLUDE`, then the toolkit of `CUDA_HOME` / `CUDA_PATH`, then the nvidia
/// wheels beside libtorch (today's default). A place that lacks the headers is passed over.
fn cuda_include_candidates(torch: &Path) -> Vec<(Vec<PathBuf>, String)> {
    println!("cargo:rerun-if-env-changed={ENV_INCLUDE}");
    let mut out = Vec::new();
    if let Some(dirs) = std::env::var_os(ENV_INCLUDE).filter(|v| !v.is_empty()) {
        out.push((
            std::env::split_paths(&dirs).collect(),
            ENV_INCLUDE.to_string(),
        ));
    }
    for var in ENV_TOOLKIT {
        println!("cargo:rerun-if-env-changed={var}");
        if let Some(home) = std::env::var_os(var).filter(|v| !v.is_empty()) {
            out.push((
                vec![PathBuf::from(home).join("include")],
                format!("{var}/include"),
            ));
        }
    }
    // <site-packages>/torch/lib: CUDA headers come from the nvidia-* wheels beside torch;
    // their crt/ folder is only in triton's copy.
    let site = torch.join("..");
    out.push((
        vec![
            site.join("nvidia/cu13/include"),
            site.join("triton/backends/nvidia/include"),
        ],
        "beside libtorch".into(),
    ));
    out
}

/// Compiles `csrc/` (CUDA graph capture and FlashAttention decoding for generation, the
/// fused Adam update for finetuning: libtorch functions tch does not bind) against a
/// pip-installed libtorch, and sets `cfg(gptpipe_cuda_kernels)` and `cfg(gptpipe_shim)`.
/// False when something is missing (headers, a compiler): generation then runs without
/// CUDA graphs, and the caller builds the CPU part alone.
fn cuda_kernels(lib: &Path) -> bool {
    println!("cargo:rerun-if-changed=csrc");
    let torch = lib.join("..");
    let candidates = cuda_include_candidates(&torch);
    let complete = |dirs: &[PathBuf]| {
        ["cuda_runtime_api.h", "crt/host_config.h"]
            .iter()
            .all(|file| dirs.iter().any(|d| d.join(file).exists()))
    };
    let Some((include, from)) = candidates.iter().find(|(dirs, _)| complete(dirs)) else {
        let tried: Vec<&str> = candidates.iter().map(|(_, from)| from.as_str()).collect();
        println!(
            "cargo:warning=CUDA headers not found (tried {}): generation runs without CUDA graphs",
            tried.join(", ")
        );
        return false;
    };
    if from != &candidates[0].1 {
        println!(
            "cargo:warning=CUDA headers taken from {from} ({} lacks them)",
            candidates[0].1
        );
    }
    device_props(&torch, include);
    let files = [&CPU_FILES[..], &["cuda_graph.cpp", "flash_decode.cpp"]].concat();
    let mut build = shim_build(&torch, &files);
    for dir in include {
        build.include(dir);
    }
    match build.try_compile("gptpipe_cuda_kernels") {
        Ok(()) => {
            println!("cargo:rustc-link-lib=dylib=c10_cuda");
            println!("cargo:rustc-cfg=gptpipe_cuda_kernels");
            println!("cargo:rustc-cfg=gptpipe_shim");
            dist_shim(&torch, include);
            true
        }
        Err(e) => {
            println!(
                "cargo:warning=CUDA graph shim not built ({e}): generation runs without CUDA graphs"
            );
            false
        }
    }
}

/// Compiles `csrc/device_props.cpp` (a CUDA device's compute capability and memory) on its
/// own and sets `cfg(gptpipe_cuda_props)`: a failure here leaves the other kernels built,
/// and `precision = "auto"` asks nvidia-smi instead.
fn device_props(torch: &Path, include: &[PathBuf]) {
    let mut build = shim_build(torch, &["device_props.cpp"]);
    for dir in include {
        build.include(dir);
    }
    match build.try_compile("gptpipe_cuda_props") {
        Ok(()) => println!("cargo:rustc-cfg=gptpipe_cuda_props"),
        Err(e) => println!(
            "cargo:warning=CUDA device properties shim not built ({e}): precision = \"auto\" \
             asks nvidia-smi for the compute capability"
        ),
    }
}

/// Where gloo's headers are (`ProcessGroupGloo.hpp` includes them; PyPI's libtorch lacks
/// them): `GPTPIPE_GLOO_INCLUDE`, else the system's (Debian's libgloo-dev).
fn gloo_include() -> Option<PathBuf> {
    println!("cargo:rerun-if-env-changed=GPTPIPE_GLOO_INCLUDE");
    let dirs = match std::env::var_os("GPTPIPE_GLOO_INCLUDE").filter(|v| !v.is_empty()) {
        Some(dir) => vec![PathBuf::from(dir)],
        None => vec![
            PathBuf::from("/usr/include"),
            PathBuf::from("/usr/local/include"),
        ],
    };
    dirs.into_iter().find(|d| d.join("gloo/config.h").exists())
}

/// Compiles `csrc/collectives.cpp` (c10d's Gloo process group, and NCCL's when its header
/// is among `cuda_include`) on its own and sets `cfg(gptpipe_dist)`: without it the other
/// kernels stay built and data-parallel finetuning says what is missing.
fn dist_shim(torch: &Path, cuda_include: &[PathBuf]) {
    let Some(gloo) = gloo_include() else {
        println!(
            "cargo:warning=gloo's headers not found (Debian: libgloo-dev; or set \
             GPTPIPE_GLOO_INCLUDE): finetuning runs on one device only"
        );
        return;
    };
    let nccl = nccl_include(torch, cuda_include);
    // With NCCL when its header is there; a failure there leaves Gloo, tried alone.
    for nccl in [nccl.as_ref(), None]
        .into_iter()
        .take(1 + usize::from(nccl.is_some()))
    {
        let mut build = shim_build(torch, &["collectives.cpp"]);
        build.define("USE_C10D_GLOO", None);
        // The system's include folder must not come before libstdc++'s.
        if gloo != Path::new("/usr/include") {
            build.include(&gloo);
        }
        if let Some(dir) = nccl {
            build
                .include(dir)
                .define("USE_C10D_NCCL", None)
                .define("GPTPIPE_NCCL", None);
        }
        for dir in cuda_include {
            build.include(dir);
        }
        match build.try_compile("gptpipe_dist") {
            Ok(()) => {
                println!("cargo:rustc-cfg=gptpipe_dist");
                if nccl.is_some() {
                    println!("cargo:rustc-cfg=gptpipe_nccl");
                }
                return;
            }
            Err(e) => println!(
                "cargo:warning=collectives shim not built{} ({e})",
                if nccl.is_some() { " with NCCL" } else { "" }
            ),
        }
    }
    println!("cargo:warning=finetuning runs on one device only");
}

/// NCCL's header, for a CUDA build: in the toolkit's include folders or the nvidia-nccl
/// wheel beside libtorch. c10d's NCCL header also needs CUDA's CCCL headers (`nv/target`),
/// which a toolkit has and PyPI's wheels lack: without them, no NCCL (and no attempt).
fn nccl_include(torch: &Path, cuda_include: &[PathBuf]) -> Option<PathBuf> {
    if !cuda_include.iter().any(|d| d.join("nv/target").exists()) {
        return None;
    }
    let site = torch.join("..");
    let wheels = ["nvidia/nccl/include", "nvidia/cu13/include"].map(|d| site.join(d));
    cuda_include
        .iter()
        .cloned()
        .chain(wheels)
        .find(|d| d.join("nccl.h").exists())
}
