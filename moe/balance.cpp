#include "moe/balance.h"

#include <cmath>
#include <functional>
#include <limits>

#include <torch/torch.h>

#include "core/json_config.h"

// N=tokens E=experts K=top-k P=width of an expert's projection G=groups of tokens
namespace mole {

void BalanceLossOptions::validate(const FieldPath& at) const {
  const std::pair<const char*, double> coefficients[] = {
      {"switch_aux", switch_aux}, {"importance", importance}, {"load", load},
      {"z_loss", z_loss},         {"sq_dev", sq_dev},         {"contrastive", contrastive}};
  for (const auto& [key, c] : coefficients)
    if (!(c >= 0.0)) at.fail(key, "must be a coefficient >= 0, got " + std::to_string(c));
  if (!(contrastive_tau > 0.0 && std::isfinite(contrastive_tau)))
    at.fail("contrastive_tau", "must be a temperature > 0, got " + std::to_string(contrastive_tau));
}

bool BalanceLossOptions::any() const {
  return switch_aux != 0.0 || importance != 0.0 || load != 0.0 || z_loss != 0.0 || sq_dev != 0.0 ||
         contrastive != 0.0;
}

namespace {

// Routers give float32; float64 is kept so that tests can check gradients in float64.
torch::ScalarType compute_dtype(const Routing& r) {
  return r.logits.defined() && r.logits.scalar_type() == torch::kFloat64 ? torch::kFloat64 : torch::kFloat32;
}

void check_matrix(const torch::Tensor& t, const char* name, int64_t n, int64_t cols) {
  TORCH_CHECK(t.defined(), "balance loss: routing.", name, " is missing");
  TORCH_CHECK(t.dim() == 2 && t.size(0) == n && t.size(1) == cols, "balance loss: routing.", name, " should be (",
              n, ", ", cols, "), got ", t.sizes());
}

// The tokens and experts of G groups as 0/1 weights: no host sync, no boolean indexing.
struct Groups {
  torch::Tensor token;       // (G, N) bool
  torch::Tensor token_w;     // (G, N) float
  torch::Tensor expert;      // (G, E) bool
  torch::Tensor expert_w;    // (G, E) float
  torch::Tensor any_token;   // (N) bool: in some group; rows outside every group may hold anything (padding)
  torch::Tensor has_tokens;  // (G) float, T > 0
  torch::Tensor t_safe;      // (G) float, max(T, 1)
  torch::Tensor n_experts;   // (G) float, n
  torch::Tensor n_safe;      // (G) float, max(n, 1)
  bool all_experts = false;  // every group considers every expert
  torch::ScalarType dtype = torch::kFloat32;
};

// token (G, N) bool; expert (G, E) bool or undefined for all experts.
Groups make_groups(const Routing& r, const torch::Tensor& token, const torch::Tensor& expert) {
  Groups g;
  g.dtype = compute_dtype(r);
  int64_t n_experts = r.logits.size(1);
  auto fopts = torch::TensorOptions().dtype(g.dtype).device(r.logits.device());
  g.token = token;
  g.token_w = token.to(g.dtype);
  g.all_experts = !expert.defined();
  g.expert = g.all_experts ? torch::ones({token.size(0), n_experts}, fopts.dtype(torch::kBool)) : expert;
  g.expert_w = g.expert.to(g.dtype);
  g.any_token = token.any(0);
  auto n_tokens = g.token_w.sum(1);  // (G)
  g.has_tokens = (n_tokens > 0).to(g.dtype);
  g.t_safe = n_tokens.clamp_min(1.0);
  g.n_experts = g.expert_w.sum(1);
  g.n_safe = g.n_experts.clamp_min(1.0);
  return g;
}

// x (N, E) in the compute dtype, rows outside every group zeroed (so NaN on padding cannot leak through a matmul).
torch::Tensor clean_rows(const torch::Tensor& x, const Groups& g) {
  return x.to(g.dtype).masked_fill(g.any_token.logical_not().unsqueeze(1), 0.0);
}

// (N, E) in the compute dtype: how many of the token's top-k slots (or only its top-1 slot) hold expert i.
torch::Tensor slot_counts(const Routing& r, const Groups& g, bool top1_only) {
  auto index = top1_only ? r.topk_index.narrow(1, 0, 1) : r.topk_index;                     // (N, K')
  auto experts = torch::arange(r.logits.size(1), r.topk_index.options());                    // (E)
  return (index.unsqueeze(2) == experts).sum(1).to(g.dtype).masked_fill(g.any_token.logical_not().unsqueeze(1), 0.0);
}

// Row-wise CV^2 over each group's experts: unbiased var / (mean^2 + 1e-10) (Shazeer's cv_squared; 0 for n <= 1).
torch::Tensor cv_squared(const torch::Tensor& x, const Groups& g) {  // x (G, E) -> (G)
  auto mean = (x * g.expert_w).sum(1) / g.n_safe;                       // (G)
  auto dev = (x - mean.unsqueeze(1)) * g.expert_w;                      // (G, E)
  auto var = dev.pow(2).sum(1) / (g.n_experts - 1.0).clamp_min(1.0);    // (G)
  return var / (mean.pow(2) + 1e-10);
}

// Each *_groups returns (G): the loss of every group, 0 for a group without tokens.

torch::Tensor switch_aux_groups(const Routing& r, const Groups& g, bool use_topk) {
  int64_t n = r.logits.size(0), e = r.logits.size(1);
  check_matrix(r.probs, "probs", n, e);
  check_matrix(r.topk_index, "topk_index", n, r.topk_index.defined() ? r.topk_index.size(1) : 0);
  auto mean_prob = g.token_w.matmul(clean_rows(r.probs, g)) / g.t_safe.unsqueeze(1);  // (G, E) P_i
  int64_t slots_per_token = use_topk ? r.topk_index.size(1) : 1;
  // f_i: a count, no gradient (detach() only documents it).
  auto fraction = (g.token_w.matmul(slot_counts(r, g, !use_topk)) /
                   (g.t_safe * double(slots_per_token)).unsqueeze(1)).detach();  // (G, E) f_i
  // N * sum_i f_i * P_i
  return g.n_experts * (fraction * mean_prob * g.expert_w).sum(1);
}

torch::Tensor importance_groups(const Routing& r, const Groups& g) {
  check_matrix(r.gates, "gates", r.logits.size(0), r.logits.size(1));
  auto importance = g.token_w.matmul(clean_rows(r.gates, g));  // (G, E) Importance_i = sum_t G(x_t)_i
  return cv_squared(importance, g);
}

torch::Tensor load_groups(const Routing& r, const Groups& g) {
  int64_t n = r.logits.size(0);
  check_matrix(r.topk_index, "topk_index", n, r.topk_index.defined() ? r.topk_index.size(1) : 0);
  auto counts = g.token_w.matmul(slot_counts(r, g, /*top1_only=*/false));  // (G, E) tokens with i in their top-k
  return cv_squared(counts, g).detach();
}

torch::Tensor z_loss_groups(const Routing& r, const Groups& g) {
  auto z = r.logits.to(g.dtype).unsqueeze(0);  // (1, N, E)
  if (!g.all_experts)                           // experts not considered leave the logsumexp
    z = torch::where(g.expert.unsqueeze(1), z, -std::numeric_limits<double>::infinity());  // (G, N, E)
  // Rows outside the group become 0 so their logsumexp is finite and its backward is not NaN.
  z = torch::where(g.token.unsqueeze(2), z, 0.0);           // (G, N, E)
  auto lse = torch::logsumexp(z, /*dim=*/2);                // (G, N)
  // (1/T) sum_t (logsumexp_i z_ti)^2
  return torch::where(g.token, lse.pow(2), 0.0).sum(1) / g.t_safe;
}

torch::Tensor sq_dev_groups(const Routing& r, const Groups& g) {
  check_matrix(r.gates, "gates", r.logits.size(0), r.logits.size(1));
  auto mean_gate = g.token_w.matmul(clean_rows(r.gates, g)) / g.t_safe.unsqueeze(1);  // (G, E)
  // sum_i (1/N - mean_t G(x_t)_i)^2
  auto dev = (g.n_safe.reciprocal().unsqueeze(1) - mean_gate) * g.expert_w;
  return dev.pow(2).sum(1) * g.has_tokens;
}

// The contrastive loss of every group (G), and 1 where some token of the group contributed to it (G): under
// top-1 a token contributes only when another token of its group shares its expert.
struct GroupTerm {
  torch::Tensor loss, present;
};

GroupTerm contrastive_groups(const Routing& r, const Groups& g, const torch::Tensor& projections, double tau) {
  namespace F = torch::nn::functional;
  const int64_t n = r.logits.size(0), e = r.logits.size(1);
  check_matrix(r.topk_index, "topk_index", n, r.topk_index.defined() ? r.topk_index.size(1) : 0);
  TORCH_CHECK(projections.defined() && projections.dim() == 3 && projections.size(0) == n && projections.size(1) == e,
              "balance loss contrastive: projections should be (", n, ", ", e, ", P), got ",
              projections.defined() ? projections.sizes() : torch::IntArrayRef{});
  TORCH_CHECK(tau > 0.0 && std::isfinite(tau), "balance loss contrastive: tau must be > 0, got ", tau);
  const int64_t k = r.topk_index.size(1), p = projections.size(2);
  const double inf = std::numeric_limits<double>::infinity();
  auto device = r.logits.device();
  auto experts = torch::arange(e, r.topk_index.options().device(device));  // (E)
  // o_ti = normalise(A_i x_t); rows outside every group become 0 first, so NaN on padding cannot leak.
  auto o = torch::where(g.any_token.view({n, 1, 1}), projections.to(device, g.dtype), 0.0);  // (N, E, P)
  o = F::normalize(o, F::NormalizeFuncOptions().dim(2));                                     // (N, E, P)
  // The chosen experts; rows outside every group get 0..K-1, distinct and in range, and are dropped at the end.
  auto index = torch::where(g.any_token.unsqueeze(1), r.topk_index.to(device),
                            torch::arange(k, experts.options()).unsqueeze(0));  // (N, K)
  auto chosen = (index.unsqueeze(2) == experts).any(1);                          // (N, E)
  // Who may be a negative: the experts the token may use and its group considers; its chosen ones always
  // stand in the denominator. Each token is in at most one group, so its groups' experts are one row.
  auto candidate = r.allowed.defined() ? r.allowed.to(device).to(torch::kBool) : torch::ones_like(chosen);
  if (r.allowed.defined()) check_matrix(r.allowed, "allowed", n, e);
  if (!g.all_experts) candidate = candidate & (g.token_w.t().matmul(g.expert_w) > 0.5);  // (N, E)
  candidate = candidate | chosen;

  torch::Tensor per_token, contributes;  // (N) the loss of each token; (G, N) the tokens each group averages
  if (k >= 2) {  // the survey's form: the other chosen experts are the positives
    auto anchor = o.gather(1, index.unsqueeze(2).expand({n, k, p}));                 // (N, K, P) o_ti, i chosen
    auto sim = torch::bmm(anchor, o.transpose(1, 2)) / tau;                          // (N, K, E) sim(o_ti, o_tm)
    auto negative = candidate.unsqueeze(1) & (index.unsqueeze(2) != experts);        // (N, K, E) m != i
    auto log_denominator = torch::logsumexp(sim.masked_fill(negative.logical_not(), -inf), 2);  // (N, K)
    auto pair = sim.gather(2, index.unsqueeze(1).expand({n, k, k}));                 // (N, K, K) sim(o_ti, o_tj)
    // mean over ordered pairs i != j of -log(exp(sim_ij) / sum_{m != i} exp(sim_im)) = lse_i - sim_ij
    auto pair_sim = pair.sum({1, 2}) - pair.diagonal(0, 1, 2).sum(1);               // (N) sum over i != j
    per_token = (double(k - 1) * log_denominator.sum(1) - pair_sim) / double(k * (k - 1));
    contributes = g.token_w;
  } else {  // MoELoRA's form: the same expert on the other tokens of the group is the positive, via its centroid
    auto top1 = index.select(1, 0);                                                    // (N)
    auto anchor = o.gather(1, top1.view({n, 1, 1}).expand({n, 1, p})).squeeze(1);     // (N, P) o_ti
    // each token's (group, top-1 expert) cell as a one-hot row: (N, G*E)
    auto expert_onehot = (top1.unsqueeze(1) == experts).to(g.dtype);                   // (N, E)
    auto cell = (g.token_w.t().unsqueeze(2) * expert_onehot.unsqueeze(1)).reshape({n, -1});  // (N, G*E)
    auto cell_sum = cell.t().matmul(anchor);                                           // (G*E, P) sum of o_si
    auto others = cell.matmul(cell_sum) - anchor;            // (N, P) sum over the other tokens s of t's cell
    auto n_others = cell.matmul(cell.sum(0)) - 1.0;          // (N) -1 outside every group
    auto positive = F::normalize(others, F::NormalizeFuncOptions().dim(1));            // (N, P) p_i^(-t)
    auto pos_sim = (anchor * positive).sum(1) / tau;                                   // (N) sim(o_ti, p)
    auto neg_sim = torch::bmm(o, anchor.unsqueeze(2)).squeeze(2) / tau;                // (N, E) sim(o_ti, o_tm)
    auto negative = candidate & (top1.unsqueeze(1) != experts);                        // (N, E) m != i
    auto logits = torch::cat({pos_sim.unsqueeze(1), neg_sim.masked_fill(negative.logical_not(), -inf)}, 1);
    // -log( exp(sim(o_ti, p)) / (exp(sim(o_ti, p)) + sum_{m != i} exp(sim(o_ti, o_tm))) )
    per_token = torch::logsumexp(logits, 1) - pos_sim;                                 // (N)
    contributes = g.token_w * (n_others > 0.5).to(g.dtype).unsqueeze(0);               // (G, N)
  }
  per_token = torch::where(g.any_token, per_token, 0.0);  // placeholder rows out, with no gradient
  auto weight = contributes.sum(1);                       // (G) tokens that contribute
  return {contributes.matmul(per_token) / weight.clamp_min(1.0), (weight > 0).to(g.dtype)};
}

// One group from the public single-mask form; mask / experts undefined = all.
Groups single_group(const Routing& r, const torch::Tensor& mask, const torch::Tensor& experts) {
  TORCH_CHECK(r.logits.defined() && r.logits.dim() == 2, "balance loss: routing.logits should be (N, E)");
  int64_t n = r.logits.size(0), e = r.logits.size(1);
  torch::Tensor token = mask;
  if (!token.defined()) token = torch::ones({n}, r.logits.options().dtype(torch::kBool));
  TORCH_CHECK(token.scalar_type() == torch::kBool && token.dim() == 1 && token.size(0) == n,
              "balance loss: mask should be (", n, ") bool, got ", token.sizes(), " ", token.scalar_type());
  torch::Tensor expert;
  if (experts.defined()) {
    TORCH_CHECK(experts.scalar_type() == torch::kBool && experts.dim() == 1 && experts.size(0) == e,
                "balance loss: experts should be (", e, ") bool, got ", experts.sizes(), " ", experts.scalar_type());
    expert = experts.to(r.logits.device()).unsqueeze(0);
  }
  return make_groups(r, token.to(r.logits.device()).unsqueeze(0), expert);
}

}  // namespace

torch::Tensor switch_aux_loss(const Routing& r, const torch::Tensor& mask, const torch::Tensor& experts,
                              bool use_topk) {
  return switch_aux_groups(r, single_group(r, mask, experts), use_topk).squeeze(0);
}

torch::Tensor importance_loss(const Routing& r, const torch::Tensor& mask, const torch::Tensor& experts) {
  return importance_groups(r, single_group(r, mask, experts)).squeeze(0);
}

torch::Tensor load_loss(const Routing& r, const torch::Tensor& mask, const torch::Tensor& experts) {
  return load_groups(r, single_group(r, mask, experts)).squeeze(0);
}

torch::Tensor z_loss(const Routing& r, const torch::Tensor& mask, const torch::Tensor& experts) {
  return z_loss_groups(r, single_group(r, mask, experts)).squeeze(0);
}

torch::Tensor sq_dev_loss(const Routing& r, const torch::Tensor& mask, const torch::Tensor& experts) {
  return sq_dev_groups(r, single_group(r, mask, experts)).squeeze(0);
}

torch::Tensor contrastive_loss(const Routing& r, const torch::Tensor& projections, const torch::Tensor& mask,
                               double tau, const torch::Tensor& experts) {
  return contrastive_groups(r, single_group(r, mask, experts), projections, tau).loss.squeeze(0);
}

BalanceLosses balance_losses(const Routing& r, const torch::Tensor& modality, const torch::Tensor& valid,
                             const BalanceLossOptions& options, const torch::Tensor& projections) {
  TORCH_CHECK(r.logits.defined() && r.logits.dim() == 2, "balance_losses: routing.logits should be (N, E)");
  int64_t n = r.logits.size(0), e = r.logits.size(1);
  auto device = r.logits.device();
  BalanceLosses out;
  out.total = torch::zeros({}, r.logits.options().dtype(compute_dtype(r)));
  if (!options.any()) return out;
  TORCH_CHECK(valid.defined() && valid.scalar_type() == torch::kBool && valid.dim() == 1 && valid.size(0) == n,
              "balance_losses: valid should be (", n, ") bool, got ", valid.sizes());
  auto valid_d = valid.to(device);

  torch::Tensor token, expert;  // (G, N) bool, (G, E) bool or undefined
  if (options.per_modality) {
    TORCH_CHECK(modality.defined() && modality.scalar_type() == torch::kInt64 && modality.dim() == 1 &&
                    modality.size(0) == n,
                "balance_losses: modality should be (", n, ") int64, got ", modality.sizes());
    auto ids = torch::arange(kMaxModalities, modality.options().device(device));      // (G)
    token = valid_d.unsqueeze(0) & (modality.to(device).unsqueeze(0) == ids.unsqueeze(1));  // (G, N)
    if (r.allowed.defined() && n > 0) {
      check_matrix(r.allowed, "allowed", n, e);
      // The allowed row of each modality's first token (argmax returns the first maximum); any row for an
      // absent modality, whose terms are 0 anyway.
      auto first = token.to(torch::kInt32).argmax(1);                         // (G)
      expert = r.allowed.to(device).to(torch::kBool).index_select(0, first);  // (G, E)
    }
  } else {
    token = valid_d.unsqueeze(0);  // (1, N)
  }
  Groups g = make_groups(r, token, expert);
  // The mean over the groups that have tokens (one group without per_modality: the term itself).
  auto n_present = g.has_tokens.sum().clamp_min(1.0);
  auto mean_over_groups = [&](const torch::Tensor& per_group) { return (per_group * g.has_tokens).sum() / n_present; };
  auto add = [&](const char* name, double coefficient, const std::function<torch::Tensor()>& compute) {
    if (coefficient == 0.0) return;
    auto term = mean_over_groups(compute());
    out.terms[name] = term;
    out.total = out.total + coefficient * term;
  };
  add("switch_aux", options.switch_aux, [&] { return switch_aux_groups(r, g, options.switch_use_topk); });
  add("importance", options.importance, [&] { return importance_groups(r, g); });
  add("load", options.load, [&] { return load_groups(r, g); });
  add("z_loss", options.z_loss, [&] { return z_loss_groups(r, g); });
  add("sq_dev", options.sq_dev, [&] { return sq_dev_groups(r, g); });
  if (options.contrastive != 0.0) {
    TORCH_CHECK(projections.defined(), "balance_losses: the contrastive loss is on (coefficient ",
                options.contrastive, ") but no expert projections were given");
    // The mean over the groups where some token has a positive (under top-1 a present modality may have none).
    GroupTerm c = contrastive_groups(r, g, projections, options.contrastive_tau);
    auto term = (c.loss * c.present).sum() / c.present.sum().clamp_min(1.0);
    out.terms["contrastive"] = term;
    out.total = out.total + options.contrastive * term;
  }
  return out;
}

BalanceLosses sum_over_layers(const std::vector<std::pair<std::string, BalanceLosses>>& per_layer) {
  BalanceLosses sum;
  for (const auto& [layer, losses] : per_layer) {
    sum.total = sum.total.defined() ? sum.total + losses.total : losses.total;
    for (const auto& [name, term] : losses.terms)
      sum.terms[name] = sum.terms.count(name) ? sum.terms[name] + term : term;
  }
  if (!sum.total.defined()) sum.total = torch::zeros({}, torch::kFloat32);
  return sum;
}

}  // namespace mole
