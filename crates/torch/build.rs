//! Makes binaries and test binaries of this crate run without `LD_LIBRARY_PATH`, and with
//! CUDA: an rpath to libtorch's lib folder, and `torch_cuda` linked even though no symbol of
//! it is referenced (under `--as-needed` the linker drops it and CUDA is never found).
//! The folder is re-exported as `DEP_GPTPIPE_TORCH_LIBTORCH_LIB` for the gptpipe binary.

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    println!("cargo::rustc-check-cfg=cfg(gptpipe_cuda_graph)");
    let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        return;
    };
    println!("cargo:libtorch_lib={lib}");
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    if std::path::Path::new(&lib).join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-L{lib}");
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
        cuda_graph_shim(std::path::Path::new(&lib));
    }
}

/// Compiles `csrc/` (CUDA graph capture and FlashAttention decoding for generation, which
/// tch does not bind) against a pip-installed libtorch, and sets `cfg(gptpipe_cuda_graph)`.
/// Anything missing (headers, a compiler) only leaves generation on its eager path.
fn cuda_graph_shim(lib: &std::path::Path) {
    println!("cargo:rerun-if-changed=csrc");
    // <site-packages>/torch/lib: CUDA headers come from the nvidia-* wheels beside torch;
    // their crt/ folder is only in triton's copy.
    let torch = lib.join("..");
    let site = torch.join("..");
    let cuda = site.join("nvidia/cu13/include");
    let crt = site.join("triton/backends/nvidia/include");
    if !cuda.join("cuda_runtime_api.h").exists() || !crt.join("crt/host_config.h").exists() {
        println!("cargo:warning=CUDA headers not found beside libtorch: generation runs without CUDA graphs");
        return;
    }
    let result = cc::Build::new()
        .cpp(true)
        .std("c++17")
        .file("csrc/shim.cpp")
        .file("csrc/cuda_graph.cpp")
        .file("csrc/flash_decode.cpp")
        .file("csrc/fused_adam.cpp")
        .define("_GLIBCXX_USE_CXX11_ABI", "1")
        .include(torch.join("include"))
        .include(torch.join("include/torch/csrc/api/include"))
        .include(cuda)
        .include(crt)
        .warnings(false)
        .try_compile("gptpipe_cuda_graph");
    match result {
        Ok(()) => {
            println!("cargo:rustc-link-lib=dylib=c10_cuda");
            println!("cargo:rustc-cfg=gptpipe_cuda_graph");
        }
        Err(e) => println!(
            "cargo:warning=CUDA graph shim not built ({e}): generation runs without CUDA graphs"
        ),
    }
}
