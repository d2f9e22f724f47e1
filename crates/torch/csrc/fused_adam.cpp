// The Adam/AdamW update in one pass over flat buffers through libtorch's fused kernels
// (`_fused_adam_`, `_fused_adamw_`: torch.optim's `fused=True`), which tch does not bind.
// Each list holds one tensor (the flat parameter buffer, its gradient, the two moments,
// and the step count: an fp32 scalar on the same device, already incremented).
#include <ATen/core/Tensor.h>
#include <ATen/ops/_fused_adam.h>
#include <ATen/ops/_fused_adamw.h>

#include "gptpipe_torch.h"

extern "C" {
// `decoupled` picks AdamW (weight decay applied to the parameters) over Adam (added to the
// gradient). Updates `param`, `exp_avg` and `exp_avg_sq` in place.
int gptpipe_fused_adam(const at::Tensor* param, const at::Tensor* grad,
                       const at::Tensor* exp_avg, const at::Tensor* exp_avg_sq,
                       const at::Tensor* step, double lr, double beta1, double beta2,
                       double weight_decay, double eps, int decoupled) {
  return gptpipe::guarded([&] {
    // The CPU kernel walks raw pointers over param.numel() elements of every buffer and
    // checks none of this: refuse here, before anything is written.
    for (const at::Tensor* t : {grad, exp_avg, exp_avg_sq}) {
      TORCH_CHECK(t->numel() == param->numel(), "fused Adam: buffers of different sizes");
      TORCH_CHECK(t->scalar_type() == param->scalar_type(), "fused Adam: dtypes differ");
      TORCH_CHECK(t->device() == param->device(), "fused Adam: devices differ");
      TORCH_CHECK(t->layout() == at::kStrided && t->is_contiguous(),
                  "fused Adam: a buffer is sparse or not contiguous");
    }
    TORCH_CHECK(param->layout() == at::kStrided && param->is_contiguous(),
                "fused Adam: the parameters are sparse or not contiguous");
    TORCH_CHECK(step->numel() == 1 && step->scalar_type() == at::kFloat &&
                    step->device() == param->device(),
                "fused Adam: the step is not one fp32 value on the parameters' device");
    at::TensorList params(*param), grads(*grad), exp_avgs(*exp_avg),
        exp_avg_sqs(*exp_avg_sq), steps(*step);
    at::TensorList max_exp_avg_sqs{};
    if (decoupled) {
      at::_fused_adamw_(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, lr,
                        beta1, beta2, weight_decay, eps, false, false);
    } else {
      at::_fused_adam_(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps, lr,
                       beta1, beta2, weight_decay, eps, false, false);
    }
  });
}
}
