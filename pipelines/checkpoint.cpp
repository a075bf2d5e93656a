#include "pipelines/checkpoint.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <vector>

#include "core/json_config.h"

namespace mole {

namespace fs = std::filesystem;

namespace {

std::string step_name(int64_t step) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "step-%07lld", static_cast<long long>(step));
  return buf;
}

void fsync_path(const std::string& path) {  // a folder's entries (renames) reach the disk
  int fd = ::open(path.c_str(), O_RDONLY);
  if (fd >= 0) {
    ::fsync(fd);
    ::close(fd);
  }
}

std::vector<fs::path> step_folders(const std::string& dir) {
  std::vector<fs::path> out;
  if (!fs::exists(dir)) return out;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.is_directory() && e.path().filename().string().rfind("step-", 0) == 0) out.push_back(e.path());
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace

std::string write_checkpoint(const std::string& checkpoints_dir, int64_t step, int64_t keep,
                             const std::function<void(const std::string& dir)>& fill) {
  fs::create_directories(checkpoints_dir);
  const std::string name = step_name(step);
  const fs::path final_dir = fs::path(checkpoints_dir) / name;
  const fs::path tmp = fs::path(checkpoints_dir) / (".tmp-" + name + "-" + std::to_string(::getpid()));
  fs::remove_all(tmp);
  fs::create_directories(tmp);
  fill(tmp.string());  // each file inside is written atomically and fsync'ed by its writer
  fsync_path(tmp.string());
  fs::remove_all(final_dir);  // a checkpoint of the same step from an earlier attempt
  fs::rename(tmp, final_dir);
  fsync_path(checkpoints_dir);
  write_json_file(checkpoints_dir + "/latest", {{"checkpoint", name}, {"step", step}});

  std::vector<fs::path> folders = step_folders(checkpoints_dir);
  while (int64_t(folders.size()) > keep) {
    if (folders.front() != final_dir) fs::remove_all(folders.front());
    folders.erase(folders.begin());
  }
  // Leftovers of interrupted writes (this process's own are gone by now).
  for (const auto& e : fs::directory_iterator(checkpoints_dir))
    if (e.path().filename().string().rfind(".tmp-", 0) == 0) fs::remove_all(e.path());
  return final_dir.string();
}

std::optional<std::string> latest_checkpoint(const std::string& checkpoints_dir) {
  const std::string pointer = checkpoints_dir + "/latest";
  if (fs::exists(pointer)) {
    try {
      const std::string name = read_json_file(pointer).at("checkpoint").get<std::string>();
      const fs::path dir = fs::path(checkpoints_dir) / name;
      if (fs::exists(dir / "trainer_state.json")) return dir.string();
    } catch (const std::exception&) {
      // fall through to the folder scan
    }
  }
  std::vector<fs::path> folders = step_folders(checkpoints_dir);
  for (auto it = folders.rbegin(); it != folders.rend(); ++it)
    if (fs::exists(*it / "trainer_state.json")) return it->string();
  return std::nullopt;
}

}  // namespace mole
