// One-token decoding attention through FlashAttention-2's variable-length kernel, which
// libtorch has but tch does not bind: each row's query attends to the first `used_k[row]`
// keys of its slot in a fixed-size cache, so the shapes never change and a CUDA graph can
// replay the step at any position.
#include <ATen/core/Tensor.h>
#include <ATen/ops/_flash_attention_forward.h>

#include "gptpipe_torch.h"

extern "C" {
// q [B, H, D]; k, v [B * max_k, H, D]; cu_q [B + 1] = 0..=B and cu_k [B + 1] = 0, max_k, ...
// (Int32); used_k [B] (Int32). Writes a new tensor [B, H, D] to *out. `scale` multiplies
// the scores.
int gptpipe_flash_decode(const at::Tensor* q, const at::Tensor* k, const at::Tensor* v,
                         const at::Tensor* cu_q, const at::Tensor* cu_k,
                         const at::Tensor* used_k, int64_t max_k, double scale,
                         at::Tensor** out) {
  return gptpipe::guarded([&] {
    auto result = at::_flash_attention_forward(*q, *k, *v, *cu_q, *cu_k, 1, max_k, 0.0,
                                               false, false, scale, std::nullopt,
                                               std::nullopt, *used_k, std::nullopt);
    *out = new at::Tensor(std::get<0>(result));
  });
}
}
