//! CUDA graphs for decoding steps, through the C++ shim in `csrc/cuda_graph.cpp` (built
//! when libtorch has CUDA; see build.rs). A graph replays every kernel of a step with one
//! launch; its inputs and outputs are buffers at fixed addresses.

use std::collections::HashMap;
use tch::Device;

/// What a graph was captured for: the row count, and the sampling settings when the step
/// samples on the device (`None`: the host feeds the tokens).
pub type Key = (i64, Option<[u64; 3]>);

#[derive(Default)]
pub struct Graphs {
    disabled: bool,
    graphs: HashMap<Key, Graph>,
}

impl Graphs {
    pub fn usable(&self, device: Device) -> bool {
        cfg!(gptpipe_cuda_kernels) && !self.disabled && device.is_cuda()
    }

    /// After a failed capture: eager steps from now on.
    pub fn disable(&mut self) {
        self.disabled = true;
        self.clear();
    }

    /// Forgets graphs captured on buffers that are being replaced.
    pub fn clear(&mut self) {
        self.graphs.clear();
    }

    pub fn has(&self, key: &Key) -> bool {
        self.graphs.contains_key(key)
    }

    pub fn insert(&mut self, key: Key, g: Graph) {
        self.graphs.insert(key, g);
    }

    /// Replays the graph of `key`; false if there is none or the replay failed.
    pub fn replay(&self, key: &Key) -> bool {
        self.graphs.get(key).is_some_and(Graph::replay)
    }
}

/// Runs `step` once on a side stream to warm up (cuBLAS workspaces, the allocator), then
/// captures it. The warm-up really runs: callers restore what it changed. `None` if
/// anything fails.
pub fn capture(device: Device, step: impl Fn()) -> Option<Graph> {
    let Device::Cuda(index) = device else {
        return None;
    };
    Graph::capture(index, step)
}

#[cfg(gptpipe_cuda_kernels)]
use crate::ffi;

// Without the shim no Graph is ever built.
#[cfg_attr(not(gptpipe_cuda_kernels), allow(dead_code))]
pub struct Graph {
    #[cfg(gptpipe_cuda_kernels)]
    ptr: *mut std::ffi::c_void,
}

#[cfg(gptpipe_cuda_kernels)]
impl Graph {
    fn capture(device: usize, step: impl Fn()) -> Option<Graph> {
        // SAFETY: the shim's functions take the pointer gptpipe_graph_new returned and
        // catch every C++ exception; the graph is freed once, by Drop.
        unsafe {
            let ptr = ffi::gptpipe_graph_new();
            if ptr.is_null() {
                return None;
            }
            let graph = Graph { ptr };
            if ffi::gptpipe_graph_stream_begin(ptr, device as _) != 0 {
                return None;
            }
            step();
            let captured = ffi::gptpipe_graph_capture_begin(ptr) == 0 && {
                step();
                ffi::gptpipe_graph_capture_end(ptr) == 0
            };
            let restored = ffi::gptpipe_graph_stream_end(ptr) == 0;
            (captured && restored).then_some(graph)
        }
    }

    fn replay(&self) -> bool {
        // SAFETY: `ptr` is a live graph (see capture).
        unsafe { ffi::gptpipe_graph_replay(self.ptr) == 0 }
    }
}

#[cfg(gptpipe_cuda_kernels)]
impl Drop for Graph {
    fn drop(&mut self) {
        // SAFETY: freed exactly once.
        unsafe { ffi::gptpipe_graph_free(self.ptr) }
    }
}

#[cfg(not(gptpipe_cuda_kernels))]
impl Graph {
    fn capture(_device: usize, _step: impl Fn()) -> Option<Graph> {
        None
    }

    fn replay(&self) -> bool {
        false
    }
}
