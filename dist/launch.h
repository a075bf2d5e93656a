// Where this process stands in a torchrun launch: the variables torchrun (torch.distributed.run) sets for each
// worker. A plain `mole train` has none of them and is rank 0 of 1.
//   RANK, WORLD_SIZE             this process among all of them
//   LOCAL_RANK, LOCAL_WORLD_SIZE this process among those on its machine (threads and CUDA devices are split by it)
//   MASTER_ADDR, MASTER_PORT     the TCP store every rank meets at
//   TORCHELASTIC_USE_AGENT_STORE "True" when torchrun's agent already hosts that store: every rank is a client
//   TORCHELASTIC_RESTART_COUNT   the attempt, so a restarted group never reads the keys of an earlier one
// Reference: torch/distributed/run.py and rendezvous.py (_env_rendezvous_handler, _create_c10d_store).
#pragma once

#include <cstdint>
#include <string>

namespace mole {

struct Launch {
  int64_t rank = 0, world_size = 1;
  int64_t local_rank = 0, local_world_size = 1;
  std::string master_addr = "127.0.0.1";
  int64_t master_port = 29500;
  bool agent_store = false;
  int64_t restart_count = 0;
  bool launched = false;  // RANK and WORLD_SIZE were set

  bool distributed() const { return world_size > 1; }
  // " (rank R of W)" for a distributed launch, "" otherwise: what error messages append.
  std::string where() const;

  // Reads the variables above. A malformed or inconsistent value (RANK=x, RANK >= WORLD_SIZE, RANK without
  // WORLD_SIZE, a port out of range) is a ConfigError naming the variable.
  static Launch from_environment();
};

}  // namespace mole
