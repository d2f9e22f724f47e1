//! How the process's memory allocator treats libtorch's large CPU buffers.
//!
//! libtorch allocates CPU tensors with plain `malloc`, and glibc serves every block above
//! 32 MB with its own `mmap`, unmapped again on `free`: each such tensor costs a page fault
//! and a zeroed page per 4 KB the first time it is written. A training step of even a tiny
//! GPT-2 allocates several (the 50257-wide embedding gradient, the logits' gradient, the
//! flat gradient), so that was a steady share of a CPU step (issue 16). [`keep_freed_memory`]
//! makes glibc serve them from its heap and keep what is freed for the next step:
//! PyTorch's own advice for the CPU is a caching allocator (jemalloc, tcmalloc) for the
//! same reason. The process then holds its peak memory until it ends, which is what a
//! training or generation process needs again at its next step anyway.

/// Tells glibc to serve large blocks from the heap (no `mmap`) and never to give freed
/// heap memory back to the system. Call it first thing in a process that runs model code;
/// without glibc it does nothing.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes glibc's allocation parameters; it is called before
    // this process starts threads of its own.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}
