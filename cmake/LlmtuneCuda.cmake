# Decides whether the CUDA kernels in kernels/ are compiled. Torch's config has already looked for
# the CUDA toolkit (and enabled the CUDA language) when the wheel was built with CUDA.
set(LLMTUNE_WITH_CUDA_KERNELS OFF)
set(_cuda_ok OFF)
if(LLMTUNE_TORCH_CUDA_VERSION AND CAFFE2_USE_CUDA AND CMAKE_CUDA_COMPILER)
  set(_cuda_ok ON)
endif()

if(LLMTUNE_CUDA STREQUAL "ON" AND NOT _cuda_ok)
  message(FATAL_ERROR "LLMTUNE_CUDA=ON but CUDA kernels cannot be built: torch CUDA "
    "'${LLMTUNE_TORCH_CUDA_VERSION}', nvcc '${CMAKE_CUDA_COMPILER}'. Install the CUDA toolkit "
    "(nvcc on PATH or CUDA_HOME) and a CUDA build of torch, or use -DLLMTUNE_CUDA=AUTO|OFF.")
elseif(NOT LLMTUNE_CUDA STREQUAL "OFF" AND _cuda_ok)
  set(LLMTUNE_WITH_CUDA_KERNELS ON)
endif()

if(LLMTUNE_WITH_CUDA_KERNELS)
  set(LLMTUNE_CUDA_ARCHS_STRING "${TORCH_CUDA_ARCH_LIST}")
  message(STATUS "llmtune: CUDA kernels ON (nvcc ${CMAKE_CUDA_COMPILER_VERSION}, archs ${TORCH_CUDA_ARCH_LIST})")
else()
  set(LLMTUNE_CUDA_ARCHS_STRING "")
  message(STATUS "llmtune: CUDA kernels OFF (LLMTUNE_CUDA=${LLMTUNE_CUDA})")
endif()
