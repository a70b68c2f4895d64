// Fuzz target: a .safetensors file (FORMATS.md §1): the 8-byte header length, the JSON header
// (names, dtypes, shapes, offsets, __metadata__) and the layout checks of SafetensorsFile::open,
// then every tensor materialised and its bytes touched, as a model load would.
#include <ATen/core/Tensor.h>

#include "fuzz_util.h"
#include "llmtune/io/safetensors.h"

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  llmtune::fuzz::init();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace llmtune;
  const auto path = fuzz::write_scratch("model.safetensors", {reinterpret_cast<const char*>(data), size});
  fuzz::guarded([&] {
    auto file = io::SafetensorsFile::open(path);
    for (const auto& [key, value] : file->metadata()) (void)key.size(), (void)value.size();
    for (const auto& name : file->names()) {
      const io::TensorInfo& info = file->info(name);
      at::Tensor t = file->tensor(name);
      if (t.numel() != 0) {
        // The first and last byte of the tensor's storage: ASan catches a view past the mapping.
        const auto* bytes = static_cast<const volatile uint8_t*>(t.data_ptr());
        (void)bytes[0];
        (void)bytes[info.end - info.begin - 1];
      }
      file->release(name);
    }
  });
  return 0;
}
