// TensorBoard event files and the SVG chart, below the CLI: CRC-32C's check value, records read
// back, a torn tail and resume's filtering; chart coordinates stay finite for degenerate series.
// (tests/cli/test_tracking.py reads the files with tensorboard itself.)
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>

#include "io/io_test_util.h"
#include "llmtune/train/loss_plot.h"
#include "llmtune/train/tensorboard.h"

namespace llmtune::train {
namespace {

TEST(TensorBoard, Crc32cCheckValue) {
  EXPECT_EQ(crc32c("123456789"), 0xe3069283u);  // the CRC-32C catalogue's check value
  EXPECT_EQ(crc32c(""), 0u);
}

TEST(TensorBoard, RecordsReadBackAndResumeFiltersThem) {
  testing::TempDir dir;
  std::filesystem::path first;
  {
    EventWriter w(dir.path());
    first = w.path();
    for (int64_t step = 1; step <= 4; ++step) w.write(step, {{"loss", 1.0f / static_cast<float>(step)}, {"lr", 0.5f}});
    w.write(4, {{"eval_loss", 2.5f}});
  }
  auto events = read_event_file(first);
  ASSERT_EQ(events.size(), 6u);  // the file version, then the summaries
  EXPECT_TRUE(events[0].scalars.empty());
  EXPECT_EQ(events[3].step, 3);
  EXPECT_EQ(events[3].scalars, (Scalars{{"loss", 1.0f / 3}, {"lr", 0.5f}}));

  // A torn last record is dropped by the reader and by the rewrite.
  std::ofstream(first, std::ios::app).write("\x10\x00\x00\x00\x00", 5);
  EXPECT_EQ(read_event_file(first).size(), 6u);
  filter_event_files(dir.path(), [](const ScalarEvent& e) { return e.step > 2; });
  events = read_event_file(first);
  ASSERT_EQ(events.size(), 3u);
  EXPECT_EQ(events.back().step, 2);

  // A later writer's file sorts after the first; a file with no summary left is removed.
  EventWriter second(dir.path());
  EXPECT_GT(second.path().filename(), first.filename());
  second.write(3, {{"loss", 0.25f}});
  filter_event_files(dir.path(), [](const ScalarEvent& e) { return e.step < 3; });
  EXPECT_FALSE(std::filesystem::exists(first));
  EXPECT_EQ(read_event_file(second.path()).size(), 2u);
}

TEST(LossPlot, DegenerateSeriesGiveFiniteCoordinates) {
  LossPlot plot("a & <b>");
  plot.add({{"step", 1}, {"loss", 2.0}, {"lr", 0.0}});
  const std::string svg = plot.svg();
  EXPECT_EQ(svg.find("nan"), std::string::npos);
  EXPECT_EQ(svg.find("inf"), std::string::npos);
  EXPECT_NE(svg.find("a &amp; &lt;b&gt;"), std::string::npos);
  size_t polylines = 0;
  for (size_t at = svg.find("<polyline"); at != std::string::npos; at = svg.find("<polyline", at + 1)) ++polylines;
  EXPECT_EQ(polylines, 3u);  // train loss, its EMA, lr: no eval loss without evaluations
}

// One step of a real run: its EMA, divided by 1 - 0.9, lands an ulp above the loss. The tick loop
// once stepped by ~1e-16 of the values from index ~1e16 (where k + 1 == k) until memory ran out.
TEST(LossPlot, ValuesAnUlpApartGiveAFewTicks) {
  LossPlot plot("run");
  plot.add({{"step", 1}, {"loss", 10.941129684448242}, {"lr", 0.0002}});
  const std::string svg = plot.svg();
  EXPECT_LT(svg.size(), 16000u);
  EXPECT_EQ(svg.find("nan"), std::string::npos);
  const std::string far = svg_line_chart({"t", "x", "y", "y2"}, {{"a", "#000", {{1, 1.0}, {2, std::nextafter(1.0, 2.0)}}},
                                                                  {"b", "#000", {{1, 1e308}, {2, -1e308}}, true}});
  EXPECT_LT(far.size(), 16000u);
}

}  // namespace
}  // namespace llmtune::train
