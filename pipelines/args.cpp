#include "pipelines/args.h"

#include <cstdio>
#include <sstream>

namespace mole {

Args::Args(std::string command, std::string summary) : command_(std::move(command)), summary_(std::move(summary)) {}

Args& Args::option(const std::string& name, const std::string& help, const std::string& fallback, bool required) {
  specs_.push_back({name, help, fallback, false, required, false});
  return *this;
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
      if (spec->is_repeated) lists_[name].push_back(value);
      else values_[name] = value;
      continue;
    }
    if (next_positional >= positionals.size())
      throw UsageError("mole " + command_ + ": unexpected argument '" + arg + "' (see --help)");
    values_[positionals[next_positional++]->name] = arg;
  }
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
    std::string left = s.is_positional ? s.name : "--" + s.name + (s.is_flag ? "" : " VALUE");
    out << "  " << left << std::string(left.size() < 26 ? 26 - left.size() : 1, ' ') << s.help;
    if (!s.fallback.empty()) out << " (default: " << s.fallback << ")";
    if (s.required && !s.is_positional) out << " (required)";
    out << "\n";
  }
  if (!epilog_.empty()) out << "\n" << epilog_;
  return out.str();
}

}  // namespace mole
