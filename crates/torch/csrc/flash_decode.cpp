// One-token decoding attention through FlashAttention-2's variable-length kernel, which
// libtorch has but tch does not bind: each row's query attends to the first `used_k[row]`
// keys of its slot in a fixed-size cache, so the shapes never change and a CUDA graph can
// replay the step at any position. Exceptions become a non-zero return and a message.
#include <ATen/core/Tensor.h>
#include <ATen/ops/_flash_attention_forward.h>
#include <cstring>
#include <string>

namespace {
thread_local std::string last_error;
}

extern "C" {
// q [B, H, D]; k, v [B * max_k, H, D]; cu_q [B + 1] = 0..=B and cu_k [B + 1] = 0, max_k, ...
// (Int32); used_k [B] (Int32). Writes a new tensor [B, H, D] to *out. `scale` multiplies
// the scores.
int gptpipe_flash_decode(const at::Tensor* q, const at::Tensor* k, const at::Tensor* v,
                         const at::Tensor* cu_q, const at::Tensor* cu_k,
                         const at::Tensor* used_k, int64_t max_k, double scale,
                         at::Tensor** out) {
  try {
    auto result = at::_flash_attention_forward(*q, *k, *v, *cu_q, *cu_k, 1, max_k, 0.0,
                                               false, false, scale, std::nullopt,
                                               std::nullopt, *used_k, std::nullopt);
    *out = new at::Tensor(std::get<0>(result));
    return 0;
  } catch (const std::exception& e) {
    last_error = e.what();
    return 1;
  } catch (...) {
    last_error = "unknown C++ exception";
    return 1;
  }
}

// The message of the last failure on this thread (valid until the next call).
const char* gptpipe_flash_last_error() { return last_error.c_str(); }
}
