// The training step on CUDA against the CPU reference: forward, packed and unpacked loss and LoRA
// gradients (fp32: the windowed SDPA path; bf16: variable-length flash attention), the chunked
// LM-head loss, greedy generation, and a finetune run with packing that resumes bit-identically
// (the CUDA generator restored). Skipped, visibly, where no GPU is.
#include <ATen/core/grad_mode.h>
#include <ATen/ops/randint.h>
#include <ATen/ops/randn.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "data/data_reference.h"
#include "llmtune/data/batcher.h"
#include "llmtune/model/causal_lm.h"
#include "llmtune/model/generate.h"
#include "llmtune/ops/linear_cross_entropy.h"
#include "llmtune/peft/lora.h"
#include "llmtune/pipelines/finetune.h"
#include "llmtune/train/loss.h"

namespace llmtune {
namespace {

namespace fs = std::filesystem;

bool has_gpu() { return at::hasCUDA(); }
#define REQUIRE_GPU() \
  if (!has_gpu()) GTEST_SKIP() << "no CUDA device on this machine"

const c10::Device kCuda(c10::kCUDA, 0);

double rel(const at::Tensor& a, const at::Tensor& b) {
  const at::Tensor x = a.cpu().to(at::kDouble), y = b.cpu().to(at::kDouble);
  return (x - y).abs().max().item<double>() / std::max(y.abs().max().item<double>(), 1e-12);
}

std::vector<data::Example> examples(int n, int max_len, uint32_t seed) {
  return testing::random_training_examples(n, max_len, seed);
}

class CudaFamily : public ::testing::TestWithParam<std::string> {};

TEST_P(CudaFamily, ForwardEqualsCpu) {
  REQUIRE_GPU();
  const std::string dir = testing::fixture_model_dir(GetParam());
  auto cpu = model::CausalLM::load(dir, c10::kCPU, at::kFloat);
  auto gpu = model::CausalLM::load(dir, kCuda, at::kFloat);
  at::manual_seed(1);
  at::Tensor ids = at::randint(0, 100, {2, 24}, at::TensorOptions().dtype(at::kLong));
  at::NoGradGuard no_grad;
  EXPECT_LE(rel(gpu.forward(ids), cpu.forward(ids)), 1e-4) << GetParam();
  auto bf16 = model::CausalLM::load(dir, kCuda, at::kBFloat16);
  EXPECT_LE(rel(bf16.forward(ids), cpu.forward(ids)), 5e-2) << GetParam();
}

// A packed batch's loss and LoRA gradients on CUDA equal the CPU's, in fp32 (tight) and bf16
// (the varlen flash path; bf16 rounding).
TEST_P(CudaFamily, PackedLoraStepEqualsCpu) {
  REQUIRE_GPU();
  const std::string dir = testing::fixture_model_dir(GetParam());
  for (at::ScalarType dtype : {at::kFloat, at::kBFloat16}) {
    for (bool packing : {true, false}) {
      auto m_cpu = model::CausalLM::load(dir, c10::kCPU, at::kFloat);
      auto m_gpu = model::CausalLM::load(dir, kCuda, dtype);
      peft::LoraConfig cfg;
      cfg.r = 4;
      cfg.lora_alpha = 8;
      cfg.target_modules = {"q_proj", "v_proj", "down_proj"};
      auto pc = peft::inject_lora(m_cpu, cfg), pg = peft::inject_lora(m_gpu, cfg);
      {
        at::NoGradGuard no_grad;
        for (size_t i = 0; i < pc.size(); ++i) {
          pc[i].tensor.copy_(at::randn(pc[i].tensor.sizes()) * 0.1);
          pg[i].tensor.copy_(pc[i].tensor);
        }
      }
      data::Batcher batcher(examples(10, 24, 4), {.batch_size = 3, .max_seq_len = 64, .packing = packing, .shuffle = false});
      const data::Batch host = batcher.next();
      at::Tensor lc = train::batch_loss_sum(m_cpu, host), lg = train::batch_loss_sum(m_gpu, data::to_device(host, kCuda));
      lc.backward();
      lg.backward();
      const double tol = dtype == at::kFloat ? 1e-4 : 5e-2;
      EXPECT_LE(rel(lg.detach(), lc.detach()), tol) << GetParam() << " packing " << packing;
      for (size_t i = 0; i < pc.size(); ++i)
        EXPECT_LE(rel(pg[i].tensor.grad(), pc[i].tensor.grad()), dtype == at::kFloat ? 1e-3 : 1e-1) << pc[i].name;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Families, CudaFamily, ::testing::Values("llama3", "mistral", "qwen2", "gemma"));

TEST(CudaStep, ChunkedLossEqualsCpu) {
  REQUIRE_GPU();
  at::manual_seed(5);
  at::Tensor h = at::randn({300, 64}), w = at::randn({4099, 64}) * 0.2;
  at::Tensor t = at::randint(0, 4099, {300}, at::TensorOptions().dtype(at::kLong));
  at::Tensor hc = h.clone().requires_grad_(true), hg = h.to(kCuda).requires_grad_(true);
  at::Tensor lc = ops::linear_cross_entropy_sum(hc, w, t, 64);
  at::Tensor lg = ops::linear_cross_entropy_sum(hg, w.to(kCuda), t.to(kCuda), 64);
  lc.backward();
  lg.backward();
  EXPECT_LE(rel(lg.detach(), lc.detach()), 1e-5);
  EXPECT_LE(rel(hg.grad(), hc.grad()), 1e-4);
}

TEST(CudaStep, GreedyGenerationEqualsCpu) {
  REQUIRE_GPU();
  const std::string dir = testing::fixture_model_dir("llama3");
  auto cpu = model::CausalLM::load(dir, c10::kCPU, at::kFloat);
  auto gpu = model::CausalLM::load(dir, kCuda, at::kFloat);
  std::vector<int64_t> prompt{1, 5, 9, 13, 17};
  model::SamplingParams greedy;
  greedy.temperature = 0;
  greedy.max_new_tokens = 16;
  EXPECT_EQ(model::generate(gpu, prompt, greedy).tokens, model::generate(cpu, prompt, greedy).tokens);
}

// 8 packed LoRA steps with dropout on CUDA, resumed from the step-4 checkpoint: the adapter equals an
// uninterrupted run's bit for bit (the CUDA generator is saved and restored).
TEST(CudaStep, FinetuneResumeIsBitIdentical) {
  REQUIRE_GPU();
  const fs::path tmp = fs::temp_directory_path() / ("llmtune-cuda-resume-" + std::to_string(::getpid()));
  fs::remove_all(tmp);
  fs::create_directories(tmp);
  {
    std::ofstream data(tmp / "data.jsonl");
    for (int i = 0; i < 64; ++i)
      data << nlohmann::json{{"text", "row " + std::to_string(i) + " of the quick brown fox and the lazy dog"}}.dump() << "\n";
  }
  auto params = [&](const fs::path& out, int64_t max_steps) {
    pipelines::FinetuneParams p;
    p.model = testing::fixture_model_dir("llama3");
    p.output = out;
    p.method = "lora";
    peft::LoraConfig cfg;
    cfg.r = 4;
    cfg.lora_alpha = 8;
    cfg.lora_dropout = 0.1;
    cfg.target_modules = {"all-linear"};
    p.adapter = peft::make_lora_method(cfg);
    p.data.path = tmp / "data.jsonl";
    p.data.format = "text";
    p.data.max_seq_len = 64;
    p.batch_size = 4;
    p.max_steps = max_steps;
    p.lr = 1e-3;
    p.device = "cuda";
    p.dtype = "bf16";
    p.checkpoint_every_steps = 4;
    p.quiet = true;
    p.config_yaml = "# test\n";
    return p;
  };
  // The uninterrupted run keeps its step-4 checkpoint; a second run directory starts from a copy
  // of it, as a run killed after step 4 would, and resumes to step 8.
  auto full = params(tmp / "full", 8);
  full.checkpoint_keep = 0;
  pipelines::run_finetune(full);
  fs::create_directories(tmp / "split" / "checkpoints");
  fs::copy(tmp / "full" / "checkpoints" / "step-4", tmp / "split" / "checkpoints" / "step-4", fs::copy_options::recursive);
  auto resume = params(tmp / "split", 8);
  resume.resume = true;
  pipelines::run_finetune(resume);
  auto read = [](const fs::path& f) {
    std::ifstream in(f, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
  };
  EXPECT_EQ(read(tmp / "full" / "adapter" / "adapter_model.safetensors"),
            read(tmp / "split" / "adapter" / "adapter_model.safetensors"));
  fs::remove_all(tmp);
}

}  // namespace
}  // namespace llmtune
