// Fuzz target: dataset files as finetune and eval read them: a .jsonl file (or, when the input
// starts with '[', a .json array of rows) through load_dataset: row parsing with line numbers,
// format detection (alpaca, messages, tools, completion, text), rendering through a shipped chat
// template, tokenization, label spans, truncation and the validation split. The size of the input
// picks the template, skip_bad_rows and the truncation mode, so every corpus entry sees several.
#include "fuzz_util.h"
#include "llmtune/data/dataset.h"

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  llmtune::fuzz::init();
  (void)llmtune::fuzz::byte_tokenizer();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace llmtune;
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  const size_t first = text.find_first_not_of(" \t\r\n");
  const bool array = first != std::string_view::npos && text[first] == '[';
  data::DataParams params;
  params.path = fuzz::write_scratch(array ? "data.json" : "data.jsonl", text);
  const auto& names = data::named_templates();
  params.chat_template = names[size % names.size()];
  const size_t bits = size / names.size();
  params.skip_bad_rows = bits & 1;
  params.truncation = bits & 2 ? "drop" : "truncate";
  params.train_on = bits & 4 ? "all" : "assistant";
  params.max_seq_len = bits & 8 ? 64 : 1024;
  params.val_fraction = bits & 16 ? 0.25 : 0.0;
  const tokenizer::Tokenizer& tok = fuzz::byte_tokenizer();
  fuzz::guarded([&] {
    data::Dataset ds = data::load_dataset(params, tok);
    data::check_token_ids(ds.train, tok.vocab_size(), params.path);
    for (const auto* set : {&ds.train, &ds.val})
      for (const auto& ex : *set)
        if (ex.input_ids.size() != ex.labels.size() || static_cast<int64_t>(ex.input_ids.size()) > params.max_seq_len)
          std::abort();  // an example's ids and labels always match, within max_seq_len
  });
  return 0;
}
