// gguf_vocab_from_model_dir(): the tokenizer.* metadata llama.cpp's convert_hf_to_gguf.py writes
// for a model directory (LlamaModel.set_vocab: _set_vocab_sentencepiece for tokenizer.model, else
// _set_vocab_llama_hf for a SentencePiece-style tokenizer.json, else _set_vocab_gpt2), with the
// special ids, add_* flags, merges and chat template of gguf-py's SpecialVocab.
#include <sentencepiece_processor.h>

#include <fstream>
#include <map>
#include <sstream>
#include <unordered_map>

#include "gguf_vocab_internal.h"
#include "llmtune/io/read_file.h"
#include "llmtune/tokenizer/gguf_vocab.h"
#include "llmtune/util/error.h"
#include "llmtune/util/log.h"

namespace llmtune::tokenizer {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using namespace gguf_detail;

json read_json_file(const fs::path& path) { return io::read_json_file<TokenizerError, json>(path, path.filename().string()); }

std::string read_text_file(const fs::path& path) { return io::read_text_file<TokenizerError>(path, path.filename().string()); }

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// The converter's does_token_look_special: added tokens some models forget to mark special.
bool looks_special(const std::string& t) {
  if (t == "<pad>" || t == "<mask>" || t == "<2mass>" || t == "[@BOS@]") return true;
  if (t.rfind("<|", 0) == 0 && ends_with(t, "|>")) return true;
  if (t.rfind("<\uFF5C", 0) == 0 && ends_with(t, "\uFF5C>")) return true;  // fullwidth bars (deepseek-coder)
  return t.rfind("<unused", 0) == 0 && ends_with(t, ">");
}

// User-defined tokens are stored pre-normalized: "▁" as a space.
std::string unescape_spaces(std::string t) {
  const std::string bar = "\u2581";
  for (size_t p = t.find(bar); p != std::string::npos; p = t.find(bar, p + 1)) t.replace(p, bar.size(), " ");
  return t;
}

std::string pad_token(int64_t i) { return "[PAD" + std::to_string(i) + "]"; }

struct AddedEntry {
  int32_t id;
  std::string content;
  bool special, normalized;
};

// Added tokens as AutoTokenizer collects them: tokenizer.json's list, then tokenizer_config.json's
// added_tokens_decoder (which wins for an id it names).
std::map<int32_t, AddedEntry> added_entries(const json& tokenizer_json, const json& config) {
  std::map<int32_t, AddedEntry> out;
  auto take = [&](int32_t id, const json& a) {
    if (!a.is_object() || !a.contains("content") || !a["content"].is_string()) return;
    bool special = a.value("special", false);
    out[id] = {id, a["content"].get<std::string>(), special, a.value("normalized", !special)};
  };
  for (const auto& a : tokenizer_json.value("added_tokens", json::array()))
    if (a.contains("id") && a["id"].is_number_integer()) take(a["id"].get<int32_t>(), a);
  if (config.contains("added_tokens_decoder") && config["added_tokens_decoder"].is_object())
    for (const auto& [key, a] : config["added_tokens_decoder"].items()) take(std::stoi(key), a);
  return out;
}

// ---- _set_vocab_sentencepiece ------------------------------------------------------------------

void vocab_from_sentencepiece(GgufVocab& v, const fs::path& dir, const json& config, int64_t vocab_size) {
  const fs::path path = dir / "tokenizer.model";
  sentencepiece::SentencePieceProcessor sp;
  auto status = sp.Load(path.string());
  if (!status.ok()) throw TokenizerError(path.string() + ": SentencePiece cannot load it: " + status.ToString());
  const int64_t n_sp = sp.GetPieceSize();
  const int64_t n = vocab_size > 0 ? vocab_size : n_sp;
  v.model = "llama";
  v.pre = "default";
  // The converter starts from placeholders everywhere (score -10000) and fills in what it has.
  for (int64_t i = 0; i < n; ++i) {
    v.tokens.push_back(pad_token(i));
    v.scores.push_back(-10000.0f);
    v.token_types.push_back(kUnused);
  }
  if (n_sp > n)
    spdlog::warn("gguf vocab: {} has {} pieces but the model's vocab_size is {}; pieces from id {} on are dropped",
                 path.string(), n_sp, n, n);
  for (int32_t id = 0; id < std::min(n, n_sp); ++id) {
    int32_t type = kNormal;
    if (sp.IsUnknown(id)) type = kUnknown;
    else if (sp.IsControl(id)) type = kControl;
    else if (sp.IsUnused(id)) type = kUnused;
    else if (sp.IsByte(id)) type = kByte;
    v.tokens[id] = sp.IdToPiece(id);
    v.scores[id] = sp.GetScore(id);
    v.token_types[id] = type;
  }
  auto set_added = [&](int64_t id, std::string content, int32_t type) {
    if (id < 0 || id >= n) {
      spdlog::warn("gguf vocab: added token \"{}\" id {} is outside the vocabulary (size {}); ignored", content, id, n);
      return;
    }
    v.tokens[id] = std::move(content);
    v.scores[id] = -1000.0f;
    v.token_types[id] = type;
  };
  if (fs::exists(dir / "added_tokens.json")) {
    const json added = read_json_file(dir / "added_tokens.json");  // kept alive: items() refers into it
    for (const auto& [content, id] : added.items())
      if (id.is_number_integer()) set_added(id.get<int64_t>(), content, kUserDefined);
  }
  if (config.contains("added_tokens_decoder") && config["added_tokens_decoder"].is_object()) {
    for (const auto& [key, a] : config["added_tokens_decoder"].items()) {
      std::string content = a.value("content", std::string());
      bool control = a.value("special", false) || looks_special(content);
      set_added(std::stoll(key), control ? content : unescape_spaces(content), control ? kControl : kUserDefined);
    }
  }
}

// ---- _set_vocab_llama_hf -----------------------------------------------------------------------

// The names of AutoTokenizer's all_special_tokens: the named special tokens and the extra list.
std::vector<std::string> named_special_tokens(const json& config, const json& special_map) {
  std::vector<std::string> out;
  auto content = [](const json& t) -> std::string {
    if (t.is_string()) return t.get<std::string>();
    if (t.is_object() && t.contains("content") && t["content"].is_string()) return t["content"].get<std::string>();
    return "";
  };
  for (const char* key : {"bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token"}) {
    const json& t = config.contains(key) ? config[key] : special_map.value(key, json());
    if (std::string c = content(t); !c.empty()) out.push_back(c);
  }
  for (const char* key : {"additional_special_tokens", "extra_special_tokens"}) {
    const json& list = config.contains(key) ? config[key] : special_map.value(key, json());
    if (list.is_array())
      for (const auto& t : list)
        if (std::string c = content(t); !c.empty()) out.push_back(c);
  }
  return out;
}

bool is_byte_token(const std::string& t) {
  return t.size() == 6 && t.compare(0, 3, "<0x") == 0 && t[5] == '>' && std::isxdigit(static_cast<unsigned char>(t[3])) &&
         std::isxdigit(static_cast<unsigned char>(t[4]));
}

void vocab_from_llama_hf(GgufVocab& v, const fs::path& dir, const json& tj, const json& config, const json& special_map,
                         int64_t vocab_size) {
  const std::string file = (dir / "tokenizer.json").string();
  const json& model_vocab = tj["model"].value("vocab", json::object());
  const int64_t n_base = static_cast<int64_t>(model_vocab.size());
  std::vector<std::string> base(n_base);
  for (const auto& [token, id] : model_vocab.items()) {
    if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() >= n_base)
      throw TokenizerError(file + ": model.vocab ids are not 0.." + std::to_string(n_base - 1));
    base[id.get<int64_t>()] = token;
  }
  std::unordered_map<std::string, int32_t> ids;
  for (int32_t i = 0; i < n_base; ++i) ids.emplace(base[i], i);
  // LlamaHfVocab writes -1000 for every score, which leaves llama.cpp's score-driven merges (and
  // transformers' merges rebuilt from scores) in no particular order. We write the merge order
  // instead: a token made by the merge of rank r scores -r.
  std::vector<float> merge_score(n_base, 0.0f);
  std::vector<bool> made(n_base, false);
  const json& merges = tj["model"].value("merges", json::array());
  const float n_merges = static_cast<float>(merges.size());
  int32_t rank = 0;
  for (const auto& m : merges) {
    std::string merged;
    if (m.is_string()) {
      std::string s = m.get<std::string>();
      if (s.rfind("#version", 0) == 0) continue;
      size_t sp = s.find(' ');
      merged = sp == std::string::npos ? s : s.substr(0, sp) + s.substr(sp + 1);
    } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
      merged = m[0].get<std::string>() + m[1].get<std::string>();
    }
    auto it = ids.find(merged);
    if (it != ids.end() && !made[it->second]) {
      made[it->second] = true;
      merge_score[it->second] = -static_cast<float>(rank);
    }
    ++rank;
  }
  std::vector<std::string> specials = named_special_tokens(config, special_map);
  auto is_special = [&](const std::string& t) { return std::find(specials.begin(), specials.end(), t) != specials.end(); };
  v.model = "llama";
  v.pre = "default";
  for (int32_t i = 0; i < n_base; ++i) {
    const std::string& t = base[i];
    int32_t type = is_byte_token(t) ? kByte : is_special(t) ? kControl : kNormal;
    v.tokens.push_back(t);
    v.token_types.push_back(type);
    v.scores.push_back(type != kNormal ? -1000.0f : made[i] ? merge_score[i] : -(n_merges + 1.0f));
  }
  // Added tokens past the base vocabulary, in id order (LlamaHfVocab requires them contiguous).
  for (const auto& [id, a] : added_entries(tj, config)) {
    if (id < n_base) continue;
    if (id != static_cast<int32_t>(v.tokens.size()))
      throw TokenizerError(file + ": added token ids are not contiguous after the base vocabulary (id " +
                           std::to_string(id) + ")");
    v.tokens.push_back(a.content);
    v.token_types.push_back(is_special(a.content) ? kControl : kUserDefined);
    v.scores.push_back(-1000.0f);
  }
  if (vocab_size > 0 && static_cast<int64_t>(v.tokens.size()) > vocab_size)
    throw TokenizerError(file + ": the tokenizer has " + std::to_string(v.tokens.size()) +
                         " tokens, more than the model's vocab_size " + std::to_string(vocab_size));
  for (int64_t i = static_cast<int64_t>(v.tokens.size()); i < vocab_size; ++i) {
    v.tokens.push_back(pad_token(i));
    v.token_types.push_back(kUnused);
    v.scores.push_back(-1000.0f);
  }
}

// ---- _set_vocab_gpt2 ---------------------------------------------------------------------------

void vocab_from_gpt2(GgufVocab& v, const fs::path& dir, const json& tj, const json& config, int64_t vocab_size) {
  const std::string file = (dir / "tokenizer.json").string();
  v.model = "gpt2";
  v.pre = export_pre_name(tj, file);
  std::map<int32_t, std::string> by_id;
  const json model_vocab = tj["model"].value("vocab", json::object());  // kept alive: items() refers into it
  for (const auto& [token, id] : model_vocab.items())
    if (id.is_number_integer()) by_id[id.get<int32_t>()] = token;
  std::map<int32_t, AddedEntry> added = added_entries(tj, config);
  for (const auto& [id, a] : added) by_id[id] = a.content;
  const int64_t needed = by_id.empty() ? 0 : by_id.rbegin()->first + 1;
  const int64_t n = vocab_size > 0 ? vocab_size : static_cast<int64_t>(by_id.size());
  if (needed > n)
    throw TokenizerError(file + ": token id " + std::to_string(needed - 1) + " is not below the model's vocab_size " +
                         std::to_string(n));
  for (int32_t i = 0; i < n; ++i) {
    auto it = by_id.find(i);
    if (it == by_id.end()) {
      v.tokens.push_back(pad_token(i));
      v.token_types.push_back(kUnused);
      continue;
    }
    auto a = added.find(i);
    if (a == added.end()) {
      v.tokens.push_back(it->second);
      v.token_types.push_back(kNormal);
    } else if (a->second.special || looks_special(a->second.content)) {
      v.tokens.push_back(a->second.content);
      v.token_types.push_back(kControl);
    } else {
      v.tokens.push_back(unescape_spaces(a->second.content));
      v.token_types.push_back(kUserDefined);
    }
  }
  // Merges as "a b"; list-form merges with a space inside a part get it as U+0120, as gguf-py does.
  for (const auto& m : tj["model"].value("merges", json::array())) {
    if (m.is_string()) {
      v.merges.push_back(m.get<std::string>());
    } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
      std::string line;
      for (int k = 0; k < 2; ++k) {
        if (k) line += ' ';
        for (char c : m[k].get<std::string>()) line += c == ' ' ? std::string("\u0120") : std::string(1, c);
      }
      v.merges.push_back(std::move(line));
    } else {
      throw TokenizerError(file + ": merge " + m.dump() + " is neither \"a b\" nor [\"a\", \"b\"]");
    }
  }
}

// ---- SpecialVocab ------------------------------------------------------------------------------

void apply_special_vocab(GgufVocab& v, const fs::path& dir, const json* tj, json config, bool have_config,
                         std::optional<int64_t> n_vocab) {
  std::map<std::string, int32_t> ids;  // first setting wins
  std::vector<std::string> types = {"bos", "eos", "unk", "sep", "pad", "cls", "mask"};
  auto set_id = [&](const std::string& type, const json& id) {
    if (!id.is_number_integer()) return;
    int64_t value = id.get<int64_t>();
    if (value < 0) throw TokenizerError(dir.string() + ": special token " + type + " has the invalid id " + id.dump());
    if (n_vocab && value >= *n_vocab) {
      spdlog::warn("gguf vocab: special token {} id {} is outside the vocabulary (size {}); skipped", type, value, *n_vocab);
      return;
    }
    ids.emplace(type, static_cast<int32_t>(value));
  };
  json added = json::array();
  if (tj) {
    added = tj->value("added_tokens", json::array());
    json bos = config.value("bos_token", json()), cls = config.value("cls_token", json());
    json eos = config.value("eos_token", json()), sep = config.value("sep_token", json());
    auto truthy = [](const json& j) { return !j.is_null() && !(j.is_string() && j.get<std::string>().empty()); };
    if (!truthy(bos) && truthy(cls) && have_config) config["bos_token"] = bos = cls;
    if (!truthy(eos) && truthy(sep) && have_config) config["eos_token"] = eos = sep;
    const json& pp = tj->value("post_processor", json());
    if (pp.is_object()) {
      json processors = pp.contains("processors") ? pp["processors"] : json::array({pp});
      for (const auto& proc : processors) {
        std::string type = proc.value("type", std::string());
        if (type == "RobertaProcessing") {
          v.add_bos = true;
          v.add_eos = true;
          continue;
        }
        if (type != "TemplateProcessing") continue;
        const json& single = proc.value("single", json::array());
        if (single.size() <= 1) continue;
        auto special_id = [](const json& item) -> json {
          if (item.contains("SpecialToken") && item["SpecialToken"].contains("id")) return item["SpecialToken"]["id"];
          return json();
        };
        json first = special_id(single.front()), last = special_id(single.back());
        if (truthy(first)) {
          if (!have_config) bos = first;
          v.add_bos = first == bos || first == cls;
        }
        if (truthy(last)) {
          if (!have_config) {
            eos = last;
          } else if (last != eos) {
            // The tokenizer's EOS becomes the end-of-turn token; the template's last token the EOS.
            types.push_back("eot");
            config["eot_token"] = eos;
            config["eos_token"] = eos = last;
          }
          v.add_eos = last == eos;
        }
      }
    }
  }
  if (have_config) {
    fs::path jinja = dir / "chat_template.jinja";
    json alt = fs::exists(jinja) ? json(read_text_file(jinja)) : json();
    json ct = config.contains("chat_template") ? config["chat_template"] : alt;
    if (ct.is_string()) {
      v.chat_template = ct.get<std::string>();
    } else if (ct.is_array()) {
      for (const auto& entry : ct)
        if (entry.value("name", std::string()) == "default" && entry.contains("template") && entry["template"].is_string())
          v.chat_template = entry["template"].get<std::string>();
    }
    for (const std::string& type : types) {
      if (const std::string key = "add_" + type + "_token"; config.contains(key) && config[key].is_boolean()) {
        if (type == "bos") v.add_bos = config[key].get<bool>();
        if (type == "eos") v.add_eos = config[key].get<bool>();
      }
      const json entry = config.value(type + "_token", json());
      std::string content;
      if (entry.is_string()) content = entry.get<std::string>();
      else if (entry.is_object() && entry.contains("content") && entry["content"].is_string()) content = entry["content"];
      else continue;
      for (const auto& a : added)
        if (a.value("content", std::string()) == content) {
          set_id(type, a.value("id", json()));
          break;
        }
    }
  }
  if (fs::exists(dir / "config.json")) {
    json cfg = read_json_file(dir / "config.json");
    for (const std::string& type : types) {
      json id = cfg.value(type + "_token_id", json());
      if (id.is_null() && cfg.contains("text_config") && cfg["text_config"].is_object())
        id = cfg["text_config"].value(type + "_token_id", json());
      set_id(type, id);
    }
  }
  auto get = [&](const char* type) -> std::optional<int32_t> {
    auto it = ids.find(type);
    return it == ids.end() ? std::nullopt : std::optional<int32_t>(it->second);
  };
  v.bos_id = get("bos");
  v.eos_id = get("eos");
  v.unk_id = get("unk");
  v.pad_id = get("pad");
  v.eot_id = get("eot");
}

}  // namespace

GgufVocab gguf_vocab_from_model_dir(const fs::path& dir, int64_t vocab_size) {
  if (!fs::is_directory(dir)) throw TokenizerError(dir.string() + ": not a directory");
  const bool have_config = fs::exists(dir / "tokenizer_config.json");
  const json config = have_config ? read_json_file(dir / "tokenizer_config.json") : json::object();
  const json special_map =
      fs::exists(dir / "special_tokens_map.json") ? read_json_file(dir / "special_tokens_map.json") : json::object();
  GgufVocab v;
  std::optional<json> tj;
  if (fs::exists(dir / "tokenizer.json")) tj = read_json_file(dir / "tokenizer.json");
  if (fs::exists(dir / "tokenizer.model")) {
    vocab_from_sentencepiece(v, dir, config, vocab_size);
  } else if (tj) {
    const std::string file = (dir / "tokenizer.json").string();
    const json& model = tj->value("model", json::object());
    std::string type = model.value("type", std::string());
    if (type != "BPE")
      throw TokenizerError(file + ": model type \"" + type + "\" is not supported for GGUF export (only BPE: "
                           "SentencePiece-style with byte_fallback, or byte-level)");
    std::string decoder = tj->value("decoder", json::object()).value("type", std::string());
    if (model.value("byte_fallback", false) && (decoder == "Sequence" || decoder == "Metaspace")) {
      vocab_from_llama_hf(v, dir, *tj, config, special_map, vocab_size);
    } else if (!model.value("byte_fallback", false) && decoder == "ByteLevel") {
      vocab_from_gpt2(v, dir, *tj, config, vocab_size);
    } else {
      throw TokenizerError(file + ": a BPE tokenizer that is neither SentencePiece-style (byte_fallback) nor "
                           "byte-level (ByteLevel decoder); it has no GGUF tokenizer model");
    }
  } else {
    throw TokenizerError(dir.string() + ": no tokenizer.model or tokenizer.json to write to GGUF");
  }
  std::optional<int64_t> n_vocab;
  if (v.model == "llama") n_vocab = static_cast<int64_t>(v.tokens.size());
  apply_special_vocab(v, dir, tj ? &*tj : nullptr, config, have_config, n_vocab);
  if (v.model == "llama" && config.contains("add_prefix_space") && config["add_prefix_space"].is_boolean())
    v.add_space_prefix = config["add_prefix_space"].get<bool>();
  return v;
}

}  // namespace llmtune::tokenizer
