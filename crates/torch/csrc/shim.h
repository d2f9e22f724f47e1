// What every exported function of the shim shares: C++ exceptions never cross into Rust;
// they become a non-zero return code and a message for gptpipe_shim_last_error().
#pragma once
#include <exception>
#include <string>

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
