# The C++ libraries llmtune uses, from Debian packages. On a machine without them (a GPU box
# with its own PyTorch), scripts/bundle-debs.sh unpacks the same packages into LLMTUNE_DEPS_DIR.
set(LLMTUNE_DEPS_RPATH "")
if(EXISTS "${LLMTUNE_DEPS_DIR}/root/usr")
  set(_deps "${LLMTUNE_DEPS_DIR}/root/usr")
  message(STATUS "llmtune: using the unpacked Debian bundle in ${_deps}")
  list(PREPEND CMAKE_PREFIX_PATH "${_deps}" "${_deps}/lib/x86_64-linux-gnu/cmake" "${_deps}/share/cmake")
  list(APPEND LLMTUNE_DEPS_RPATH "${_deps}/lib/x86_64-linux-gnu")
endif()

find_package(nlohmann_json 3.10 REQUIRED)
find_package(CLI11 2.1 REQUIRED)
find_package(fmt REQUIRED)
# torch/include carries its own, newer fmt, which Debian's spdlog does not compile with. A shim
# directory holding only the packaged fmt goes ahead of torch's headers on the include path.
get_target_property(_fmt_include fmt::fmt INTERFACE_INCLUDE_DIRECTORIES)
set(LLMTUNE_FMT_SHIM "${CMAKE_BINARY_DIR}/generated/fmt-shim")
file(MAKE_DIRECTORY "${LLMTUNE_FMT_SHIM}")
file(CREATE_LINK "${_fmt_include}/fmt" "${LLMTUNE_FMT_SHIM}/fmt" SYMBOLIC)
find_package(spdlog REQUIRED)
find_package(yaml-cpp REQUIRED)

# SentencePiece ships only a pkg-config file with an absolute prefix; find it by hand so the
# unpacked bundle works too.
find_path(SENTENCEPIECE_INCLUDE_DIR sentencepiece_processor.h REQUIRED)
find_library(SENTENCEPIECE_LIBRARY sentencepiece REQUIRED)
add_library(llmtune_sentencepiece INTERFACE)
target_include_directories(llmtune_sentencepiece SYSTEM INTERFACE "${SENTENCEPIECE_INCLUDE_DIR}")
target_link_libraries(llmtune_sentencepiece INTERFACE "${SENTENCEPIECE_LIBRARY}")

# PCRE2 (8-bit, UTF + UCP) runs the pre-tokenizer regexes of tokenizer.json (\p{L}, lookahead);
# utf8proc does the NFC/NFKC normalizers. Found by hand for the same reason as SentencePiece.
find_path(PCRE2_INCLUDE_DIR pcre2.h REQUIRED)
find_library(PCRE2_LIBRARY pcre2-8 REQUIRED)
add_library(llmtune_pcre2 INTERFACE)
target_include_directories(llmtune_pcre2 SYSTEM INTERFACE "${PCRE2_INCLUDE_DIR}")
target_link_libraries(llmtune_pcre2 INTERFACE "${PCRE2_LIBRARY}")
target_compile_definitions(llmtune_pcre2 INTERFACE PCRE2_CODE_UNIT_WIDTH=8)
find_path(UTF8PROC_INCLUDE_DIR utf8proc.h REQUIRED)
find_library(UTF8PROC_LIBRARY utf8proc REQUIRED)
add_library(llmtune_utf8proc INTERFACE)
target_include_directories(llmtune_utf8proc SYSTEM INTERFACE "${UTF8PROC_INCLUDE_DIR}")
target_link_libraries(llmtune_utf8proc INTERFACE "${UTF8PROC_LIBRARY}")

if(LLMTUNE_BUILD_TESTS)
  find_package(GTest REQUIRED)
endif()

# The llmtune binary's allocator. A training step allocates and frees activations of a few MB each;
# glibc's malloc (its mmap threshold rising to 32 MB) keeps them in fragmented heaps, and a QLoRA
# step on CPU peaked 50-60% above what it held. jemalloc (Debian's libjemalloc-dev) reuses them:
# see src/cli/allocator.cpp for its settings. Never with the sanitizers, which bring their own.
set(LLMTUNE_WITH_JEMALLOC OFF)
if(NOT LLMTUNE_ALLOCATOR STREQUAL "system" AND NOT LLMTUNE_ASAN AND NOT LLMTUNE_FUZZ)
  find_library(JEMALLOC_LIBRARY jemalloc)
  if(JEMALLOC_LIBRARY)
    set(LLMTUNE_WITH_JEMALLOC ON)
    message(STATUS "llmtune: the binary allocates with jemalloc (${JEMALLOC_LIBRARY})")
  elseif(LLMTUNE_ALLOCATOR STREQUAL "jemalloc")
    message(FATAL_ERROR "LLMTUNE_ALLOCATOR=jemalloc but libjemalloc was not found: install libjemalloc-dev "
                        "(scripts/setup.sh does) or configure with -DLLMTUNE_ALLOCATOR=system")
  else()
    message(WARNING "llmtune: libjemalloc not found, the binary uses the system malloc (training on the CPU "
                    "then peaks higher); install libjemalloc-dev (scripts/setup.sh does)")
  endif()
endif()
