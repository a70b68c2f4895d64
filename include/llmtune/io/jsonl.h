// JSON Lines reading with errors that name the file and line.
#pragma once

#include <filesystem>
#include <functional>
#include <nlohmann/json.hpp>

namespace llmtune::io {

// Calls `row(line_number, object)` for every non-blank line (1-based numbers). A line that is not
// a JSON object is a DataError "<file>:<line>: ...". Key order is kept (chat templates render it).
void read_jsonl(const std::filesystem::path& path, const std::function<void(int64_t, const nlohmann::ordered_json&)>& row);

}  // namespace llmtune::io
