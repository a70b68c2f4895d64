# Finds libtorch inside a Python's torch wheel (torch.utils.cmake_prefix_path), and collects the
# directories binaries need on their RPATH: torch/lib and the wheel's nvidia/*/lib.
if(NOT LLMTUNE_PYTHON)
  if(DEFINED ENV{LLMTUNE_PYTHON})
    set(LLMTUNE_PYTHON "$ENV{LLMTUNE_PYTHON}")
  elseif(DEFINED ENV{LLMTUNE_VENV})
    set(LLMTUNE_PYTHON "$ENV{LLMTUNE_VENV}/bin/python")
  elseif(EXISTS "$ENV{HOME}/.cache/llmtune/venv/bin/python")
    set(LLMTUNE_PYTHON "$ENV{HOME}/.cache/llmtune/venv/bin/python")
  else()
    find_program(LLMTUNE_PYTHON NAMES python3 python REQUIRED)
  endif()
endif()

execute_process(
  COMMAND "${LLMTUNE_PYTHON}" -c [=[
import glob, os, torch
site = os.path.dirname(os.path.dirname(torch.__file__))
libs = [os.path.join(os.path.dirname(torch.__file__), "lib")]
libs += sorted(glob.glob(os.path.join(site, "nvidia", "*", "lib")))
print(torch.utils.cmake_prefix_path)
print(torch.__version__)
print(torch.version.cuda or "")
print(";".join(libs))
]=]
  OUTPUT_VARIABLE _torch_out ERROR_VARIABLE _torch_err RESULT_VARIABLE _torch_rc
  OUTPUT_STRIP_TRAILING_WHITESPACE)
if(NOT _torch_rc EQUAL 0)
  message(FATAL_ERROR "llmtune: cannot import torch from ${LLMTUNE_PYTHON}: ${_torch_err}\n"
                      "Run scripts/setup.sh, or pass -DLLMTUNE_PYTHON=/path/to/python-with-torch.")
endif()
string(REPLACE "\n" ";" _torch_out "${_torch_out}")
list(GET _torch_out 0 _torch_prefix)
list(GET _torch_out 1 LLMTUNE_TORCH_VERSION)
list(GET _torch_out 2 LLMTUNE_TORCH_CUDA_VERSION)
list(SUBLIST _torch_out 3 -1 LLMTUNE_TORCH_RPATH)
list(APPEND CMAKE_PREFIX_PATH "${_torch_prefix}")
message(STATUS "llmtune: torch ${LLMTUNE_TORCH_VERSION} (CUDA '${LLMTUNE_TORCH_CUDA_VERSION}') from ${LLMTUNE_PYTHON}")

# Which GPUs the CUDA code is compiled for: Hopper plus the common Ampere/Ada parts unless
# TORCH_CUDA_ARCH_LIST (environment or cache) says otherwise. Torch's config turns it into -gencode.
# "+PTX" on the newest also embeds its PTX, which the driver compiles for GPUs newer than the list
# (Blackwell), instead of failing with "no kernel image is available".
if(NOT TORCH_CUDA_ARCH_LIST)
  if(DEFINED ENV{TORCH_CUDA_ARCH_LIST})
    set(TORCH_CUDA_ARCH_LIST "$ENV{TORCH_CUDA_ARCH_LIST}")
  else()
    set(TORCH_CUDA_ARCH_LIST "8.0;8.6;8.9;9.0+PTX")
  endif()
endif()
set(TORCH_CUDA_ARCH_LIST "${TORCH_CUDA_ARCH_LIST}" CACHE STRING "GPU architectures for the CUDA kernels")
# Torch's config requires a CUDA toolkit (nvcc on PATH, or CUDA_HOME) when the wheel was built with
# CUDA, even with LLMTUNE_CUDA=OFF; it then enables the CUDA language for our kernels too.
set(_saved_flags "${CMAKE_CXX_FLAGS}")
find_package(Torch REQUIRED)
set(CMAKE_CXX_FLAGS "${_saved_flags}")  # keep TORCH_CXX_FLAGS on our targets, not globally
