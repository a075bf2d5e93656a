#include "core/fields.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <sstream>

namespace mole {

void FieldPath::fail(const std::string& name, const std::string& message) const {
  throw ConfigError(file + ": " + key(name) + ": " + message);
}

namespace {

size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diagonal = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      size_t above = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diagonal = above;
    }
  }
  return row[b.size()];
}

}  // namespace

std::string nearest_name(const std::string& name, const std::vector<std::string>& known) {
  std::string best;
  size_t best_distance = std::string::npos;
  for (const std::string& candidate : known) {
    size_t d = edit_distance(name, candidate);
    if (d < best_distance) best = candidate, best_distance = d;
  }
  // Close enough to be a typo: at most a third of the name's letters changed (n_expert -> n_experts, rnak -> rank).
  return best_distance <= std::max<size_t>(2, name.size() / 3) ? best : "";
}

FieldReader::FieldReader(const json& object, FieldPath at, UnknownKeys unknown)
    : object_(object), at_(std::move(at)), unknown_(unknown) {}

void FieldReader::finish() const {
  if (unknown_ == UnknownKeys::kIgnore) return;
  for (const auto& item : object_.items()) {
    if (std::find(known_.begin(), known_.end(), item.key()) != known_.end()) continue;
    std::string message = at_.file + ": unknown key '" + at_.key(item.key()) + "'";
    const std::string near = nearest_name(item.key(), known_);
    if (!near.empty()) message += " (did you mean '" + at_.key(near) + "'?)";
    else {
      std::string list;
      for (const auto& k : known_) list += (list.empty() ? "" : ", ") + k;
      message += " (known here: " + list + ")";
    }
    throw ConfigError(message);
  }
}

std::string Bounds::text(bool integer) const {
  auto num = [&](double v) {
    if (integer && std::abs(v) < 9.2e18) return std::to_string(int64_t(v));
    std::ostringstream out;
    out << v;
    return out.str();
  };
  const bool low = std::isfinite(min), high = std::isfinite(max);
  if (integer && low && high && !min_open && !max_open) return num(min) + ".." + num(max);
  if (low && high)
    return std::string(min_open ? "(" : "[") + num(min) + ", " + num(max) + (max_open ? ")" : "]");
  if (low) return std::string(min_open ? "> " : ">= ") + num(min);
  if (high) return std::string(max_open ? "< " : "<= ") + num(max);
  return "any number";
}

std::string Bounds::requirement(bool integer) const {
  const std::string t = text(integer);
  return t[0] == '>' || t[0] == '<' ? t : "in " + t;
}

std::string fields_help(const std::vector<FieldDoc>& rows) {
  size_t key_width = 0;
  for (const auto& row : rows) key_width = std::max(key_width, row.key.size());
  std::string out;
  for (const auto& row : rows) {
    std::string line = "  " + row.key + std::string(key_width - row.key.size() + 2, ' ');
    std::string type = row.type;
    if (row.bounds) type += " " + row.bounds->text(row.integer);
    if (!row.fallback.is_null()) type += " = " + row.fallback.dump();
    line += type;
    if (!row.doc.empty()) line += "\n" + std::string(key_width + 6, ' ') + row.doc;
    out += line + "\n";
  }
  return out;
}

}  // namespace mole
