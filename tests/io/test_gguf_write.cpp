// GgufWriter's contract: declarations checked up front, tensors streamed in order, the declared
// layout on disk, and nothing left behind when it is destroyed uncommitted or a write fails.
#include <gtest/gtest.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <csignal>

#include "io/gguf_test_util.h"
#include "io/io_test_util.h"
#include "llmtune/io/gguf.h"
#include "llmtune/util/error.h"

namespace llmtune::io {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using llmtune::testing::expect_io_error;
using llmtune::testing::random_bytes;
using llmtune::testing::read_bytes;
using llmtune::testing::TempDir;
using VT = GgufValueType;

// The directory holds nothing (no target file, no temporary file) but `keep`.
void expect_empty_dir_except(const fs::path& dir, const std::string& keep) {
  for (const auto& entry : fs::directory_iterator(dir))
    if (entry.path().filename() != keep) ADD_FAILURE() << "left behind: " << entry.path();
}
void expect_empty_dir(const fs::path& dir) { expect_empty_dir_except(dir, ""); }

TEST(GgufWrite, DestroyedWithoutCommitLeavesNothing) {
  TempDir dir;
  const std::string bytes = random_bytes(64, 1);
  {
    GgufWriter w(dir / "a.gguf");
    w.add_tensor_info("t", {16}, GgmlType::F32);
    w.add_tensor_info("u", {16}, GgmlType::F32);
    w.write_tensor(bytes.data(), bytes.size());  // header and one tensor are out
  }
  { GgufWriter w(dir / "b.gguf"); }
  expect_empty_dir(dir.path());
}

TEST(GgufWrite, WrongSizesOrderAndMissingTensorsAreRefused) {
  TempDir dir;
  const auto path = dir / "w.gguf";
  const std::string big = random_bytes(256, 1), small = random_bytes(16, 2);
  {
    GgufWriter w(path);
    w.add_tensor_info("big", {64}, GgmlType::F32);
    w.add_tensor_info("small", {4}, GgmlType::F32);
    // Out of order: the small tensor's bytes where the big one is due.
    expect_io_error(path, "tensor \"big\" (F32) needs 256 bytes, got 16", [&] { w.write_tensor(small.data(), small.size()); });
    w.write_tensor(big.data(), big.size());
    expect_io_error(path, "1 of 2 declared tensors unwritten, the first \"small\"", [&] { w.commit(); });
    expect_io_error(path, "added after the tensor data began", [&] { w.add_u32("late", 1); });
    expect_io_error(path, "declared after the tensor data began", [&] { w.add_tensor_info("late", {4}, GgmlType::F32); });
    w.write_tensor(small.data(), small.size());
    expect_io_error(path, "more often than tensors were declared", [&] { w.write_tensor(small.data(), small.size()); });
  }
  expect_empty_dir(dir.path());
}

TEST(GgufWrite, BadDeclarationsAreRefused) {
  TempDir dir;
  const auto path = dir / "d.gguf";
  expect_io_error(path, "alignment 48 is not a power of two", [&] { GgufWriter(path, 48); });
  expect_io_error(path, "alignment 0 is not a power of two", [&] { GgufWriter(path, 0); });
  GgufWriter w(path);
  w.add_u32("k", 1);
  expect_io_error(path, "duplicate metadata key \"k\"", [&] { w.add_u32("k", 2); });
  expect_io_error(path, "300 is not a valid UINT8 value", [&] { w.add("u8", {VT::UINT8, VT::UINT32, 300}); });
  expect_io_error(path, "-1 is not a valid UINT64 value", [&] { w.add("u64", {VT::UINT64, VT::UINT32, -1}); });
  expect_io_error(path, "\"x\" is not a valid INT32 value", [&] { w.add("i32", {VT::INT32, VT::UINT32, "x"}); });
  expect_io_error(path, "1.5 is not a valid INT32 value", [&] { w.add("i32", {VT::INT32, VT::UINT32, 1.5}); });
  expect_io_error(path, "is not a valid BOOL value", [&] { w.add("b", {VT::BOOL, VT::UINT32, 1}); });
  expect_io_error(path, "is not a valid STRING value", [&] { w.add("a", {VT::ARRAY, VT::STRING, {"x", 2}}); });
  expect_io_error(path, "array of arrays", [&] { w.add("n", {VT::ARRAY, VT::ARRAY, {{1}}}); });
  expect_io_error(path, "value type id 13", [&] { w.add("t", {static_cast<VT>(13), VT::UINT32, 1}); });
  expect_io_error(path, "disagrees with the writer's alignment 32", [&] { w.add_u32("general.alignment", 64); });
  w.add_u32("general.alignment", 32);  // agrees: kept
  expect_io_error(path, "name of 64 bytes", [&] { w.add_tensor_info(std::string(64, 'n'), {4}, GgmlType::F32); });
  expect_io_error(path, "name of 0 bytes", [&] { w.add_tensor_info("", {4}, GgmlType::F32); });
  expect_io_error(path, "5 dimensions", [&] { w.add_tensor_info("t", {1, 1, 1, 1, 1}, GgmlType::F32); });
  expect_io_error(path, "0 dimensions", [&] { w.add_tensor_info("t", {}, GgmlType::F32); });
  expect_io_error(path, "ne[1] = -2", [&] { w.add_tensor_info("t", {4, -2}, GgmlType::F32); });
  expect_io_error(path, "ne[0] = 48, not a multiple of the block size 32", [&] { w.add_tensor_info("t", {48, 2}, GgmlType::Q8_0); });
  expect_io_error(path, "element count overflows", [&] { w.add_tensor_info("t", {1ll << 40, 1ll << 40}, GgmlType::F32); });
  w.add_tensor_info("t", {4}, GgmlType::F32);
  expect_io_error(path, "duplicate tensor name \"t\"", [&] { w.add_tensor_info("t", {4}, GgmlType::F32); });
}

TEST(GgufWrite, CommittedFileHasTheDeclaredLayout) {
  TempDir dir;
  const auto path = dir / "c.gguf";
  const std::string a = random_bytes(12, 1), b = random_bytes(34, 2);
  GgufWriter w(path, 64);
  w.add_u32("general.alignment", 64);  // the constructor wrote it already: no duplicate
  w.add_tensor_info("a", {3}, GgmlType::F32);
  w.add_tensor_info("b", {32}, GgmlType::Q8_0);
  w.write_tensor(a.data(), a.size());
  w.write_tensor(b.data(), b.size());
  w.commit();
  expect_io_error(path, "closed writer", [&] { w.commit(); });
  EXPECT_EQ(w.bytes_written(), fs::file_size(path));
  const auto file = GgufFile::open(path);
  ASSERT_EQ(file->metadata().size(), 1u);
  EXPECT_EQ(file->get_int("general.alignment"), 64);
  EXPECT_EQ(file->alignment(), 64u);
  EXPECT_EQ(file->tensors()[0].offset, 0u);
  EXPECT_EQ(file->tensors()[1].offset, 64u);
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(file->data(file->tensors()[1])), 34), b);
  EXPECT_EQ(fs::file_size(path) % 64, 0u);
  // Padding is zeros.
  const std::string bytes = read_bytes(path);
  const size_t end_of_a = fs::file_size(path) - 128 + 12;
  EXPECT_EQ(bytes.substr(end_of_a, 52), std::string(52, '\0'));
  expect_empty_dir_except(dir.path(), "c.gguf");
}

// A write that fails half-way (file size limit: the kernel refuses to grow the file, like a full
// disk) leaves neither the target nor a temporary file. Runs in a child: the limit is per process.
TEST(GgufWrite, FailedWriteLeavesNothing) {
  TempDir dir;
  const auto path = dir / "big.gguf";
  const std::string data(1 << 20, '\x5a');
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    ::signal(SIGXFSZ, SIG_IGN);  // write() then fails with EFBIG instead of killing the process
    rlimit limit{64 * 1024, 64 * 1024};
    if (::setrlimit(RLIMIT_FSIZE, &limit) != 0) ::_exit(3);
    int code = 4;
    try {
      GgufWriter w(path);
      w.add_string("general.architecture", "llama");
      w.add_tensor_info("big", {1 << 18}, GgmlType::F32);
      w.write_tensor(data.data(), data.size());
      w.commit();
      code = 1;  // the limit did not bite
    } catch (const IoError& e) {
      code = std::string(e.what()).rfind(path.string() + ": ", 0) == 0 ? 0 : 2;
    } catch (...) {
      code = 5;
    }
    ::_exit(code);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status)) << "child died with signal " << (WIFSIGNALED(status) ? WTERMSIG(status) : 0);
  EXPECT_EQ(WEXITSTATUS(status), 0) << "1: no error, 2: message does not name the file, 3: setrlimit, 4/5: other";
  expect_empty_dir(dir.path());
}

}  // namespace
}  // namespace llmtune::io
