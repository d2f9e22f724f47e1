//! Makes binaries and test binaries of this crate run without `LD_LIBRARY_PATH`, and with
//! CUDA: an rpath to libtorch's lib folder, and `torch_cuda` linked even though no symbol of
//! it is referenced (under `--as-needed` the linker drops it and CUDA is never found).
//! The folder is re-exported as `DEP_GPTPIPE_TORCH_LIBTORCH_LIB` for the gptpipe binary.

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        return;
    };
    println!("cargo:libtorch_lib={lib}");
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    if std::path::Path::new(&lib).join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-L{lib}");
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
    }
}
