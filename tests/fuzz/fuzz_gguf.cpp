// Fuzz target: a GGUF file (FORMATS.md §6): header, metadata of every value type (nested arrays
// included), tensor infos and layout in GgufFile::open; then the typed getters on every key, every
// tensor's bytes (dequantized where llmtune can), and the tokenizer.* vocabulary rebuilt into a
// Tokenizer that encodes and decodes a short string, as `llmtune infer model.gguf` would.
#include <ATen/core/Tensor.h>

#include "fuzz_util.h"
#include "llmtune/io/gguf.h"
#include "llmtune/quant/gguf_quants.h"
#include "llmtune/tokenizer/gguf_vocab.h"

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  llmtune::fuzz::init();
  return 0;
}

namespace {

using namespace llmtune;

void read_every_key(const io::GgufFile& file) {
  for (const auto& kv : file.metadata()) {
    fuzz::guarded([&] {
      switch (kv.value.type) {
        case io::GgufValueType::STRING: (void)file.get_string(kv.key); break;
        case io::GgufValueType::BOOL: (void)file.get_bool_opt(kv.key); break;
        case io::GgufValueType::FLOAT32:
        case io::GgufValueType::FLOAT64: (void)file.get_float(kv.key); break;
        case io::GgufValueType::ARRAY:
          if (kv.value.elem_type == io::GgufValueType::STRING) (void)file.get_string_array(kv.key);
          else (void)file.get_float_array(kv.key);
          break;
        default: (void)file.get_int(kv.key), (void)file.get_float(kv.key);
      }
    });
    // The wrong type on purpose: a one-line error, never a crash.
    fuzz::guarded([&] { (void)file.get_int_array(kv.key); });
    fuzz::guarded([&] { (void)file.get_string_opt(kv.key); });
  }
}

void read_every_tensor(const io::GgufFile& file) {
  for (const auto& t : file.tensors()) {
    fuzz::guarded([&] {
      (void)t.shape();
      const uint8_t* bytes = file.data(t);
      if (t.n_bytes > 0) {
        (void)*static_cast<const volatile uint8_t*>(bytes);
        (void)*static_cast<const volatile uint8_t*>(bytes + t.n_bytes - 1);
      }
      if (quant::can_dequantize(t.type) && t.n_elements() <= (int64_t{1} << 20))
        (void)quant::dequantize(bytes, t.type, t.shape());
    });
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto path = fuzz::write_scratch("model.gguf", {reinterpret_cast<const char*>(data), size});
  fuzz::guarded([&] {
    auto file = io::GgufFile::open(path);
    read_every_key(*file);
    read_every_tensor(*file);
    if (!file->find("tokenizer.ggml.model")) return;
    tokenizer::GgufVocab vocab = tokenizer::read_gguf_vocab(*file);
    auto tok = tokenizer::tokenizer_from_gguf_vocab(vocab, path.string());
    std::vector<int32_t> ids = tok->encode("Hello world! <s> 123 \xC3\xA5\xE2\x96\x81 x\n\ty");
    (void)tok->decode(ids, /*skip_special_tokens=*/false);
    (void)tok->decode(ids, /*skip_special_tokens=*/true);
  });
  return 0;
}
