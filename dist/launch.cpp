#include "dist/launch.h"

#include <cstdlib>
#include <string>

#include "core/json_config.h"

namespace mole {

namespace {

// The variable as a whole non-negative integer, or `fallback` when unset.
int64_t env_count(const char* name, int64_t fallback) {
  const char* value = std::getenv(name);
  if (!value) return fallback;
  const std::string text(value);
  size_t used = 0;
  long long n = -1;
  try {
    n = std::stoll(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (text.empty() || used != text.size() || n < 0)
    throw ConfigError("environment variable " + std::string(name) + "='" + text +
                      "' is not a non-negative integer (set by torchrun; see README: Many processes)");
  return n;
}

}  // namespace

std::string Launch::where() const {
  return distributed() ? " (rank " + std::to_string(rank) + " of " + std::to_string(world_size) + ")" : "";
}

Launch Launch::from_environment() {
  Launch l;
  const bool has_rank = std::getenv("RANK") != nullptr, has_world = std::getenv("WORLD_SIZE") != nullptr;
  if (has_rank != has_world)
    throw ConfigError(std::string("environment: ") + (has_rank ? "RANK" : "WORLD_SIZE") + " is set but " +
                      (has_rank ? "WORLD_SIZE" : "RANK") + " is not (launch with torchrun, or set neither)");
  if (!has_rank) return l;
  l.launched = true;
  l.rank = env_count("RANK", 0);
  l.world_size = env_count("WORLD_SIZE", 1);
  if (l.world_size < 1 || l.rank >= l.world_size)
    throw ConfigError("environment: RANK=" + std::to_string(l.rank) + " is not below WORLD_SIZE=" +
                      std::to_string(l.world_size));
  l.local_rank = env_count("LOCAL_RANK", l.rank);
  l.local_world_size = env_count("LOCAL_WORLD_SIZE", l.world_size);
  if (l.local_world_size < 1 || l.local_rank >= l.local_world_size)
    throw ConfigError("environment: LOCAL_RANK=" + std::to_string(l.local_rank) + " is not below LOCAL_WORLD_SIZE=" +
                      std::to_string(l.local_world_size));
  if (const char* addr = std::getenv("MASTER_ADDR")) l.master_addr = addr;
  l.master_port = env_count("MASTER_PORT", l.master_port);
  if (l.master_port < 1 || l.master_port > 65535)
    throw ConfigError("environment: MASTER_PORT=" + std::to_string(l.master_port) + " is not a TCP port");
  const char* agent = std::getenv("TORCHELASTIC_USE_AGENT_STORE");
  l.agent_store = agent && std::string(agent) == "True";  // torchrun writes str(bool)
  l.restart_count = env_count("TORCHELASTIC_RESTART_COUNT", 0);
  return l;
}

}  // namespace mole
