// Fuzz target: adapter_config.json as a downloaded PEFT adapter brings it: parsed with the JSON
// nesting limit (as io::read_json_file), dispatched on peft_type, read by the method
// (LoraConfig::from_json: r, alpha, dropout, target/exclude modules and regexes, layers, rank and
// alpha patterns), validated, written back, and matched against a tiny Llama's module paths, the
// way merge/infer/eval apply an adapter.
#include <nlohmann/json.hpp>

#include "fuzz_util.h"
#include "llmtune/io/read_file.h"
#include "llmtune/model/causal_lm.h"
#include "llmtune/peft/lora.h"
#include "llmtune/peft/method.h"

namespace {

using namespace llmtune;

model::CausalLM& tiny_model() {
  static model::CausalLM m = [] {
    namespace fs = std::filesystem;
    fs::create_directories(fuzz::scratch_dir() / "tiny-llama");
    fuzz::write_scratch("tiny-llama/config.json", R"({"architectures": ["LlamaForCausalLM"], "model_type": "llama",
      "hidden_size": 8, "intermediate_size": 16, "num_attention_heads": 2, "num_key_value_heads": 1,
      "num_hidden_layers": 2, "vocab_size": 16, "max_position_embeddings": 32, "rms_norm_eps": 1e-6,
      "tie_word_embeddings": false})");
    return model::CausalLM::init_random(fuzz::scratch_dir() / "tiny-llama", c10::Device(c10::kCPU), at::kFloat, 0);
  }();
  return m;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  fuzz::init();
  (void)tiny_model();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string source = "adapter/adapter_config.json";
  fuzz::guarded([&] {
    nlohmann::json j;
    try {
      j = io::parse_json_bounded<nlohmann::json>({reinterpret_cast<const char*>(data), size});
    } catch (const std::exception&) {
      return;  // read_json_file turns these into AdapterErrors
    }
    if (!j.is_object()) return;
    const auto type_it = j.find("peft_type");
    const std::string peft_type = type_it != j.end() && type_it->is_string() ? type_it->get<std::string>() : "LORA";
    const peft::AdapterMethodType* type = peft::adapter_method_for_peft_type(peft_type);
    if (!type) return;
    peft::AdapterMethodPtr method = type->from_json(j, source);
    method->validate(source);
    (void)method->describe();
    (void)method->config_json({"model.layers.0.self_attn.q_proj", "model.layers.1.mlp.down_proj"}).dump();
    if (peft_type != "LORA") return;
    const peft::LoraConfig lora = peft::LoraConfig::from_json(j, source);
    (void)lora.to_json().dump(2);
    std::vector<std::string> modules;
    fuzz::guarded([&] { modules = peft::select_target_modules(tiny_model(), lora); });
    for (const auto& path : modules) {
      const int64_t r = lora.rank_for(path);
      (void)lora.scaling_for(path, r);
    }
  });
  return 0;
}
