// The llmtune binary: builds the command table, parses, runs one command, and turns every error
// into one line on stderr and an exit code (2: usage/config, 1: runtime failure).
#include <CLI/CLI.hpp>
#include <c10/util/Exception.h>

#include <iostream>
#include <sstream>

#include "common.h"
#include "llmtune/build_info.h"
#include "llmtune/util/error.h"
#include "llmtune/util/log.h"

namespace {

void print_error(const std::string& message) {
  std::istringstream lines(message);
  for (std::string line; std::getline(lines, line);) std::cerr << "llmtune: error: " << line << "\n";
}

std::string first_line(const std::string& s) { return s.substr(0, s.find('\n')); }

}  // namespace

int main(int argc, char** argv) {
  using namespace llmtune;
  CLI::App root{"llmtune: fine-tune, run and evaluate Llama-family models", "llmtune"};
  root.set_version_flag("--version", std::string("llmtune ") + build_info::version + " (git " + build_info::git_rev + ")");
  root.require_subcommand(1);
  root.fallthrough(false);

  std::vector<cli::Command> commands{cli::register_env(root), cli::register_eval(root), cli::register_infer(root),
                                     cli::register_tokenize(root), cli::register_finetune(root),
                                     cli::register_merge(root), cli::register_quantize(root),
                                     cli::register_prune(root), cli::register_distill(root),
                                     cli::register_validate(root),
                                     cli::register_serve(root), cli::register_sweep(root)};
  cli::check_numeric_options(root);

  // An unknown command gets its own message rather than CLI11's "arguments were not expected".
  if (argc > 1 && argv[1][0] != '-') {
    std::string name = argv[1];
    bool known = false;
    std::string names;
    for (const auto& c : commands) {
      known |= c.app->get_name() == name;
      names += (names.empty() ? "" : ", ") + c.app->get_name();
    }
    if (!known) {
      print_error("unknown command '" + name + "' (commands: " + names + "; see llmtune --help)");
      return 2;
    }
  }

  try {
    root.parse(argc, argv);
  } catch (const CLI::Success& e) {
    return root.exit(e);  // --help, --version
  } catch (const CLI::ParseError& e) {
    print_error(first_line(e.what()) + " (see llmtune " + (argc > 1 && argv[1][0] != '-' ? std::string(argv[1]) + " " : "") + "--help)");
    return 2;
  }

  try {
    log::init("info");
    for (const auto& c : commands)
      if (c.app->parsed()) return c.run();
    return 2;
  } catch (const Error& e) {
    print_error(e.what());
    return e.exit_code();
  } catch (const c10::Error& e) {
    print_error(first_line(e.what_without_backtrace()));
    return 1;
  } catch (const std::exception& e) {
    print_error(first_line(e.what()));
    return 1;
  }
}
