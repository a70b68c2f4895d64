// Shared fuzz-target helpers (see fuzz_util.h).
#include "fuzz_util.h"

#include <spdlog/spdlog.h>
#include <signal.h>
#include <unistd.h>

#include <cerrno>

#include <fstream>
#include <nlohmann/json.hpp>

#include "llmtune/util/log.h"

namespace llmtune::fuzz {
namespace fs = std::filesystem;

bool env_flag(const char* name) {
  const char* v = std::getenv(name);
  return v && std::string_view(v) == "1";
}

void init() {
  static const bool done = [] {
    log::init("off");
    spdlog::set_level(spdlog::level::off);
    return true;
  }();
  (void)done;
}

const fs::path& scratch_dir() {
  static const fs::path dir = [] {
    std::error_code ec;
    fs::path base = fs::is_directory("/dev/shm", ec) && access("/dev/shm", W_OK) == 0 ? fs::path("/dev/shm")
                                                                                      : fs::temp_directory_path();
    // Directories of earlier runs whose process is gone (a crash or timeout skips atexit).
    const std::string prefix = "llmtune-fuzz-";
    for (const auto& e : fs::directory_iterator(base, ec)) {
      const std::string name = e.path().filename().string();
      if (name.rfind(prefix, 0) != 0) continue;
      const long pid = std::strtol(name.c_str() + prefix.size(), nullptr, 10);
      if (pid > 0 && kill(static_cast<pid_t>(pid), 0) != 0 && errno == ESRCH) fs::remove_all(e.path(), ec);
    }
    fs::path d = base / (prefix + std::to_string(getpid()));
    fs::create_directories(d);
    std::atexit([] {
      std::error_code ec;
      fs::remove_all(scratch_dir(), ec);
    });
    return d;
  }();
  return dir;
}

fs::path write_scratch(const std::string& name, std::string_view bytes) {
  fs::path p = scratch_dir() / name;
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  out.close();
  if (!out) {
    std::fprintf(stderr, "fuzz: cannot write %s\n", p.c_str());
    std::abort();
  }
  return p;
}

std::vector<std::string_view> split_at_nul(std::string_view input, size_t max_parts) {
  std::vector<std::string_view> parts;
  while (parts.size() + 1 < max_parts) {
    size_t nul = input.find('\0');
    if (nul == std::string_view::npos) break;
    parts.push_back(input.substr(0, nul));
    input.remove_prefix(nul + 1);
  }
  parts.push_back(input);
  return parts;
}

const tokenizer::Tokenizer& byte_tokenizer() {
  static const std::unique_ptr<tokenizer::Tokenizer> tok = [] {
    // GPT-2's bytes_to_unicode: printable bytes stand for themselves, the rest map to U+0100 on.
    nlohmann::json vocab = nlohmann::json::object();
    int next = 256;
    for (int b = 0; b < 256; ++b) {
      bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      int cp = printable ? b : next++;
      std::string s;
      if (cp < 0x80) {
        s += static_cast<char>(cp);
      } else {
        s += static_cast<char>(0xC0 | (cp >> 6));
        s += static_cast<char>(0x80 | (cp & 0x3F));
      }
      vocab[s] = b;
    }
    auto added = [](int id, const char* content) {
      return nlohmann::json{{"id", id},           {"content", content}, {"single_word", false}, {"lstrip", false},
                            {"rstrip", false},    {"normalized", false}, {"special", true}};
    };
    nlohmann::json tj = {
        {"version", "1.0"},
        {"added_tokens", {added(256, "<s>"), added(257, "</s>")}},
        {"normalizer", nullptr},
        {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", true}}},
        {"post_processor", nullptr},
        {"decoder", {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", true}, {"use_regex", true}}},
        {"model", {{"type", "BPE"}, {"dropout", nullptr}, {"unk_token", nullptr}, {"continuing_subword_prefix", nullptr},
                   {"end_of_word_suffix", nullptr}, {"fuse_unk", false}, {"byte_fallback", false},
                   {"ignore_merges", false}, {"vocab", vocab}, {"merges", nlohmann::json::array()}}}};
    nlohmann::json cj = {{"bos_token", "<s>"}, {"eos_token", "</s>"}, {"add_bos_token", true},
                         {"tokenizer_class", "PreTrainedTokenizerFast"}};
    fs::path dir = scratch_dir() / "byte-tokenizer";
    fs::create_directories(dir);
    write_scratch("byte-tokenizer/tokenizer.json", tj.dump());
    write_scratch("byte-tokenizer/tokenizer_config.json", cj.dump());
    return tokenizer::load_tokenizer(dir);
  }();
  return *tok;
}

}  // namespace llmtune::fuzz
