#include "gptpipe_torch.h"

namespace gptpipe {
std::string& last_error() {
  thread_local std::string message;
  return message;
}
}  // namespace gptpipe

extern "C" {
// The message of the last failure on this thread (valid until the next call).
const char* gptpipe_shim_last_error() { return gptpipe::last_error().c_str(); }
}
