// The BPE model of tokenizer.json: rank-ordered merges (both serialized forms), ignore_merges,
// byte_fallback, unk_token/fuse_unk, continuing_subword_prefix / end_of_word_suffix, and a cache
// of per-word results. The merge loop is tokenizers' Word::merge_all (lowest rank, then leftmost).
#include <algorithm>
#include <cstdio>
#include <mutex>
#include <queue>
#include <shared_mutex>
#include <string>
#include <unordered_map>

#include "components.h"
#include "llmtune/util/error.h"
#include "llmtune/util/log.h"
#include "unicode.h"

namespace llmtune::tokenizer {
namespace {

using nlohmann::json;

// A JSON value for an error message. Merges read from a GGUF file are raw bytes, not always UTF-8,
// and dump() would throw its own type_error instead of our message: invalid bytes become U+FFFD.
std::string shown(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};
using Vocab = std::unordered_map<std::string, int32_t, StringHash, std::equal_to<>>;

struct BpeSettings {
  bool ignore_merges = false, byte_fallback = false, fuse_unk = false;
  std::optional<std::string> unk_token;
  std::string continuing_subword_prefix, end_of_word_suffix;
};

class BpeModel : public Model {
 public:
  BpeModel(const json& model, BpeSettings settings, const std::string& file) : s_(std::move(settings)) {
    if (!model.contains("vocab") || !model["vocab"].is_object())
      throw TokenizerError(file + ": model.vocab must be an object of token -> id");
    int32_t max_id = -1;
    for (const auto& [token, id] : model["vocab"].items()) {
      if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() > INT32_MAX)
        throw TokenizerError(file + ": model.vocab[\"" + token + "\"] is not a valid id");
      vocab_.emplace(token, id.get<int32_t>());
      max_id = std::max(max_id, id.get<int32_t>());
    }
    if (max_id >= static_cast<int64_t>(vocab_.size()) + kMaxVocabIdGap) {
      const auto top = std::find_if(vocab_.begin(), vocab_.end(), [&](const auto& e) { return e.second == max_id; });
      throw TokenizerError(file + ": model.vocab[" + shown(json(top->first)) + "] has id " + std::to_string(max_id) +
                           ", far past the vocabulary's " + std::to_string(vocab_.size()) +
                           " entries: ids must run from 0 without large gaps");
    }
    id_to_token_.assign(static_cast<size_t>(max_id + 1), std::string());
    for (const auto& [token, id] : vocab_) id_to_token_[static_cast<size_t>(id)] = token;
    if (s_.unk_token && !vocab_.count(*s_.unk_token))
      throw TokenizerError(file + ": model.unk_token \"" + *s_.unk_token + "\" is not in model.vocab");

    const json merges = model.value("merges", json::array());
    if (!merges.is_array()) throw TokenizerError(file + ": model.merges must be a list");
    size_t prefix_len = s_.continuing_subword_prefix.size();
    int32_t rank = 0;
    for (const auto& m : merges) {
      std::string a, b;
      if (m.is_string()) {  // legacy "a b": exactly one space separates the parts
        const std::string& line = m.get_ref<const std::string&>();
        if (line.rfind("#version", 0) == 0) continue;
        size_t sp = line.find(' ');
        if (sp == std::string::npos || line.find(' ', sp + 1) != std::string::npos)
          throw TokenizerError(file + ": merge \"" + line + "\" is not two parts separated by one space");
        a = line.substr(0, sp);
        b = line.substr(sp + 1);
      } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
        a = m[0];
        b = m[1];
      } else {
        throw TokenizerError(file + ": merge " + shown(m) + " is neither \"a b\" nor [\"a\", \"b\"]");
      }
      auto ia = vocab_.find(a), ib = vocab_.find(b);
      std::string merged = a + (b.size() >= prefix_len ? b.substr(prefix_len) : b);
      auto im = vocab_.find(merged);
      if (ia == vocab_.end() || ib == vocab_.end() || im == vocab_.end())
        throw TokenizerError(file + ": merge " + shown(m) + " uses a token that is not in model.vocab");
      merges_.emplace(pair_key(ia->second, ib->second), std::make_pair(rank++, im->second));
    }
  }

  void tokenize(std::string_view word, std::vector<int32_t>& ids) const override {
    if (word.empty()) return;
    if (s_.ignore_merges) {
      if (auto it = vocab_.find(word); it != vocab_.end()) {
        ids.push_back(it->second);
        return;
      }
    }
    {
      std::shared_lock lock(cache_mutex_);
      if (auto it = cache_.find(word); it != cache_.end()) {
        ids.insert(ids.end(), it->second.begin(), it->second.end());
        return;
      }
    }
    std::vector<int32_t> result = merge_word(word);
    ids.insert(ids.end(), result.begin(), result.end());
    std::unique_lock lock(cache_mutex_);
    if (cache_.size() >= kCacheCapacity) cache_.clear();  // bounded memory on endless distinct input
    cache_.emplace(std::string(word), std::move(result));
  }

  int32_t size() const override { return static_cast<int32_t>(vocab_.size()); }
  std::optional<std::string> id_to_token(int32_t id) const override {
    if (id < 0 || static_cast<size_t>(id) >= id_to_token_.size() || id_to_token_[id].empty()) return std::nullopt;
    return id_to_token_[id];
  }
  std::optional<int32_t> token_to_id(std::string_view token) const override {
    auto it = vocab_.find(token);
    return it == vocab_.end() ? std::nullopt : std::optional<int32_t>(it->second);
  }

 private:
  static constexpr size_t kCacheCapacity = 100000;
  static uint64_t pair_key(int32_t a, int32_t b) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
  }

  struct Symbol {
    int32_t id;
    int32_t prev, next;
    bool removed;
  };

  // The initial symbols of tokenizers' BPE::merge_word, then merge_all.
  std::vector<int32_t> merge_word(std::string_view w) const {
    std::vector<Symbol> symbols;
    symbols.reserve(w.size());
    const int32_t unk_id = s_.unk_token ? token_to_id(*s_.unk_token).value_or(-1) : -1;
    bool pending_unk = false;
    auto add = [&](int32_t id) {
      int32_t idx = static_cast<int32_t>(symbols.size());
      symbols.push_back({id, idx - 1, idx + 1, false});
    };
    std::string piece;
    for (size_t i = 0; i < w.size();) {
      size_t n = unicode::valid_sequence_length(w, i);
      if (n == 0) n = 1;  // not reached: encode() validates the text
      bool first = i == 0, last = i + n == w.size();
      piece.clear();
      if (!first) piece += s_.continuing_subword_prefix;
      piece.append(w.substr(i, n));
      if (last) piece += s_.end_of_word_suffix;
      i += n;
      if (auto it = vocab_.find(piece); it != vocab_.end()) {
        if (pending_unk) add(unk_id), pending_unk = false;
        add(it->second);
        continue;
      }
      if (s_.byte_fallback) {
        std::vector<int32_t> bytes;
        char code[8];
        for (unsigned char b : piece) {
          std::snprintf(code, sizeof(code), "<0x%02X>", b);
          auto it = vocab_.find(std::string_view(code));
          if (it == vocab_.end()) break;
          bytes.push_back(it->second);
        }
        if (bytes.size() == piece.size()) {
          if (pending_unk) add(unk_id), pending_unk = false;
          for (int32_t id : bytes) add(id);
          continue;
        }
      }
      if (unk_id >= 0) {
        if (pending_unk && !s_.fuse_unk) add(unk_id);
        pending_unk = true;
      }
      // Without an unk token tokenizers drops the character; so do we, and say so once.
      if (unk_id < 0 && log::first_time("tokenizer-bpe-dropped-character"))
        spdlog::warn("tokenizer: a character outside the vocabulary (no unk_token, no byte fallback) was dropped, "
                     "as Hugging Face tokenizers does");
    }
    if (pending_unk) add(unk_id);
    if (!symbols.empty()) symbols.back().next = -1;

    struct Merge {
      int32_t pos, rank, new_id;
      bool operator<(const Merge& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
    };
    std::priority_queue<Merge> queue;
    for (size_t i = 0; i + 1 < symbols.size(); ++i) {
      auto it = merges_.find(pair_key(symbols[i].id, symbols[i + 1].id));
      if (it != merges_.end()) queue.push({static_cast<int32_t>(i), it->second.first, it->second.second});
    }
    while (!queue.empty()) {
      Merge top = queue.top();
      queue.pop();
      Symbol& cur = symbols[top.pos];
      if (cur.removed || cur.next == -1) continue;
      Symbol& right = symbols[cur.next];
      auto it = merges_.find(pair_key(cur.id, right.id));
      if (it == merges_.end() || it->second.second != top.new_id) continue;  // an expired entry
      cur.id = top.new_id;
      right.removed = true;
      cur.next = right.next;
      if (cur.next != -1) symbols[cur.next].prev = top.pos;
      if (cur.prev >= 0) {
        auto pm = merges_.find(pair_key(symbols[cur.prev].id, cur.id));
        if (pm != merges_.end()) queue.push({cur.prev, pm->second.first, pm->second.second});
      }
      if (cur.next != -1) {
        auto nm = merges_.find(pair_key(cur.id, symbols[cur.next].id));
        if (nm != merges_.end()) queue.push({top.pos, nm->second.first, nm->second.second});
      }
    }
    std::vector<int32_t> out;
    for (const auto& sym : symbols)
      if (!sym.removed) out.push_back(sym.id);
    return out;
  }

  BpeSettings s_;
  Vocab vocab_;
  std::vector<std::string> id_to_token_;
  std::unordered_map<uint64_t, std::pair<int32_t, int32_t>> merges_;  // (a, b) -> (rank, merged id)
  mutable std::shared_mutex cache_mutex_;
  mutable std::unordered_map<std::string, std::vector<int32_t>, StringHash, std::equal_to<>> cache_;
};

std::string optional_string(const json& j, const char* key) {
  return j.contains(key) && j[key].is_string() ? j[key].get<std::string>() : std::string();
}

}  // namespace

std::unique_ptr<Model> make_bpe_model(const json& j, const std::string& file) {
  if (!j.is_object() || !j.contains("type") || !j["type"].is_string())
    throw TokenizerError(file + ": model has no \"type\"");
  std::string type = j["type"];
  if (type != "BPE")
    throw TokenizerError(file + ": unsupported model type \"" + type + "\" (supported: BPE)");
  if (j.contains("dropout") && j["dropout"].is_number() && j["dropout"].get<double>() > 0.0)
    throw TokenizerError(file + ": BPE dropout " + j["dropout"].dump() +
                         " makes encoding random; set model.dropout to null for fine-tuning");
  BpeSettings s;
  s.ignore_merges = j.value("ignore_merges", false);
  s.byte_fallback = j.value("byte_fallback", false);
  s.fuse_unk = j.value("fuse_unk", false);
  if (j.contains("unk_token") && j["unk_token"].is_string()) s.unk_token = j["unk_token"].get<std::string>();
  s.continuing_subword_prefix = optional_string(j, "continuing_subword_prefix");
  s.end_of_word_suffix = optional_string(j, "end_of_word_suffix");
  return std::make_unique<BpeModel>(j, std::move(s), file);
}

std::unique_ptr<Model> make_llama_bpe_model(const json& j, const std::string& file) {
  if (!j.is_object() || j.value("type", std::string()) != "BPE")
    throw TokenizerError(file + ": a LlamaTokenizer needs a BPE model, got " +
                         (j.is_object() ? j.value("type", std::string("none")) : std::string("none")));
  BpeSettings s;
  s.byte_fallback = true;
  s.fuse_unk = true;
  return std::make_unique<BpeModel>(j, std::move(s), file);
}

}  // namespace llmtune::tokenizer
