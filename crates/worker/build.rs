//! Gives `gptpipe-worker` (the binary that loads libtorch) and its tests an rpath to
//! libtorch and links `torch_cuda` with `--no-as-needed`, so it runs without
//! `LD_LIBRARY_PATH` and finds CUDA. The folder comes from gptpipe-torch's build script
//! (its `links` metadata).

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_GPTPIPE_TORCH_LIBTORCH_LIB");
    let Ok(lib) = std::env::var("DEP_GPTPIPE_TORCH_LIBTORCH_LIB") else {
        return;
    };
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    if std::path::Path::new(&lib).join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-L{lib}");
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
    }
}
