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
        Ok(()) => println!("cargo:rustc-cfg=gptpipe_shim"),
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
