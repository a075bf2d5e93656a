// The bad-option table for the command line: every numeric option of every command, read from the command's own
// --help (where each shows its range), tried at negative, zero, fractional, huge, overflowing and non-numeric
// values. Each is a usage error naming the option, or inside the range --help documents. The commands run in this
// process; an accepted value meets a missing required option next, so no command does any work.
#include <catch2/catch.hpp>

#include <cstdio>
#include <fstream>
#include <regex>
#include <sstream>
#include <string>
#include <vector>

#include <unistd.h>

#include "pipelines/args.h"
#include "pipelines/commands.h"
#include "tests/test_util.h"

using namespace mole;
using Catch::Contains;

namespace {

struct Command {
  std::vector<std::string> words;  // after "mole"
  int (*run)(int, char**);
};

const std::vector<Command> kCommands = {
    {{"compare"}, cmd_compare},          {{"demo"}, cmd_demo},
    {{"export"}, cmd_export},            {{"generate"}, cmd_generate},
    {{"info"}, cmd_info},                {{"forward"}, cmd_forward},
    {{"make-data", "shapes"}, cmd_make_data}, {{"train-tokenizer"}, cmd_train_tokenizer},
    {{"check-data"}, cmd_check_data},    {{"eval-vqa"}, cmd_eval_vqa},
    {{"routes"}, cmd_routes},            {{"score-vqa"}, cmd_score_vqa},
    {{"train"}, cmd_train}};

// Runs the command in this process with these arguments; its stdout is returned through `out`.
int run(const Command& c, const std::vector<std::string>& more, std::string* out = nullptr) {
  std::vector<std::string> words = {"mole"};
  words.insert(words.end(), c.words.begin(), c.words.end());
  words.insert(words.end(), more.begin(), more.end());
  std::vector<char*> argv;
  for (std::string& w : words) argv.push_back(w.data());
  argv.push_back(nullptr);
  const std::string capture = mole::test::scratch_dir("bad_options") + "/stdout.txt";
  std::fflush(stdout);
  const int saved = dup(1);
  FILE* file = std::fopen(capture.c_str(), "w");
  dup2(fileno(file), 1);
  int rc = 0;
  try {
    rc = c.run(int(words.size()), argv.data());
  } catch (...) {
    std::fflush(stdout);
    dup2(saved, 1);
    close(saved);
    std::fclose(file);
    throw;
  }
  std::fflush(stdout);
  dup2(saved, 1);
  close(saved);
  std::fclose(file);
  if (out) {
    std::ifstream in(capture);
    std::stringstream text;
    text << in.rdbuf();
    *out = text.str();
  }
  return rc;
}

struct NumericOption {
  std::string name;
  bool integer;
  double min, max;
};

}  // namespace

TEST_CASE("bad-option table: every numeric option of every command refuses what is outside its range, naming it",
          "[unit][cli]") {
  const std::regex numeric(R"(^  --([a-z0-9-]+) ([NX]) .*\((integer|number) (-?[0-9.e+]+)\.\.(-?[0-9.e+]+)\))");
  const std::regex numeric_default(R"(^  --([a-z0-9-]+) VALUE .*\(default: -?[0-9][0-9.e+-]*\)$)");
  int64_t options = 0, refused = 0;
  for (const Command& c : kCommands) {
    std::string help;
    REQUIRE(run(c, {"--help"}, &help) == 0);
    std::vector<NumericOption> found;
    std::istringstream lines(help);
    for (std::string line; std::getline(lines, line);) {
      std::smatch m;
      INFO(c.words[0] << ": " << line);
      CHECK(!std::regex_search(line, m, numeric_default));  // a number given as text: declare it integer / number
      if (std::regex_search(line, m, numeric))
        found.push_back({m[1], m[3] == "integer", std::stod(m[4]), std::stod(m[5])});
    }
    for (const NumericOption& o : found) {
      ++options;
      std::vector<std::string> trials = {"-5", "-1", "0", "2.5", "1e300", "abc", "", "99999999999999999999", "0x10"};
      if (o.integer) trials.push_back(std::to_string(int64_t(o.max) + (o.max < 9e18 ? 1 : 0)));
      for (const std::string& value : trials) {
        INFO("mole " << c.words[0] << " --" << o.name << " '" << value << "'");
        std::string message;
        try {
          run(c, {"--" + o.name, value});
          FAIL("no error");  // every command has a required option or fails on its missing input
        } catch (const UsageError& e) {
          message = e.what();
        } catch (const std::exception& e) {
          message = std::string("not a usage error: ") + e.what();
        }
        char* end = nullptr;
        const double x = std::strtod(value.c_str(), &end);
        const bool number_text = !value.empty() && end == value.c_str() + value.size() &&
                                 (!o.integer || value.find_first_not_of("-0123456789") == std::string::npos);
        const bool inside = number_text && x >= o.min && x <= o.max && std::abs(x) < 1e19;
        if (inside) {
          CHECK_THAT(message, Contains("missing"));  // accepted: the next problem is what is missing
        } else {
          ++refused;
          CHECK_THAT(message, Contains("--" + o.name + " must be"));
        }
      }
    }
  }
  CHECK(options >= 18);
  CHECK(refused >= options * 6);
}
