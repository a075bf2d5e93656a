// Training checkpoints: RUN/checkpoints/step-NNNNNNN/ with model.json + trainable.safetensors (what
// load_trained reads), optimizer.safetensors and trainer_state.json (step, data-loader position, RNG state,
// counters). Written atomically as a folder: everything goes into a hidden temporary folder that is renamed into
// place only when complete, then RUN/checkpoints/latest names it; a crash or SIGKILL mid-write leaves the
// previous checkpoint as the latest, untouched. The last `keep` are kept.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>

namespace mole {

// Writes a checkpoint folder for `step` under `checkpoints_dir`: `fill(dir)` writes the files into the
// temporary folder; then the rename, the `latest` pointer and the pruning to `keep`. Returns the final path.
std::string write_checkpoint(const std::string& checkpoints_dir, int64_t step, int64_t keep,
                             const std::function<void(const std::string& dir)>& fill);

// The newest complete checkpoint folder: the one `latest` names when it exists, else the highest step-N
// folder; nullopt when there is none. Temporary folders of interrupted writes are ignored.
std::optional<std::string> latest_checkpoint(const std::string& checkpoints_dir);

}  // namespace mole
