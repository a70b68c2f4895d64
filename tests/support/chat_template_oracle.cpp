// One batched Python run renders every registered chat-template case (see the header).
#include "support/chat_template_oracle.h"

#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <sstream>
#include <stdexcept>

namespace llmtune::testing {
namespace {

namespace fs = std::filesystem;

struct Registry {
  nlohmann::ordered_json cases = nlohmann::ordered_json::array();
  std::vector<OracleResult> results;
  std::once_flag ran;
  std::string failure;  // why the Python run failed, reported by every lookup
};

Registry& registry() {
  static Registry r;
  return r;
}

std::string read_all(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  if (!in) throw std::runtime_error("cannot read " + p.string());
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void run_python(Registry& r) {
  fs::path dir = fs::temp_directory_path() / ("llmtune-chat-oracle-" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  std::ofstream(dir / "cases.json", std::ios::binary) << r.cases.dump();
  std::string cmd = std::string("\"") + LLMTUNE_TEST_PYTHON + "\" \"" + LLMTUNE_SOURCE_DIR +
                    "/tests/interop/render_chat_templates.py\" \"" + (dir / "cases.json").string() + "\" \"" +
                    (dir / "out.json").string() + "\" 2> \"" + (dir / "stderr.txt").string() + "\"";
  if (std::system(cmd.c_str()) != 0) {
    std::string err = read_all(dir / "stderr.txt");
    fs::remove_all(dir);
    throw std::runtime_error("render_chat_templates.py failed: " + err);
  }
  auto out = nlohmann::json::parse(read_all(dir / "out.json"));
  fs::remove_all(dir);
  if (out.size() != r.cases.size()) throw std::runtime_error("chat oracle: result count mismatch");
  for (const auto& o : out) {
    OracleResult res;
    res.ok = o.at("ok").get<bool>();
    if (res.ok) {
      res.output = o.at("output").get<std::string>();
      if (o.contains("spans"))
        for (const auto& s : o["spans"]) res.spans.emplace_back(s[0].get<size_t>(), s[1].get<size_t>());
    } else {
      res.error = o.at("error").get<std::string>();
    }
    r.results.push_back(std::move(res));
  }
}

}  // namespace

size_t register_oracle_case(const std::string& template_source, OracleMode mode, nlohmann::ordered_json context) {
  Registry& r = registry();
  r.cases.push_back({{"template", template_source},
                     {"mode", mode == OracleMode::Hf ? "hf" : "jinja"},
                     {"context", std::move(context)}});
  return r.cases.size() - 1;
}

const OracleResult& oracle_result(size_t handle) {
  Registry& r = registry();
  std::call_once(r.ran, [&] {
    try {
      run_python(r);
    } catch (const std::exception& e) {
      r.failure = e.what();
    }
  });
  if (!r.failure.empty()) throw std::runtime_error(r.failure);
  return r.results.at(handle);
}

std::string read_chat_template(const std::string& name) {
  return read_all(fs::path(LLMTUNE_SOURCE_DIR) / "tests/data/chat_templates" / (name + ".jinja"));
}

size_t char_offset(const std::string& utf8, size_t byte_offset) {
  size_t n = 0;
  for (size_t i = 0; i < byte_offset && i < utf8.size(); ++i) n += (static_cast<unsigned char>(utf8[i]) & 0xC0) != 0x80;
  return n;
}

}  // namespace llmtune::testing
