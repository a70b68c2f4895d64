// The byte-level BPE pre-tokenizers llama.cpp knows by tokenizer.ggml.pre (src/llama-vocab.cpp at 00ad355e:
// the name -> LLAMA_VOCAB_PRE_TYPE_* chain with its ignore_merges/add_bos flags, and the regex list
// llm_tokenizer_bpe applies for each type, in sequence, before the GPT-2 byte map), and the choice
// of name on export. Where llama.cpp adapts a pattern to its engine (the (?i:) groups spelled out,
// \p{..} classes collapsed, possessive quantifiers dropped, a custom splitter standing in for a
// regex) the patterns here are the originals the models' tokenizer.json files use, in PCRE2 syntax.
#include <algorithm>
#include <cctype>
#include <string>

#include "gguf_vocab_internal.h"
#include "llmtune/util/error.h"
#include "llmtune/util/log.h"
#include "unicode.h"

namespace llmtune::tokenizer::gguf_detail {
namespace {

using nlohmann::json;

// ---- patterns ----------------------------------------------------------------------------------

#define LT_CONTRACTIONS R"re((?i:'s|'t|'re|'ve|'m|'ll|'d))re"
#define LT_UPPER R"re([\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}])re"
#define LT_LOWER R"re([\p{Ll}\p{Lm}\p{Lo}\p{M}])re"
#define LT_WS_TAIL R"re(|\s*[\r\n]+|\s+(?!\S)|\s+)re"

const char* kGpt2 = R"re('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)re";
const char* kLlama3 =
    LT_CONTRACTIONS R"re(|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*)re" LT_WS_TAIL;
const char* kQwen2 = LT_CONTRACTIONS R"re(|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*)re" LT_WS_TAIL;
const char* kQwen35 =
    LT_CONTRACTIONS R"re(|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*)re" LT_WS_TAIL;
const char* kJais2 = LT_CONTRACTIONS
    R"re(|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s{512}(?!\S)|\s{256}(?!\S))re"
    R"re(|\s{128}(?!\S)|\s{64}(?!\S)|\s{32}(?!\S)|\s{16}(?!\S)|\s{8}(?!\S)|\s{4}(?!\S)|\s{1,2}(?!\S)|\s{1})re";
const char* kMiniCpm5 =
    LT_CONTRACTIONS R"re(|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}+| ?[^\s\p{L}\p{N}]+[\r\n]*)re" LT_WS_TAIL;
const char* kSeedCoder =
    LT_CONTRACTIONS R"re(|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1}| ?[^\s\p{L}\p{N}\r\n]+)re" LT_WS_TAIL;
const char* kUfakzeka = R"re([^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*)re" LT_WS_TAIL;
const char* kBailing =
    R"re('(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+)re";
const char* kExaoneMoe = LT_CONTRACTIONS
    R"re(|[^\r\n\p{L}\p{N}]?(?:\p{L}\p{M}*(?: \p{L}\p{M}*)*)+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]?)re"
    R"re(|\s*[\r\n]|\s+(?!\S)|\s+)re";
const char* kTekken = R"re([^\r\n\p{L}\p{N}]?)re" LT_UPPER "*" LT_LOWER R"re(+|[^\r\n\p{L}\p{N}]?)re" LT_UPPER
    "+" LT_LOWER R"re(*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*)re" LT_WS_TAIL;
const char* kO200k = R"re([^\r\n\p{L}\p{N}]?)re" LT_UPPER "*" LT_LOWER "+" LT_CONTRACTIONS
    R"re(?|[^\r\n\p{L}\p{N}]?)re" LT_UPPER "+" LT_LOWER "*" LT_CONTRACTIONS
    R"re(?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*)re" LT_WS_TAIL;
const char* kYoutu = R"re([^\r\n\p{L}\p{N}]?)re" LT_UPPER "*" LT_LOWER "+" LT_CONTRACTIONS
    R"re(?|[^\r\n\p{L}\p{N}]?)re" LT_UPPER "+" LT_LOWER "*" LT_CONTRACTIONS
    R"re(?|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*)re" LT_WS_TAIL;
// Moonshot's pat_str intersects the letter classes with [^\p{Han}] (&&), which PCRE2 lacks.
#define LT_NOT_HAN(cls) "(?:(?!\\p{Han})" cls ")"
const char* kKimi = R"re(\p{Han}+|[^\r\n\p{L}\p{N}]?)re" LT_NOT_HAN(LT_UPPER) "*" LT_NOT_HAN(LT_LOWER) "+"
    LT_CONTRACTIONS R"re(?|[^\r\n\p{L}\p{N}]?)re" LT_NOT_HAN(LT_UPPER) "+" LT_NOT_HAN(LT_LOWER) "*" LT_CONTRACTIONS
    R"re(?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*)re" LT_WS_TAIL;
const char* kYoutuCjk =
    R"re([\x{AC00}-\x{D7A3}\x{3131}-\x{318E}]+)re"
    R"re(|[\x{FF01}\x{2026}\x{201C}\x{201D}\x{2018}\x{2019}\x{2014}\x{FF1A}\x{FF1B}\x{FF0C})re"
    R"re(\x{3001}-\x{303F}\x{FE30}-\x{FE4F}]+)re"
    R"re(|[\x{3105}-\x{312F}]+|[\x{4E00}-\x{9FA5}\x{3040}-\x{309F}\x{30A0}-\x{30FF}]+)re";
const char* kDs3Cjk = R"re([\x{4E00}-\x{9FA5}\x{3040}-\x{309F}\x{30A0}-\x{30FF}]+)re";
const char* kDs3Main = R"re([!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+)re"
    R"re(| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)re";
const char* kSpark = R"re([!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+)re"
    R"re(| ?[\p{P}\p{S}]+|[\r\n]|\s+(?!\S)|\s+)re";
const char* kDsLetters =
    R"re(\s?[A-Za-z\x{B5}\x{C0}-\x{D6}\x{D8}-\x{F6}\x{F8}-\x{1BA}\x{1BC}-\x{1BF}\x{1C4}-\x{293}\x{295}-\x{2AF})re"
    R"re(\x{370}-\x{373}\x{376}\x{377}\x{37B}-\x{37D}\x{37F}\x{386}\x{388}-\x{38A}\x{38C}\x{38E}-\x{3A1})re"
    R"re(\x{3A3}-\x{3F5}\x{3F7}-\x{481}\x{48A}-\x{52F}\x{531}-\x{556}\x{10A0}-\x{10C5}\x{13A0}-\x{13F5})re"
    R"re(\x{13F8}-\x{13FD}\x{1C90}-\x{1CBA}\x{1CBD}-\x{1CBF}\x{1D00}-\x{1D2B}\x{1D6B}-\x{1D77}\x{1D79}-\x{1D9A})re"
    R"re(\x{1E00}-\x{1F15}\x{1F18}-\x{1F1D}\x{1F20}-\x{1F45}\x{1F48}-\x{1F4D}\x{1F50}-\x{1F57}\x{1F59}\x{1F5B})re"
    R"re(\x{1F5D}\x{1F5F}-\x{1F7D}\x{1F80}-\x{1FB4}\x{1FB6}-\x{1FBC}\x{1FBE}\x{1FC2}-\x{1FC4}\x{1FC6}-\x{1FCC})re"
    R"re(\x{1FD0}-\x{1FD3}\x{1FD6}-\x{1FDB}\x{1FE0}-\x{1FEC}\x{1FF2}-\x{1FF4}\x{1FF6}-\x{1FFC}\x{2102}\x{2107})re"
    R"re(\x{210A}-\x{2113}\x{2115}\x{2119}-\x{211D}\x{2124}\x{2126}\x{2128}\x{212A}-\x{212D}\x{212F}-\x{2134})re"
    R"re(\x{2139}\x{213C}-\x{213F}\x{2145}-\x{2149}\x{214E}\x{2183}\x{2184}\x{2C00}-\x{2C7B}\x{2C7E}-\x{2CE4})re"
    R"re(\x{2CEB}-\x{2CEE}\x{2CF2}\x{2CF3}\x{A640}-\x{A66D}\x{A680}-\x{A69B}\x{A722}-\x{A76F}\x{A771}-\x{A787})re"
    R"re(\x{A78B}-\x{A78E}\x{AB70}-\x{ABBF}\x{FB00}-\x{FB06}\x{FB13}-\x{FB17}\x{FF21}-\x{FF3A}\x{FF41}-\x{FF5A})re"
    R"re(\x{10400}-\x{1044F}\x{104B0}-\x{104D3}\x{104D8}-\x{104FB}\x{10C80}-\x{10CB2}\x{10CC0}-\x{10CF2})re"
    R"re(\x{118A0}-\x{118DF}\x{1E900}-\x{1E943}]+)re";
const char* kDsPunct = R"re(\s?[!-/:-~\x{FF01}-\x{FF0F}\x{FF1A}-\x{FF5E}\x{2018}-\x{201F}\x{3000}-\x{3002}]+)re";
const char* kDsCjk = R"re([\x{4E00}-\x{9FA5}\x{800}-\x{4E00}\x{AC00}-\x{D7FF}]+)re";
// BLOOM's tokenizer.json nests a class ([^(\s|[.,!?…])]); flattened, the same characters.
const char* kPoro = R"re( ?[^(\s|.,!?\x{2026}\x{3002}\x{FF0C}\x{3001}\x{964}\x{6D4}\x{60C})]+)re";
// llama.cpp's class for HF's Punctuation pre-tokenizer (it leaves out the backtick).
const char* kPunct = R"re([\p{P}\$\+<=>\^~\|]+)re";
// AFMoE's digits: llama.cpp's custom splitter (a run of numbers in len % 3, then threes) as a regex.
const char* kAfmoeDigits = R"re(\p{N}{1,3}(?=(?:\p{N}{3})*(?!\p{N})))re";
// U+F900: the CJK compatibility block's start (llama.cpp's source shows the glyph 豈).
const char* kAfmoeCjk =
    R"re([\x{4E00}-\x{9FFF}\x{3400}-\x{4DBF}\x{F900}-\x{FAFF}\x{3040}-\x{309F}\x{30A0}-\x{30FF}\x{FF65}-\x{FF9F})re"
    R"re(\x{2F00}-\x{2FDF}\x{E40}-\x{E7F}\x{E80}-\x{EFF}\x{1780}-\x{17FF}\x{1000}-\x{109F}\x{AA60}-\x{AA7F})re"
    R"re(\x{A9E0}-\x{A9FF}\x{AC00}-\x{D7AF}\x{1100}-\x{11FF}]+)re";

std::vector<BytePre> make_table() {
  const std::string n1 = R"(\p{N})", n_run = R"(\p{N}+)", n3 = R"(\p{N}{1,3})";
  std::vector<BytePre> t;
  // Names on export, where pre-tokenizers split alike (comments: the converter's model): the
  // ignore_merges and NFC of the tokenizer.json choose between entries with the same regexes.
  t.push_back({"llama-bpe",  // Meta-Llama-3; Llama 3's tokenizer.json has ignore_merges
               {"llama3", "llama-v3", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2", "jina-v5-nano"},
               {kLlama3}, false, true, true});
  t.push_back({"glm4", {"chatglm-bpe", "dbrx", "smaug-bpe"}, {kLlama3}});  // GLM-4; the Llama 3 regex alone
  t.push_back({"qwen2", {"deepseek-r1-qwen", "kormo", "f2llmv2", "megrez"}, {kQwen2}, true});  // Qwen1.5-2.5, Qwen3
  t.push_back({"stablelm2", {"grok-2", "hunyuan", "solar-open"}, {kQwen2}});  // the Qwen2 regex without NFC
  t.push_back({"qwen35", {}, {kQwen35}, true});
  t.push_back({"gpt-2",  // openai-community/gpt2: ByteLevel's own regex
               {"phi-2", "jina-es", "jina-de", "gigachat", "jina-v2-es", "jina-v2-de", "a.x-4.0", "mellum",
                "modern-bert", "jina-v1-en", "jina-v2-code", "roberta-bpe", "exaone4", "mpt", "olmo", "jais",
                "trillion", "granite-docling"},
               {kGpt2}});
  t.push_back({"smollm",  // SmolLM (StarCoder's tokenizer: Digits(individual) + ByteLevel)
               {"starcoder", "refact", "command-r", "codeshell", "exaone", "minerva-7b", "mellum2"},
               {n1, kGpt2}});
  t.push_back({"llama4", {"gpt-4o", "kanana2", "talkie", "minimax-m2"}, {kO200k}});  // Llama 4: o200k's regex
  // llama.cpp runs a lookahead approximation of o200k's pattern for it; o200k's own here.
  t.push_back({"granite-embed-multi-97m", {}, {kO200k}, false, true});
  t.push_back({"tekken", {}, {kTekken}, false, true, true});
  t.push_back({"deepseek-llm", {}, {"[\\r\\n]", kDsLetters, kDsPunct, R"(\s+$)", kDsCjk, n_run}});
  t.back().published = {{"[\\r\\n]", kDsLetters, kDsPunct, R"(\s+$)", kDsCjk, n1}};  // Digits(individual)
  t.push_back({"deepseek-coder", {}, {"[\\r\\n]", R"(\s?\p{L}+)", R"(\s?\p{P}+)", kDsCjk, n1}});
  t.push_back({"deepseek-v3", {"hunyuan-dense", "hy_v4", "joyai-llm"}, {n3, kDs3Cjk, kDs3Main}});
  t.push_back({"spark2_5", {}, {n3, kDs3Cjk, kSpark, n1}});
  t.push_back({"youtu", {}, {kYoutuCjk, kYoutu}, false, true});
  t.push_back({"falcon", {}, {kPunct, kGpt2, "[0-9][0-9][0-9]"}});
  // tiiuae/falcon-7b: Punctuation(Contiguous), ByteLevel(use_regex), Digits, Split.
  t.back().published = {{kPunct, kGpt2, n_run, "[0-9][0-9][0-9]"}};
  t.push_back({"bloom", {"poro-chat", "gpt3-finnish"}, {kPoro}});
  t.push_back({"viking", {}, {kPoro, n1}});
  t.push_back({"jais-2", {}, {kJais2}});
  t.push_back({"chameleon", {},
               {"<sentinel:[0-9]+>", "(IMGIMG)((A|B|C|D|E|F|G|H|I){1,4})Z", "([\\t\\n]|    |  )", n1,
                R"([\p{P}!-/:-@\[-`{-~])", kGpt2},
               false, false, true});
  t.push_back({"exaone-moe", {}, {kExaoneMoe}});
  t.push_back({"tiny_aya", {"cohere2moe"}, {R"(\d{1,3}(?=(?:\d{3})*\b))", kO200k}});
  t.push_back({"kimi-k2", {}, {kKimi}});
  t.push_back({"superbpe", {}, {n_run, R"((?=(\d{3})+(?!\d)))"}});
  t.push_back({"bailingmoe", {"bailingmoe2", "llada-moe"}, {kBailing}});
  t.push_back({"seed-coder", {}, {kSeedCoder}});
  t.push_back({"ufakzeka", {}, {kUfakzeka}});
  t.push_back({"afmoe", {}, {kAfmoeDigits, kAfmoeCjk, kDs3Main}});
  t.push_back({"laguna", {}, {"[^\\n]+|[\\n]+", kQwen2}});
  t.push_back({"minicpm5", {}, {n3, kMiniCpm5}, false, true});
  // What llama.cpp runs for "default" or a missing key; no converter writes it.
  t.push_back({"default", {}, {kPunct, kGpt2, n_run, "[0-9][0-9][0-9]"}, false, false, false, false});
  return t;
}

// ---- export: tokenizer.json -> name ----------------------------------------------------------------

// One spelling per pattern: \x{..} and \u.... escapes of non-ASCII as UTF-8, control characters as
// \r \n \t, and the variant spellings published files and llama.cpp use for the same splits.
std::string canonical(const std::string& r) {
  std::string s;
  for (size_t i = 0; i < r.size(); ++i) {
    char c = r[i];
    if (c == '\r') s += "\\r";
    else if (c == '\n') s += "\\n";
    else if (c == '\t') s += "\\t";
    else if (c != '\\' || i + 1 >= r.size()) s += c;
    else if (r[i + 1] == '"') s += r[++i];
    else {
      size_t hex_begin = 0, hex_end = 0, next = 0;
      if (r[i + 1] == 'x' && i + 2 < r.size() && r[i + 2] == '{') {
        hex_begin = i + 3;
        hex_end = r.find('}', hex_begin);
        next = hex_end + 1;
      } else if (r[i + 1] == 'u' && i + 6 <= r.size()) {
        hex_begin = i + 2;
        hex_end = next = i + 6;
      }
      bool ok = hex_begin && hex_end != std::string::npos && hex_end > hex_begin && hex_end - hex_begin <= 6;
      const std::string hex = ok ? r.substr(hex_begin, hex_end - hex_begin) : std::string();
      ok = ok && std::all_of(hex.begin(), hex.end(), [](unsigned char h) { return std::isxdigit(h); });
      const uint32_t cp = ok ? static_cast<uint32_t>(std::stoul(hex, nullptr, 16)) : 0;
      if (ok && cp >= 0x80) {
        unicode::append_utf8(s, cp);
        i = next - 1;
      } else {
        s += c;
        s += r[++i];
      }
    }
  }
  static const std::pair<std::string, std::string> kVariants[] = {
      {R"((?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD]))", LT_CONTRACTIONS},  // llama.cpp's
      {R"([\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]])", LT_NOT_HAN(LT_UPPER)},           // Moonshot's
      {R"([\p{Ll}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]])", LT_NOT_HAN(LT_LOWER)},
      {R"([\p{Han}]+)", R"(\p{Han}+)"},
      {"[^(\\s|[.,!?\u2026\u3002\uFF0C\u3001\u0964\u06D4\u060C])]",  // BLOOM's nested class
       "[^(\\s|.,!?\u2026\u3002\uFF0C\u3001\u0964\u06D4\u060C)]"},
  };
  for (const auto& [from, to] : kVariants)
    for (size_t p = s.find(from); p != std::string::npos; p = s.find(from, p + to.size()))
      s.replace(p, from.size(), to);
  // llama.cpp's GPT-2 pattern has no final \s+; the splits are the same.
  if (std::string gpt2 = kGpt2; s + "|\\s+" == gpt2) s = gpt2;
  return s;
}

bool is_type(const json& j, const char* type) { return j.is_object() && j.value("type", std::string()) == type; }

// The pre_tokenizer as a list of split patterns; false (with `what` set) when it has a step that
// is not a split llama.cpp can express, or no ByteLevel.
bool split_steps(const json& pre, std::vector<std::string>& steps, bool& byte_level, std::string& what) {
  if (is_type(pre, "Sequence")) {
    for (const auto& p : pre.value("pretokenizers", json::array()))
      if (!split_steps(p, steps, byte_level, what)) return false;
    return true;
  }
  if (is_type(pre, "Split") && pre.value("behavior", std::string()) == "Isolated" && !pre.value("invert", false) &&
      pre.contains("pattern") && pre["pattern"].is_object() && pre["pattern"].contains("Regex") &&
      pre["pattern"]["Regex"].is_string()) {
    steps.push_back(canonical(pre["pattern"]["Regex"].get<std::string>()));
    return true;
  }
  if (is_type(pre, "Digits")) {  // tokenizers: char::is_numeric, one by one or in runs
    steps.push_back(pre.value("individual_digits", false) ? R"(\p{N})" : R"(\p{N}+)");
    return true;
  }
  if (is_type(pre, "Punctuation") && pre.value("behavior", std::string()) == "Contiguous") {
    steps.push_back(canonical(kPunct));
    return true;
  }
  if (is_type(pre, "ByteLevel") && !pre.value("add_prefix_space", true)) {
    if (pre.value("use_regex", true)) steps.push_back(canonical(kGpt2));
    byte_level = true;
    return true;
  }
  what = pre.is_null() ? "none" : pre.dump();
  return false;
}

bool has_nfc(const json& normalizer) {
  if (is_type(normalizer, "NFC")) return true;
  if (!is_type(normalizer, "Sequence")) return false;
  const json& parts = normalizer.value("normalizers", json::array());
  return parts.size() == 1 && has_nfc(parts[0]);
}

}  // namespace

const std::vector<BytePre>& byte_level_pres() {
  static const std::vector<BytePre> table = make_table();
  return table;
}

const BytePre* find_byte_pre(const std::string& name) {
  for (const BytePre& p : byte_level_pres())
    if (name == p.name || std::find(p.aliases.begin(), p.aliases.end(), name) != p.aliases.end()) return &p;
  return nullptr;
}

std::string supported_pre_names() {
  std::vector<std::string> names;
  for (const BytePre& p : byte_level_pres()) {
    names.push_back(p.name);
    names.insert(names.end(), p.aliases.begin(), p.aliases.end());
  }
  std::sort(names.begin(), names.end());
  std::string out;
  for (const auto& n : names) out += (out.empty() ? "" : ", ") + n;
  return out;
}

json normalizer_json(const BytePre& pre) { return pre.nfc ? json{{"type", "NFC"}} : json(); }

json pre_tokenizer_json(const BytePre& pre) {
  json parts = json::array();
  for (const std::string& r : pre.regexes)
    parts.push_back(
        {{"type", "Split"}, {"pattern", {{"Regex", canonical(r)}}}, {"behavior", "Isolated"}, {"invert", false}});
  parts.push_back({{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", false}});
  return {{"type", "Sequence"}, {"pretokenizers", std::move(parts)}};
}

std::string export_pre_name(const json& tj, const std::string& file) {
  std::vector<std::string> steps;
  bool byte_level = false;
  std::string what;
  if (!split_steps(tj.value("pre_tokenizer", json()), steps, byte_level, what) || !byte_level) {
    if (what.empty()) what = "without ByteLevel(add_prefix_space=false)";
    throw TokenizerError(file + ": pre-tokenizer " + what +
                         " is not one llama.cpp knows; it cannot be written to GGUF");
  }
  const bool nfc = has_nfc(tj.value("normalizer", json()));
  const bool ignore_merges = tj.value("model", json::object()).value("ignore_merges", false);
  // Among the entries that split alike, the one whose flags agree (ignore_merges first).
  const BytePre* found = nullptr;
  int found_score = -1;
  for (const BytePre& p : byte_level_pres()) {
    if (!p.exported) continue;
    auto same = [&](const std::vector<std::string>& regexes) {
      if (regexes.size() != steps.size()) return false;
      for (size_t i = 0; i < steps.size(); ++i)
        if (canonical(regexes[i]) != steps[i]) return false;
      return true;
    };
    bool match = same(p.regexes);
    for (const auto& alt : p.published) match = match || same(alt);
    if (!match) continue;
    const int score = 2 * (p.ignore_merges == ignore_merges) + (p.nfc == nfc);
    if (score > found_score) {
      found = &p;
      found_score = score;
    }
  }
  if (!found)
    throw TokenizerError(file + ": pre-tokenizer regexes " + json(steps).dump() +
                         " are not a split llama.cpp knows; it cannot be written to GGUF");
  if (found_score == 3) return found->name;
  spdlog::warn("gguf vocab: {}: its pre-tokenizer is llama.cpp's \"{}\", whose NFC/ignore_merges ({}/{}) differ from "
               "the tokenizer's ({}/{}); texts it treats differently may encode differently",
               file, found->name, found->nfc, found->ignore_merges, nfc, ignore_merges);
  return found->name;
}

}  // namespace llmtune::tokenizer::gguf_detail
