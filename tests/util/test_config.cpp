// The config system: layering, typing, ranges, and errors that name the file, line and key.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <climits>
#include <filesystem>
#include <sstream>
#include <fstream>

#include "llmtune/util/config.h"
#include "llmtune/util/error.h"

namespace llmtune::config {
namespace {

Schema test_schema() {
  Schema s;
  s.add({.name = "seed", .type = Type::Int, .default_value = int64_t{42}, .min = 0});
  s.add({.name = "device", .type = Type::String, .default_value = std::string("auto"),
         .choices = {"auto", "cpu", "cuda", "mps"}});
  s.add({.name = "model.path", .type = Type::String});
  s.add({.name = "train.lr", .type = Type::Float, .default_value = 2e-4, .min = 0, .min_exclusive = true});
  s.add({.name = "train.max_steps", .type = Type::Int, .default_value = int64_t{100}, .min = 1, .max = 1000000});
  s.add({.name = "train.packing", .type = Type::Bool, .default_value = true});
  s.add({.name = "lora.r", .type = Type::Int, .default_value = int64_t{16}, .min = 1});
  s.add({.name = "lora.target_modules", .type = Type::StringList,
         .default_value = std::vector<std::string>{"q_proj", "v_proj"}});
  return s;
}

Config from_yaml(const std::string& yaml, std::vector<std::string> overrides = {},
                 std::vector<std::pair<std::string, std::string>> flags = {}) {
  Sources src;
  src.file = "run.yaml";
  src.yaml_text = yaml;
  src.overrides = std::move(overrides);
  for (auto& [key, value] : flags) src.flags.push_back({key, value, ""});
  return Config::resolve(test_schema(), src);
}

// The ConfigError's message, or "" when resolving succeeds.
std::string error_of(const std::string& yaml, std::vector<std::string> overrides = {},
                     std::vector<std::pair<std::string, std::string>> flags = {}) {
  try {
    from_yaml(yaml, std::move(overrides), std::move(flags));
  } catch (const ConfigError& e) {
    EXPECT_EQ(e.exit_code(), 2);
    return e.what();
  }
  return "";
}

TEST(Config, DefaultsWhenNothingIsGiven) {
  Config c = Config::resolve(test_schema(), {});
  EXPECT_EQ(c.get_int("seed"), 42);
  EXPECT_DOUBLE_EQ(c.get_float("train.lr"), 2e-4);
  EXPECT_TRUE(c.get_bool("train.packing"));
  EXPECT_EQ(c.get_list("lora.target_modules"), (std::vector<std::string>{"q_proj", "v_proj"}));
  EXPECT_FALSE(c.has("model.path"));
  EXPECT_THROW(c.get_string("model.path"), ConfigError);
  EXPECT_EQ(c.origin("seed").kind, Origin::Kind::Default);
}

TEST(Config, NestedYamlFillsDottedKeysWithTheirLines) {
  Config c = from_yaml("seed: 7\nmodel:\n  path: /m\ntrain:\n  lr: 1e-5\n  packing: no\nlora:\n  target_modules: [q_proj, k_proj, o_proj]\n");
  EXPECT_EQ(c.get_int("seed"), 7);
  EXPECT_EQ(c.get_string("model.path"), "/m");
  EXPECT_DOUBLE_EQ(c.get_float("train.lr"), 1e-5);
  EXPECT_FALSE(c.get_bool("train.packing"));
  EXPECT_EQ(c.get_list("lora.target_modules"), (std::vector<std::string>{"q_proj", "k_proj", "o_proj"}));
  EXPECT_EQ(c.origin("train.lr").describe(), "run.yaml:5");
  EXPECT_EQ(c.get_int("train.max_steps"), 100);  // untouched keys keep their defaults
}

TEST(Config, LayeringDefaultsFileOverridesFlags) {
  Config c = from_yaml("seed: 1\ndevice: cpu\ntrain:\n  max_steps: 5\n", {"seed=2", "train.max_steps=6"},
                       {{"seed", "3"}});
  EXPECT_EQ(c.get_int("seed"), 3);                // flag beats override beats file
  EXPECT_EQ(c.get_int("train.max_steps"), 6);     // override beats file
  EXPECT_EQ(c.get_string("device"), "cpu");       // file beats default
  EXPECT_EQ(c.origin("seed").describe(), "flag --seed");
  EXPECT_EQ(c.origin("train.max_steps").describe(), "command line 'train.max_steps=6'");
}

TEST(Config, IntegerValuedFloatsAndSignsAreAccepted) {
  Config c = from_yaml("train:\n  lr: 1\n", {"seed=+5"});
  EXPECT_DOUBLE_EQ(c.get_float("train.lr"), 1.0);
  EXPECT_EQ(c.get_int("seed"), 5);
}

TEST(Config, BooleansInYamlSpellings) {
  for (auto [text, want] : {std::pair{"true", true}, {"True", true}, {"yes", true}, {"on", true},
                            {"false", false}, {"NO", false}, {"off", false}}) {
    EXPECT_EQ(from_yaml("", {std::string("train.packing=") + text}).get_bool("train.packing"), want) << text;
  }
  EXPECT_NE(error_of("", {"train.packing=maybe"}).find("expects a boolean"), std::string::npos);
}

TEST(Config, ListsFromFlowStyleOverridesAndScalars) {
  EXPECT_EQ(from_yaml("", {"lora.target_modules=[gate_proj, up_proj]"}).get_list("lora.target_modules"),
            (std::vector<std::string>{"gate_proj", "up_proj"}));
  EXPECT_EQ(from_yaml("lora:\n  target_modules: all-linear\n").get_list("lora.target_modules"),
            (std::vector<std::string>{"all-linear"}));
  EXPECT_NE(error_of("", {"lora.target_modules=[a, [b]]"}).find("nested"), std::string::npos);
}

TEST(Config, NullRestoresTheDefault) {
  Config c = from_yaml("seed: ~\nmodel:\n  path:\n", {});
  EXPECT_EQ(c.get_int("seed"), 42);
  EXPECT_FALSE(c.has("model.path"));
  EXPECT_FALSE(from_yaml("model:\n  path: /x\n", {"model.path="}).has("model.path"));
}

TEST(Config, SyntaxErrorNamesFileLineAndColumn) {
  std::string e = error_of("seed: 1\ntrain:\n  lr: [1, 2\n  max_steps: 3\n");
  EXPECT_NE(e.find("run.yaml:"), std::string::npos) << e;
  EXPECT_NE(e.find("YAML syntax error"), std::string::npos) << e;
  EXPECT_EQ(error_of("seed: 1\n  bad indent: 2\n").rfind("run.yaml:2:", 0), 0u) << error_of("seed: 1\n  bad indent: 2\n");
}

TEST(Config, UnknownKeyNamesLineAndSuggestsNearest) {
  std::string e = error_of("seed: 1\ntrain:\n  lrr: 0.1\n");
  EXPECT_EQ(e, "run.yaml:3: unknown key 'train.lrr' (did you mean 'train.lr'?)");
  // The right word in the wrong section.
  EXPECT_NE(error_of("lr: 0.1\n").find("did you mean 'train.lr'"), std::string::npos);
  // Nothing close: no guess, but a pointer to the list of keys.
  EXPECT_NE(error_of("completely_unrelated: 1\n").find("--print-config"), std::string::npos);
  // An unknown section is reported once, not once per key inside it.
  std::string s = error_of("qlora:\n  r: 4\n  alpha: 8\n");
  EXPECT_EQ(std::count(s.begin(), s.end(), '\n'), 0) << s;
  EXPECT_NE(s.find("unknown section 'qlora'"), std::string::npos) << s;
}

TEST(Config, SuggestionsAreTheNearestKeyWithinAThirdOfTheName) {
  // Distances are computed only up to the suggestion limit (max(2, length / 3)): the nearest key
  // within it still wins, ties to the first key of the schema, and a key one edit beyond is not named.
  EXPECT_NE(error_of("train:\n  max_stepz_x: 1\n").find("did you mean 'train.max_steps'"), std::string::npos);
  EXPECT_NE(error_of("train:\n  wxy: 1\n").find("did you mean 'train.lr'"), std::string::npos);  // 3 edits, limit 3
  EXPECT_EQ(error_of("train:\n  wxyz: 1\n").find("did you mean"), std::string::npos);           // 4 edits, limit 3
  // A key of a megabyte is named (shortened) without a suggestion, in milliseconds.
  const auto start = std::chrono::steady_clock::now();
  std::string e = error_of(std::string(1 << 20, 'k') + ": 1\n");
  EXPECT_EQ(e.find("did you mean"), std::string::npos);
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(5));
}

TEST(Config, UnknownOverrideKeyIsNamed) {
  EXPECT_EQ(error_of("", {"train.max_step=3"}),
            "command line 'train.max_step=3': unknown key 'train.max_step' (did you mean 'train.max_steps'?)");
  EXPECT_NE(error_of("", {"seed"}).find("expected key=value"), std::string::npos);
}

TEST(Config, WrongTypesAreNamed) {
  EXPECT_EQ(error_of("seed: abc\n"), "run.yaml:1: key 'seed' expects an integer, got 'abc'");
  EXPECT_EQ(error_of("seed: 1.5\n"), "run.yaml:1: key 'seed' expects an integer, got '1.5'");
  EXPECT_EQ(error_of("train:\n  lr: fast\n"), "run.yaml:2: key 'train.lr' expects a number, got 'fast'");
  EXPECT_EQ(error_of("seed: [1, 2]\n"), "run.yaml:1: key 'seed' expects an integer, got a list");
  EXPECT_EQ(error_of("seed:\n  a: 1\n"), "run.yaml:1: key 'seed' expects an integer, got a map");
  EXPECT_NE(error_of("train:\n  lr: nan\n").find("expects a number"), std::string::npos);
  EXPECT_NE(error_of("train: 3\n").find("'train' is a section"), std::string::npos);
}

TEST(Config, RangesAndChoices) {
  EXPECT_EQ(error_of("seed: -1\n"), "run.yaml:1: key 'seed' must be >= 0, got -1");
  EXPECT_EQ(error_of("train:\n  lr: 0\n"), "run.yaml:2: key 'train.lr' must be > 0, got 0.0");
  EXPECT_EQ(error_of("train:\n  max_steps: 2000000\n"), "run.yaml:2: key 'train.max_steps' must be <= 1000000, got 2000000");
  EXPECT_EQ(error_of("device: gpu\n"), "run.yaml:1: key 'device' 'gpu' is not one of: auto, cpu, cuda, mps");
  EXPECT_NE(error_of("", {}, {{"device", "tpu"}}).find("flag --device"), std::string::npos);
}

TEST(Config, DuplicateKeysAreErrors) {
  EXPECT_EQ(error_of("seed: 1\nseed: 2\n"), "run.yaml:2: duplicate key 'seed'");
}

TEST(Config, EveryErrorIsReportedAtOnce) {
  std::string e = error_of("seed: x\ntrain:\n  lr: -1\n  max_step: 3\ndevice: tpu\n", {"lora.r=0"});
  std::vector<std::string> lines;
  std::stringstream ss(e);
  for (std::string l; std::getline(ss, l);) lines.push_back(l);
  ASSERT_EQ(lines.size(), 5u) << e;
  EXPECT_EQ(lines[0].rfind("run.yaml:1:", 0), 0u);
  EXPECT_EQ(lines[1].rfind("run.yaml:3:", 0), 0u);
  EXPECT_EQ(lines[2].rfind("run.yaml:4:", 0), 0u);
  EXPECT_EQ(lines[3].rfind("run.yaml:5:", 0), 0u);
  EXPECT_EQ(lines[4].rfind("command line 'lora.r=0'", 0), 0u);
}

TEST(Config, RequiredKeysMustBeSet) {
  Schema s = test_schema();
  s.add({.name = "data.path", .type = Type::String, .required = true});
  try {
    Config::resolve(s, {});
    FAIL() << "expected a ConfigError";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("missing required key 'data.path'"), std::string::npos);
  }
  Sources src;
  src.overrides = {"data.path=x.jsonl"};
  EXPECT_EQ(Config::resolve(s, src).get_string("data.path"), "x.jsonl");
}

TEST(Config, NonMapDocumentIsAnError) {
  EXPECT_NE(error_of("- a\n- b\n").find("must be a map"), std::string::npos);
  EXPECT_EQ(error_of(""), "");           // an empty file is an empty config
  EXPECT_EQ(error_of("# only a comment\n"), "");
}

TEST(Config, MissingFileIsNamed) {
  Sources src;
  src.file = "/nonexistent/run.yaml";
  try {
    Config::resolve(test_schema(), src);
    FAIL();
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("/nonexistent/run.yaml"), std::string::npos);
  }
}

TEST(Config, ReadsFromAFile) {
  auto path = std::filesystem::temp_directory_path() / "llmtune-test-config.yaml";
  std::ofstream(path) << "train:\n  max_steps: 12\n";
  Sources src;
  src.file = path;
  Config c = Config::resolve(test_schema(), src);
  EXPECT_EQ(c.get_int("train.max_steps"), 12);
  EXPECT_EQ(c.origin("train.max_steps").describe(), path.string() + ":2");
  std::filesystem::remove(path);
}

TEST(Config, PrintedConfigReadsBackToTheSameValues) {
  Config c = from_yaml("seed: 9\nmodel:\n  path: 'a b: c'\ntrain:\n  lr: 3.0e-5\n  packing: false\n",
                       {"lora.target_modules=[x, 'y z']"});
  std::string yaml = c.to_yaml(/*with_origins=*/true);
  EXPECT_NE(yaml.find("# run.yaml:1"), std::string::npos) << yaml;
  Sources src;
  src.yaml_text = yaml;
  Config back = Config::resolve(test_schema(), src);
  Schema schema = test_schema();
  for (const auto& k : schema.keys()) {
    ASSERT_EQ(back.has(k.name), c.has(k.name)) << k.name;
    if (c.has(k.name)) EXPECT_EQ(format_value(back.value(k.name)), format_value(c.value(k.name))) << k.name;
  }
  EXPECT_DOUBLE_EQ(back.get_float("train.lr"), 3e-5);
}

TEST(Config, IntegersPastInt64AreRefusedNeverClamped) {
  EXPECT_EQ(error_of("seed: 99999999999999999999999\n"),
            "run.yaml:1: key 'seed' expects an integer between -9223372036854775808 and 9223372036854775807, got "
            "'99999999999999999999999'");
  EXPECT_NE(error_of("", {"seed=-99999999999999999999999"}).find("between"), std::string::npos);
  EXPECT_NE(error_of("train:\n  lr: 1e999\n").find("expects a finite number"), std::string::npos);
  EXPECT_EQ(from_yaml("", {"seed=9223372036854775807"}).get_int("seed"), INT64_MAX);
}

TEST(Config, FlagErrorsNameTheFlagAsTyped) {
  Sources src;
  src.flags = {{"train.max_steps", "2000000", "--max-steps"}, {"seed", "-1", ""}};
  try {
    Config::resolve(test_schema(), src);
    FAIL();
  } catch (const ConfigError& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("flag --max-steps: key 'train.max_steps' must be <= 1000000"), std::string::npos) << m;
    EXPECT_NE(m.find("flag --seed: "), std::string::npos) << m;
    EXPECT_EQ(m.find("--max_steps"), std::string::npos) << m;  // a spelling the parser would refuse
  }
  src.flags = {{"model.path", "", "--model"}};  // an empty flag is an empty string, not "unset"
  Config c = Config::resolve(test_schema(), src);
  EXPECT_TRUE(c.has("model.path"));
  EXPECT_EQ(c.get_string("model.path"), "");
  Schema s = test_schema();
  s.add({.name = "data.path", .type = Type::String, .required = true});
  src.flags = {{"data.path", "", "--data"}};  // ... and refused where a value is required
  try {
    Config::resolve(s, src);
    FAIL();
  } catch (const ConfigError& e) {
    EXPECT_EQ(std::string(e.what()), "flag --data: key 'data.path' needs a value, got an empty string");
  }
}

TEST(Config, MultipleDocumentsAreRefused) {
  EXPECT_EQ(error_of("seed: 1\n---\ndevice: cpu\n"),
            "run.yaml:2: a second YAML document ('---'); a config file holds one (merge them, or split them into two files)");
  EXPECT_EQ(error_of("---\nseed: 1\n"), "");  // a leading document marker is one document
  EXPECT_EQ(error_of("seed: 1\n...\n"), "");
}

TEST(Config, NestingDeeperThan512IsRefused) {
  auto flow = [](int depth) { return "lora:\n  target_modules: " + std::string(depth, '[') + std::string(depth, ']') + "\n"; };
  EXPECT_EQ(error_of(flow(600)), "run.yaml:2: nested deeper than 512 levels (a config is a few levels of maps)");
  EXPECT_EQ(error_of(flow(5000)), "run.yaml:2: nested deeper than 512 levels (a config is a few levels of maps)");
  EXPECT_NE(error_of(flow(100)).find("nested structure"), std::string::npos);  // under the limit: the usual type error
  std::string block = "seed:\n";
  for (int i = 1; i < 700; ++i) block += std::string(2 * i, ' ') + "a:\n";
  EXPECT_NE(error_of(block).find("nested deeper than 512 levels"), std::string::npos);
  // An alias bomb is measured once per anchor: quick, and not too deep.
  std::string bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n";
  for (char c = 'b'; c <= 'k'; ++c)
    bomb += std::string(1, c) + ": &" + c + " [*" + char(c - 1) + ", *" + char(c - 1) + ", *" + char(c - 1) + ", *" +
            char(c - 1) + ", *" + char(c - 1) + ", *" + char(c - 1) + ", *" + char(c - 1) + ", *" + char(c - 1) + "]\n";
  EXPECT_NE(error_of(bomb).find("unknown key 'a'"), std::string::npos);
}

TEST(Config, AYamlErrorIsTheOnlyError) {
  Schema s = test_schema();
  s.add({.name = "data.path", .type = Type::String, .required = true});
  for (const std::string yaml : {"seed: [1\n", "seed: 1\n---\nseed: 2\n", "- a\n"}) {
    Sources src;
    src.file = "run.yaml";
    src.yaml_text = yaml;
    try {
      Config::resolve(s, src);
      FAIL() << yaml;
    } catch (const ConfigError& e) {
      EXPECT_EQ(std::string(e.what()).find("missing required key"), std::string::npos) << e.what();
      EXPECT_EQ(std::string(e.what()).find('\n'), std::string::npos) << e.what();
    }
  }
  // A typo of a required key: the typo, not a second line saying the key is missing.
  Sources src;
  src.file = "run.yaml";
  src.yaml_text = "data:\n  pth: x.jsonl\n";
  try {
    Config::resolve(s, src);
    FAIL();
  } catch (const ConfigError& e) {
    EXPECT_EQ(std::string(e.what()), "run.yaml:2: unknown key 'data.pth' (did you mean 'data.path'?)");
  }
}

TEST(Config, SchemaRejectsProgrammingErrors) {
  Schema s;
  s.add({.name = "a", .type = Type::Int, .default_value = int64_t{1}});
  EXPECT_THROW(s.add({.name = "a", .type = Type::Int}), std::logic_error);
  EXPECT_THROW(s.add({.name = "b", .type = Type::Int, .default_value = std::string("x")}), std::logic_error);
}

}  // namespace
}  // namespace llmtune::config
