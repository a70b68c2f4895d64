// The interop harness: calls a reference function in tests/interop/reference.py with the venv's
// Python (transformers, peft, ...) on tensors from a C++ test, and returns its outputs.
// Tensors travel as raw little-endian files plus a JSON manifest in a temporary directory.
#pragma once

#include <ATen/core/Tensor.h>

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace llmtune::testing {

// Runs reference.py's `function(*inputs, **params)`; throws std::runtime_error with Python's
// stderr when it fails.
std::vector<at::Tensor> call_python(const std::string& function, const std::vector<at::Tensor>& inputs,
                                    const nlohmann::json& params = nlohmann::json::object());

// Runs `script` (a path under the source tree) as `python script request.json response.json` and
// returns the parsed response; throws std::runtime_error with Python's stderr when it fails.
nlohmann::ordered_json run_json_script(const std::string& script, const nlohmann::ordered_json& request);

// max |a - b| over all elements, in float64.
double max_abs_diff(const at::Tensor& a, const at::Tensor& b);

}  // namespace llmtune::testing
