// CUDA graph capture and replay for the generation backend: tch has no binding for
// libtorch's at::cuda::CUDAGraph. Capture runs the Rust-side tch ops on a side stream made
// current by a guard, exactly like torch.cuda.graph() in Python. Every entry point catches
// C++ exceptions and returns a non-zero code, so Rust can fall back to eager decoding.
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAStream.h>
#include <optional>

#include "gptpipe_torch.h"

namespace {
struct Graph {
  at::cuda::CUDAGraph graph;
  // The stream that was current before stream_begin. (CUDAStreamGuard would be neater,
  // but its inline implementation calls the CUDA runtime directly, which would make this
  // object need libcudart at link time; these functions live in libc10_cuda.)
  std::optional<c10::cuda::CUDAStream> previous;
};
}  // namespace

extern "C" {
void* gptpipe_graph_new() {
  try {
    return new Graph();
  } catch (...) {
    return nullptr;
  }
}

// Makes a fresh side stream of `device` current (ops run there until stream_end).
int gptpipe_graph_stream_begin(void* g, int device) {
  return gptpipe::guarded([&] {
    auto* graph = static_cast<Graph*>(g);
    graph->previous.emplace(c10::cuda::getCurrentCUDAStream(device));
    c10::cuda::setCurrentCUDAStream(c10::cuda::getStreamFromPool(false, device));
  });
}

int gptpipe_graph_capture_begin(void* g) {
  return gptpipe::guarded([&] {
    static_cast<Graph*>(g)->graph.capture_begin();
  });
}

int gptpipe_graph_capture_end(void* g) {
  return gptpipe::guarded([&] {
    static_cast<Graph*>(g)->graph.capture_end();
  });
}

// Waits for the side stream, then restores the previous current stream.
int gptpipe_graph_stream_end(void* g) {
  return gptpipe::guarded([&] {
    auto* graph = static_cast<Graph*>(g);
    if (graph->previous) {
      c10::cuda::device_synchronize();
      c10::cuda::setCurrentCUDAStream(*graph->previous);
      graph->previous.reset();
    }
  });
}

int gptpipe_graph_replay(void* g) {
  return gptpipe::guarded([&] {
    static_cast<Graph*>(g)->graph.replay();
  });
}

void gptpipe_graph_free(void* g) { delete static_cast<Graph*>(g); }
}
