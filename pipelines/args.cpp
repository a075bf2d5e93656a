#include "pipelines/args.h"

#include <algorithm>
#include <cerrno>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <sstream>

namespace mole {

Args::Args(std::string command, std::string summary) : command_(std::move(command)), summary_(std::move(summary)) {}

Args& Args::option(const std::string& name, const std::string& help, const std::string& fallback, bool required) {
  specs_.push_back({name, help, fallback, false, required, false});
  return *this;
}

namespace {

std::string number_text(double v) {
  std::ostringstream out;
  out << v;
  return out.str();
}

// The whole text as an int64, or nullopt (sign, digits, nothing else; no overflow).
std::optional<int64_t> whole_integer(const std::string& v) {
  if (v.empty() || v.size() > 20) return std::nullopt;
  size_t i = v[0] == '-' || v[0] == '+' ? 1 : 0;
  if (i == v.size()) return std::nullopt;
  for (size_t k = i; k < v.size(); ++k)
    if (v[k] < '0' || v[k] > '9') return std::nullopt;
  errno = 0;
  char* end = nullptr;
  const long long x = std::strtoll(v.c_str(), &end, 10);
  if (errno == ERANGE || end != v.c_str() + v.size()) return std::nullopt;
  return int64_t(x);
}

std::optional<double> whole_number(const std::string& v) {
  if (v.empty() || std::isspace(static_cast<unsigned char>(v[0]))) return std::nullopt;
  errno = 0;
  char* end = nullptr;
  const double x = std::strtod(v.c_str(), &end);
  if (errno == ERANGE || end != v.c_str() + v.size() || !std::isfinite(x)) return std::nullopt;
  return x;
}

}  // namespace

Args& Args::integer(const std::string& name, const std::string& help, std::optional<int64_t> fallback, int64_t min,
                    int64_t max) {
  Spec s;
  s.name = name, s.help = help, s.fallback = fallback ? std::to_string(*fallback) : "", s.required = !fallback;
  s.numeric = Spec::Numeric::kInteger, s.int_min = min, s.int_max = max;
  specs_.push_back(s);
  return *this;
}

Args& Args::number(const std::string& name, const std::string& help, double fallback, double min, double max) {
  Spec s;
  s.name = name, s.help = help, s.fallback = number_text(fallback);
  s.numeric = Spec::Numeric::kNumber, s.min = min, s.max = max;
  specs_.push_back(s);
  return *this;
}

void Args::check_numeric(const Spec& spec, const std::string& value) const {
  if (spec.numeric == Spec::Numeric::kInteger) {
    const auto x = whole_integer(value);
    if (!x || *x < spec.int_min || *x > spec.int_max)
      throw UsageError("mole " + command_ + ": --" + spec.name + " must be an integer from " +
                       std::to_string(spec.int_min) + " to " + std::to_string(spec.int_max) + ", got '" + value + "'");
  } else if (spec.numeric == Spec::Numeric::kNumber) {
    const auto x = whole_number(value);
    if (!x || *x < spec.min || *x > spec.max)
      throw UsageError("mole " + command_ + ": --" + spec.name + " must be a number from " + number_text(spec.min) +
                       " to " + number_text(spec.max) + ", got '" + value + "'");
  }
}

Args& Args::flag(const std::string& name, const std::string& help) {
  specs_.push_back({name, help, "", true, false, false});
  return *this;
}

Args& Args::repeated(const std::string& name, const std::string& help) {
  Spec s;
  s.name = name;
  s.help = help;
  s.is_repeated = true;
  specs_.push_back(s);
  return *this;
}

std::vector<std::string> Args::get_all(const std::string& name) const {
  auto it = lists_.find(name);
  return it == lists_.end() ? std::vector<std::string>{} : it->second;
}

Args& Args::positional(const std::string& name, const std::string& help) {
  specs_.push_back({name, help, "", false, true, true});
  return *this;
}

bool Args::parse(int argc, char** argv, int first) {
  std::vector<const Spec*> positionals;
  for (const auto& s : specs_)
    if (s.is_positional) positionals.push_back(&s);
  size_t next_positional = 0;
  for (int i = first; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--help" || arg == "-h") {
      std::fputs(help().c_str(), stdout);
      return false;
    }
    if (arg.rfind("--", 0) == 0) {
      std::string name = arg.substr(2), value;
      bool has_inline = false;
      if (auto eq = name.find('='); eq != std::string::npos) {
        value = name.substr(eq + 1);
        name = name.substr(0, eq);
        has_inline = true;
      }
      const Spec* spec = nullptr;
      for (const auto& s : specs_)
        if (!s.is_positional && s.name == name) spec = &s;
      if (!spec) throw UsageError("mole " + command_ + ": unknown option --" + name + " (see --help)");
      if (spec->is_flag) {
        values_[name] = "1";
        continue;
      }
      if (!has_inline) {
        if (i + 1 >= argc) throw UsageError("mole " + command_ + ": option --" + name + " needs a value");
        value = argv[++i];
      }
      given_.push_back(name);
      if (spec->is_repeated) lists_[name].push_back(value);
      else values_[name] = value;
      continue;
    }
    if (next_positional >= positionals.size())
      throw UsageError("mole " + command_ + ": unexpected argument '" + arg + "' (see --help)");
    values_[positionals[next_positional++]->name] = arg;
  }
  for (const auto& s : specs_)  // the values given, before anything that is missing
    if (s.numeric != Spec::Numeric::kNo && values_.count(s.name)) check_numeric(s, values_.at(s.name));
  for (const auto& s : specs_) {
    if (values_.count(s.name) || s.is_repeated) continue;
    if (s.required)
      throw UsageError("mole " + command_ + ": missing " + (s.is_positional ? s.name : "--" + s.name) +
                       " (see --help)");
    if (!s.is_flag) values_[s.name] = s.fallback;
  }
  return true;
}

std::string Args::get(const std::string& name) const {
  auto it = values_.find(name);
  return it == values_.end() ? "" : it->second;
}

double Args::get_number(const std::string& name) const {
  const std::string v = get(name);
  const auto x = whole_number(v);
  if (!x) throw UsageError("mole " + command_ + ": --" + name + " must be a number, got '" + v + "'");
  return *x;
}

int64_t Args::get_int(const std::string& name) const {
  std::string v = get(name);
  try {
    size_t used = 0;
    int64_t x = std::stoll(v, &used);
    if (used != v.size()) throw std::invalid_argument(v);
    return x;
  } catch (const std::exception&) {
    throw UsageError("mole " + command_ + ": --" + name + " must be an integer, got '" + v + "'");
  }
}

bool Args::has(const std::string& name) const { return !get(name).empty(); }

bool Args::given(const std::string& name) const {
  return std::find(given_.begin(), given_.end(), name) != given_.end();
}

Args& Args::epilog(const std::string& text) {
  epilog_ = text;
  return *this;
}

std::string Args::help() const {
  std::ostringstream out;
  out << "usage: mole " << command_;
  for (const auto& s : specs_)
    if (s.is_positional) out << " " << s.name;
  out << " [options]\n" << summary_ << "\n";
  for (const auto& s : specs_) {
    const char* metavar = s.numeric == Spec::Numeric::kInteger ? " N" : s.numeric == Spec::Numeric::kNumber ? " X" : " VALUE";
    std::string left = s.is_positional ? s.name : "--" + s.name + (s.is_flag ? "" : metavar);
    out << "  " << left << std::string(left.size() < 26 ? 26 - left.size() : 1, ' ') << s.help;
    if (s.numeric == Spec::Numeric::kInteger)
      out << " (integer " << s.int_min << ".." << s.int_max << ")";
    else if (s.numeric == Spec::Numeric::kNumber)
      out << " (number " << number_text(s.min) << ".." << number_text(s.max) << ")";
    if (!s.fallback.empty()) out << " (default: " << s.fallback << ")";
    if (s.required && !s.is_positional) out << " (required)";
    out << "\n";
  }
  if (!epilog_.empty()) out << "\n" << epilog_;
  return out.str();
}

}  // namespace mole
