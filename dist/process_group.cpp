#include "dist/process_group.h"

#include <cstdlib>
#include <stdexcept>

#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

namespace mole {

struct ProcessGroup::Impl {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::ProcessGroupGloo> gloo;
};

ProcessGroup::ProcessGroup(const Launch& launch, std::chrono::milliseconds timeout)
    : impl_(std::make_unique<Impl>()), rank_(launch.rank), size_(launch.world_size) {
  if (size_ == 1) return;
  c10d::TCPStoreOptions options;
  options.port = uint16_t(launch.master_port);
  options.isServer = launch.rank == 0 && !launch.agent_store;
  options.numWorkers = size_t(launch.world_size);
  options.waitWorkers = true;  // each client counts itself in; the host waits for all (as torch's env:// does)
  options.timeout = timeout;
  c10::intrusive_ptr<c10d::Store> tcp;
  try {
    tcp = c10::make_intrusive<c10d::TCPStore>(launch.master_addr, options);
  } catch (const std::exception& e) {
    throw std::runtime_error("cannot reach the store at " + launch.master_addr + ":" +
                             std::to_string(launch.master_port) + launch.where() + ": " + e.what());
  }
  // As torch's env:// rendezvous: keys under the attempt, so a restarted group never reads an earlier one's.
  impl_->store = c10::make_intrusive<c10d::PrefixStore>(
      "/mole/attempt_" + std::to_string(launch.restart_count), tcp);
  auto gloo_options = c10d::ProcessGroupGloo::Options::create(timeout);
  const char* ifname = std::getenv("GLOO_SOCKET_IFNAME");
  if (ifname && *ifname)
    gloo_options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(ifname));
  else
    gloo_options->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
  impl_->gloo = c10::make_intrusive<c10d::ProcessGroupGloo>(impl_->store, int(rank_), int(size_), gloo_options);
}

ProcessGroup::~ProcessGroup() = default;

void ProcessGroup::all_reduce_sum(torch::Tensor& t) {
  if (size_ == 1) return;
  std::vector<at::Tensor> tensors{t};
  impl_->gloo->allreduce(tensors)->wait();
}

void ProcessGroup::broadcast(torch::Tensor& t, int64_t root) {
  if (size_ == 1) return;
  std::vector<at::Tensor> tensors{t};
  c10d::BroadcastOptions options;
  options.rootRank = root;
  impl_->gloo->broadcast(tensors, options)->wait();
}

void ProcessGroup::barrier() {
  if (size_ == 1) return;
  impl_->gloo->barrier()->wait();
}

std::vector<std::string> ProcessGroup::gather_to_main(const std::string& mine) {
  if (size_ == 1) return {mine};
  const std::string prefix = "gather/" + std::to_string(gathers_++) + "/";
  if (rank_ != 0) {
    impl_->store->set(prefix + std::to_string(rank_), std::vector<uint8_t>(mine.begin(), mine.end()));
    return {};
  }
  std::vector<std::string> all{mine};
  for (int64_t r = 1; r < size_; ++r) {
    const std::string key = prefix + std::to_string(r);
    const std::vector<uint8_t> bytes = impl_->store->get(key);  // waits for the key (up to the timeout)
    all.emplace_back(bytes.begin(), bytes.end());
    impl_->store->deleteKey(key);
  }
  return all;
}

}  // namespace mole
