// A c10d process group for data-parallel training: torch's own TCPStore for the rendezvous and its
// ProcessGroupGloo for the collectives, the engine torch.distributed runs on (the torch wheel exports both from
// libtorch_cpu; the gloo headers they include come from Debian's libgloo-dev, see docs/ARCHITECTURE.md
// "Many processes"). This header hides c10d: only dist/process_group.cpp includes it.
//
// Every collective is called by every rank, in the same order, with tensors of the same shape and dtype; a rank
// that leaves (an error, a kill) makes the others' next collective throw instead of waiting forever.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <torch/types.h>

#include "dist/launch.h"

namespace mole {

class ProcessGroup {
 public:
  // Meets the other ranks at launch.master_addr:master_port (rank 0 hosts the store unless torchrun's agent
  // does) and connects the Gloo group. GLOO_SOCKET_IFNAME picks the network interface as in torch. `timeout`
  // bounds the rendezvous and each collective. A launch of one process makes a group of one (no sockets).
  ProcessGroup(const Launch& launch, std::chrono::milliseconds timeout = std::chrono::minutes(30));
  ~ProcessGroup();
  ProcessGroup(const ProcessGroup&) = delete;
  ProcessGroup& operator=(const ProcessGroup&) = delete;

  int64_t rank() const { return rank_; }
  int64_t size() const { return size_; }
  bool is_main() const { return rank_ == 0; }

  // In place, summed over the ranks. `t` is contiguous (CPU or the run's device).
  void all_reduce_sum(torch::Tensor& t);
  // In place: every rank ends with rank `root`'s values.
  void broadcast(torch::Tensor& t, int64_t root = 0);
  void barrier();
  // Each rank's bytes, in rank order, on rank 0; an empty list elsewhere. For small, irregular payloads
  // (JSON of routing tables, skip reports, loader positions, RNG states), through the store.
  std::vector<std::string> gather_to_main(const std::string& mine);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  int64_t rank_ = 0, size_ = 1;
  int64_t gathers_ = 0;  // a sequence number keeps the keys of successive gathers apart
};

}  // namespace mole
