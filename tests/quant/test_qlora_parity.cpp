// QLoRA against PEFT over bitsandbytes' Linear4bit (transformers' BitsAndBytesConfig, fp32 compute,
// CPU), both sides on the same 4-bit base (ours, put into bitsandbytes' quant states; bitsandbytes'
// own NF4 quantization of the fixture is byte-identical, checked too): the loss and every LoRA/DoRA
// gradient, and 10 steps of a real finetune run (method qlora) against PEFT + torch AdamW.
#include <ATen/core/Reduction.h>
#include <ATen/core/grad_mode.h>
#include <ATen/ops/cross_entropy_loss.h>
#include <ATen/ops/full_like.h>
#include <ATen/ops/randint.h>
#include <ATen/ops/randn_like.h>
#include <ATen/ops/tensor.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>

#include "llmtune/data/dataset.h"
#include "llmtune/io/safetensors.h"
#include "llmtune/model/causal_lm.h"
#include "llmtune/peft/lora.h"
#include "llmtune/pipelines/finetune.h"
#include "llmtune/quant/bnb_linear.h"
#include "llmtune/tokenizer/tokenizer.h"
#include "support/interop.h"
#include "support/lora_parity.h"

namespace llmtune::quant {
namespace {

namespace fs = std::filesystem;
using peft::NamedTensor;

std::string fixture(const std::string& name) { return std::string(LLMTUNE_FIXTURES_DIR) + "/models/" + name; }

using testing::causal_lm_loss;
using testing::perturb;
using testing::rel_err;

struct Case {
  std::string model;
  FourBit type;
  bool double_quant;
  std::string kind;  // lora | rslora | dora
};

peft::LoraConfig lora_config(const std::string& kind) {
  peft::LoraConfig c;
  c.r = 4;
  c.lora_alpha = 8;
  c.lora_dropout = 0.0;
  c.target_regex = "all-linear";
  c.use_rslora = kind == "rslora";
  c.use_dora = kind == "dora";
  return c;
}

model::CausalLM load_four_bit(const Case& c) {
  return model::CausalLM::load(fixture(c.model), c10::kCPU, at::kFloat,
                               four_bit_linear_factory({.type = c.type, .blocksize = 64, .double_quant = c.double_quant}));
}

// The model's 4-bit modules (before adapters wrap them) and their states, as the oracles take them:
// per module packed, absmax [, nested_absmax, offset (float32 [1])].
struct BaseStates {
  std::vector<std::string> modules;
  std::vector<at::Tensor> tensors;
};

BaseStates base_states(model::CausalLM& m) {
  BaseStates b;
  for (auto& [path, slot] : m.named_linears()) {
    const auto* q = dynamic_cast<const FourBitLinear*>(slot->get());
    if (!q) continue;
    const FourBitTensor& w = q->quantized();
    b.modules.push_back(path);
    b.tensors.push_back(w.packed);
    b.tensors.push_back(w.state.absmax);
    if (w.state.nested) {
      b.tensors.push_back(w.state.nested_absmax);
      b.tensors.push_back(at::tensor({static_cast<float>(w.state.nested_offset)}));
    }
  }
  return b;
}

std::string label(const Case& c) {
  return c.model + " " + four_bit_name(c.type) + (c.double_quant ? " double-quant " : " ") + c.kind;
}

// 1. One forward/backward: the loss and every adapter gradient equal PEFT's over Linear4bit.
TEST(QLoRAParity, LossAndGradientsEqualPeftOverLinear4bit) {
  const std::vector<Case> cases = {{"llama3", FourBit::NF4, false, "lora"},
                                   {"qwen2", FourBit::NF4, true, "lora"},
                                   {"llama3", FourBit::FP4, true, "dora"},
                                   {"qwen2", FourBit::NF4, false, "dora"},
                                   {"llama3", FourBit::NF4, true, "rslora"}};
  at::manual_seed(5);
  const at::Tensor ids = at::randint(0, 1500, {2, 12}, at::TensorOptions().dtype(at::kLong));
  at::Tensor labels = ids.clone();
  labels.narrow(1, 0, 4).select(0, 0).fill_(-100);  // a prompt span
  labels.narrow(1, 9, 3).select(0, 1).fill_(-100);  // padding

  std::vector<at::Tensor> inputs = {ids, labels};
  nlohmann::json json_cases = nlohmann::json::array();
  std::vector<double> losses;
  std::vector<std::vector<NamedTensor>> grads;
  for (size_t i = 0; i < cases.size(); ++i) {
    const Case& c = cases[i];
    model::CausalLM m = load_four_bit(c);
    BaseStates base = base_states(m);
    ASSERT_EQ(base.modules.size(), 7u * m.config().n_layers) << label(c);
    std::vector<NamedTensor> params = peft::inject_lora(m, lora_config(c.kind));
    perturb(params, 100 + i);  // adapters as after some training
    at::Tensor loss = causal_lm_loss(m.forward(ids), labels);
    loss.backward();
    losses.push_back(loss.item<double>());
    std::vector<NamedTensor> g;
    std::vector<std::string> names;
    for (const auto& p : params) {
      ASSERT_TRUE(p.tensor.grad().defined()) << p.name;
      g.push_back({p.name, p.tensor.grad().clone()});
      names.push_back(p.name);
      inputs.push_back(p.tensor.detach());
    }
    inputs.insert(inputs.end(), base.tensors.begin(), base.tensors.end());
    grads.push_back(std::move(g));
    json_cases.push_back({{"model_dir", fixture(c.model)}, {"quant_type", four_bit_name(c.type)},
                          {"double_quant", c.double_quant}, {"modules", base.modules}, {"kind", c.kind},
                          {"targets", "all-linear"}, {"r", 4}, {"alpha", 8}, {"names", names}});
  }
  std::vector<at::Tensor> ref = testing::call_python("peft_qlora_grads", inputs, {{"cases", json_cases}});
  size_t pos = 0;
  for (size_t i = 0; i < cases.size(); ++i) {
    const Case& c = cases[i];
    const double ref_loss = ref[pos++].item<double>();
    const double loss_err = std::abs(losses[i] - ref_loss) / std::abs(ref_loss);
    EXPECT_LE(loss_err, 1e-4) << label(c) << ": loss " << losses[i] << " vs PEFT " << ref_loss;
    double worst = 0;
    for (const auto& g : grads[i]) {
      const at::Tensor& r = ref[pos++];
      ASSERT_GT(r.norm().item<double>(), 0) << label(c) << " " << g.name << ": PEFT's gradient is zero";
      const double e = rel_err(g.tensor, r);
      EXPECT_LE(e, 1e-4) << label(c) << " " << g.name;
      worst = std::max(worst, e);
    }
    const at::Tensor mismatch = ref[pos++];
    // NF4 without double quant: bitsandbytes quantizes the fixture to the same bytes and absmax.
    if (c.type == FourBit::NF4 && !c.double_quant) {
      EXPECT_EQ(mismatch[0].item<double>(), 0) << label(c) << ": packed bytes differ from bitsandbytes' own";
      EXPECT_EQ(mismatch[1].item<double>(), 0) << label(c) << ": absmax differs from bitsandbytes' own";
    }
    std::cout << "[ measured ] " << label(c) << ": loss rel err " << loss_err << ", worst grad rel err " << worst
              << "; vs bitsandbytes' own quantization: " << mismatch[0].item<double>() << " bytes differ, max absmax diff "
              << mismatch[1].item<double>() << "\n";
  }
}

// 2. Ten optimizer steps of `llmtune finetune` (method qlora, fp32 on the CPU; one batch holding
// every row, warmup + cosine, weight decay, clipping) against PEFT + torch AdamW + transformers'
// schedule from the same initial adapter: every step's loss and the final adapter to 1e-3.
class QLoRATraining : public ::testing::TestWithParam<Case> {};

TEST_P(QLoRATraining, TenFinetuneStepsTrackPeftWithTorchAdamW) {
  const Case c = GetParam();
  const fs::path tmp = fs::temp_directory_path() / ("llmtune-qlora-" + std::to_string(::getpid()) + "-" + c.kind);
  fs::remove_all(tmp);
  fs::create_directories(tmp);
  {
    std::ofstream data(tmp / "d.jsonl");
    for (int i = 0; i < 12; ++i) {
      const std::string a = std::to_string(i), b = std::to_string(i + 3);
      nlohmann::json user = {{"role", "user"}, {"content", "What is " + a + " plus " + b + "?"}};
      nlohmann::json assistant = {{"role", "assistant"}, {"content", a + " plus " + b + " is " + std::to_string(2 * i + 3) + "."}};
      data << nlohmann::json{{"messages", nlohmann::json::array({user, assistant})}}.dump() << "\n";
    }
  }
  const int64_t steps = 10;
  pipelines::FinetuneParams p;
  p.model = fixture(c.model);
  p.output = tmp / "run";
  p.method = "qlora";
  p.quantize = four_bit_name(c.type);
  p.double_quant = c.double_quant;
  p.adapter = peft::make_lora_method(lora_config(c.kind));
  p.data.path = tmp / "d.jsonl";
  p.packing = false;
  p.batch_size = 12;
  p.max_steps = steps;
  p.lr = 5e-3;
  p.warmup_steps = 2;
  p.lr_scheduler = "cosine";
  p.adam.weight_decay = 0.01;
  p.max_grad_norm = 1.0;
  p.checkpoint_every_steps = 1;
  p.checkpoint_keep = 0;
  p.device = "cpu";
  p.dtype = "fp32";
  p.quiet = true;
  p.config_yaml = "# test\n";
  const nlohmann::json summary = pipelines::run_finetune(p);
  EXPECT_EQ(summary["quantization"]["type"], four_bit_name(c.type));
  EXPECT_EQ(summary["quantization"]["double_quant"], c.double_quant);
  EXPECT_GT(summary["quantization"]["bytes_saved"].get<int64_t>(), 0);

  std::vector<double> ours;
  std::ifstream metrics(tmp / "run" / "metrics.jsonl");
  for (std::string line; std::getline(metrics, line);) {
    const nlohmann::json j = nlohmann::json::parse(line);
    if (j.contains("loss")) ours.push_back(j["loss"].get<double>());
  }
  ASSERT_EQ(ours.size(), static_cast<size_t>(steps));

  // The same token ids and labels (our tokenization is checked against HF's elsewhere), right-padded.
  auto tok = tokenizer::load_tokenizer(fixture(c.model));
  const data::Dataset dataset = data::load_dataset(p.data, *tok);
  size_t width = 0;
  for (const auto& e : dataset.train) width = std::max(width, e.input_ids.size());
  const auto n = static_cast<int64_t>(dataset.train.size());
  at::Tensor ids = at::zeros({n, static_cast<int64_t>(width)}, at::kLong), labels = at::full_like(ids, -100),
             mask = at::zeros_like(ids);
  for (int64_t i = 0; i < n; ++i) {
    const auto& e = dataset.train[i];
    for (size_t t = 0; t < e.input_ids.size(); ++t) {
      ids[i][t] = e.input_ids[t];
      labels[i][t] = e.labels[t];
      mask[i][t] = 1;
    }
  }
  // The base the run trained over: quantizing is deterministic, so loading again gives its states.
  model::CausalLM m = load_four_bit(c);
  BaseStates base = base_states(m);
  std::vector<at::Tensor> inputs = {ids, labels, mask};
  inputs.insert(inputs.end(), base.tensors.begin(), base.tensors.end());
  // B starts at 0 and the first step's LR is 0 (warmup), so step 1's tensors are the initial adapter.
  std::vector<at::Tensor> ref = testing::call_python(
      "peft_qlora_train", inputs,
      {{"model_dir", fixture(c.model)}, {"quant_type", four_bit_name(c.type)}, {"double_quant", c.double_quant},
       {"modules", base.modules}, {"kind", c.kind}, {"targets", "all-linear"}, {"r", 4}, {"alpha", 8},
       {"first", (tmp / "run" / "checkpoints" / "step-1" / "trainable.safetensors").string()}, {"steps", steps},
       {"lr", p.lr}, {"warmup_steps", p.warmup_steps}, {"weight_decay", 0.01}, {"max_grad_norm", 1.0}});
  double worst_loss = 0;
  for (int64_t s = 0; s < steps; ++s) {
    const double want = ref[0][s].item<double>();
    const double e = std::abs(ours[s] - want) / std::abs(want);
    EXPECT_LE(e, 1e-3) << label(c) << " step " << s + 1 << ": llmtune " << ours[s] << " vs PEFT " << want;
    worst_loss = std::max(worst_loss, e);
  }
  EXPECT_LT(ref[0][steps - 1].item<double>(), ref[0][0].item<double>()) << "PEFT's loss did not fall: the run proves little";

  std::string keys(static_cast<const char*>(ref[1].const_data_ptr()), ref[1].numel());
  std::stringstream ss(keys);
  auto adapter = io::SafetensorsFile::open(tmp / "run" / "adapter" / "adapter_model.safetensors");
  double worst_weight = 0;
  size_t k = 2;
  for (std::string key; std::getline(ss, key, '\n'); ++k) {
    ASSERT_LT(k, ref.size());
    const double e = rel_err(adapter->tensor(key).to(at::kFloat), ref[k]);
    EXPECT_LE(e, 1e-3) << label(c) << " " << key;
    worst_weight = std::max(worst_weight, e);
  }
  EXPECT_EQ(k, ref.size());
  std::cout << "[ measured ] " << label(c) << ", 10 finetune steps: worst loss rel err " << worst_loss
            << ", worst final adapter tensor rel err " << worst_weight << " (PEFT loss " << ref[0][0].item<double>() << " -> "
            << ref[0][steps - 1].item<double>() << ")\n";
  fs::remove_all(tmp);
}

INSTANTIATE_TEST_SUITE_P(QLoRA, QLoRATraining,
                         ::testing::Values(Case{"qwen2", FourBit::NF4, true, "lora"}, Case{"llama3", FourBit::FP4, false, "dora"}),
                         [](const ::testing::TestParamInfo<Case>& info) {
                           return info.param.model + "_" + four_bit_name(info.param.type) +
                                  (info.param.double_quant ? "_dq_" : "_") + info.param.kind;
                         });

}  // namespace
}  // namespace llmtune::quant
