// The routing report (pipelines/route_report) and its charts (pipelines/plots) on synthetic RoutingStats tables:
// 3 layers x 4 experts with every image token on expert 2 and text spread out; 1, 7 and 64 experts; layers of
// different widths with missing modalities and phases. Checked: every PNG decodes at a sane size, the heat-map
// cell of the maximum has the colour at the top of the scale (found through the returned cell geometry), a patch
// is tinted with its expert's colour, the HTML links every PNG, routes.json repeats the inputs, a metrics log of 5
// steps gives the load-over-training charts, and bad input fails with a message that says what is wrong.
#include <catch2/catch.hpp>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <opencv2/imgcodecs.hpp>

#include "report/charts.h"
#include "report/route_report.h"
#ifdef MOLE_BINARY_DIR
#include "tests/test_util.h"
#endif

using Catch::Contains;
using json = nlohmann::json;
using namespace mole;

namespace {

namespace fs = std::filesystem;

// A fresh empty folder: in the project's test program (which defines MOLE_BINARY_DIR) the shared scratch_dir under
// the build folder; built alone, without LibTorch (which tests/test_util needs), one under the temp folder.
std::string scratch(const std::string& tag) {
#ifdef MOLE_BINARY_DIR
  return mole::test::scratch_dir("route_report_" + tag);
#else
  fs::path dir = fs::temp_directory_path() / "mole_test_route_report" / tag;
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir.string();
#endif
}

std::string read_text(const std::string& path) {
  std::ifstream in(path);
  REQUIRE(in.good());
  return std::string(std::istreambuf_iterator<char>(in), {});
}

cv::Vec3b bgr(const cv::Scalar& s) { return cv::Vec3b(uchar(s[0]), uchar(s[1]), uchar(s[2])); }

// One modality cell as RoutingStats::to_json writes it (the counts follow from the shares).
json cell(int64_t tokens, const std::vector<double>& top1, const std::vector<double>& topk, double entropy,
          int top_k = 2) {
  json c = {{"tokens", tokens}, {"top1_share", top1}, {"topk_share", topk}, {"entropy", entropy}};
  std::vector<int64_t> top1_n, topk_n, allowed;
  std::vector<double> gate;
  for (size_t e = 0; e < top1.size(); ++e) {
    top1_n.push_back(std::llround(top1[e] * tokens));
    topk_n.push_back(std::llround(topk[e] * tokens * top_k));
    gate.push_back(topk[e] > 0 ? 0.5 + 0.1 * double(e % 3) : 0.0);
    allowed.push_back(int64_t(e));
  }
  c["top1"] = top1_n, c["topk"] = topk_n, c["mean_gate"] = gate, c["allowed_experts"] = allowed;
  return c;
}

std::string layer_name(int l) { return "language_model.model.layers." + std::to_string(l) + ".mlp"; }

// n_layers x n_experts, top-2: image tokens all choose expert 2 first (top-k: half on 2, the rest spread), text
// tokens spread evenly with a small tilt per layer. Only the prefill phase, as after a forward pass over prompts.
json specialised_stats(int n_layers, int n_experts) {
  json layers = json::object(), order = json::array();
  for (int l = 0; l < n_layers; ++l) {
    std::vector<double> image_top1(n_experts, 0.0), image_topk(n_experts, n_experts > 1 ? 0.5 / (n_experts - 1) : 0);
    image_top1[std::min(2, n_experts - 1)] = 1.0;
    image_topk[std::min(2, n_experts - 1)] = n_experts > 1 ? 0.5 : 1.0;
    std::vector<double> text(n_experts, 1.0 / n_experts);
    if (n_experts > 1) text[0] += 0.01 * (l % 3), text[1] -= 0.01 * (l % 3);
    int top_k = std::min(2, n_experts);
    layers[layer_name(l)] = {{"n_experts", n_experts},
                             {"top_k", top_k},
                             {"prefill",
                              {{"text", cell(100 + l, text, text, std::log(double(n_experts)) * 0.9, top_k)},
                               {"image", cell(576, image_top1, image_topk, 0.3 + 0.01 * l, top_k)}}}};
    order.push_back(layer_name(l));
  }
  return {{"n_modalities", 2}, {"modality_names", {"text", "image"}}, {"layer_order", order}, {"layers", layers}};
}

// Every listed PNG exists, decodes, and has a sane size; the HTML links each by its file name.
void check_files(const RouteReport& report, int max_side = 2600) {
  REQUIRE(fs::exists(report.html));
  REQUIRE(fs::exists(report.json));
  std::string html = read_text(report.html);
  REQUIRE_FALSE(report.pngs.empty());
  for (const auto& png : report.pngs) {
    INFO(png);
    cv::Mat img = cv::imread(png);
    REQUIRE_FALSE(img.empty());
    CHECK(img.cols >= 200);
    CHECK(img.rows >= 150);
    CHECK(img.cols <= max_side);
    CHECK(img.rows <= max_side);
    CHECK_THAT(html, Contains("src=\"" + fs::path(png).filename().string() + "\""));
  }
}

}  // namespace

TEST_CASE("plots: heat map cells take the colours of the scale", "[unit][routes]") {
  std::string dir = scratch("heatmap");
  Heatmap h("shares", "layer", "expert");
  h.row_names = {"L0", "L1"};
  h.col_names = {"0", "1", "2"};
  h.values = {{0.0, 0.2, 0.4}, {0.1, NAN, 0.8}};
  HeatmapGeometry g = plot_heatmap(dir + "/h.png", h);
  cv::Mat img = cv::imread(dir + "/h.png");
  REQUIRE(img.size() == g.image);
  CHECK(g.v_max == 0.8);  // NaN v_max: the largest value
  CHECK(g.numbers_in_cells);
  CHECK(img.at<cv::Vec3b>(g.fill_point(1, 2)) == bgr(scale_color(1.0)));
  CHECK(img.at<cv::Vec3b>(g.fill_point(0, 0)) == bgr(scale_color(0.0)));
  CHECK(img.at<cv::Vec3b>(g.fill_point(0, 2)) == bgr(scale_color(0.5)));
  cv::Vec3b grey = img.at<cv::Vec3b>(g.fill_point(1, 1));  // the missing value
  CHECK((grey[0] == grey[1] && grey[1] == grey[2] && grey[0] > 150));
  // The colour bar has v_max at its top (2 px in, past the frame: a shade below the very top).
  cv::Vec3b bar_top = img.at<cv::Vec3b>(g.scale_bar.y + 2, g.scale_bar.x + g.scale_bar.width / 2);
  for (int ch = 0; ch < 3; ++ch) CHECK(std::abs(bar_top[ch] - bgr(scale_color(1.0))[ch]) <= 12);

  SECTION("many rows and columns stay within the size limit") {
    Heatmap big("big", "layer", "expert");
    for (int r = 0; r < 48; ++r) big.row_names.push_back("L" + std::to_string(r));
    for (int c = 0; c < 128; ++c) big.col_names.push_back(std::to_string(c));
    big.values.assign(48, std::vector<double>(128, 0.01));
    big.values[40][100] = 0.5;
    HeatmapGeometry bg = plot_heatmap(dir + "/big.png", big);
    cv::Mat bimg = cv::imread(dir + "/big.png");
    CHECK(bimg.cols <= 2400);
    CHECK(bimg.rows <= 2400);
    CHECK(bimg.at<cv::Vec3b>(bg.fill_point(40, 100)) == bgr(scale_color(1.0)));
  }
}

TEST_CASE("plots: line and bar charts draw, bad input names the file", "[unit][routes]") {
  std::string dir = scratch("charts");
  LinePlot lines("loss", "step", "loss");
  lines.series = {{"LoRA", {0, 10, 20}, {2.0, 1.5, 1.2}, {-1, -1, -1}},
                  {"MoLE", {0, 10, 20}, {2.1, 1.4, NAN}, {-1, -1, -1}}};
  plot_lines(dir + "/lines.png", lines);
  CHECK(cv::imread(dir + "/lines.png").cols == lines.width);

  StackedBars stacked("mix", "layer", "share");
  stacked.group_names = {"L0", "L1"};
  stacked.bar_names = {"text", "image"};
  stacked.segment_names = {"expert 0", "expert 1"};
  stacked.values = {{{0.5, 0.5}, {0.1, 0.9}}, {{0.5, 0.5}, {}}};
  plot_stacked_bars(dir + "/stacked.png", stacked);
  CHECK_FALSE(cv::imread(dir + "/stacked.png").empty());

  GroupedBars grouped("entropy", "layer", "nats");
  grouped.group_names = {"L0", "L1"};
  grouped.series_names = {"text", "image"};
  grouped.values = {{1.3, 0.2}, {1.2, NAN}};
  grouped.ref_lines = {{"ln 4", std::log(4.0)}};
  plot_grouped_bars(dir + "/grouped.png", grouped);
  CHECK_FALSE(cv::imread(dir + "/grouped.png").empty());

  LinePlot uneven = lines;
  uneven.series[1].y.pop_back();
  CHECK_THROWS_WITH(plot_lines(dir + "/uneven.png", uneven),
                    Contains("uneven.png") && Contains("'MoLE' has 3 x values and 2 y values"));
  CHECK_THROWS_WITH(plot_lines(dir + "/empty.png", LinePlot("nothing")),
                    Contains("empty.png") && Contains("no series"));
  StackedBars short_bar = stacked;
  short_bar.values[0][1] = {1.0};
  CHECK_THROWS_WITH(plot_stacked_bars(dir + "/s.png", short_bar), Contains("1 segments, expected 2"));
  CHECK_THROWS_WITH(plot_lines(dir + "/no/such/folder/x.png", lines),
                    Contains("no/such/folder/x.png") && Contains("cannot write"));
  CHECK_THROWS_WITH(plot_lines(dir + "/x.jpg", lines), Contains("not a .png"));
}

TEST_CASE("plots: the palette is distinct for small counts and defined for 64", "[unit][routes]") {
  std::set<std::vector<double>> first10, all64;
  for (int i = 0; i < 64; ++i) {
    cv::Scalar c = category_color(i);
    if (i < 10) first10.insert({c[0], c[1], c[2]});
    all64.insert({c[0], c[1], c[2]});
  }
  CHECK(first10.size() == 10);
  CHECK(all64.size() == 64);
  CHECK(categorical_palette(7).size() == 7);
  CHECK(categorical_palette(7)[2] == category_color(2));  // one colour per expert whatever the count
}

TEST_CASE("route report: image tokens on expert 2 show at the top of the scale", "[unit][routes]") {
  std::string dir = scratch("specialised");
  json stats = specialised_stats(3, 4);
  RouteReport report = write_route_report(dir, stats);
  check_files(report);
  for (const char* file : {"heat_top1_text.png", "heat_top1_image.png", "heat_topk_text.png", "heat_topk_image.png",
                           "heat_gate_text.png", "heat_gate_image.png", "mix_topk.png", "entropy.png"})
    CHECK(fs::exists(dir + "/" + file));
  // Mean gate weights, from cell(): 0.5 + 0.1 * (e % 3), so expert 2's 0.7 is the largest, at the top of the scale.
  const HeatmapGeometry& gg = report.heatmaps.at("heat_gate_image.png");
  cv::Mat gate = cv::imread(dir + "/heat_gate_image.png");
  CHECK(gg.v_max == Approx(0.7));
  CHECK(gate.at<cv::Vec3b>(gg.fill_point(0, 2)) == bgr(scale_color(1.0)));

  const HeatmapGeometry& g = report.heatmaps.at("heat_top1_image.png");
  cv::Mat img = cv::imread(dir + "/heat_top1_image.png");
  REQUIRE(g.cells.size() == 3);
  REQUIRE(g.cells[0].size() == 4);
  for (int l = 0; l < 3; ++l) {
    CHECK(img.at<cv::Vec3b>(g.fill_point(l, 2)) == bgr(scale_color(1.0)));
    CHECK(img.at<cv::Vec3b>(g.fill_point(l, 0)) == bgr(scale_color(0.0)));
  }
  // Text is drawn on the same scale (top-1 maps share one), so its cells are far from the top colour.
  const HeatmapGeometry& gt = report.heatmaps.at("heat_top1_text.png");
  cv::Mat text = cv::imread(dir + "/heat_top1_text.png");
  CHECK(gt.v_max == 1.0);
  CHECK(text.at<cv::Vec3b>(gt.fill_point(0, 2)) != bgr(scale_color(1.0)));

  // routes.json holds the input numbers.
  json routes = json::parse(read_text(report.json));
  CHECK(routes["modalities"] == json({"text", "image"}));
  REQUIRE(routes["layers"].size() == 3);
  for (int l = 0; l < 3; ++l) {
    const json& in = stats["layers"][layer_name(l)]["prefill"];
    const json& out = routes["layers"][l];
    CHECK(out["name"] == layer_name(l));
    CHECK(out["label"] == "L" + std::to_string(l));
    for (const char* m : {"text", "image"})
      for (const char* key : {"tokens", "top1_share", "topk_share", "mean_gate", "entropy"}) {
        INFO(m << " " << key);
        CHECK(out["modalities"][m][key] == in[m][key]);
      }
    CHECK(out["modalities"]["image"]["busiest_expert"] == 2);
    CHECK(out["modalities"]["image"]["max_top1_share"] == 1.0);
  }
  CHECK(routes["figures"].size() == report.pngs.size());
  std::string html = read_text(report.html);
  CHECK_THAT(html, Contains("<table>") && Contains("Expert mix per layer") && Contains("Router entropy"));
}

TEST_CASE("route report: 1, 7 and 64 experts", "[unit][routes]") {
  for (auto [n_layers, n_experts] : std::vector<std::pair<int, int>>{{2, 1}, {5, 7}, {24, 64}}) {
    DYNAMIC_SECTION(n_layers << " layers x " << n_experts << " experts") {
      std::string dir = scratch("experts_" + std::to_string(n_experts));
      RouteReport report = write_route_report(dir, specialised_stats(n_layers, n_experts));
      check_files(report, 2400);
      const HeatmapGeometry& g = report.heatmaps.at("heat_top1_image.png");
      cv::Mat img = cv::imread(dir + "/heat_top1_image.png");
      int top = std::min(2, n_experts - 1);
      CHECK(img.at<cv::Vec3b>(g.fill_point(n_layers - 1, top)) == bgr(scale_color(1.0)));
      CHECK(fs::exists(dir + "/heat_topk_image.png") == (n_experts > 1));  // top-1 only: no separate top-k map
    }
  }
}

TEST_CASE("route report: layers of different widths, missing modalities and pooled phases", "[unit][routes]") {
  std::string dir = scratch("uneven");
  json stats = specialised_stats(2, 4);
  // A third layer with 6 experts, top-1, that saw text only, in both phases.
  std::vector<double> a = {0.5, 0.1, 0.1, 0.1, 0.1, 0.1}, b = {0.0, 0.0, 0.0, 0.0, 0.0, 1.0};
  stats["layers"]["vision.extra"] = {{"n_experts", 6},
                                     {"top_k", 1},
                                     {"prefill", {{"text", cell(30, a, a, 1.2, 1)}}},
                                     {"generate", {{"text", cell(10, b, b, 0.1, 1)}}}};
  stats["layer_order"].push_back("vision.extra");

  RouteReport report = write_route_report(dir, stats);
  check_files(report);
  const HeatmapGeometry& g = report.heatmaps.at("heat_top1_image.png");
  cv::Mat img = cv::imread(dir + "/heat_top1_image.png");
  REQUIRE(g.cells.size() == 3);
  REQUIRE(g.cells[0].size() == 6);  // as wide as the widest layer
  cv::Vec3b missing = img.at<cv::Vec3b>(g.fill_point(2, 0));  // no image tokens at that layer
  CHECK((missing[0] == missing[1] && missing[1] == missing[2]));
  cv::Vec3b beyond = img.at<cv::Vec3b>(g.fill_point(0, 5));  // layer 0 has 4 experts
  CHECK((beyond[0] == beyond[1] && beyond[1] == beyond[2]));

  RouteReportOptions both;
  both.phase = "both";
  RouteReport pooled = write_route_report(scratch("pooled"), stats, both);
  json routes = json::parse(read_text(pooled.json));
  const json& text = routes["layers"][2]["modalities"]["text"];
  CHECK(text["tokens"] == 40);
  CHECK(text["top1_share"][0].get<double>() == Approx(0.5 * 30 / 40));
  CHECK(text["top1_share"][5].get<double>() == Approx((0.1 * 30 + 1.0 * 10) / 40));
  CHECK(text["entropy"].get<double>() == Approx((1.2 * 30 + 0.1 * 10) / 40));
  CHECK(routes["layers"][2]["modalities"].count("image") == 0);

  RouteReportOptions generate;
  generate.phase = "generate";
  std::string gen_dir = scratch("generate");
  RouteReport gen_report = write_route_report(gen_dir, stats, generate);
  json gen = json::parse(read_text(gen_report.json));
  CHECK(gen["layers"][2]["modalities"]["text"]["tokens"] == 10);
  CHECK(gen["modalities"] == json({"text"}));
  // Generated tokens all chose expert 5: the other experts have no mean gate weight (grey), expert 5 has one.
  const HeatmapGeometry& gg = gen_report.heatmaps.at("heat_gate_text.png");
  cv::Mat gate = cv::imread(gen_dir + "/heat_gate_text.png");
  cv::Vec3b never = gate.at<cv::Vec3b>(gg.fill_point(2, 0));
  CHECK((never[0] == never[1] && never[1] == never[2]));
  CHECK(gate.at<cv::Vec3b>(gg.fill_point(2, 5)) == bgr(scale_color(1.0)));  // the only value: the top

  // apart: the prompts' figures under the usual names, the generated tokens' as *_generate.png
  RouteReportOptions apart;
  apart.phase = "apart";
  std::string apart_dir = scratch("apart");
  RouteReport split = write_route_report(apart_dir, stats, apart);
  json both_phases = json::parse(read_text(split.json));
  CHECK(both_phases["layers"][2]["modalities"]["text"]["tokens"] == 30);
  CHECK(both_phases["layers_generate"][2]["modalities"]["text"]["tokens"] == 10);
  for (const char* file : {"heat_top1_text.png", "heat_top1_text_generate.png", "mix_topk.png",
                           "mix_topk_generate.png", "entropy_generate.png"})
    CHECK(std::filesystem::exists(apart_dir + "/" + file));
  CHECK(read_text(split.html).find("generated tokens") != std::string::npos);
}

TEST_CASE("route report: a patch is tinted with the colour of its expert", "[unit][routes]") {
  std::string dir = scratch("patches");
  PatchGrid grid;
  grid.image_rgb = cv::Mat(100, 120, CV_8UC3, cv::Scalar(0, 0, 0));  // black: the tint alone sets the colour
  grid.grid_h = 4, grid.grid_w = 4;
  grid.top_expert = {0, 1, 2, 3, 4, 5, 6, 7, -1, -1, 2, 2, 63, 2, 2, 2};
  grid.layer = layer_name(1);
  grid.title = "black square";
  RouteReportOptions options;
  options.patch_grids = {grid};
  RouteReport report = write_route_report(dir, specialised_stats(2, 8), options);
  check_files(report);
  const PatchOverlayGeometry& g = report.patches.at("patches_0.png");
  cv::Mat img = cv::imread(dir + "/patches_0.png");
  REQUIRE(g.cells.size() == 16);
  for (int i : {0, 2, 7, 10, 12}) {
    int expert = grid.top_expert[size_t(i)];
    cv::Rect c = g.cells[size_t(i)];
    cv::Vec3b px = img.at<cv::Vec3b>(c.y + c.height / 2, c.x + c.width / 2);
    cv::Scalar want = category_color(expert) * kPatchTintAlpha;
    INFO("patch " << i << " expert " << expert);
    for (int ch = 0; ch < 3; ++ch) CHECK(std::abs(px[ch] - want[ch]) <= 1.0);
  }
  cv::Rect untinted = g.cells[8];
  CHECK(img.at<cv::Vec3b>(untinted.y + untinted.height / 2, untinted.x + untinted.width / 2) == cv::Vec3b(0, 0, 0));
  CHECK_THAT(read_text(report.html), Contains("black square, layer L1"));

  PatchGrid wrong = grid;
  wrong.top_expert.pop_back();
  options.patch_grids = {wrong};
  CHECK_THROWS_WITH(write_route_report(dir, specialised_stats(2, 8), options),
                    Contains("patch grid 0") && Contains("15 labels for a 4 x 4 grid"));
}

TEST_CASE("route report: a metrics log of 5 steps gives the load over training", "[unit][routes]") {
  std::string dir = scratch("load");
  std::string log = dir + "/metrics.jsonl";
  {
    std::ofstream out(log);
    out << "{\"step\": 0, \"loss\": 2.5}\n\n";  // lines without expert_load are skipped, blank lines too
    for (int s = 1; s <= 5; ++s) {
      double d = 0.05 * s;  // expert 2 takes over the image tokens as training goes on
      json load = {{"layers", {layer_name(0), layer_name(1), layer_name(2)}},
                   {"text", {{0.25, 0.25, 0.25, 0.25}, {0.25, 0.25, 0.25, 0.25}, {0.3, 0.2, 0.25, 0.25}}},
                   {"image",
                    {{0.25 - d, 0.25 - d, 0.25 + 2 * d, 0.25}, {0.25, 0.25, 0.25, 0.25}, {0.1, 0.1, 0.7, 0.1}}}};
      json line = {{"step", s * 100}, {"loss", 2.0 - 0.1 * s}, {"expert_load", load},
                   {"expert_modality_mi", {{"mean", 0.1 * s}, {"layers", {{layer_name(0), 0.1 * s}}}}}};
      if (s >= 3)  // from step 300 the data has families (the information block of a language-model layer)
        line["expert_family"] = {{"families", {"vqa", "mc"}}, {"mean_nmi", 0.2},
                                 {"layers", {{layer_name(1), {{"tokens", 10.0}, {"mi", 0.1}, {"nmi", 0.02 * s}}}}}};
      out << line.dump() << "\n";
    }
  }
  ExpertLoadHistory h = read_expert_load_log(log);
  CHECK(h.steps == std::vector<int64_t>{100, 200, 300, 400, 500});
  CHECK(h.layers.size() == 3);
  REQUIRE(h.load.count("image") == 1);
  CHECK(h.load["image"][0][4] == std::vector<double>{0.0, 0.0, 0.75, 0.25});
  REQUIRE(h.modality_mi.count(layer_name(0)) == 1);
  CHECK(h.modality_mi[layer_name(0)][4] == Approx(0.5));
  REQUIRE(h.family_nmi.count(layer_name(1)) == 1);
  REQUIRE(h.family_nmi[layer_name(1)].size() == 5);
  CHECK(std::isnan(h.family_nmi[layer_name(1)][1]));  // not logged before step 300
  CHECK(h.family_nmi[layer_name(1)][4] == Approx(0.1));
  CHECK(h.families == std::vector<std::string>{"vqa", "mc"});

  RouteReportOptions options;
  options.metrics_log = log;
  RouteReport report = write_route_report(dir, specialised_stats(3, 4), options);
  check_files(report);
  for (const char* file : {"load_text_L0.png", "load_text_L1.png", "load_text_L2.png", "load_image_L0.png",
                           "load_image_L1.png", "load_image_L2.png", "load_cv2.png", "load_max_share.png",
                           "modality_mi_over_training.png", "family_nmi_over_training.png"})
    CHECK(fs::exists(dir + "/" + file));
  json routes = json::parse(read_text(report.json));
  const json& over = routes["load_over_training"];
  CHECK(over["steps"].size() == 5);
  CHECK(over["family_nmi"][layer_name(1)][0].is_null());
  CHECK(over["family_nmi"][layer_name(1)][2].get<double>() == Approx(0.06));
  CHECK(over["modality_mi"][layer_name(0)][0].get<double>() == Approx(0.1));
  // Mean over the three layers of the busiest image expert's share at step 500: (0.75 + 0.25 + 0.7) / 3.
  CHECK(over["mean_max_share"]["image"][4].get<double>() == Approx((0.75 + 0.25 + 0.7) / 3));
  CHECK(over["mean_load_cv2"]["text"][0].get<double>() > 0.0);  // layer 2's text load is a little uneven
  CHECK(over["mean_load_cv2"]["image"][4].get<double>() > over["mean_load_cv2"]["image"][0].get<double>());
}

TEST_CASE("route report: bad input fails with a message that says what is wrong", "[unit][routes]") {
  std::string dir = scratch("errors");
  CHECK_THROWS_WITH(write_route_report(dir, json::object()), Contains("non-empty \"layers\""));
  CHECK_THROWS_WITH(write_route_report(dir, json::array()), Contains("RoutingStats::to_json"));

  json stats = specialised_stats(2, 4);
  RouteReportOptions options;
  options.phase = "decode";
  CHECK_THROWS_WITH(write_route_report(dir, stats, options), Contains("prefill, generate, both or apart"));
  options.phase = "generate";  // nothing was generated
  CHECK_THROWS_WITH(write_route_report(dir, stats, options), Contains("no tokens recorded in phase 'generate'"));

  json short_share = stats;
  short_share["layers"][layer_name(1)]["prefill"]["image"]["top1_share"] = {1.0, 0.0};
  CHECK_THROWS_WITH(write_route_report(dir, short_share),
                    Contains(layer_name(1)) && Contains("top1_share") && Contains("n_experts = 4"));
  json no_experts = stats;
  no_experts["layers"][layer_name(0)].erase("n_experts");
  CHECK_THROWS_WITH(write_route_report(dir, no_experts), Contains("n_experts"));
  json unknown = stats;
  unknown["layer_order"].push_back("ghost");
  CHECK_THROWS_WITH(write_route_report(dir, unknown), Contains("'ghost' is in layer_order but not in layers"));

  options.phase = "prefill";
  options.metrics_log = dir + "/missing.jsonl";
  CHECK_THROWS_WITH(write_route_report(dir, stats, options), Contains("missing.jsonl") && Contains("cannot open"));
  options.metrics_log = dir + "/bad.jsonl";
  {
    std::ofstream out(options.metrics_log);
    out << "{\"step\": 1}\n{\"step\": 2, \"expert_load\": {\"layers\": [\"a\"], \"text\": [[0.5, 0.5], [1.0]]}}\n";
  }
  CHECK_THROWS_WITH(write_route_report(dir, stats, options), Contains("bad.jsonl:2") && Contains("one list per layer"));
  {
    std::ofstream out(options.metrics_log);
    out << "{\"step\": 1}\n{\"step\": 2, \"loss\": \n";
  }
  CHECK_THROWS_WITH(read_expert_load_log(options.metrics_log), Contains("bad.jsonl:2: not a JSON line"));
  {
    std::ofstream out(options.metrics_log);
    out << "{\"step\": 2, \"expert_load\": {\"layers\": [\"a\"], \"text\": [[0.5, 0.5]]}, "
           "\"expert_family\": {\"layers\": {\"a\": {\"nmi\": \"high\"}}}}\n";
  }
  CHECK_THROWS_WITH(read_expert_load_log(options.metrics_log),
                    Contains("bad.jsonl:1") && Contains("expert_family.layers.a.nmi must be a number"));

  std::string file = dir + "/a_file";
  std::ofstream(file) << "x";
  CHECK_THROWS_WITH(write_route_report(file, stats), Contains("cannot create the report folder"));
}

TEST_CASE("route report: short layer names and the shared HTML page", "[unit][routes]") {
  CHECK(short_layer_names({layer_name(0), layer_name(12)}) == std::vector<std::string>{"L0", "L12"});
  CHECK(short_layer_names({layer_name(3)}) == std::vector<std::string>{"L3"});
  CHECK(short_layer_names({"m.layers.0.mlp.up_proj", "m.layers.0.mlp.down_proj", "m.layers.1.mlp.up_proj"}) ==
        std::vector<std::string>{"L0.mlp.up_proj", "L0.mlp.down_proj", "L1.mlp.up_proj"});
  CHECK(short_layer_names({"router", "router"}) == std::vector<std::string>{"router", "router"});  // collision

  HtmlSection s("Accuracy <top-1>", "First paragraph.\n\nSecond & last.");
  s.figures.push_back({"loss.png", "Loss \"curves\""});
  HtmlTable t("scores", {"adapter", "accuracy"});
  t.rows = {{"LoRA", "0.61"}, {"MoLE", "0.64"}};
  s.tables.push_back(t);
  std::string page = html_page("Demo", {s}, "sub");
  CHECK_THAT(page, Contains("<h2>Accuracy &lt;top-1&gt;</h2>") && Contains("<p>First paragraph.</p>") &&
                       Contains("<p>Second &amp; last.</p>") && Contains("<img src=\"loss.png\"") &&
                       Contains("Loss &quot;curves&quot;") && Contains("<td>MoLE</td><td>0.64</td>"));
}

TEST_CASE("route report: routing by task family and the information figures", "[unit][routes]") {
  json stats = specialised_stats(2, 4);
  const RoutingTable table = RoutingTable::from_json(stats);
  RouteReportOptions options;
  options.by_family["count"] = table;
  options.by_family["colour"] = table;
  std::string dir = scratch("by_family");
  RouteReport report = write_route_report(dir, table, options);
  CHECK(std::filesystem::exists(dir + "/information.png"));
  CHECK(std::filesystem::exists(dir + "/family_mix.png"));
  json routes = json::parse(read_text(report.json));
  REQUIRE(routes["information"]["layers"].size() == 2);
  const json& l0 = routes["information"]["layers"][0];
  CHECK(l0["families"] == json({"colour", "count"}));
  CHECK(l0["mi_family"].get<double>() == Approx(0.0).margin(1e-12));  // the two families route alike
  CHECK(l0["mi_modality"].get<double>() > 0.0);                      // the stats specialise by modality
  CHECK(read_text(report.html).find("What the expert says about the token") != std::string::npos);

  // without families: the modality's information alone, no family figure
  std::string plain = scratch("no_family");
  write_route_report(plain, table, RouteReportOptions{});
  CHECK(std::filesystem::exists(plain + "/information.png"));
  CHECK_FALSE(std::filesystem::exists(plain + "/family_mix.png"));
}
