// RoPE scaling types and partial rotary against transformers (tests/interop/rope_reference.py):
// inv_freq and attention scaling as ROPE_INIT_FUNCTIONS and the rotary module's forward have them,
// cos/sin, Phi-3's partial apply_rotary_pos_emb; config parsing in both spellings and bad values.
#include <ATen/ops/arange.h>
#include <ATen/ops/randn.h>
#include <ATen/ops/stack.h>
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "llmtune/model/config.h"
#include "llmtune/model/rope.h"
#include "llmtune/util/error.h"
#include "support/interop.h"

namespace llmtune::model {
namespace {

using nlohmann::json;

// A config transformers' LlamaConfig / Phi3Config accepts as keyword arguments and from_json reads:
// head_dim 64, max_position_embeddings 32 unless `extra` says otherwise.
json config_with(const json& extra) {
  json c = {{"vocab_size", 64}, {"hidden_size", 256}, {"intermediate_size", 64}, {"num_hidden_layers", 1},
            {"num_attention_heads", 4}, {"max_position_embeddings", 32}};
  c.update(extra);
  return c;
}

json longrope_factors(size_t n, double scale) {
  json v = json::array();
  for (size_t i = 0; i < n; ++i) v.push_back(1.0 + scale * static_cast<double>(i * i % 7) / 3.0);
  return v;
}

struct Case {
  std::string name;
  std::string model_type;  // llama | phi3 (which transformers config and rotary class)
  json config;
  int64_t seq_len;  // the forward's length: positions 0..seq_len-1 in row 0, a shifted row 1
};

// Row 0: 0..T-1; row 1: T/2 positions later, ending at seq_len - 1.
at::Tensor positions_for(int64_t seq_len) {
  const int64_t t = std::max<int64_t>(seq_len / 2, 1);
  return at::stack({at::arange(0, t, at::kLong), at::arange(seq_len - t, seq_len, at::kLong)});
}

std::vector<Case> cases() {
  const json yarn = {{"rope_type", "yarn"}, {"factor", 4.0}, {"original_max_position_embeddings", 32}};
  const json longrope = {{"rope_type", "longrope"}, {"short_factor", longrope_factors(32, 0.1)},
                         {"long_factor", longrope_factors(32, 1.0)}, {"original_max_position_embeddings", 32}};
  auto with = [](json base, const json& extra) {
    base.update(extra);
    return base;
  };
  std::vector<Case> c;
  c.push_back({"default", "llama", config_with({{"rope_theta", 10000.0}}), 20});
  c.push_back({"linear", "llama", config_with({{"rope_scaling", {{"type", "linear"}, {"factor", 2.0}}}}), 40});
  c.push_back({"llama3", "llama",
               config_with({{"rope_theta", 500000.0},
                            {"rope_scaling", {{"rope_type", "llama3"}, {"factor", 8.0}, {"low_freq_factor", 1.0},
                                              {"high_freq_factor", 4.0}, {"original_max_position_embeddings", 32}}}}),
               40});
  const json dynamic = config_with({{"rope_scaling", {{"rope_type", "dynamic"}, {"factor", 2.0}}}});
  c.push_back({"dynamic below", "llama", dynamic, 20});
  c.push_back({"dynamic at max", "llama", dynamic, 32});
  c.push_back({"dynamic above", "llama", dynamic, 50});
  c.push_back({"dynamic far above, 1.5", "llama",
               config_with({{"rope_parameters", {{"rope_type", "dynamic"}, {"factor", 1.5}, {"rope_theta", 1e6}}}}), 333});
  c.push_back({"yarn", "llama", config_with({{"max_position_embeddings", 128}, {"rope_parameters", yarn}}), 60});
  c.push_back({"yarn attention_factor betas", "llama",
               config_with({{"max_position_embeddings", 128},
                            {"rope_parameters", with(yarn, {{"attention_factor", 1.3}, {"beta_fast", 16.0}, {"beta_slow", 2.0}})}}),
               60});
  c.push_back({"yarn mscale pair, no truncate", "llama",
               config_with({{"max_position_embeddings", 128},
                            {"rope_parameters", with(yarn, {{"mscale", 1.0}, {"mscale_all_dim", 0.707}, {"truncate", false}})}}),
               60});
  c.push_back({"yarn mscale alone", "llama",
               config_with({{"max_position_embeddings", 128}, {"rope_scaling", with(yarn, {{"mscale", 0.5}})}}), 60});
  c.push_back({"yarn original from max_position_embeddings", "llama",
               config_with({{"rope_scaling", {{"rope_type", "yarn"}, {"factor", 3.0}, {"rope_theta", 50000.0}}}}), 10});
  c.push_back({"longrope short", "llama", config_with({{"max_position_embeddings", 128}, {"rope_parameters", longrope}}), 32});
  c.push_back({"longrope long", "llama", config_with({{"max_position_embeddings", 128}, {"rope_parameters", longrope}}), 33});
  c.push_back({"longrope attention_factor, factor", "llama",
               config_with({{"max_position_embeddings", 128},
                            {"rope_parameters", with(longrope, {{"attention_factor", 1.1}, {"factor", 2.5}})}}),
               90});
  c.push_back({"partial default (phi3)", "phi3", config_with({{"partial_rotary_factor", 0.75}}), 20});
  // Phi-4-mini's layout: top-level original_max_position_embeddings and partial_rotary_factor, 4.x dict.
  const json phi4 = config_with({{"max_position_embeddings", 128}, {"original_max_position_embeddings", 32},
                                 {"partial_rotary_factor", 0.75},
                                 {"rope_scaling", {{"type", "longrope"}, {"short_factor", longrope_factors(24, 0.1)},
                                                   {"long_factor", longrope_factors(24, 1.0)}}}});
  c.push_back({"partial longrope short (phi3)", "phi3", phi4, 30});
  c.push_back({"partial longrope long (phi3)", "phi3", phi4, 100});
  c.push_back({"partial longrope, 5.x dict (phi3)", "phi3",
               config_with({{"max_position_embeddings", 128}, {"original_max_position_embeddings", 32},
                            {"rope_parameters", {{"rope_type", "longrope"}, {"partial_rotary_factor", 0.5},
                                                 {"short_factor", longrope_factors(16, 0.1)},
                                                 {"long_factor", longrope_factors(16, 1.0)}}}}),
               64});
  c.push_back({"partial yarn", "llama",
               config_with({{"max_position_embeddings", 128}, {"rope_parameters", with(yarn, {{"partial_rotary_factor", 0.5}})}}), 60});
  c.push_back({"partial dynamic above", "llama",
               config_with({{"rope_parameters", {{"rope_type", "dynamic"}, {"factor", 2.0}, {"partial_rotary_factor", 0.75}}}}), 45});
  return c;
}

double max_rel(const at::Tensor& ours, const at::Tensor& ref) {
  return testing::max_abs_diff(ours, ref) / std::max(ref.abs().max().item<double>(), 1e-30);
}

TEST(RopeScaling, TablesEqualTransformers) {
  const std::vector<Case> all = cases();
  std::vector<at::Tensor> positions;
  json specs = json::array();
  for (const auto& c : all) {
    positions.push_back(positions_for(c.seq_len));
    specs.push_back({{"config", c.config}, {"model_type", c.model_type}, {"seq_len", c.seq_len}});
  }
  const auto ref = testing::call_python("rope_reference_cases", positions, {{"cases", specs}});
  ASSERT_EQ(ref.size(), 6 * all.size());
  for (size_t i = 0; i < all.size(); ++i) {
    const Case& c = all[i];
    json j = c.config;
    j["model_type"] = c.model_type;
    const RopeConfig rope = parse_rope_json(j, "config.json");
    const int64_t head_dim = 64;
    const int64_t max_positions = j["max_position_embeddings"].get<int64_t>();
    const RopeTables t = rope_tables(rope, head_dim, max_positions, c.seq_len);
    const at::Tensor* r = &ref[6 * i];
    // The tables the rotary module's forward used (after dynamic_rope_update): to the bit.
    ASSERT_EQ(t.inv_freq.sizes(), r[4].sizes()) << c.name;
    EXPECT_EQ(rotary_dim(rope, head_dim), 2 * r[4].size(0)) << c.name;
    EXPECT_EQ(max_rel(t.inv_freq, r[4]), 0.0) << c.name;
    EXPECT_DOUBLE_EQ(t.attention_scaling, r[5].item<double>()) << c.name;
    // ROPE_INIT_FUNCTIONS at this seq_len (an int, where the forward passes dynamic's length as a
    // tensor and computes its base in float32): the same float32 tables here.
    EXPECT_EQ(max_rel(t.inv_freq, r[0]), 0.0) << c.name;
    EXPECT_DOUBLE_EQ(t.attention_scaling, r[1].item<double>()) << c.name;
    // cos/sin (B, T, rotary_dim), scaled by attention_scaling.
    auto [cos, sin] = rope_cos_sin(t.inv_freq, positions[i], at::kFloat, t.attention_scaling);
    ASSERT_EQ(cos.sizes(), r[2].sizes()) << c.name;
    EXPECT_EQ(testing::max_abs_diff(cos, r[2]), 0.0) << c.name;
    EXPECT_EQ(testing::max_abs_diff(sin, r[3]), 0.0) << c.name;
    EXPECT_EQ(rope_depends_on_length(rope), rope.type == "dynamic" || rope.type == "longrope") << c.name;
  }
}

TEST(RopeScaling, PartialApplyEqualsPhi3) {
  RopeConfig rope;
  rope.partial_rotary_factor = 0.75;
  ASSERT_EQ(rotary_dim(rope, 64), 48);
  at::manual_seed(3);
  at::Tensor x = at::randn({2, 3, 7, 64});
  at::Tensor pos = at::stack({at::arange(0, 7, at::kLong), at::arange(5, 12, at::kLong)});
  auto [cos, sin] = rope_cos_sin(rope_inv_freq(rope, 64), pos, at::kFloat, 1.2);
  // Full rotary is the same formula on every dim.
  auto [cos_full, sin_full] = rope_cos_sin(rope_inv_freq(RopeConfig{}, 64), pos, at::kFloat);
  const auto ref = testing::call_python("rope_apply_partial", {x, cos, sin, cos_full, sin_full});
  at::Tensor ours = apply_rope(x, cos, sin);
  ASSERT_EQ(ours.sizes(), ref[0].sizes());
  EXPECT_EQ(testing::max_abs_diff(ours, ref[0]), 0.0);
  EXPECT_TRUE(ours.narrow(-1, 48, 16).equal(x.narrow(-1, 48, 16)));
  EXPECT_EQ(testing::max_abs_diff(apply_rope(x, cos_full, sin_full), ref[1]), 0.0);
}

RopeConfig parse(const json& extra) { return parse_rope_json(config_with(extra), "config.json"); }

TEST(RopeConfigParse, BothSpellingsAndTransformersDefaults) {
  // 4.x: rope_scaling with "type" and a top-level rope_theta; 5.x: rope_parameters holding it.
  const json yarn4 = {{"type", "yarn"}, {"factor", 4.0}, {"beta_fast", 0}, {"mscale", 0.5}, {"truncate", false}};
  RopeConfig a = parse({{"rope_theta", 5e5}, {"rope_scaling", yarn4}});
  json yarn5 = yarn4;
  yarn5.erase("type");
  yarn5["rope_type"] = "yarn";
  yarn5["rope_theta"] = 5e5;
  RopeConfig b = parse({{"rope_theta", 1.0}, {"rope_parameters", yarn5}});  // the dict's theta wins
  for (const RopeConfig& r : {a, b}) {
    EXPECT_EQ(r.type, "yarn");
    EXPECT_EQ(r.theta, 5e5);
    EXPECT_EQ(r.factor, 4.0);
    EXPECT_EQ(r.beta_fast, 32.0);  // 0 reads as the default, as transformers' `or` does
    EXPECT_EQ(r.beta_slow, 1.0);
    EXPECT_EQ(r.mscale, 0.5);
    EXPECT_EQ(r.mscale_all_dim, 0.0);
    EXPECT_FALSE(r.truncate);
    EXPECT_FALSE(r.attention_factor.has_value());
    EXPECT_EQ(r.original_max_position_embeddings, 32);  // max_position_embeddings when absent
  }
  // A top-level original_max_position_embeddings wins over the dict's (transformers 5 standardize).
  EXPECT_EQ(parse({{"original_max_position_embeddings", 16},
                   {"rope_scaling", {{"type", "yarn"}, {"factor", 2.0}, {"original_max_position_embeddings", 8}}}})
                .original_max_position_embeddings, 16);
  EXPECT_EQ(parse({{"rope_scaling", {{"type", "llama3"}, {"factor", 2.0}}}}).original_max_position_embeddings, 32);

  // longrope: the factor is max_position_embeddings / original when absent; "su" is its old name.
  const json su = {{"type", "su"}, {"short_factor", longrope_factors(32, 0.1)}, {"long_factor", longrope_factors(32, 1.0)}};
  RopeConfig l = parse({{"max_position_embeddings", 128}, {"original_max_position_embeddings", 32}, {"rope_scaling", su}});
  EXPECT_EQ(l.type, "longrope");
  EXPECT_EQ(l.factor, 4.0);
  EXPECT_EQ(l.short_factor.size(), 32u);
  EXPECT_EQ(l.long_factor[1], 1.0 + 1.0 / 3.0);
  // Phi3Config keeps original_max_position_embeddings at the top level (4096 when absent), reads
  // "yarn" as longrope, and a top-level partial_rotary_factor unless the dict has one.
  json phi3 = config_with({{"model_type", "phi3"}, {"max_position_embeddings", 8192}, {"partial_rotary_factor", 0.75},
                           {"rope_scaling", {{"type", "yarn"}, {"original_max_position_embeddings", 64},
                                             {"short_factor", longrope_factors(24, 0.1)},
                                             {"long_factor", longrope_factors(24, 1.0)}}}});
  RopeConfig p = parse_rope_json(phi3, "config.json");
  EXPECT_EQ(p.type, "longrope");
  EXPECT_EQ(p.original_max_position_embeddings, 4096);
  EXPECT_EQ(p.factor, 2.0);
  EXPECT_EQ(p.partial_rotary_factor, 0.75);
  EXPECT_EQ(rotary_dim(p, 64), 48);
  phi3["rope_scaling"]["partial_rotary_factor"] = 0.5;
  phi3["rope_scaling"]["short_factor"] = longrope_factors(16, 0.1);
  phi3["rope_scaling"]["long_factor"] = longrope_factors(16, 0.1);
  EXPECT_EQ(parse_rope_json(phi3, "config.json").partial_rotary_factor, 0.5);

  RopeConfig d = parse({{"rope_parameters", {{"rope_type", "dynamic"}, {"factor", 2}}}});
  EXPECT_EQ(d.type, "dynamic");
  EXPECT_EQ(d.factor, 2.0);
  EXPECT_TRUE(rope_depends_on_length(d));
  EXPECT_FALSE(rope_depends_on_length(a));
  // The whole config reads it too.
  json full = config_with({{"model_type", "llama"}, {"rope_scaling", {{"type", "dynamic"}, {"factor", 2.0}}}});
  EXPECT_EQ(ModelConfig::from_json(full, "config.json").rope.type, "dynamic");
}

// The one-line error for `extra`, which must name `key`.
void expect_error(const json& extra, const std::string& key) {
  try {
    parse(extra);
    ADD_FAILURE() << "no error for " << extra.dump();
  } catch (const ModelLoadError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find(key), std::string::npos) << msg;
    EXPECT_NE(msg.find("config.json"), std::string::npos) << msg;
    EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
  }
}

TEST(RopeConfigParse, BadValuesNameTheKey) {
  const json short16 = longrope_factors(16, 0.1), short32 = longrope_factors(32, 0.1);
  expect_error({{"rope_scaling", {{"type", "longrope"}, {"short_factor", short16}, {"long_factor", short32}}}},
               "'short_factor' has 16 values; rotary_dim 64 needs 32");
  expect_error({{"rope_scaling", {{"type", "longrope"}, {"short_factor", short32}}}}, "missing 'long_factor'");
  expect_error({{"rope_scaling", {{"type", "longrope"}, {"short_factor", short32}, {"long_factor", {1.0, -2.0}}}}},
               "'long_factor' must hold finite numbers > 0");
  expect_error({{"rope_scaling", {{"type", "longrope"}, {"short_factor", short32}, {"long_factor", short32},
                                  {"attention_factor", 0.0}}}}, "'attention_factor'");
  expect_error({{"rope_parameters", {{"rope_type", "yarn"}, {"factor", 0.0}}}}, "rope_parameters: 'factor' is 0.0");
  expect_error({{"rope_parameters", {{"rope_type", "dynamic"}, {"factor", -2}}}}, "'factor' is -2");
  expect_error({{"rope_parameters", {{"rope_type", "yarn"}}}}, "missing 'factor'");
  expect_error({{"rope_scaling", {{"type", "linear"}}}}, "rope_scaling: missing 'factor'");
  expect_error({{"rope_parameters", {{"rope_type", "yarn"}, {"factor", 2.0}, {"beta_fast", -1}}}}, "'beta_fast'");
  expect_error({{"rope_parameters", {{"rope_type", "yarn"}, {"factor", 2.0}, {"truncate", "no"}}}}, "'truncate'");
  expect_error({{"rope_parameters", {{"rope_type", "yarn"}, {"factor", 2.0}, {"original_max_position_embeddings", 0}}}},
               "'original_max_position_embeddings'");
  expect_error({{"rope_parameters", {{"rope_type", "ntk-by-parts"}, {"factor", 2.0}}}},
               "'ntk-by-parts' is not supported (supported: default, linear, llama3, dynamic, yarn, longrope, su)");
  expect_error({{"partial_rotary_factor", 1.5}}, "'partial_rotary_factor' is 1.5");
  expect_error({{"rope_parameters", {{"rope_type", "default"}, {"partial_rotary_factor", 0.0}}}}, "'partial_rotary_factor'");
  expect_error({{"partial_rotary_factor", 0.01}}, "leaves fewer than 2 of head_dim 64 rotating");
}

}  // namespace
}  // namespace llmtune::model
