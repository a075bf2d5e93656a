// A small command-line parser: every subcommand declares its options (with help and defaults) and gets
// `--help` listing them. Unknown options and missing values are usage errors that name the option.
#pragma once

#include <cstdint>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

namespace mole {

struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

class Args {
 public:
  Args(std::string command, std::string summary);
  // --name VALUE; required when no default is given.
  Args& option(const std::string& name, const std::string& help, const std::string& fallback = "",
               bool required = false);
  Args& flag(const std::string& name, const std::string& help);                 // --name (boolean)
  Args& positional(const std::string& name, const std::string& help);           // required, in order
  Args& repeated(const std::string& name, const std::string& help);             // --name VALUE, any number
  Args& epilog(const std::string& text);  // more help after the options (e.g. a config's field list)
  // Parses argv[first..argc). Returns false when --help was asked (help already printed).
  bool parse(int argc, char** argv, int first = 2);

  std::string get(const std::string& name) const;
  int64_t get_int(const std::string& name) const;
  std::vector<std::string> get_all(const std::string& name) const;  // a repeated option's values, in order
  bool has(const std::string& name) const;  // a flag was given, or an option has a non-empty value
  std::string help() const;

 private:
  struct Spec {
    std::string name, help, fallback;
    bool is_flag = false, required = false, is_positional = false, is_repeated = false;
  };
  std::string command_, summary_, epilog_;
  std::vector<Spec> specs_;
  std::map<std::string, std::string> values_;
  std::map<std::string, std::vector<std::string>> lists_;
};

}  // namespace mole
