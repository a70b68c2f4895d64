# ccache for C++ and CUDA when installed. The sloppiness settings let it cache precompiled headers;
# BASEDIR and NOHASHDIR let a fresh clone in another directory (CI) reuse the cache.
find_program(LLMTUNE_CCACHE ccache)
if(LLMTUNE_CCACHE)
  set(_launcher "${CMAKE_COMMAND};-E;env;CCACHE_SLOPPINESS=pch_defines,time_macros,include_file_mtime,include_file_ctime;CCACHE_BASEDIR=${CMAKE_SOURCE_DIR};CCACHE_NOHASHDIR=1;${LLMTUNE_CCACHE}")
  set(CMAKE_CXX_COMPILER_LAUNCHER "${_launcher}")
  set(CMAKE_CUDA_COMPILER_LAUNCHER "${_launcher}")
  message(STATUS "llmtune: ccache ${LLMTUNE_CCACHE}")
endif()
