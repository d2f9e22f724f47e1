// Data-parallel finetuning's collectives through libtorch's own c10d: a TCP store for the
// rendezvous (rank 0 serves it) and a Gloo process group (CPU tensors, and CUDA ones staged
// through the host) or, when built with NCCL's header (GPTPIPE_NCCL), an NCCL one for CUDA.
// PyPI's libtorch exports both process groups but ships only c10d's headers: gloo's own
// come from Debian's libgloo-dev (build.rs finds them; without them this file is not built).
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#ifdef GPTPIPE_NCCL
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include <chrono>
#include <cstdlib>

#include "gptpipe_torch.h"

namespace {
using Store = c10::intrusive_ptr<c10d::Store>;
using Group = c10::intrusive_ptr<c10d::Backend>;

// The Gloo transport's address: loopback when every rank is on this machine, the
// interface GLOO_SOCKET_IFNAME names (as PyTorch reads it), else this host's name.
std::shared_ptr<gloo::transport::Device> gloo_device(const std::string& master) {
  if (const char* ifname = std::getenv("GLOO_SOCKET_IFNAME")) {
    return c10d::ProcessGroupGloo::createDeviceForInterface(ifname);
  }
  if (master == "127.0.0.1" || master == "localhost") {
    return c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1");
  }
  return c10d::ProcessGroupGloo::createDefaultDevice();
}
}  // namespace

extern "C" {
void* gptpipe_dist_store_new(const char* host, int port, int is_server, int listen_fd,
                             int world, int64_t timeout_ms, int* bound_port) {
  Store* out = nullptr;
  int rc = gptpipe::guarded([&] {
    c10d::TCPStoreOptions o;
    o.port = static_cast<uint16_t>(port);
    o.isServer = is_server != 0;
    if (listen_fd >= 0) {
      // A socket the caller bound (to loopback): the store serves no other interface.
      o.masterListenFd = listen_fd;
    }
    o.numWorkers = world;
    // Rank 0 starts the other ranks after its store listens: it must not wait for them.
    o.waitWorkers = false;
    o.timeout = std::chrono::milliseconds(timeout_ms);
    auto store = c10::make_intrusive<c10d::TCPStore>(host, o);
    *bound_port = store->getPort();
    out = new Store(store);
  });
  return rc == 0 ? out : nullptr;
}

void gptpipe_dist_store_free(void* store) { delete static_cast<Store*>(store); }

void* gptpipe_dist_group_new(void* store, const char* master, int rank, int world,
                             int64_t timeout_ms, int nccl) {
  Group* out = nullptr;
  int rc = gptpipe::guarded([&] {
    auto s = *static_cast<Store*>(store);
    auto timeout = std::chrono::milliseconds(timeout_ms);
    if (nccl) {
#ifdef GPTPIPE_NCCL
      auto o = c10d::ProcessGroupNCCL::Options::create();
      o->timeout = timeout;
      out = new Group(c10::make_intrusive<c10d::ProcessGroupNCCL>(s, rank, world, o));
      return;
#else
      TORCH_CHECK(false, "this build has no NCCL process group (NCCL's header was not found)");
#endif
    }
    auto o = c10d::ProcessGroupGloo::Options::create();
    o->timeout = timeout;
    o->devices.push_back(gloo_device(master));
    out = new Group(c10::make_intrusive<c10d::ProcessGroupGloo>(s, rank, world, o));
  });
  return rc == 0 ? out : nullptr;
}

void gptpipe_dist_group_free(void* group) { delete static_cast<Group*>(group); }

int gptpipe_dist_all_reduce_sum(void* group, const at::Tensor* t) {
  return gptpipe::guarded([&] {
    std::vector<at::Tensor> ts{*t};
    (*static_cast<Group*>(group))->allreduce(ts)->wait();
  });
}

int gptpipe_dist_broadcast(void* group, const at::Tensor* t, int root) {
  return gptpipe::guarded([&] {
    std::vector<at::Tensor> ts{*t};
    c10d::BroadcastOptions o;
    o.rootRank = root;
    (*static_cast<Group*>(group))->broadcast(ts, o)->wait();
  });
}
}
