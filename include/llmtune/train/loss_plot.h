// Line charts as SVG (no library): a run's loss curve (loss.svg) and whatever else plots series
// of (x, y) points. Each series is one <polyline> with a <title> naming it; axes carry ticks at
// 1/2/5 x 10^k and labels; series flagged right_axis use a second y axis on the right.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

namespace llmtune::train {

struct PlotSeries {
  std::string label;
  std::string color;  // any SVG colour
  std::vector<std::pair<double, double>> points;  // (x, y); non-finite ones are left out
  bool right_axis = false;
  bool markers = false;  // a dot on each point (for sparse series such as evaluations)
  double opacity = 1.0;
};

struct PlotAxes {
  std::string title, x_label, y_label, y2_label;
  bool integer_x = true;  // x ticks at whole numbers (steps)
};

// The chart, a standalone SVG document. A series with no finite point is left out.
std::string svg_line_chart(const PlotAxes& axes, const std::vector<PlotSeries>& series);

// The smoothing of loss.svg's "train loss (EMA 0.9)": s_t = 0.9 s_(t-1) + 0.1 x_t, divided by
// 1 - 0.9^t so that the first points are not pulled towards 0 (TensorBoard's debiased EMA).
inline constexpr double kLossEmaFactor = 0.9;

// loss.svg of a run: train loss raw and smoothed, eval loss on the left axis, learning rate on the
// right one, from metrics.jsonl records ("step" with "loss" and "lr", or with "eval_loss").
class LossPlot {
 public:
  explicit LossPlot(std::string title) : title_(std::move(title)) {}
  void add(const nlohmann::json& record);
  std::string svg() const;

 private:
  std::string title_;
  std::vector<std::pair<double, double>> loss_, lr_, eval_loss_;
};

}  // namespace llmtune::train
