// tokenizer.json post-processors reduced to what a single sequence needs: the ids placed before
// and after it when add_special_tokens is on. TemplateProcessing, Roberta/Bert, ByteLevel (ids
// unchanged) and Sequence; anything else is a TokenizerError naming the type.
#include "post_processor.h"

#include "llmtune/util/error.h"

namespace llmtune::tokenizer {

using nlohmann::json;

namespace {

std::vector<int32_t> special_ids(const json& special_tokens, const std::string& name, const std::string& where) {
  if (!special_tokens.is_object() || !special_tokens.contains(name))
    throw TokenizerError(where + ": TemplateProcessing uses \"" + name + "\" but special_tokens does not define it");
  const json& ids = special_tokens[name].value("ids", json::array());
  if (!ids.is_array()) throw TokenizerError(where + ": special_tokens[\"" + name + "\"].ids is not a list");
  std::vector<int32_t> out;
  for (const auto& id : ids) {
    if (!id.is_number_integer()) throw TokenizerError(where + ": special_tokens[\"" + name + "\"].ids holds a non-integer");
    out.push_back(id.get<int32_t>());
  }
  return out;
}

int32_t pair_id(const json& j, const char* key, const std::string& where) {
  if (!j.contains(key) || !j[key].is_array() || j[key].size() != 2 || !j[key][1].is_number_integer())
    throw TokenizerError(where + ": \"" + key + "\" must be [token, id]");
  return j[key][1].get<int32_t>();
}

}  // namespace

SingleTemplate parse_post_processor(const json& j, const std::string& file) {
  SingleTemplate t;
  if (j.is_null()) return t;
  std::string where = file + ": post_processor";
  if (!j.is_object() || !j.contains("type") || !j["type"].is_string()) throw TokenizerError(where + " has no \"type\"");
  std::string type = j["type"];
  if (type == "ByteLevel") return t;  // changes offsets only
  if (type == "Sequence") {
    for (const auto& p : j.value("processors", json::array())) {
      SingleTemplate inner = parse_post_processor(p, file);
      // Each processor wraps the output of the previous one.
      t.prefix.insert(t.prefix.begin(), inner.prefix.begin(), inner.prefix.end());
      t.suffix.insert(t.suffix.end(), inner.suffix.begin(), inner.suffix.end());
    }
    return t;
  }
  if (type == "TemplateProcessing") {
    const json& single = j.value("single", json::array());
    if (!single.is_array()) throw TokenizerError(where + ": TemplateProcessing.single is not a list");
    bool seen_sequence = false;
    for (const auto& piece : single) {
      if (piece.contains("Sequence")) {
        std::string id = piece["Sequence"].value("id", std::string());
        if (id != "A" || seen_sequence)
          throw TokenizerError(where + ": TemplateProcessing.single must hold sequence $A once, got " + piece.dump());
        seen_sequence = true;
      } else if (piece.contains("SpecialToken")) {
        auto ids = special_ids(j.value("special_tokens", json::object()),
                               piece["SpecialToken"].value("id", std::string()), where);
        auto& dst = seen_sequence ? t.suffix : t.prefix;
        dst.insert(dst.end(), ids.begin(), ids.end());
      } else {
        throw TokenizerError(where + ": unknown TemplateProcessing piece " + piece.dump());
      }
    }
    if (!seen_sequence) throw TokenizerError(where + ": TemplateProcessing.single has no $A");
    return t;
  }
  if (type == "RobertaProcessing" || type == "BertProcessing") {
    t.prefix = {pair_id(j, "cls", where)};
    t.suffix = {pair_id(j, "sep", where)};
    return t;
  }
  throw TokenizerError(file + ": unsupported post_processor type \"" + type +
                       "\" (supported: TemplateProcessing, ByteLevel, Sequence, RobertaProcessing, BertProcessing)");
}

}  // namespace llmtune::tokenizer
