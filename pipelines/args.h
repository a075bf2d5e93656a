// A small command-line parser: every subcommand declares its options (with help and defaults) and gets
// `--help` listing them. Unknown options and missing values are usage errors that name the option.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
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
  // --name N: an integer in [min, max] (required when fallback is nullopt); --name X: a finite number in
  // [min, max]. Checked as soon as the command line is parsed (before a missing option is reported, so the
  // message is about the value), and shown in --help.
  Args& integer(const std::string& name, const std::string& help, std::optional<int64_t> fallback, int64_t min,
                int64_t max);
  Args& number(const std::string& name, const std::string& help, double fallback, double min, double max);
  Args& flag(const std::string& name, const std::string& help);                 // --name (boolean)
  Args& positional(const std::string& name, const std::string& help);           // required, in order
  Args& repeated(const std::string& name, const std::string& help);             // --name VALUE, any number
  Args& epilog(const std::string& text);  // more help after the options (e.g. a config's field list)
  // Parses argv[first..argc). Returns false when --help was asked (help already printed).
  bool parse(int argc, char** argv, int first = 2);

  std::string get(const std::string& name) const;
  int64_t get_int(const std::string& name) const;
  double get_number(const std::string& name) const;
  std::vector<std::string> get_all(const std::string& name) const;  // a repeated option's values, in order
  bool has(const std::string& name) const;  // a flag was given, or an option has a non-empty value
  bool given(const std::string& name) const;  // on the command line (not its default)
  std::string help() const;

 private:
  struct Spec {
    std::string name, help, fallback;
    bool is_flag = false, required = false, is_positional = false, is_repeated = false;
    enum class Numeric { kNo, kInteger, kNumber } numeric = Numeric::kNo;
    int64_t int_min = 0, int_max = 0;
    double min = 0, max = 0;
  };
  void check_numeric(const Spec& spec, const std::string& value) const;
  std::string command_, summary_, epilog_;
  std::vector<Spec> specs_;
  std::map<std::string, std::string> values_;
  std::map<std::string, std::vector<std::string>> lists_;
  std::vector<std::string> given_;
};

}  // namespace mole
