// Fuzz target: tokenizer.json (+ tokenizer_config.json) loading, then encoding and decoding a
// short string with the result. The input is tokenizer.json, optionally followed by a NUL byte
// and a tokenizer_config.json (which picks the LlamaTokenizer path, names special tokens, adds
// tokens and a chat template), as a model directory holds them.
#include <cstdio>

#include "fuzz_util.h"
#include "llmtune/tokenizer/tokenizer.h"

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  llmtune::fuzz::init();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace llmtune;
  namespace fs = std::filesystem;
  const auto parts = fuzz::split_at_nul({reinterpret_cast<const char*>(data), size}, 2);
  const fs::path dir = fuzz::scratch_dir() / "tokenizer";
  fs::create_directories(dir);
  fuzz::write_scratch("tokenizer/tokenizer.json", parts[0]);
  if (parts.size() > 1) fuzz::write_scratch("tokenizer/tokenizer_config.json", parts[1]);
  else fs::remove(dir / "tokenizer_config.json");
  fuzz::guarded([&] {
    auto tok = tokenizer::load_tokenizer(dir);
    const std::string text = "Hello, world! It's 2024 \xC3\x85ngstr\xC3\xB6m <s></s> <|im_start|> \xE2\x96\x81x  \n\n\tend";
    const std::vector<int32_t> ids = tok->encode(text);
    const auto enc = tok->encode_with_offsets(text, /*add_special_tokens=*/false);
    for (size_t i = 0; i < enc.offsets.size(); ++i) {
      const auto [begin, end] = enc.offsets[i];
      if (begin > end || end > text.size()) {  // offsets must lie inside the text
        std::fprintf(stderr, "fuzz_tokenizer: token %zu (id %d) has offsets [%zu, %zu) in a text of %zu bytes\n", i,
                     enc.ids[i], begin, end, text.size());
        std::abort();
      }
    }
    (void)tok->decode(ids);
    (void)tok->decode(ids, /*skip_special_tokens=*/true);
    const int32_t n = tok->vocab_size();
    const std::vector<int32_t> edge = {0, n - 1, n, -1};
    (void)tok->decode(edge);
    for (int32_t id : {0, n - 1}) fuzz::guarded([&] { (void)tok->piece_to_id(tok->id_to_piece(id)); });
  });
  return 0;
}
