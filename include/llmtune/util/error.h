// The error hierarchy. Code below the CLI throws these; main catches once, prints one line and
// exits with exit_code(): 2 for usage and config errors, 1 for runtime failures.
#pragma once

#include <stdexcept>
#include <string>

namespace llmtune {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message, int exit_code = 1)
      : std::runtime_error(message), exit_code_(exit_code) {}
  int exit_code() const noexcept { return exit_code_; }

 private:
  int exit_code_;
};

// Bad command line: unknown command or flag, missing argument.
class UsageError : public Error {
 public:
  explicit UsageError(const std::string& m) : Error(m, 2) {}
};

// Bad configuration: YAML syntax, unknown key, wrong type, out-of-range value. May hold several
// errors, one per line, all reported at once.
class ConfigError : public Error {
 public:
  explicit ConfigError(const std::string& m) : Error(m, 2) {}
};

class ModelLoadError : public Error {
 public:
  using Error::Error;
};
class DataError : public Error {
 public:
  using Error::Error;
};
class AdapterError : public Error {
 public:
  using Error::Error;
};
class QuantError : public Error {
 public:
  using Error::Error;
};
class DeviceError : public Error {
 public:
  using Error::Error;
};
class IoError : public Error {
 public:
  using Error::Error;
};
// tokenizer.json / tokenizer.model / tokenizer_config.json problems, and encode/decode failures.
class TokenizerError : public Error {
 public:
  using Error::Error;
};
// Chat templates: Jinja syntax the engine does not support, or raise_exception() from a template.
class TemplateError : public Error {
 public:
  using Error::Error;
};
// Training checkpoints: missing, incomplete, or written by another configuration.
class CheckpointError : public Error {
 public:
  using Error::Error;
};

}  // namespace llmtune
