// PEFT's regular expressions over module paths (rank_pattern / alpha_pattern keys, layers_pattern,
// string target/exclude modules): the ranks and scalings PEFT resolves on a fixture model, and hostile
// patterns from an adapter_config.json (runaway backtracking, deep nesting) as fast one-line errors.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

#include "llmtune/model/causal_lm.h"
#include "llmtune/peft/lora.h"
#include "llmtune/util/error.h"
#include "llmtune/util/regex.h"
#include "support/interop.h"

namespace llmtune::peft {
namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

fs::path fixture(const std::string& name) { return fs::path(LLMTUNE_FIXTURES_DIR) / "models" / name; }

std::vector<std::string> decode_names(const at::Tensor& t) {
  std::string all(reinterpret_cast<const char*>(t.data_ptr<uint8_t>()), static_cast<size_t>(t.numel()));
  std::vector<std::string> names;
  std::stringstream ss(all);
  for (std::string name; std::getline(ss, name, '\n');) names.push_back(name);
  return names;
}

// Any `(.|.)*` over a module path has 2^len ways to fail; the class at the end gives PCRE2 no
// required character to reject the subject up front. std::regex ran this for hours.
const std::string kBacktracking = "(.|.)*[#%]";
// Deeply nested groups: std::regex's recursive parser overflows the stack from about 50,000 levels
// (a segfault); PCRE2 refuses beyond 250, and any pattern beyond 65,536 bytes.
const std::string kDeepNesting = std::string(5000, '(') + "q_proj" + std::string(5000, ')');
const std::string kHugeNesting = std::string(100000, '(') + "q_proj" + std::string(100000, ')');

// The AdapterError `f` throws, checked to be one line that names every needle, within `seconds`.
template <typename F>
std::string expect_fast_error(F&& f, const std::vector<std::string>& needles, double seconds = 5.0) {
  const auto t0 = Clock::now();
  std::string msg;
  try {
    f();
    ADD_FAILURE() << "no error";
  } catch (const AdapterError& e) {
    msg = e.what();
  }
  const double took = std::chrono::duration<double>(Clock::now() - t0).count();
  EXPECT_LT(took, seconds) << msg;
  EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
  EXPECT_LT(msg.size(), 600u) << msg;
  for (const auto& needle : needles) EXPECT_NE(msg.find(needle), std::string::npos) << needle << " not in: " << msg;
  return msg;
}

LoraConfig adapter_config(const nlohmann::json& extra) {
  nlohmann::json j = {{"peft_type", "LORA"}, {"r", 4}, {"lora_alpha", 8}, {"target_modules", {"q_proj", "down_proj"}}};
  if (!extra.is_null()) j.update(extra);
  return LoraConfig::from_json(j, "adapter/adapter_config.json");
}

TEST(BoundedRegex, AnchorsAsPythonMatchAndFullmatch) {
  EXPECT_TRUE(BoundedRegex("ab", BoundedRegex::Anchor::start, "t").match("abc"));  // re.match
  EXPECT_FALSE(BoundedRegex("bc", BoundedRegex::Anchor::start, "t").match("abc"));  // not re.search
  EXPECT_FALSE(BoundedRegex("ab", BoundedRegex::Anchor::full, "t").match("abc"));
  EXPECT_TRUE(BoundedRegex("a|ab", BoundedRegex::Anchor::full, "t").match("ab"));  // fullmatch backtracks into |
  EXPECT_TRUE(BoundedRegex("ab$", BoundedRegex::Anchor::start, "t").match("ab\n"));  // Python's $ before a final \n
  std::optional<std::string> idx;
  BoundedRegex layer(R"((?:^|.*?\.)layers\.(?P<idx>\d+)\.)", BoundedRegex::Anchor::start, "t");
  EXPECT_TRUE(layer.match("model.layers.12.experts.3.w1", "idx", idx));
  EXPECT_EQ(idx, "12");  // the first index, lazily
  // A match whose alternative left the group unset: PEFT's m.group("idx") is None.
  BoundedRegex alt(R"((?:^|.*?\.)layers|nothing\.(?P<idx>\d+)\.)", BoundedRegex::Anchor::start, "t");
  EXPECT_TRUE(alt.match("model.layers.1.q_proj", "idx", idx));
  EXPECT_FALSE(idx.has_value());
}

TEST(BoundedRegex, HostilePatternsAreErrorsNotHangsOrCrashes) {
  auto error = [](auto&& f) -> std::string {
    try {
      f();
    } catch (const RegexError& e) {
      return e.what();
    }
    return "";
  };
  const auto t0 = Clock::now();
  std::string msg = error([] { BoundedRegex(kBacktracking, BoundedRegex::Anchor::full, "key").match("model.layers.0.self_attn.q_proj"); });
  EXPECT_NE(msg.find("key '(.|.)*[#%]' backtracks without end on 'model.layers.0.self_attn.q_proj'"), std::string::npos) << msg;
  msg = error([] { BoundedRegex(kDeepNesting, BoundedRegex::Anchor::full, "key"); });
  EXPECT_NE(msg.find("is not a valid regular expression"), std::string::npos) << msg;
  EXPECT_NE(msg.find("too deeply nested"), std::string::npos) << msg;
  EXPECT_LT(msg.size(), 400u) << "the pattern is cut in the message";
  msg = error([] { BoundedRegex(kHugeNesting, BoundedRegex::Anchor::full, "key"); });
  EXPECT_NE(msg.find("is not a valid regular expression"), std::string::npos) << msg;
  EXPECT_NE(msg.find("longer than the limit"), std::string::npos) << msg;
  msg = error([] { BoundedRegex("a{3}{65536}", BoundedRegex::Anchor::full, "key"); });
  EXPECT_NE(msg.find("is not a valid regular expression"), std::string::npos) << msg;
  msg = error([] { BoundedRegex("q\n(", BoundedRegex::Anchor::full, "key"); });
  EXPECT_NE(msg.find("'q\\x0a('"), std::string::npos) << msg;  // control bytes escaped: still one line
  EXPECT_LT(std::chrono::duration<double>(Clock::now() - t0).count(), 5.0);
}

TEST(LoraPatterns, RunawayRankAndAlphaPatternKeysFailFastNamingTheFileAndKey) {
  model::CausalLM m = model::CausalLM::load(fixture("llama3"), c10::kCPU, at::kFloat);
  for (const char* field : {"rank_pattern", "alpha_pattern"}) {
    const LoraConfig c = adapter_config({{field, {{kBacktracking, 2}}}});  // compiles: only matching runs away
    expect_fast_error([&] { inject_lora(m, c); },
                      {"adapter/adapter_config.json", std::string(field) + " key '(.|.)*[#%]'", "backtracks without end",
                       "simplify it"});
    expect_fast_error([&] { (void)c.rank_for("model.layers.0.self_attn.q_proj"); (void)c.scaling_for("model.layers.0.self_attn.q_proj", 4); },
                      {"adapter/adapter_config.json", field});
  }
  // Nothing was wrapped by the failed calls.
  EXPECT_EQ(select_target_modules(m, adapter_config({})).size(), 4u);
}

TEST(LoraPatterns, RunawayLayersAndTargetPatternsFailFast) {
  model::CausalLM m = model::CausalLM::load(fixture("llama3"), c10::kCPU, at::kFloat);
  expect_fast_error([&] { select_target_modules(m, adapter_config({{"layers_to_transform", {0}}, {"layers_pattern", kBacktracking}})); },
                    {"adapter/adapter_config.json: layers_pattern '(.|.)*[#%]' backtracks without end"});
  expect_fast_error([&] { select_target_modules(m, adapter_config({{"target_modules", kBacktracking}})); },
                    {"adapter/adapter_config.json: target_modules '(.|.)*[#%]' backtracks"});
  expect_fast_error([&] { select_target_modules(m, adapter_config({{"exclude_modules", kBacktracking}})); },
                    {"adapter/adapter_config.json: exclude_modules '(.|.)*[#%]' backtracks"});
  // finetune's lora.target_modules (no adapter_config.json): named by its config key.
  LoraConfig settings;
  settings.target_regex = kBacktracking;
  expect_fast_error([&] { select_target_modules(m, settings); }, {"lora.target_modules '(.|.)*[#%]' backtracks"});
}

TEST(LoraPatterns, DeeplyNestedOrInvalidPatternsAreRefusedWhenTheConfigIsRead) {
  for (const char* field : {"rank_pattern", "alpha_pattern"}) {
    expect_fast_error([&] { adapter_config({{field, {{kDeepNesting, 2}}}}); },
                      {"adapter/adapter_config.json: " + std::string(field) + " key '((((", "too deeply nested"});
    expect_fast_error([&] { adapter_config({{field, {{"q_proj(", 2}}}}); },
                      {"adapter/adapter_config.json: " + std::string(field) + " key 'q_proj(' is not a valid regular expression",
                       "of '(.*\\.)?(q_proj()$'"});
  }
  expect_fast_error([&] { adapter_config({{"layers_to_transform", {0}}, {"layers_pattern", {"h", kDeepNesting}}}); },
                    {"adapter/adapter_config.json: layers_pattern '((((", "too deeply nested"});
  expect_fast_error([&] { adapter_config({{"target_modules", kDeepNesting}}); },
                    {"adapter/adapter_config.json: target_modules '((((", "too deeply nested"});
  expect_fast_error([&] { adapter_config({{"rank_pattern", {{kHugeNesting, 2}}}}); },
                    {"adapter/adapter_config.json: rank_pattern key '((((", "(200006 bytes)", "longer than the limit"});
  expect_fast_error([&] { adapter_config({{"exclude_modules", "[z-a]"}}); },
                    {"adapter/adapter_config.json: exclude_modules '[z-a]' is not a valid regular expression"});
}

// The modules PEFT adapts and the rank and scaling it gives each, for pattern keys in every form
// (suffix names, regexes, anchors, alternations, several keys matching one module), alpha patterns,
// and layers_to_transform with and without layers_pattern (a string, a list, an unparenthesized
// alternation that PEFT splits at the top level).
TEST(LoraPatterns, RanksScalingsAndLayersAsPeft) {
  struct PatternCase {
    std::string targets;
    std::map<std::string, int64_t> ranks;
    std::map<std::string, double> alphas;
    std::vector<int64_t> layers;
    std::vector<std::string> layers_pattern;
    bool rslora = false;
  };
  const std::vector<PatternCase> cases = {
      {"all-linear", {{"q_proj", 2}, {"layers.0.self_attn.q_proj", 7}, {"mlp\\.(up|down)_proj", 3}}, {{".*v_proj", 32}}},
      {"all-linear", {{"^model\\.layers\\.1\\..*", 6}, {"proj", 5}, {"self_attn", 5}}, {{"k_proj|o_proj", 2}}},
      {"all-linear", {{"model.layers.1.mlp.gate_proj", 3}}, {{"gate_proj", 12}, {"layers.1.mlp.gate_proj", 24}}, {}, {}, true},
      {"q_proj,down_proj", {{"down_proj", 2}}, {}, {1}},
      {"q_proj,down_proj", {}, {}, {0}, {"layers"}},
      {"q_proj,down_proj", {}, {}, {1}, {"h", "lay(?:ers)"}},
      {"q_proj,lm_head", {}, {}, {0}, {"layers|nothing"}},  // only lm_head: named exactly, no layer check
      {"re:.*\\.(q|v)_proj", {{"v_proj", 8}}, {{"layers\\.1\\..*", 1}}},
  };
  nlohmann::json json_cases = nlohmann::json::array();
  for (const auto& c : cases) {
    nlohmann::json j{{"targets", c.targets}, {"r", 4}, {"alpha", 8}};
    if (c.rslora) j["kind"] = "rslora";
    if (!c.ranks.empty()) j["rank_pattern"] = c.ranks;
    if (!c.alphas.empty()) j["alpha_pattern"] = c.alphas;
    if (!c.layers.empty()) j["layers_to_transform"] = c.layers;
    if (c.layers_pattern.size() == 1) j["layers_pattern"] = c.layers_pattern[0];
    if (c.layers_pattern.size() > 1) j["layers_pattern"] = c.layers_pattern;
    json_cases.push_back(j);
  }
  std::vector<at::Tensor> ref =
      testing::call_python("peft_module_ranks", {}, {{"model_dir", fixture("llama3").string()}, {"cases", json_cases}});
  ASSERT_EQ(ref.size(), 3 * cases.size());
  model::CausalLM m = model::CausalLM::load(fixture("llama3"), c10::kCPU, at::kFloat);
  for (size_t i = 0; i < cases.size(); ++i) {
    const PatternCase& c = cases[i];
    // Through from_json, as an adapter_config.json brings them.
    nlohmann::json j = {{"peft_type", "LORA"}, {"r", 4}, {"lora_alpha", 8}, {"use_rslora", c.rslora},
                        {"rank_pattern", c.ranks}, {"alpha_pattern", c.alphas}};
    if (c.targets.starts_with("re:") || c.targets == "all-linear") {
      j["target_modules"] = c.targets == "all-linear" ? c.targets : c.targets.substr(3);
    } else {
      std::vector<std::string> names;
      std::stringstream ss(c.targets);
      for (std::string name; std::getline(ss, name, ',');) names.push_back(name);
      j["target_modules"] = names;
    }
    if (!c.layers.empty()) j["layers_to_transform"] = c.layers;
    if (!c.layers_pattern.empty()) j["layers_pattern"] = c.layers_pattern;
    const LoraConfig config = LoraConfig::from_json(j, "adapter_config.json");
    std::vector<std::string> ours = select_target_modules(m, config);
    std::sort(ours.begin(), ours.end());
    const std::vector<std::string> theirs = decode_names(ref[3 * i]);
    ASSERT_EQ(ours, theirs) << "case " << i;
    const at::Tensor ranks = ref[3 * i + 1], scalings = ref[3 * i + 2];
    for (size_t k = 0; k < ours.size(); ++k) {
      const int64_t r = config.rank_for(ours[k]);
      EXPECT_EQ(r, ranks[k].item<int64_t>()) << "case " << i << " " << ours[k];
      EXPECT_NEAR(config.scaling_for(ours[k], r), scalings[k].item<double>(), 1e-12) << "case " << i << " " << ours[k];
    }
  }
}

}  // namespace
}  // namespace llmtune::peft
