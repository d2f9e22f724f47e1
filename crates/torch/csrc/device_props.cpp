// The compute capability and memory of a CUDA device, which tch does not expose: what
// `precision = "auto"` (bf16 from compute capability 8.0, else fp16) and the memory check
// before training read. Compiled on its own (build.rs, cfg gptpipe_cuda_props), so that a
// failure here never costs the other kernels of the shim; it needs only the CUDA runtime's
// header for cudaDeviceProp, and at::cuda::getDeviceProperties from libtorch_cuda, declared
// here rather than through ATen/cuda/CUDAContext.h, which pulls in cuBLAS, cuSPARSE and
// cuSOLVER headers.
#include <c10/core/Device.h>
#include <c10/macros/Export.h>
#include <cuda_runtime_api.h>

#include <cstdint>

namespace at::cuda {
TORCH_CUDA_CPP_API cudaDeviceProp* getDeviceProperties(c10::DeviceIndex device);
}  // namespace at::cuda

extern "C" {
// 0 and the figures of CUDA device `device`; 1 when they cannot be read.
int gptpipe_cuda_device_props(int device, int* major, int* minor, uint64_t* total_memory) {
  try {
    const cudaDeviceProp* p = at::cuda::getDeviceProperties(static_cast<c10::DeviceIndex>(device));
    if (p == nullptr) return 1;
    *major = p->major;
    *minor = p->minor;
    *total_memory = static_cast<uint64_t>(p->totalGlobalMem);
    return 0;
  } catch (...) {
    return 1;
  }
}
}
