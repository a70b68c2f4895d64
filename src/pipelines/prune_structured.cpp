// Structured pruning: layer and width importance from one pass of the unpruned model, the choice
// of what to keep, and how each checkpoint tensor and config.json field follows that choice.
#include "llmtune/pipelines/prune_structured.h"

#include <ATen/core/grad_mode.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/cosine_similarity.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/stack.h>
#include <ATen/ops/tensor.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <numeric>
#include <set>

#include "llmtune/util/error.h"

namespace llmtune::pipelines {
namespace {

using model::Proj;

int64_t per_forward(int64_t tokens_per_forward, int64_t t) { return std::max<int64_t>(1, tokens_per_forward / std::max<int64_t>(1, t)); }

// Forwards to the wrapped linear and keeps, per sequence, Σ_t x_j² of its input: (k, T, I) → (k, I).
class SequenceSquares : public model::Linear {
 public:
  explicit SequenceSquares(model::LinearPtr inner) : inner_(std::move(inner)) {}
  at::Tensor forward(const at::Tensor& x) const override {
    const at::Tensor f = x.detach().to(at::kFloat);
    sums_.push_back(f.dim() == 3 ? (f * f).sum(1) : (f * f).reshape({1, -1, f.size(-1)}).sum(1));
    return inner_->forward(x);
  }
  int64_t in_features() const override { return inner_->in_features(); }
  int64_t out_features() const override { return inner_->out_features(); }
  std::vector<at::Tensor> tensors() const override { return inner_->tensors(); }
  at::Tensor dense_weight() const override { return inner_->dense_weight(); }
  at::Tensor bias() const override { return inner_->bias(); }
  const model::LinearPtr& inner() const { return inner_; }
  at::Tensor sums() const { return at::cat(sums_, 0); }  // (N, I)

 private:
  model::LinearPtr inner_;
  mutable std::vector<at::Tensor> sums_;
};

// The index of the family's unfused linear producing `p`; ConfigError when it is fused.
size_t linear_index(const model::FamilyDesc& f, Proj p) {
  for (size_t i = 0; i < f.linears.size(); ++i)
    if (f.linears[i].parts == std::vector<Proj>{p}) return i;
  throw ConfigError("method: width pruning needs separate q/k/v/o and gate/up/down linears; the " + f.model_type +
                    " layout fuses them (use --method layers)");
}

// Indices 0..n-1 by descending score (ties to the lower index), the first k, ascending.
std::vector<int64_t> top_k(const at::Tensor& scores, int64_t k) {
  const at::Tensor s = scores.to(at::kDouble).contiguous();
  const double* p = s.data_ptr<double>();
  std::vector<int64_t> order(static_cast<size_t>(s.numel()));
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return p[a] > p[b]; });
  order.resize(static_cast<size_t>(k));
  std::sort(order.begin(), order.end());
  return order;
}

at::Tensor index_tensor(const std::vector<int64_t>& v) {
  return at::tensor(v, at::TensorOptions().dtype(at::kLong));
}

// Rows h·D .. h·D+D−1 of every head h.
std::vector<int64_t> head_rows(const std::vector<int64_t>& heads, int64_t d) {
  std::vector<int64_t> rows;
  for (int64_t h : heads)
    for (int64_t i = 0; i < d; ++i) rows.push_back(h * d + i);
  return rows;
}

}  // namespace

LayerScores score_layers(model::CausalLM& model, const at::Tensor& ids, int64_t block, int64_t tokens_per_forward) {
  at::NoGradGuard no_grad;
  TORCH_CHECK(ids.dim() == 2, "score_layers: ids must be (sequences, tokens)");
  const auto n_layers = static_cast<int64_t>(model.layers().size());
  const int64_t n = ids.size(0), t = ids.size(1), step = per_forward(tokens_per_forward, t);
  at::Tensor hidden = model.embed(ids.to(model.device()));
  at::Tensor next = at::empty_like(hidden);
  std::vector<at::Tensor> last{hidden.select(1, t - 1).to(at::kFloat).clone()};  // x_l at each sequence's last token: (N, H)
  LayerScores s;
  s.block = block;
  for (int64_t i = 0; i < n_layers; ++i) {
    double cos_sum = 0.0;
    for (int64_t b = 0; b < n; b += step) {
      const int64_t k = std::min(step, n - b);
      const at::Tensor in = hidden.narrow(0, b, k);
      const at::Tensor out = model.forward_layer(i, in);
      next.narrow(0, b, k).copy_(out);
      cos_sum += at::cosine_similarity(in.to(at::kFloat), out.to(at::kFloat), -1).to(at::kDouble).sum().item<double>();
    }
    s.block_influence.push_back(1.0 - cos_sum / static_cast<double>(n * t));
    last.push_back(next.select(1, t - 1).to(at::kFloat).clone());
    std::swap(hidden, next);
  }
  for (int64_t l = 0; block > 0 && l + block <= n_layers; ++l) {
    const at::Tensor c = at::cosine_similarity(last[l], last[l + block], -1).to(at::kDouble).clamp(-1.0, 1.0);
    s.angular.push_back((c.acos() / M_PI).mean().item<double>());
  }
  return s;
}

WidthScores score_width(model::CausalLM& model, const at::Tensor& ids, int64_t tokens_per_forward) {
  at::NoGradGuard no_grad;
  TORCH_CHECK(ids.dim() == 2, "score_width: ids must be (sequences, tokens)");
  const auto& c = model.config();
  const size_t o = linear_index(model.family(), Proj::O), down = linear_index(model.family(), Proj::Down);
  const int64_t n = ids.size(0), t = ids.size(1), step = per_forward(tokens_per_forward, t);
  at::Tensor hidden = model.embed(ids.to(model.device()));
  at::Tensor next = at::empty_like(hidden);
  std::vector<at::Tensor> heads, channels;
  for (size_t i = 0; i < model.layers().size(); ++i) {
    auto& slots = model.layers()[i].linears;
    auto o_rec = std::make_shared<SequenceSquares>(slots[o]);
    auto down_rec = std::make_shared<SequenceSquares>(slots[down]);
    slots[o] = o_rec;
    slots[down] = down_rec;
    for (int64_t b = 0; b < n; b += step) {
      const int64_t k = std::min(step, n - b);
      next.narrow(0, b, k).copy_(model.forward_layer(static_cast<int64_t>(i), hidden.narrow(0, b, k)));
    }
    slots[o] = o_rec->inner();
    slots[down] = down_rec->inner();
    // Per sequence: the L2 norm over tokens (a head: over its tokens and D dimensions); then the mean over sequences.
    heads.push_back(o_rec->sums().reshape({n, c.n_heads, c.head_dim}).sum(-1).sqrt().mean(0));
    channels.push_back(down_rec->sums().sqrt().mean(0));
    std::swap(hidden, next);
  }
  return {at::stack(heads).cpu(), at::stack(channels).cpu()};
}

std::vector<int64_t> parse_layer_list(const std::string& text, int64_t n_layers, const std::string& key) {
  std::set<int64_t> out;
  auto number = [&](const std::string& s) -> int64_t {
    if (s.empty() || s.size() > 9 || !std::all_of(s.begin(), s.end(), [](unsigned char ch) { return std::isdigit(ch); }))
      throw ConfigError(key + ": '" + text + "' is not a list of layer indices or ranges (e.g. '20-23,5')");
    const int64_t v = std::stoll(s);
    if (v >= n_layers)
      throw ConfigError(key + ": layer " + s + " is out of range (the model has layers 0-" + std::to_string(n_layers - 1) + ")");
    return v;
  };
  size_t start = 0;
  while (start <= text.size()) {
    const size_t comma = std::min(text.find(',', start), text.size());
    const std::string part = text.substr(start, comma - start);
    const size_t dash = part.find('-');
    const int64_t a = number(part.substr(0, dash)), b = dash == std::string::npos ? a : number(part.substr(dash + 1));
    if (b < a) throw ConfigError(key + ": range '" + part + "' runs backwards (write low-high)");
    for (int64_t i = a; i <= b; ++i) out.insert(i);
    start = comma + 1;
  }
  return {out.begin(), out.end()};
}

std::vector<int64_t> layers_to_remove(const LayerScores& scores, const std::string& metric, int64_t k) {
  if (metric == "bi") {
    const auto l = static_cast<int64_t>(scores.block_influence.size());
    std::vector<int64_t> order(static_cast<size_t>(l));
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(),
                     [&](int64_t a, int64_t b) { return scores.block_influence[a] < scores.block_influence[b]; });
    order.resize(static_cast<size_t>(k));
    std::sort(order.begin(), order.end());
    return order;
  }
  TORCH_CHECK(metric == "angular" && scores.block == k && !scores.angular.empty(), "layers_to_remove: no angular distances for blocks of ", k);
  const auto best = std::min_element(scores.angular.begin(), scores.angular.end()) - scores.angular.begin();
  std::vector<int64_t> out(static_cast<size_t>(k));
  std::iota(out.begin(), out.end(), best);
  return out;
}

std::pair<int64_t, int64_t> resolve_head_counts(const model::ModelConfig& c, int64_t heads, int64_t kv_heads) {
  const int64_t group = c.n_heads / c.n_heads_kv;
  const std::string shape = " (the model has " + std::to_string(c.n_heads) + " query heads in " + std::to_string(c.n_heads_kv) +
                            " KV groups of " + std::to_string(group) + ")";
  if (heads > c.n_heads) throw ConfigError("num_attention_heads: " + std::to_string(heads) + " is more than the model has" + shape);
  if (kv_heads > c.n_heads_kv)
    throw ConfigError("num_key_value_heads: " + std::to_string(kv_heads) + " is more than the model has" + shape);
  if (heads == 0 && kv_heads == 0) return {c.n_heads, c.n_heads_kv};
  if (heads == 0) heads = kv_heads * group;  // whole KV groups go
  if (kv_heads == 0) kv_heads = c.n_heads_kv == c.n_heads ? heads : c.n_heads_kv;  // MHA stays MHA
  if (heads % kv_heads != 0 || heads / kv_heads > group)
    throw ConfigError("num_attention_heads: " + std::to_string(heads) + " query heads over " + std::to_string(kv_heads) +
                      " KV heads breaks the GQA grouping" + shape +
                      "; give a multiple of the KV heads, at most " + std::to_string(group) + " per KV head");
  return {heads, kv_heads};
}

StructuredPlan plan_width(const WidthScores& scores, const model::ModelConfig& c, int64_t heads, int64_t kv_heads,
                          int64_t intermediate) {
  if (intermediate > c.intermediate_size)
    throw ConfigError("intermediate_size: " + std::to_string(intermediate) + " is more than the model's " +
                      std::to_string(c.intermediate_size) + " MLP channels");
  StructuredPlan plan;
  std::tie(plan.n_heads, plan.n_heads_kv) = resolve_head_counts(c, heads, kv_heads);
  plan.intermediate_size = intermediate > 0 ? intermediate : c.intermediate_size;
  const int64_t group = c.n_heads / c.n_heads_kv, per_group = plan.n_heads / plan.n_heads_kv;
  for (int64_t l = 0; l < c.n_layers; ++l) {
    plan.layers.push_back(l);
    const at::Tensor h = scores.heads[l].to(at::kDouble);
    std::vector<int64_t> q, kv;
    if (plan.n_heads != c.n_heads) {
      kv = top_k(h.reshape({c.n_heads_kv, group}).sum(1), plan.n_heads_kv);
      for (int64_t g : kv)
        for (int64_t j : top_k(h.narrow(0, g * group, group), per_group)) q.push_back(g * group + j);
      if (plan.n_heads_kv == c.n_heads_kv) kv.clear();
    }
    plan.q_heads.push_back(q);
    plan.kv_heads.push_back(kv);
    plan.channels.push_back(plan.intermediate_size != c.intermediate_size ? top_k(scores.channels[l], plan.intermediate_size)
                                                                           : std::vector<int64_t>{});
  }
  return plan;
}

TensorMapping map_tensor(const model::FamilyDesc& f, const model::ModelConfig& base, const StructuredPlan& plan,
                         const std::string& name) {
  const std::string& prefix = f.layers_prefix;
  size_t j = prefix.size();
  if (!name.starts_with(prefix)) return {name};
  while (j < name.size() && std::isdigit(static_cast<unsigned char>(name[j]))) ++j;
  if (j == prefix.size() || j >= name.size() || name[j] != '.') return {name};
  const int64_t old = std::stoll(name.substr(prefix.size(), j - prefix.size()));
  const auto it = std::find(plan.layers.begin(), plan.layers.end(), old);
  if (it == plan.layers.end()) return {""};
  const auto at = static_cast<size_t>(it - plan.layers.begin());
  const std::string rest = name.substr(j + 1);
  TensorMapping m{prefix + std::to_string(at) + "." + rest};
  for (const auto& l : f.linears) {
    const bool weight = rest == l.name + ".weight", bias = rest == l.name + ".bias";
    if (!weight && !bias) continue;
    auto pick = [&](const std::vector<std::vector<int64_t>>& per_layer) -> const std::vector<int64_t>& {
      static const std::vector<int64_t> none;
      return at < per_layer.size() ? per_layer[at] : none;
    };
    const std::vector<int64_t>* idx = nullptr;
    int64_t dim = 0;
    std::vector<int64_t> rows;
    switch (l.parts.front()) {
      case Proj::Q: rows = head_rows(pick(plan.q_heads), base.head_dim); break;
      case Proj::K:
      case Proj::V: rows = head_rows(pick(plan.kv_heads), base.head_dim); break;
      case Proj::O:
        if (weight) rows = head_rows(pick(plan.q_heads), base.head_dim), dim = 1;
        break;
      case Proj::Gate:
      case Proj::Up: idx = &pick(plan.channels); break;
      case Proj::Down:
        if (weight) idx = &pick(plan.channels), dim = 1;
        break;
    }
    if (idx) rows = *idx;
    if (!rows.empty()) {
      if (l.parts.size() > 1) throw ConfigError("method: width pruning of the fused linear " + l.name + " is not supported");
      m.dim = dim;
      m.index = index_tensor(rows);
    }
  }
  return m;
}

nlohmann::ordered_json rewrite_config(nlohmann::ordered_json j, const model::ModelConfig& base, const StructuredPlan& plan) {
  const auto n_new = static_cast<int64_t>(plan.layers.size());
  if (n_new != base.n_layers) {
    j["num_hidden_layers"] = n_new;
    if (auto it = j.find("layer_types"); it != j.end() && it->is_array() && static_cast<int64_t>(it->size()) == base.n_layers) {
      nlohmann::ordered_json kept = nlohmann::ordered_json::array();
      for (int64_t l : plan.layers) kept.push_back((*it)[static_cast<size_t>(l)]);
      *it = kept;
    }
    // Qwen2 4.x: layers from max_window_layers on use the sliding window; count the kept ones before it.
    if (auto it = j.find("max_window_layers"); it != j.end() && it->is_number_integer() && it->get<int64_t>() < base.n_layers) {
      const int64_t first = it->get<int64_t>();
      *it = std::count_if(plan.layers.begin(), plan.layers.end(), [&](int64_t l) { return l < first; });
    }
  }
  if (plan.n_heads != base.n_heads || plan.n_heads_kv != base.n_heads_kv || plan.intermediate_size != base.intermediate_size) {
    j["num_attention_heads"] = plan.n_heads;
    j["num_key_value_heads"] = plan.n_heads_kv;
    j["intermediate_size"] = plan.intermediate_size;
    j["head_dim"] = base.head_dim;  // no longer hidden_size / num_attention_heads
  }
  return j;
}

}  // namespace llmtune::pipelines
