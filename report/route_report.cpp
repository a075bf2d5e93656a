// The routing report (see route_report.h): takes a RoutingTable's per-layer, per-modality cells, draws the
// figures with the report/ charts, and writes routes.json and index.html. The heat maps of one share kind use one
// colour scale for all modalities, so a brighter image map than text map means image tokens concentrate more.
//
// L=layers E=experts M=modalities S=logged steps
#include "report/route_report.h"
#include "moe/routing_info.h"

#include <algorithm>
#include <array>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <stdexcept>

#include "report/charts.h"

namespace mole {

using json = nlohmann::json;

// ---- layer names and the metrics log ----------------------------------------------------------------------------

namespace {

std::vector<std::string> split_dots(const std::string& s) {
  std::vector<std::string> parts;
  std::string part;
  std::istringstream in(s);
  while (std::getline(in, part, '.')) parts.push_back(part);
  return parts;
}

bool all_numbers(const json& list) {
  return std::all_of(list.begin(), list.end(), [](const json& v) { return v.is_number(); });
}

bool all_digits(const std::string& s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), [](unsigned char c) { return std::isdigit(c); });
}

std::string fixed(double v, int decimals = 3) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", decimals, v);
  return buf;
}

}  // namespace

std::vector<std::string> short_layer_names(const std::vector<std::string>& names) {
  std::vector<std::vector<std::string>> parts;
  size_t min_len = SIZE_MAX;
  for (const auto& n : names) parts.push_back(split_dots(n)), min_len = std::min(min_len, parts.back().size());
  std::vector<std::string> out;
  if (names.size() == 1) {  // nothing to compare with: the layer number if there is one
    for (const auto& p : parts[0])
      if (all_digits(p)) return {"L" + p};
    return {parts[0].empty() ? names[0] : parts[0].back()};
  }
  size_t pre = 0, suf = 0;
  auto same_at = [&](auto index) {
    for (const auto& p : parts)
      if (p[index(p)] != parts[0][index(parts[0])]) return false;
    return true;
  };
  while (pre + 1 < min_len && same_at([&](const auto&) { return pre; })) ++pre;
  while (pre + suf + 1 < min_len && same_at([&](const auto& p) { return p.size() - 1 - suf; })) ++suf;
  for (const auto& p : parts) {
    std::string label;
    for (size_t i = pre; i < p.size() - suf; ++i) label += (label.empty() ? "" : ".") + p[i];
    out.push_back(all_digits(p.empty() ? "" : p[pre]) ? "L" + label : label);
  }
  if (std::set<std::string>(out.begin(), out.end()).size() != out.size()) return names;
  return out;
}

ExpertLoadHistory read_expert_load_log(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error(path + ": cannot open the metrics log");
  ExpertLoadHistory h;
  std::map<std::string, size_t> layer_index;
  std::string line;
  for (int64_t number = 1; std::getline(in, line); ++number) {
    const std::string where = path + ":" + std::to_string(number) + ": ";
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    json j = json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded()) throw std::runtime_error(where + "not a JSON line");
    if (!j.is_object() || !j.contains("expert_load")) continue;
    const json& load = j["expert_load"];
    if (!j.contains("step") || !j["step"].is_number_integer())
      throw std::runtime_error(where + "expert_load without an integer \"step\"");
    if (!load.is_object() || !load.contains("layers") || !load["layers"].is_array())
      throw std::runtime_error(where + "expert_load must be {\"layers\": [names], MODALITY: [[shares] per layer]}");
    std::vector<std::string> names;
    for (const auto& n : load["layers"]) {
      if (!n.is_string()) throw std::runtime_error(where + "expert_load.layers must hold strings");
      names.push_back(n.get<std::string>());
    }
    size_t step = h.steps.size();
    h.steps.push_back(j["step"].get<int64_t>());
    // information per layer: {"layers": {LAYER: nats}} and {"families": [...], "layers": {LAYER: {"nmi": x}}}
    for (auto& [name, per_step] : h.modality_mi) per_step.push_back(NAN);
    for (auto& [name, per_step] : h.family_nmi) per_step.push_back(NAN);
    auto information = [&](const char* key, std::map<std::string, std::vector<double>>& into, const char* field) {
      if (!j.contains(key)) return;
      const json& block = j[key];
      if (!block.is_object() || !block.contains("layers") || !block["layers"].is_object())
        throw std::runtime_error(where + key + " must be {\"layers\": {LAYER: ...}}");
      for (const auto& [layer, v] : block["layers"].items()) {
        const json& value = field ? (v.is_object() && v.contains(field) ? v[field] : json()) : v;
        if (!value.is_number())
          throw std::runtime_error(where + key + ".layers." + layer + (field ? std::string(".") + field : "") +
                                   " must be a number");
        auto& per_step = into[layer];
        per_step.resize(step + 1, NAN);
        per_step[step] = value.get<double>();
      }
    };
    information("expert_modality_mi", h.modality_mi, nullptr);
    information("expert_family", h.family_nmi, "nmi");
    if (j.contains("expert_family") && j["expert_family"].contains("families") &&
        j["expert_family"]["families"].is_array()) {
      h.families.clear();
      for (const auto& f : j["expert_family"]["families"])
        if (f.is_string()) h.families.push_back(f.get<std::string>());
    }
    for (auto& [modality, per_layer] : h.load)  // a NaN slot for every known layer; filled below if logged
      for (auto& steps : per_layer) steps.emplace_back();
    for (const auto& [modality, rows] : load.items()) {
      if (modality == "layers") continue;
      if (!rows.is_array() || rows.size() != names.size())
        throw std::runtime_error(where + "expert_load." + modality + " must hold one list per layer (" +
                                 std::to_string(names.size()) + ")");
      for (size_t l = 0; l < names.size(); ++l) {
        const json& row = rows[l];
        if (!row.is_array() || row.empty() || !all_numbers(row))
          throw std::runtime_error(where + "expert_load." + modality + "[" + std::to_string(l) +
                                   "] must be a non-empty list of numbers");
        auto [it, fresh] = layer_index.emplace(names[l], h.layers.size());
        if (fresh) h.layers.push_back(names[l]), h.n_experts.push_back(int(row.size()));
        if (h.n_experts[it->second] != int(row.size()))
          throw std::runtime_error(where + "layer '" + names[l] + "' has " + std::to_string(row.size()) +
                                   " experts in expert_load." + modality + ", earlier " +
                                   std::to_string(h.n_experts[it->second]));
      }
      auto& per_layer = h.load[modality];  // (L, S, E); new layers and modalities start with empty steps
      per_layer.resize(h.layers.size());
      for (auto& steps : per_layer) steps.resize(step + 1);
      for (size_t l = 0; l < names.size(); ++l)
        per_layer[layer_index[names[l]]][step] = rows[l].get<std::vector<double>>();
    }
  }
  for (auto& [modality, per_layer] : h.load) {  // empty slots -> NaN rows of the layer's width
    per_layer.resize(h.layers.size());
    for (size_t l = 0; l < per_layer.size(); ++l) {
      per_layer[l].resize(h.steps.size());
      for (auto& shares : per_layer[l])
        if (shares.empty()) shares.assign(size_t(h.n_experts[l]), NAN);
    }
  }
  return h;
}

// ---- the routing table -------------------------------------------------------------------------------------------

namespace {

// One layer of the table as the report draws it: the cells of the chosen phase (or both pooled).
struct LayerRoutes {
  std::string name, label;
  int n_experts = 0, top_k = 0;
  std::map<std::string, RoutingCell> modalities;
};

std::vector<LayerRoutes> routes_of(const RoutingTable& table, PhaseView view, const std::string& phase) {
  if (table.layers.empty()) throw std::runtime_error("routing stats: no layers");
  std::vector<std::string> names;
  for (const auto& l : table.layers) names.push_back(l.name);
  std::vector<std::string> labels = short_layer_names(names);
  std::vector<LayerRoutes> layers;
  bool any = false;
  for (size_t l = 0; l < table.layers.size(); ++l) {
    const LayerRouting& in = table.layers[l];
    LayerRoutes layer;
    layer.name = in.name, layer.label = labels[l];
    layer.n_experts = int(in.n_experts), layer.top_k = int(in.top_k);
    layer.modalities = in.cells(view);
    any = any || !layer.modalities.empty();
    layers.push_back(layer);
  }
  if (!any) throw std::runtime_error("routing stats: no tokens recorded in phase '" + phase + "' in any of the " +
                                     std::to_string(layers.size()) + " layers");
  return layers;
}

// "text" and "image" first, then the others by name.
std::vector<std::string> modality_order(const std::vector<LayerRoutes>& layers) {
  std::set<std::string> seen;
  for (const auto& l : layers)
    for (const auto& [m, cell] : l.modalities) seen.insert(m);
  std::vector<std::string> out;
  for (const char* first : {"text", "image"})
    if (seen.erase(first)) out.push_back(first);
  out.insert(out.end(), seen.begin(), seen.end());
  return out;
}

std::string file_part(const std::string& s) {
  std::string out;
  for (char c : s) out += std::isalnum(static_cast<unsigned char>(c)) || c == '-' ? c : '_';
  return out;
}

cv::Scalar modality_color(size_t m) {  // BGR; not the expert palette, so a modality is never read as an expert
  static const cv::Scalar kColors[] = {{150, 90, 40}, {40, 130, 230}, {120, 160, 60}, {140, 60, 160}};
  return kColors[m % 4];
}

// The figures, page sections and routes.json as they are made.
struct Report {
  std::string dir;
  RouteReport files;
  std::vector<HtmlSection> sections;
  json figures = json::array();
  // The table's facts about the layers.
  std::vector<std::string> row_names, modalities;
  int max_experts = 0, max_top_k = 0;
  std::set<int> expert_counts;
  std::string phase_note;
  std::string suffix;   // added to the file names of one phase's figures ("" or "_generate")
  std::string heading;  // added to the section headings of one phase's figures

  std::string path(const std::string& file) const { return (std::filesystem::path(dir) / file).string(); }
  void add(HtmlSection& section, const std::string& file, const std::string& caption) {
    files.pngs.push_back(path(file));
    section.figures.push_back({file, caption});
    figures.push_back({{"file", file}, {"caption", caption}});
  }
};

std::vector<std::string> expert_names(int n) {
  std::vector<std::string> out;
  for (int i = 0; i < n; ++i) out.push_back(std::to_string(i));
  return out;
}

std::string join(const std::vector<std::string>& parts) {
  std::string s;
  for (const auto& p : parts) s += (s.empty() ? "" : ", ") + p;
  return s;
}

// Heat maps layer x expert, one per modality and share kind; one colour scale per share kind for all modalities.
void heat_figures(Report& r, const std::vector<LayerRoutes>& layers) {
  HtmlSection s("Which experts each modality uses" + r.heading,
                "Rows are layers, columns experts; colour and number are the share of the modality's tokens routed "
                "to the expert. A balanced router gives about 1/E everywhere. A bright column in the image map that "
                "is dim in the text map is modality specialisation; one bright cell per row with dark neighbours is "
                "collapse. Grey cells: the layer has fewer experts, or saw no tokens of this modality. The mean "
                "gate maps show how much weight an expert gets when it is chosen (grey: never chosen).");
  // file kind, title, caption
  std::vector<std::array<std::string, 3>> kinds = {
      {"top1", "top-1 share", "top-1 share (tokens whose first choice is the expert)"}};
  if (r.max_top_k > 1)
    kinds.push_back({"topk", "top-k share", "top-k share (slots of the top-k that went to the expert)"});
  kinds.push_back({"gate", "mean gate weight", "mean gate weight of the expert over the tokens that chose it"});
  for (const auto& [kind, name, meaning] : kinds) {
    double v_max = 0;
    std::map<std::string, std::vector<std::vector<double>>> values;  // modality -> (L, E max)
    for (const auto& m : r.modalities)
      for (const auto& l : layers) {
        std::vector<double> row(size_t(r.max_experts), NAN);
        auto it = l.modalities.find(m);
        for (int e = 0; it != l.modalities.end() && e < l.n_experts; ++e) {
          const RoutingCell& c = it->second;
          if (kind == "gate" && c.topk_share[size_t(e)] <= 0) continue;  // never chosen: no mean
          row[size_t(e)] = (kind == "top1" ? c.top1_share : kind == "topk" ? c.topk_share : c.mean_gate)[size_t(e)];
          v_max = std::max(v_max, row[size_t(e)]);
        }
        values[m].push_back(row);
      }
    // Top-1 under topk_softmax gives every chosen expert the weight 1: such a map carries no information.
    bool informative = kind != "gate";
    for (const auto& [m, rows] : values)
      for (const auto& row : rows)
        for (double v : row) informative = informative || (std::isfinite(v) && std::fabs(v - 1.0) > 1e-6);
    if (!informative) {
      s.text += "\n\nNo mean gate maps: every chosen expert had the weight 1 (top-1 routing renormalised over the "
                "one choice), so they would show 1.00 everywhere.";
      continue;
    }
    for (const auto& m : r.modalities) {
      Heatmap h(m + " tokens: " + name + " per expert", "layer", "expert");
      h.row_names = r.row_names, h.col_names = expert_names(r.max_experts), h.values = values[m];
      h.v_max = v_max > 0 ? v_max : 1.0;
      std::string file = "heat_" + kind + "_" + file_part(m) + r.suffix + ".png";
      r.files.heatmaps[file] = plot_heatmap(r.path(file), h);
      r.add(s, file, m + " tokens (" + r.phase_note + "): " + meaning + ", per layer and expert.");
    }
  }
  r.sections.push_back(s);
}

// The expert mix per layer, one stacked bar per modality side by side; and the router entropy against ln E.
void mix_and_entropy_figures(Report& r, const std::vector<LayerRoutes>& layers) {
  HtmlSection mix("Expert mix per layer" + r.heading,
                  "For every layer one bar per modality, split into the experts' top-k shares (each bar sums to 1). "
                  "Bars of different make-up within a layer mean image and text tokens are routed differently.");
  StackedBars bars("Expert mix per layer (top-k share)", "layer", "top-k share");
  bars.group_names = r.row_names, bars.bar_names = r.modalities, bars.v_max = 1.0;
  for (const auto& e : expert_names(r.max_experts)) bars.segment_names.push_back("expert " + e);
  GroupedBars entropy("Router entropy per layer", "layer", "entropy (nats)");
  entropy.group_names = r.row_names, entropy.series_names = r.modalities;
  for (size_t m = 0; m < r.modalities.size(); ++m) entropy.series_colors.push_back(modality_color(m));
  for (const auto& l : layers) {
    std::vector<std::vector<double>> stacks;  // (M, E max); empty: no tokens of the modality
    std::vector<double> entropies;            // (M)
    for (const auto& m : r.modalities) {
      auto it = l.modalities.find(m);
      stacks.emplace_back();
      if (it != l.modalities.end()) (stacks.back() = it->second.topk_share).resize(size_t(r.max_experts), 0.0);
      entropies.push_back(it == l.modalities.end() ? NAN : it->second.entropy);
    }
    bars.values.push_back(stacks);
    entropy.values.push_back(entropies);
  }
  plot_stacked_bars(r.path("mix_topk" + r.suffix + ".png"), bars);
  r.add(mix, "mix_topk" + r.suffix + ".png", "Expert mix per layer (" + r.phase_note + "), bars in the order " + join(r.modalities) +
                                 "; a missing bar: no tokens of that modality at that layer.");
  r.sections.push_back(mix);

  HtmlSection ent("Router entropy" + r.heading,
                  "Mean over tokens of the entropy of the router's probabilities (nats). ln E is the most it can be "
                  "(every expert equally likely); near 0 the router is certain, which with a balanced load is "
                  "healthy specialisation and with an unbalanced one is collapse.");
  for (int e : r.expert_counts)
    if (e > 1 && entropy.ref_lines.size() < 3) entropy.ref_lines.push_back({"ln " + std::to_string(e), std::log(e)});
  plot_grouped_bars(r.path("entropy" + r.suffix + ".png"), entropy);
  r.add(ent, "entropy" + r.suffix + ".png", "Router entropy per layer and modality (" + r.phase_note + "); dashed: ln E.");
  r.sections.push_back(ent);
}

void patch_figures(Report& r, const std::vector<PatchGrid>& grids) {
  HtmlSection s("Expert per image patch",
                "Each image patch tinted with the colour of the expert its token chose first (the expert colours of "
                "the other figures). Regions of one colour mean the router groups patches by content.");
  for (size_t i = 0; i < grids.size(); ++i) {
    const PatchGrid& g = grids[i];
    PatchOverlay p;
    p.image_rgb = g.image_rgb, p.grid_h = g.grid_h, p.grid_w = g.grid_w, p.labels = g.top_expert;
    p.title = (g.title.empty() ? "image " + std::to_string(i) : g.title) +
              (g.layer.empty() ? "" : ", layer " + short_layer_names({g.layer})[0]);
    std::string file = "patches_" + std::to_string(i) + ".png";
    try {
      r.files.patches[file] = plot_patch_overlay(r.path(file), p);
    } catch (const std::runtime_error& e) {
      throw std::runtime_error("patch grid " + std::to_string(i) + ": " + e.what());
    }
    r.add(s, file, p.title + ": top-1 expert of each of the " + std::to_string(g.grid_h) + " x " +
                       std::to_string(g.grid_w) + " patches" + (g.layer.empty() ? "" : " at " + g.layer) + ".");
  }
  r.sections.push_back(s);
}

// routes.json's "layers" (every number drawn) and the page's table, one row per layer and modality.
json numbers(Report& r, const std::vector<LayerRoutes>& layers) {
  HtmlTable table("Per layer and modality. busiest: the expert with the largest top-1 share. CV^2: of the top-k "
                  "shares over the experts the modality may use (0 = even load).",
                  {"layer", "modality", "tokens", "E", "top-k", "entropy", "ln E", "busiest", "its top-1 share",
                   "CV^2"});
  bool per_expert = r.max_experts <= 16;
  if (per_expert) table.header.push_back("top-k share per expert");
  json out = json::array();
  for (const auto& l : layers) {
    json cells = json::object();
    for (const auto& m : r.modalities) {
      auto it = l.modalities.find(m);
      if (it == l.modalities.end()) continue;
      const RoutingCell& c = it->second;
      const int64_t tokens = int64_t(std::llround(c.tokens)), busiest = c.busiest_expert();
      const double cv2 = c.load_cv2();
      cells[m] = {{"tokens", tokens},
                  {"top1_share", c.top1_share},
                  {"topk_share", c.topk_share},
                  {"mean_gate", c.mean_gate},
                  {"entropy", c.entropy},
                  {"busiest_expert", busiest},
                  {"max_top1_share", c.max_top1_share()},
                  {"load_cv2", cv2}};
      std::vector<std::string> row = {l.label, m, std::to_string(tokens), std::to_string(l.n_experts),
                                      std::to_string(l.top_k), fixed(c.entropy), fixed(std::log(l.n_experts)),
                                      std::to_string(busiest), fixed(c.max_top1_share()), fixed(cv2)};
      if (per_expert) {
        std::string shares;
        for (double v : c.topk_share) shares += (shares.empty() ? "" : " ") + fixed(v, 2);
        row.push_back(shares);
      }
      table.rows.push_back(row);
    }
    out.push_back({{"name", l.name}, {"label", l.label}, {"n_experts", l.n_experts}, {"top_k", l.top_k},
                   {"modalities", cells}});
  }
  HtmlSection s("Numbers", "Every number drawn above is in routes.json" +
                               std::string(per_expert ? "." : "; this table leaves out the per-expert shares "
                                                              "when there are more than 16 experts."));
  s.tables.push_back(table);
  r.sections.push_back(s);
  return out;
}

// Expert load over training: per modality, each expert's share at the first, middle and last layer; then the mean
// over layers of CV^2 and of the busiest expert's share. out: the summary numbers for routes.json.
void load_figures(Report& r, const ExpertLoadHistory& h, json& out) {
  HtmlSection s("Expert load during training");
  if (h.steps.empty()) {
    s.text = "The metrics log has no expert_load lines, so there is nothing to draw here.";
    r.sections.push_back(s);
    return;
  }
  s.text = "Top-k share of each expert over each logging window, for the first, middle and last logged layer. "
           "A line that climbs towards 1 while the others fall to 0 is an expert collapse; lines that stay near the "
           "grey uniform share 1/E mean a balanced load. The last two charts summarise all layers.";
  std::vector<std::string> labels = short_layer_names(h.layers);
  std::vector<double> steps(h.steps.begin(), h.steps.end());
  std::vector<size_t> picked = {0, h.layers.size() / 2, h.layers.size() - 1};
  picked.erase(std::unique(picked.begin(), picked.end()), picked.end());
  LinePlot cv2("Load CV^2 over training (mean over layers)", "step", "CV^2 of top-k shares");
  LinePlot max_share("Busiest expert's top-k share over training (mean over layers)", "step", "max top-k share");
  cv2.y_min = max_share.y_min = 0.0;
  out = {{"steps", h.steps}, {"layers", h.layers}, {"mean_load_cv2", {}}, {"mean_max_share", {}}};
  std::vector<std::string> all = r.modalities;  // the stats' modalities first, so colours match the entropy chart
  for (const auto& [m, per_layer] : h.load)
    if (std::find(all.begin(), all.end(), m) == all.end()) all.push_back(m);
  std::vector<std::string> logged;
  std::vector<size_t> color_of;
  for (size_t m = 0; m < all.size(); ++m)
    if (h.load.count(all[m])) logged.push_back(all[m]), color_of.push_back(m);
  for (size_t mi = 0; mi < logged.size(); ++mi) {
    const auto& per_layer = h.load.at(logged[mi]);  // (L, S, E)
    for (size_t l : picked) {
      int n = h.n_experts[l];
      LinePlot plot(logged[mi] + " tokens, layer " + labels[l] + ": top-k share per expert", "step", "top-k share");
      plot.y_min = 0.0;  // the uniform share first, so the experts' lines are drawn over it
      plot.series.push_back({"uniform 1/E", {steps.front(), steps.back()}, {1.0 / n, 1.0 / n}, {170, 170, 170}});
      for (int e = 0; e < n; ++e) {
        Series ser{"expert " + std::to_string(e), steps, {}, category_color(e)};
        for (const auto& shares : per_layer[l]) ser.y.push_back(shares[size_t(e)]);
        plot.series.push_back(ser);
      }
      std::string file = "load_" + file_part(logged[mi]) + "_" + file_part(labels[l]) + ".png";
      plot_lines(r.path(file), plot);
      r.add(s, file, "Expert load of " + logged[mi] + " tokens at layer " + h.layers[l] + " (" + labels[l] +
                         "), top-k share per expert per logging window.");
    }
    cv::Scalar color = modality_color(color_of[mi]);
    Series c{logged[mi], steps, {}, color}, x{logged[mi], steps, {}, color};  // CV^2, max share
    for (size_t t = 0; t < steps.size(); ++t) {
      double sum_cv2 = 0, sum_max = 0;
      int n = 0;
      for (const auto& steps_of_layer : per_layer) {
        const auto& shares = steps_of_layer[t];
        if (shares.empty() || !std::isfinite(shares[0])) continue;
        sum_cv2 += cv_squared(shares);
        sum_max += *std::max_element(shares.begin(), shares.end());
        ++n;
      }
      c.y.push_back(n ? sum_cv2 / n : NAN);
      x.y.push_back(n ? sum_max / n : NAN);
    }
    auto nulls = [](const std::vector<double>& v) {
      json a = json::array();
      for (double y : v) a.push_back(std::isfinite(y) ? json(y) : json());
      return a;
    };
    out["mean_load_cv2"][logged[mi]] = nulls(c.y);
    out["mean_max_share"][logged[mi]] = nulls(x.y);
    cv2.series.push_back(c);
    max_share.series.push_back(x);
  }
  plot_lines(r.path("load_cv2.png"), cv2);
  r.add(s, "load_cv2.png", "CV^2 (variance / mean^2) of the experts' top-k shares, averaged over layers: 0 is a "
                           "perfectly even load; it grows as a few experts take over.");
  plot_lines(r.path("load_max_share.png"), max_share);
  r.add(s, "load_max_share.png", "Top-k share of the busiest expert, averaged over layers: 1/E when balanced, "
                                 "1/top_k when every token uses the same experts.");
  // the information the experts carry over training, first / middle / last layer of each block
  auto over_training = [&](const std::map<std::string, std::vector<double>>& per_layer, const std::string& file,
                           const std::string& title, const std::string& y_label, const std::string& caption) {
    if (per_layer.empty()) return json();
    std::vector<std::string> names;  // in the load's layer order, then any others
    for (const std::string& l : h.layers)
      if (per_layer.count(l)) names.push_back(l);
    for (const auto& [l, v] : per_layer)
      if (std::find(names.begin(), names.end(), l) == names.end()) names.push_back(l);
    const std::vector<std::string> short_names = short_layer_names(names);
    std::vector<size_t> shown = {0, names.size() / 2, names.size() - 1};
    shown.erase(std::unique(shown.begin(), shown.end()), shown.end());
    LinePlot plot(title, "step", y_label);
    plot.y_min = 0.0;
    json numbers = json::object();
    for (size_t i = 0; i < names.size(); ++i) {
      std::vector<double> y = per_layer.at(names[i]);
      y.resize(steps.size(), NAN);
      json a = json::array();
      for (double v : y) a.push_back(std::isfinite(v) ? json(v) : json());
      numbers[names[i]] = a;
      if (std::find(shown.begin(), shown.end(), i) != shown.end())
        plot.series.push_back({"layer " + short_names[i], steps, y, category_color(int(plot.series.size()))});
    }
    plot_lines(r.path(file), plot);
    r.add(s, file, caption);
    return numbers;
  };
  json mi = over_training(h.modality_mi, "modality_mi_over_training.png",
                          "I(top-1 expert; modality) over training", "nats",
                          "Mutual information between each token's top-1 expert and its modality (image or text) "
                          "per logging window, first, middle and last layer (nats; 0: the expert says nothing "
                          "about the modality, ln 2 = 0.69 at most for two balanced modalities).");
  if (!mi.is_null()) out["modality_mi"] = mi;
  json nmi = over_training(h.family_nmi, "family_nmi_over_training.png",
                           "I(top-1 expert; task family) / H(family) over training", "normalised MI",
                           "How much the top-1 expert tells about the record's task family per logging window "
                           "(the data.families setting; families: " + join(h.families) + "), first, middle and "
                           "last language-model layer: 0 when the choice is independent of the family, 1 when "
                           "it names it.");
  if (!nmi.is_null()) out["family_nmi"] = nmi, out["families"] = h.families;
  r.sections.push_back(s);
}

}  // namespace

// How much the top-1 expert says about the token's modality and task family, per layer (moe/routing_info.h);
// with tables per family, also the expert mix of each family.
void information_figures(Report& r, const RoutingTable& stats, const std::map<std::string, RoutingTable>& by_family,
                         json& out) {
  std::map<std::string, RoutingTable> tables = by_family;
  if (tables.empty()) tables["all"] = stats;
  const std::vector<LayerInformation> info = routing_information(tables, PhaseView::kPrefill);
  out = routing_information_json(info);
  if (info.empty()) return;
  std::vector<std::string> names;
  double tokens = 0;
  for (const auto& l : info) names.push_back(l.layer), tokens = std::max(tokens, l.tokens);
  const std::vector<std::string> labels = short_layer_names(names);
  const bool families = !by_family.empty();
  HtmlSection s("What the expert says about the token",
                "Mutual information between each token's top-1 expert and its modality" +
                    std::string(families ? " and its task family (the question's category)" : "") +
                    ", divided by the entropy of the modality" + std::string(families ? " or family" : "") +
                    ": 0 when the choice is independent of it, 1 when the expert alone tells it. Prompt tokens; "
                    "plug-in estimates from " + std::to_string(int64_t(tokens)) + " tokens per layer, biased "
                    "upwards by about (groups - 1)(experts - 1) / (2 tokens) nats.");
  GroupedBars mi("Normalised mutual information, top-1 expert vs token group", "layer", "I(expert; group) / H(group)");
  mi.group_names = labels;
  mi.series_names = {"modality"};
  if (families) mi.series_names.push_back("task family");
  mi.v_max = 1.0;
  for (const auto& l : info) {
    std::vector<double> row = {l.h_modality > 0 ? l.mi_modality / l.h_modality : NAN};
    if (families) row.push_back(l.h_family > 0 ? l.mi_family / l.h_family : NAN);
    mi.values.push_back(row);
  }
  plot_grouped_bars(r.path("information.png"), mi);
  r.add(s, "information.png", "Per layer: how much the top-1 expert tells about the token's modality" +
                                  std::string(families ? " and task family" : "") + " (0: nothing, 1: all).");
  if (families) {
    StackedBars mix("Top-1 expert share per task family (prompt tokens)", "layer", "top-1 share");
    mix.group_names = labels;
    mix.bar_names = info.front().families;
    mix.v_max = 1.0;
    size_t experts = 0;
    for (const auto& l : info)
      for (const auto& row : l.family_share) experts = std::max(experts, row.size());
    for (const auto& e : expert_names(int(experts))) mix.segment_names.push_back("expert " + e);
    for (const auto& l : info) {
      std::vector<std::vector<double>> stacks;
      for (const auto& row : l.family_share) {
        stacks.emplace_back();
        if (!row.empty() && std::isfinite(row.front())) (stacks.back() = row).resize(experts, 0.0);
      }
      mix.values.push_back(stacks);
    }
    plot_stacked_bars(r.path("family_mix.png"), mix);
    r.add(s, "family_mix.png", "Per layer one bar per task family, split into its tokens' top-1 experts; bars "
                               "in the order " + join(info.front().families) + ".");
  }
  r.sections.push_back(s);
}

// ---- the report --------------------------------------------------------------------------------------------------

RouteReport write_route_report(const std::string& out_dir, const json& stats, const RouteReportOptions& options) {
  return write_route_report(out_dir, RoutingTable::from_json(stats), options);
}

RouteReport write_route_report(const std::string& out_dir, const RoutingTable& stats,
                               const RouteReportOptions& options) {
  // "apart": the prefill figures, then the generate phase's (when it has tokens) under their own names
  const bool apart = options.phase == "apart";
  PhaseView view = PhaseView::kPrefill;
  try {
    if (!apart) view = parse_enum<PhaseView>(options.phase);
  } catch (const ConfigError&) {
    throw std::runtime_error("routing stats: phase must be prefill, generate, both or apart, got '" + options.phase +
                             "'");
  }
  std::vector<LayerRoutes> layers = routes_of(stats, view, apart ? "prefill" : options.phase);
  std::vector<LayerRoutes> generated;
  if (apart)
    for (const LayerRouting& l : stats.layers)
      if (!l.phase_cells[int(RoutePhase::kGenerate)].empty()) {
        generated = routes_of(stats, PhaseView::kGenerate, "generate");
        break;
      }
  ExpertLoadHistory history;  // read before anything is drawn, so a bad log leaves no half-written report
  if (!options.metrics_log.empty()) history = read_expert_load_log(options.metrics_log);
  std::error_code ec;
  std::filesystem::create_directories(out_dir, ec);
  if (ec || !std::filesystem::is_directory(out_dir))
    throw std::runtime_error(out_dir + ": cannot create the report folder (" + ec.message() + ")");
  Report r;
  r.dir = out_dir;
  r.files.html = r.path("index.html");
  r.files.json = r.path("routes.json");
  r.modalities = modality_order(layers);
  r.phase_note = options.phase == "both" ? "prefill and generate pooled" : apart ? "prefill phase" : options.phase + " phase";
  for (const auto& l : layers) {
    r.row_names.push_back(l.label);
    r.max_experts = std::max(r.max_experts, l.n_experts), r.max_top_k = std::max(r.max_top_k, l.top_k);
    r.expert_counts.insert(l.n_experts);
  }

  if (apart) r.heading = ": prompt tokens (prefill)";
  heat_figures(r, layers);
  mix_and_entropy_figures(r, layers);
  if (!generated.empty()) {  // the answers' tokens, drawn apart from the prompts'
    r.suffix = "_generate", r.heading = ": generated tokens", r.phase_note = "generate phase";
    heat_figures(r, generated);
    mix_and_entropy_figures(r, generated);
    r.suffix.clear(), r.heading.clear(), r.phase_note = "prefill phase";
  }
  json load_json;
  if (!options.metrics_log.empty()) load_figures(r, history, load_json);
  json information;
  information_figures(r, stats, options.by_family, information);
  if (!options.patch_grids.empty()) patch_figures(r, options.patch_grids);
  json out = {{"title", options.title}, {"phase", options.phase}, {"modalities", r.modalities},
              {"layers", numbers(r, layers)}, {"figures", r.figures}};
  if (!generated.empty()) out["layers_generate"] = numbers(r, generated);
  out["information"] = information;
  if (!load_json.is_null()) out["load_over_training"] = load_json;

  write_text_file(r.files.json, out.dump(1) + "\n");
  std::string subtitle = std::to_string(layers.size()) + " routed layers, " +
                         (r.expert_counts.size() == 1 ? "" : "up to ") + std::to_string(r.max_experts) +
                         " experts, top-" + std::to_string(r.max_top_k) + ", " + r.phase_note + "; modalities: " +
                         join(r.modalities);
  write_text_file(r.files.html, html_page(options.title, r.sections, subtitle));
  return r.files;
}

}  // namespace mole
