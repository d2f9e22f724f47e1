// The C interface of gptpipe-torch's C++ shim: libtorch functions tch does not bind. Every
// function here is declared once more, in Rust, in `src/ffi.rs`; the two must match.
// Tensors are passed as tch's handles, which are `at::Tensor*`.
//
// C++ exceptions never cross into Rust: every function returning `int` returns 0 on
// success and 1 when C++ threw, with the message kept for gptpipe_shim_last_error().
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <exception>
#include <string>

extern "C" {
// shim.cpp: the message of the last failure on this thread (valid until the next call).
const char* gptpipe_shim_last_error();

// cuda_graph.cpp: CUDA graph capture and replay. A graph is the pointer gptpipe_graph_new
// returns (null on failure), freed once by gptpipe_graph_free.
void* gptpipe_graph_new();
// Makes a fresh side stream of CUDA device `device` current (ops run there until
// gptpipe_graph_stream_end).
int gptpipe_graph_stream_begin(void* g, int device);
int gptpipe_graph_capture_begin(void* g);
int gptpipe_graph_capture_end(void* g);
// Waits for the side stream, then restores the previous current stream.
int gptpipe_graph_stream_end(void* g);
int gptpipe_graph_replay(void* g);
void gptpipe_graph_free(void* g);

// flash_decode.cpp: one-token attention through FlashAttention-2's variable-length kernel.
// q [B, H, D]; k, v [B * max_k, H, D]; cu_q [B + 1] = 0..=B and cu_k [B + 1] = 0, max_k, ...
// (Int32); used_k [B] (Int32). Writes a new tensor [B, H, D] to *out. `scale` multiplies
// the scores.
int gptpipe_flash_decode(const at::Tensor* q, const at::Tensor* k, const at::Tensor* v,
                         const at::Tensor* cu_q, const at::Tensor* cu_k,
                         const at::Tensor* used_k, int64_t max_k, double scale,
                         at::Tensor** out);

// fused_adam.cpp: one Adam/AdamW update through libtorch's fused kernels. `decoupled`
// picks AdamW (weight decay applied to the parameters) over Adam (added to the gradient).
// Updates `param`, `exp_avg` and `exp_avg_sq` in place.
int gptpipe_fused_adam(const at::Tensor* param, const at::Tensor* grad,
                       const at::Tensor* exp_avg, const at::Tensor* exp_avg_sq,
                       const at::Tensor* step, double lr, double beta1, double beta2,
                       double weight_decay, double eps, int decoupled);

// collectives.cpp (built on its own when gloo's headers are found): data-parallel
// training's c10d. A store or group is the pointer its _new returns (null on failure, the
// message in gptpipe_shim_last_error), freed once by its _free. Rank 0 serves the store
// (`is_server`), on `listen_fd` when it is a bound socket (else -1: on `port`, all
// interfaces); the port it serves is written to *bound_port.
void* gptpipe_dist_store_new(const char* host, int port, int is_server, int listen_fd,
                             int world, int64_t timeout_ms, int* bound_port);
void gptpipe_dist_store_free(void* store);
// `master`: the store's host, which picks Gloo's transport address. `nccl`: NCCL (CUDA
// tensors) instead of Gloo.
void* gptpipe_dist_group_new(void* store, const char* master, int rank, int world,
                             int64_t timeout_ms, int nccl);
void gptpipe_dist_group_free(void* group);
// In place: the sum over the ranks; rank `root`'s tensor.
int gptpipe_dist_all_reduce_sum(void* group, const at::Tensor* t);
int gptpipe_dist_broadcast(void* group, const at::Tensor* t, int root);
}

namespace gptpipe {
std::string& last_error();

// Runs `body`; 0 on success, 1 (and the message kept) if it threw.
template <class F>
int guarded(F&& body) {
  try {
    body();
    return 0;
  } catch (const std::exception& e) {
    last_error() = e.what();
  } catch (...) {
    last_error() = "unknown C++ exception";
  }
  return 1;
}
}  // namespace gptpipe
