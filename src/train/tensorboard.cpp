// TensorBoard event files: TFRecord framing and the few protobuf fields of Event / Summary / Value
// that scalars need, encoded by hand (tensorboard.h).
// Event: wall_time = 1 (double), step = 2 (int64), file_version = 3 (string), summary = 5.
// Summary: value = 1 (repeated Value). Value: tag = 1 (string), simple_value = 2 (float).
#include "llmtune/train/tensorboard.h"

#include <unistd.h>

#include <algorithm>
#include <array>
#include <bit>
#include <chrono>
#include <cstring>
#include <optional>

#include "llmtune/io/atomic_file.h"
#include "llmtune/io/read_file.h"
#include "llmtune/util/error.h"

namespace llmtune::train {
namespace fs = std::filesystem;
namespace {

static_assert(std::endian::native == std::endian::little, "event files are little-endian; add byte swaps for this host");

constexpr std::string_view kPrefix = "events.out.tfevents.";

// TFRecord stores CRCs "masked" so that a CRC of data that itself holds CRCs stays well mixed.
uint32_t masked_crc(std::string_view data) {
  const uint32_t crc = crc32c(data);
  return ((crc >> 15) | (crc << 17)) + 0xa282ead8u;
}

template <typename T>
void put_fixed(std::string& out, T v) {
  char bytes[sizeof v];
  std::memcpy(bytes, &v, sizeof v);
  out.append(bytes, sizeof v);
}

void put_varint(std::string& out, uint64_t v) {
  for (; v >= 0x80; v >>= 7) out.push_back(static_cast<char>((v & 0x7f) | 0x80));
  out.push_back(static_cast<char>(v));
}

// A length-delimited field (wire type 2).
void put_bytes(std::string& out, int field, std::string_view bytes) {
  put_varint(out, static_cast<uint64_t>(field) << 3 | 2);
  put_varint(out, bytes.size());
  out.append(bytes);
}

std::string event_header(int64_t step) {
  std::string e;
  e.push_back(1 << 3 | 1);  // wall_time, 64-bit
  put_fixed(e, std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count());
  e.push_back(2 << 3 | 0);  // step, varint
  put_varint(e, static_cast<uint64_t>(step));
  return e;
}

// Reads one protobuf message: a key varint (field << 3 | wire type), then field() for its value;
// `ok` turns false on a cut or malformed message.
struct Reader {
  std::string_view in;
  bool ok = true;

  std::optional<uint64_t> varint() {
    uint64_t v = 0;
    for (int shift = 0; shift < 64 && !in.empty(); shift += 7) {
      const auto b = static_cast<uint8_t>(in.front());
      in.remove_prefix(1);
      v |= static_cast<uint64_t>(b & 0x7f) << shift;
      if (!(b & 0x80)) return v;
    }
    ok = false;
    return std::nullopt;
  }
  std::string_view take(uint64_t n) {
    if (n > in.size()) {
      ok = false;
      return {};
    }
    std::string_view v = in.substr(0, n);
    in.remove_prefix(n);
    return v;
  }
  // The value of a field of `wire` type: a varint into *as_varint, fixed and length-delimited ones as bytes.
  std::string_view field(int wire, uint64_t* as_varint = nullptr) {
    switch (wire) {
      case 0: {
        auto v = varint();
        if (v && as_varint) *as_varint = *v;
        return {};
      }
      case 1: return take(8);
      case 2: {
        auto n = varint();
        return n ? take(*n) : std::string_view{};
      }
      case 5: return take(4);
      default: ok = false; return {};
    }
  }
};

// One TFRecord frame around `data`.
std::string frame(std::string_view data) {
  std::string record;
  put_fixed(record, static_cast<uint64_t>(data.size()));
  put_fixed(record, masked_crc(record));
  record += data;
  put_fixed(record, masked_crc(data));
  return record;
}

// The framed records of a file's bytes, up to the end or the first one that is cut or fails its CRC.
std::vector<std::string_view> read_records(std::string_view in) {
  std::vector<std::string_view> records;
  while (in.size() >= 12) {
    uint64_t n;
    uint32_t crc;
    std::memcpy(&n, in.data(), 8);
    std::memcpy(&crc, in.data() + 8, 4);
    if (crc != masked_crc(in.substr(0, 8)) || n > in.size() - 12 || in.size() - 12 - n < 4) break;
    const std::string_view data = in.substr(12, n);
    std::memcpy(&crc, in.data() + 12 + n, 4);
    if (crc != masked_crc(data)) break;
    records.push_back(data);
    in.remove_prefix(12 + n + 4);
  }
  return records;
}

std::optional<ScalarEvent> decode_event(std::string_view bytes) {
  ScalarEvent e;
  Reader event{bytes};
  while (event.ok && !event.in.empty()) {
    const auto key = event.varint();
    if (!key) break;
    uint64_t step = 0;
    const std::string_view v = event.field(static_cast<int>(*key & 7), &step);
    if (*key == (2 << 3 | 0)) e.step = static_cast<int64_t>(step);
    if (*key != (5 << 3 | 2)) continue;
    for (Reader summary{v}; summary.ok && !summary.in.empty();) {
      const auto skey = summary.varint();
      if (!skey) break;
      const std::string_view value = summary.field(static_cast<int>(*skey & 7));
      if (*skey != (1 << 3 | 2)) continue;
      std::pair<std::string, float> scalar{"", 0.0f};
      for (Reader r{value}; r.ok && !r.in.empty();) {
        const auto vkey = r.varint();
        if (!vkey) break;
        const std::string_view field = r.field(static_cast<int>(*vkey & 7));
        if (*vkey == (1 << 3 | 2)) scalar.first = std::string(field);
        if (*vkey == (2 << 3 | 5) && field.size() == 4) std::memcpy(&scalar.second, field.data(), 4);
      }
      e.scalars.push_back(std::move(scalar));
    }
  }
  if (!event.ok) return std::nullopt;
  return e;
}

std::vector<fs::path> event_files(const fs::path& dir) {
  std::vector<fs::path> files;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return files;
  for (const auto& entry : fs::directory_iterator(dir))
    if (entry.is_regular_file() && entry.path().filename().string().starts_with(kPrefix)) files.push_back(entry.path());
  std::sort(files.begin(), files.end());
  return files;
}

}  // namespace

uint32_t crc32c(std::string_view data) {
  static const std::array<uint32_t, 256> table = [] {
    std::array<uint32_t, 256> t{};
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ 0x82f63b78u : c >> 1;  // reflected Castagnoli polynomial
      t[i] = c;
    }
    return t;
  }();
  uint32_t crc = 0xffffffffu;
  for (char ch : data) crc = table[(crc ^ static_cast<uint8_t>(ch)) & 0xff] ^ (crc >> 8);
  return crc ^ 0xffffffffu;
}

EventWriter::EventWriter(const fs::path& dir) {
  fs::create_directories(dir);
  // Seconds in the name as TensorFlow writes them, but past every existing file's (a resume within
  // the same second would otherwise sort by pid).
  int64_t seconds = std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
  for (const fs::path& f : event_files(dir)) {
    const std::string rest = f.filename().string().substr(kPrefix.size());
    try {
      seconds = std::max<int64_t>(seconds, std::stoll(rest.substr(0, rest.find('.'))) + 1);
    } catch (const std::exception&) {
    }
  }
  char host[256] = "localhost";
  if (::gethostname(host, sizeof host - 1) != 0) std::strcpy(host, "localhost");
  char name[64];
  std::snprintf(name, sizeof name, "%010lld", static_cast<long long>(seconds));
  path_ = dir / (std::string(kPrefix) + name + "." + host + "." + std::to_string(::getpid()));
  out_.open(path_, std::ios::binary | std::ios::trunc);
  if (!out_) throw IoError(path_.string() + ": cannot write the TensorBoard events file");
  std::string e = event_header(0);
  put_bytes(e, 3, "brain.Event:2");
  write_record(e);
}

void EventWriter::write(int64_t step, const Scalars& scalars) {
  std::string summary;
  for (const auto& [tag, value] : scalars) {
    std::string v;
    put_bytes(v, 1, tag);
    v.push_back(2 << 3 | 5);  // simple_value, 32-bit
    put_fixed(v, value);
    put_bytes(summary, 1, v);
  }
  std::string e = event_header(step);
  put_bytes(e, 5, summary);
  write_record(e);
}

void EventWriter::write_record(const std::string& event) {
  const std::string record = frame(event);
  out_.write(record.data(), static_cast<std::streamsize>(record.size()));
  out_.flush();
  if (!out_) throw IoError(path_.string() + ": cannot write the TensorBoard events file (disk full?)");
}

std::vector<ScalarEvent> read_event_file(const fs::path& path) {
  const std::string bytes = io::read_text_file(path, "TensorBoard events file");
  std::vector<ScalarEvent> events;
  for (std::string_view r : read_records(bytes)) {
    auto e = decode_event(r);
    if (!e) break;
    events.push_back(std::move(*e));
  }
  return events;
}

void filter_event_files(const fs::path& dir, const std::function<bool(const ScalarEvent&)>& drop) {
  for (const fs::path& f : event_files(dir)) {
    const std::string bytes = io::read_text_file(f, "TensorBoard events file");
    std::string kept;
    size_t n_summaries = 0;
    for (std::string_view r : read_records(bytes)) {
      const auto e = decode_event(r);
      if (!e) break;
      if (!e->scalars.empty() && drop(*e)) continue;
      n_summaries += !e->scalars.empty();
      kept += frame(r);
    }
    if (n_summaries == 0) fs::remove(f);
    else if (kept != bytes) io::write_file_atomic(f, kept);
  }
}

}  // namespace llmtune::train
