// TensorBoard event files (tb/events.out.tfevents.*): scalar summaries written one record at a
// time and flushed, so a file cut by kill -9 is still read up to its last whole record.
// Format: TFRecord framing (little-endian uint64 length, masked CRC32C of the length, the bytes,
// masked CRC32C of the bytes) around protobuf `Event` messages, first one carrying "brain.Event:2".
#pragma once

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace llmtune::train {

// CRC-32C (Castagnoli), as TFRecord frames use it.
uint32_t crc32c(std::string_view data);

// A scalar summary: tag and value (TensorBoard keeps float32).
using Scalars = std::vector<std::pair<std::string, float>>;

class EventWriter {
 public:
  // Creates `dir` and a new events file in it, named (events.out.tfevents.<seconds>.<host>.<pid>)
  // to sort after every events file already there: TensorBoard reads a directory's files in name order.
  explicit EventWriter(const std::filesystem::path& dir);
  // One Event at `step` holding every scalar, written in one piece and flushed.
  void write(int64_t step, const Scalars& scalars);
  const std::filesystem::path& path() const { return path_; }

 private:
  void write_record(const std::string& event);
  std::filesystem::path path_;
  std::ofstream out_;
};

// What filter_event_files reads of an Event with a summary: its step and its scalars.
struct ScalarEvent {
  int64_t step = 0;
  Scalars scalars;
};

// Reads the records of an events file up to its end or its first torn or corrupt record (the
// tail a kill -9 can leave); non-summary events (the file version) are returned with no scalars.
std::vector<ScalarEvent> read_event_file(const std::filesystem::path& path);

// Rewrites (atomically) every events file in `dir` without the summary events for which
// drop(event) is true, and without a torn tail; a file left with nothing to keep is removed.
// Resume uses it so that the steps a run redoes appear once, as in metrics.jsonl.
void filter_event_files(const std::filesystem::path& dir, const std::function<bool(const ScalarEvent&)>& drop);

}  // namespace llmtune::train
