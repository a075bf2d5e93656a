// Small helpers shared by the tests: where things are, scratch folders, tensor comparison.
#pragma once

#include <string>

#include <torch/types.h>

namespace mole::test {

std::string source_dir();  // the repository root
std::string binary_dir();  // the build folder (holds the `mole` program)
std::string ref_dir();     // build/ref: what tests/reference/make_tiny_llava.py wrote
std::string mole_bin();    // build/mole
// build/slow_checkpoint_train: `mole train` whose checkpoint writes pause (tests/tools/slow_checkpoint_train.cpp)
std::string slow_checkpoint_train_bin();

// A fresh empty folder under the build folder, named after `tag`; removed and recreated on each call.
std::string scratch_dir(const std::string& tag);

// Largest absolute difference, in float64; shapes must agree (checked).
double max_abs_diff(const torch::Tensor& a, const torch::Tensor& b);

// Runs a shell command, returns its exit status; its output goes to `output` when given.
int run_command(const std::string& command, std::string* output = nullptr);

// A loopback TCP port nobody listens on now (the kernel's pick, released at once for the caller to take).
int free_tcp_port();

}  // namespace mole::test
