// load_tokenizer(): a model directory -> Tokenizer, as transformers 5's AutoTokenizer reads it:
// tokenizer.json (or tokenizer.model), tokenizer_config.json, special_tokens_map.json,
// chat_template.jinja and generation_config.json.
#include <fstream>
#include <sstream>

#include "added_tokens.h"
#include "llmtune/io/read_file.h"
#include "llmtune/tokenizer/tokenizer.h"
#include "llmtune/util/error.h"
#include "llmtune/util/log.h"
#include "pipeline.h"
#include "post_processor.h"

namespace llmtune::tokenizer {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

std::string read_file(const fs::path& path) { return io::read_text_file<TokenizerError>(path, path.filename().string()); }

json read_json(const fs::path& path) {
  return io::read_json_file<TokenizerError, json>(path, path.filename().string());
}

bool flag(const json& j, const char* key, bool fallback) {
  return j.contains(key) && j[key].is_boolean() ? j[key].get<bool>() : fallback;
}

json read_optional_json(const fs::path& path) {
  return fs::exists(path) ? read_json(path) : json::object();
}

// A special token as tokenizer_config.json writes it: a string, an AddedToken dict, or null.
std::optional<AddedToken> parse_token(const json& v, const std::string& where) {
  if (v.is_null()) return std::nullopt;
  AddedToken t;
  t.special = true;
  if (v.is_string()) {
    t.content = v.get<std::string>();
    return t;
  }
  if (v.is_object() && v.contains("content") && v["content"].is_string()) {
    t.content = v["content"].get<std::string>();
    t.lstrip = v.value("lstrip", false);
    t.rstrip = v.value("rstrip", false);
    t.single_word = v.value("single_word", false);
    t.normalized = v.value("normalized", false);
    t.special = v.value("special", true);
    return t;
  }
  throw TokenizerError(where + " must be a string, {\"content\": ...} or null, got " + v.dump());
}

AddedToken parse_added_token_entry(const json& v, const std::string& where) {
  if (!v.is_object() || !v.contains("content") || !v["content"].is_string())
    throw TokenizerError(where + ": an added token needs a string \"content\"");
  AddedToken t;
  t.content = v["content"].get<std::string>();
  t.special = v.value("special", false);
  t.lstrip = v.value("lstrip", false);
  t.rstrip = v.value("rstrip", false);
  t.single_word = v.value("single_word", false);
  t.normalized = v.value("normalized", !t.special);
  return t;
}

// tokenizers' add_tokens: a token already in the model vocabulary keeps that id; a new one gets
// the next id after everything so far.
void add_token(Pipeline& p, AddedToken t) {
  if (p.added.by_content(t.content)) return;  // tokenizer.json's definition stands
  if (auto id = p.model->token_to_id(t.content)) {
    t.id = *id;
  } else {
    int32_t next = p.model->size();
    for (const auto& a : p.added.tokens()) next = std::max(next, a.id + 1);
    t.id = next;
  }
  p.added.add(std::move(t));
}

bool is_llama_class(const json& config) {
  std::string cls = config.value("tokenizer_class", std::string());
  return cls == "LlamaTokenizer" || cls == "LlamaTokenizerFast";
}

// transformers 5's LlamaTokenizer builds its own pipeline around the vocabulary, whatever
// tokenizer.json says: no normalizer, Metaspace "▁" (prepend "first", or "always" with
// legacy: true, "never" with add_prefix_space: false), Replace/ByteFallback/Fuse[/Strip] decoder.
void use_llama_pipeline(Pipeline& p, const json& config) {
  bool add_prefix_space = flag(config, "add_prefix_space", true);
  bool legacy = flag(config, "legacy", false);
  std::string scheme = add_prefix_space ? (legacy ? "always" : "first") : "never";
  p.normalizer = nullptr;
  p.pre_tokenizer = make_metaspace("\u2581", scheme, /*split=*/false);
  p.decoder = make_llama_decoder(add_prefix_space);
  spdlog::debug("tokenizer: LlamaTokenizer pipeline, Metaspace prepend_scheme={}", scheme);
}

void load_tokenizer_json(Pipeline& p, const fs::path& path, const json& config) {
  const std::string file = path.string();
  json j = read_json(path);
  if (!j.contains("model")) throw TokenizerError(file + ": no \"model\" section");
  if (is_llama_class(config)) {
    p.model = make_llama_bpe_model(j["model"], file);
    use_llama_pipeline(p, config);
  } else {
    // Every other class reads tokenizer.json as shipped. (transformers 5's GPT2Tokenizer swaps the
    // file's pre-tokenizer for a bare ByteLevel, huggingface/transformers#44254; SmolLM's Digits
    // stage is what the model was trained with, and what transformers 4 ran.)
    p.model = make_bpe_model(j["model"], file);
    p.normalizer = make_normalizer(j.value("normalizer", json()), file);
    p.pre_tokenizer = make_pre_tokenizer(j.value("pre_tokenizer", json()), file);
    p.decoder = make_decoder(j.value("decoder", json()), file);
  }
  // Truncation and padding are the data pipeline's job (max_seq_len, packing); say that they are not applied here.
  for (const char* key : {"truncation", "padding"})
    if (j.contains(key) && !j[key].is_null())
      spdlog::warn("tokenizer: {}: \"{}\" is set but not applied by encode(); lengths come from the data config", file, key);
  SingleTemplate t = parse_post_processor(j.value("post_processor", json()), file);
  p.prefix_ids = std::move(t.prefix);
  p.suffix_ids = std::move(t.suffix);
  const json& added = j.value("added_tokens", json::array());
  if (!added.is_array()) throw TokenizerError(file + ": added_tokens is not a list");
  for (const auto& a : added) {
    AddedToken t = parse_added_token_entry(a, file);
    if (!a.contains("id") || !a["id"].is_number_integer()) throw TokenizerError(file + ": added token without an id");
    const int64_t id = a["id"].is_number_unsigned() && a["id"].get<uint64_t>() > INT64_MAX ? -1 : a["id"].get<int64_t>();
    if (id < 0 || id >= p.model->size() + kMaxVocabIdGap)
      throw TokenizerError(file + ": added token " + json(t.content).dump(-1, ' ', false, json::error_handler_t::replace) +
                           " has id " + a["id"].dump() +
                           (id < 0 ? ", below 0" : ", far past the model's " + std::to_string(p.model->size()) + " tokens"));
    t.id = static_cast<int32_t>(id);
    p.added.add(std::move(t));
  }
}

void apply_config(Pipeline& p, Tokenizer& tok, const json& config, const json& special_map, const fs::path& dir) {
  const std::string cfg_file = (dir / "tokenizer_config.json").string();
  // added_tokens_decoder, in id order.
  if (config.contains("added_tokens_decoder") && config["added_tokens_decoder"].is_object()) {
    std::vector<std::pair<long, AddedToken>> entries;
    for (const auto& [key, v] : config["added_tokens_decoder"].items()) {
      char* end = nullptr;
      long id = std::strtol(key.c_str(), &end, 10);
      if (!end || *end) throw TokenizerError(cfg_file + ": added_tokens_decoder key \"" + key + "\" is not an id");
      entries.emplace_back(id, parse_added_token_entry(v, cfg_file));
    }
    std::sort(entries.begin(), entries.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
    for (auto& [id, t] : entries) {
      std::string content = t.content;
      add_token(p, std::move(t));
      if (p.added.by_content(content)->id != id)
        spdlog::warn("tokenizer: {} lists \"{}\" as id {}, but the vocabulary gives it id {}", cfg_file, content, id,
                     p.added.by_content(content)->id);
    }
  }
  // Named special tokens: tokenizer_config.json first, special_tokens_map.json for the rest.
  auto named = [&](const char* key) -> std::optional<AddedToken> {
    if (config.contains(key)) return parse_token(config[key], cfg_file + ": " + key);
    if (special_map.contains(key)) return parse_token(special_map[key], (dir / "special_tokens_map.json").string() + ": " + key);
    return std::nullopt;
  };
  struct Named {
    const char* key;
    std::optional<int32_t>* id;
    std::string* text;
  };
  std::optional<int32_t> unused_id;
  std::string unused_text;
  for (Named n : {Named{"bos_token", &tok.bos_id, &tok.bos_token}, Named{"eos_token", &tok.eos_id, &tok.eos_token},
                  Named{"unk_token", &tok.unk_id, &tok.unk_token}, Named{"pad_token", &tok.pad_id, &tok.pad_token},
                  Named{"sep_token", &unused_id, &unused_text}, Named{"cls_token", &unused_id, &unused_text},
                  Named{"mask_token", &unused_id, &unused_text}}) {
    auto t = named(n.key);
    if (!t) continue;
    *n.text = t->content;
    add_token(p, *t);
    *n.id = p.added.by_content(t->content)->id;
  }
  for (const char* key : {"additional_special_tokens", "extra_special_tokens"}) {
    const json& list = config.contains(key) ? config[key] : special_map.value(key, json());
    if (!list.is_array()) continue;
    for (const auto& v : list)
      if (auto t = parse_token(v, cfg_file + ": " + key)) add_token(p, *t);
  }

  // transformers 5 rebuilds the post-processor from add_bos_token / add_eos_token when the config
  // names either of them, or when tokenizer.json has none.
  bool explicit_flags = config.contains("add_bos_token") || config.contains("add_eos_token");
  if (explicit_flags || (p.prefix_ids.empty() && p.suffix_ids.empty())) {
    bool add_bos = flag(config, "add_bos_token", false);
    bool add_eos = flag(config, "add_eos_token", false);
    if (add_bos && !tok.bos_id) spdlog::warn("tokenizer: {} sets add_bos_token but names no bos_token; no BOS is added", cfg_file);
    if (add_eos && !tok.eos_id) spdlog::warn("tokenizer: {} sets add_eos_token but names no eos_token; no EOS is added", cfg_file);
    p.prefix_ids.clear();
    p.suffix_ids.clear();
    if (add_bos && tok.bos_id) p.prefix_ids.push_back(*tok.bos_id);
    if (add_eos && tok.eos_id) p.suffix_ids.push_back(*tok.eos_id);
  }
  if (flag(config, "clean_up_tokenization_spaces", false) && log::first_time("tokenizer-cleanup-ignored"))
    spdlog::info("tokenizer: clean_up_tokenization_spaces is ignored for BPE tokenizers, as in transformers 5");
}

std::string read_chat_template(const fs::path& dir, const json& config) {
  fs::path jinja = dir / "chat_template.jinja";
  if (fs::exists(jinja)) return read_file(jinja);
  if (!config.contains("chat_template")) return "";
  const json& ct = config["chat_template"];
  if (ct.is_string()) return ct.get<std::string>();
  if (ct.is_array()) {
    std::string names;
    for (const auto& entry : ct) {
      if (entry.value("name", std::string()) == "default" && entry.contains("template") && entry["template"].is_string())
        return entry["template"].get<std::string>();
      names += (names.empty() ? "" : ", ") + entry.value("name", std::string("?"));
    }
    spdlog::warn("tokenizer: {}: chat_template is a list without a \"default\" entry ({}); no template is used",
                 (dir / "tokenizer_config.json").string(), names);
    return "";
  }
  if (!ct.is_null())
    throw TokenizerError((dir / "tokenizer_config.json").string() + ": chat_template must be a string or a list");
  return "";
}

std::vector<int32_t> read_stop_ids(const fs::path& dir, const Tokenizer& tok) {
  fs::path gen = dir / "generation_config.json";
  if (fs::exists(gen)) {
    json j = read_json(gen);
    const json& eos = j.value("eos_token_id", json());
    if (eos.is_number_integer()) return {eos.get<int32_t>()};
    if (eos.is_array()) {
      std::vector<int32_t> ids;
      for (const auto& e : eos) {
        if (!e.is_number_integer()) throw TokenizerError(gen.string() + ": eos_token_id holds a non-integer");
        ids.push_back(e.get<int32_t>());
      }
      return ids;
    }
    if (!eos.is_null()) throw TokenizerError(gen.string() + ": eos_token_id must be an integer or a list of integers");
  }
  if (tok.eos_id) return {*tok.eos_id};
  return {};
}

std::unique_ptr<Tokenizer> load_tokenizer_unchecked(const fs::path& model_dir) {
  if (!fs::is_directory(model_dir))
    throw TokenizerError(model_dir.string() + ": not a directory; pass a model directory holding tokenizer.json or tokenizer.model");
  json config = read_optional_json(model_dir / "tokenizer_config.json");
  json special_map = read_optional_json(model_dir / "special_tokens_map.json");

  Pipeline p;
  fs::path json_path = model_dir / "tokenizer.json", model_path = model_dir / "tokenizer.model";
  if (fs::exists(json_path)) {
    load_tokenizer_json(p, json_path, config);
  } else if (fs::exists(model_path)) {
    p.model = make_sentencepiece_model(read_file(model_path), model_path.string());
    use_llama_pipeline(p, config);
    std::string cls = config.value("tokenizer_class", std::string());
    if (!cls.empty() && !is_llama_class(config))
      spdlog::warn("tokenizer: {} names tokenizer_class {}; tokenizer.model is read as a LlamaTokenizer",
                   (model_dir / "tokenizer_config.json").string(), cls);
  } else {
    throw TokenizerError(model_dir.string() + ": no tokenizer.json or tokenizer.model; copy the tokenizer files of the "
                         "base model into this directory");
  }
  p.added.set_normalizer(p.normalizer.get());

  auto tok = std::make_unique<PipelineTokenizer>(Pipeline{});
  apply_config(p, *tok, config, special_map, model_dir);
  tok->pipeline() = std::move(p);
  tok->pipeline().added.set_normalizer(tok->pipeline().normalizer.get());
  tok->chat_template = read_chat_template(model_dir, config);
  tok->stop_ids = read_stop_ids(model_dir, *tok);
  return tok;
}

}  // namespace

std::unique_ptr<Tokenizer> load_tokenizer(const fs::path& model_dir) {
  try {
    return load_tokenizer_unchecked(model_dir);
  } catch (const nlohmann::json::exception& e) {
    // A field of the wrong JSON type somewhere in the tokenizer files.
    throw TokenizerError(model_dir.string() + ": a tokenizer file holds a value of the wrong type (" + e.what() + ")");
  }
}

}  // namespace llmtune::tokenizer
