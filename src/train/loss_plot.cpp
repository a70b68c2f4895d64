// SVG line charts and a run's loss curve (loss_plot.h).
#include "llmtune/train/loss_plot.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>

namespace llmtune::train {
namespace {

constexpr double kWidth = 760, kHeight = 440, kTop = 44, kBottom = 52, kLeft = 76;

std::string xml_escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      default: out += c;
    }
  }
  return out;
}

std::string num(double v, const char* format = "%.2f") {
  char buf[64];
  std::snprintf(buf, sizeof buf, format, v);
  return buf;
}

// A value range widened to whole ticks of 1, 2 or 5 x 10^k, about five of them.
struct Axis {
  double lo = 0, hi = 1, step = 1;
  std::vector<double> ticks;
};

Axis nice_axis(double lo, double hi, bool integer) {
  // A range within rounding of one value (a single step, or the EMA an ulp off its input) is
  // widened by 10%; without this the step is ~1e-16 of the values and the ticks never end.
  const double scale = std::max(std::abs(lo), std::abs(hi));
  if (!(hi - lo > 1e-9 * scale)) {
    const double pad = scale == 0 ? 1 : scale * 0.1;
    lo -= pad, hi += pad;
  }
  if (!std::isfinite(hi - lo)) return Axis{};  // values near the largest double: no scale to draw
  const double raw = (hi - lo) / 5, magnitude = std::pow(10.0, std::floor(std::log10(raw)));
  const double f = raw / magnitude;
  Axis a;
  a.step = (f < 1.5 ? 1 : f < 3.5 ? 2 : f < 7.5 ? 5 : 10) * magnitude;
  if (integer) a.step = std::max(a.step, 1.0);
  // At most about seven ticks: the range is at least 1e-9 of the values, so the indices stay exact.
  const int64_t first = static_cast<int64_t>(std::floor(lo / a.step)), last = static_cast<int64_t>(std::ceil(hi / a.step));
  a.lo = static_cast<double>(first) * a.step, a.hi = static_cast<double>(last) * a.step;
  for (int64_t k = first; k <= last; ++k) a.ticks.push_back(k == 0 ? 0.0 : static_cast<double>(k) * a.step);
  return a;
}

// The range of the finite y values (or x values) of the series on one side.
std::pair<double, double> range(const std::vector<const PlotSeries*>& series, bool x) {
  double lo = std::numeric_limits<double>::infinity(), hi = -lo;
  for (const PlotSeries* s : series)
    for (const auto& [px, py] : s->points)
      if (std::isfinite(px) && std::isfinite(py)) lo = std::min(lo, x ? px : py), hi = std::max(hi, x ? px : py);
  return {lo, hi};
}

}  // namespace

std::string svg_line_chart(const PlotAxes& axes, const std::vector<PlotSeries>& all) {
  std::vector<const PlotSeries*> series, left, right;
  for (const PlotSeries& s : all) {
    if (std::none_of(s.points.begin(), s.points.end(), [](const auto& p) { return std::isfinite(p.first) && std::isfinite(p.second); }))
      continue;
    series.push_back(&s);
    (s.right_axis ? right : left).push_back(&s);
  }
  const double right_margin = right.empty() ? 24 : kLeft;
  const double x0 = kLeft, x1 = kWidth - right_margin, y0 = kTop, y1 = kHeight - kBottom;
  auto [xlo, xhi] = range(series, true);
  auto [ylo, yhi] = range(left, false);
  auto [rlo, rhi] = range(right, false);
  const Axis ax = series.empty() ? Axis{} : nice_axis(xlo, xhi, axes.integer_x);
  const Axis ay = left.empty() ? Axis{} : nice_axis(ylo, yhi, false);
  const Axis ar = right.empty() ? Axis{} : nice_axis(rlo, rhi, false);
  auto px = [&](double x) { return x0 + (x - ax.lo) / (ax.hi - ax.lo) * (x1 - x0); };
  auto py = [&](const Axis& a, double y) { return y1 - (y - a.lo) / (a.hi - a.lo) * (y1 - y0); };

  std::string s = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n";
  s += "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" + num(kWidth, "%.0f") + "\" height=\"" + num(kHeight, "%.0f") +
       "\" viewBox=\"0 0 " + num(kWidth, "%.0f") + " " + num(kHeight, "%.0f") + "\" font-family=\"sans-serif\" font-size=\"12\">\n";
  s += "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n";
  s += "<text x=\"" + num(kWidth / 2) + "\" y=\"24\" text-anchor=\"middle\" font-size=\"15\">" + xml_escape(axes.title) + "</text>\n";
  // Frame, grid and ticks.
  s += "<g stroke=\"#888\" fill=\"none\"><rect x=\"" + num(x0) + "\" y=\"" + num(y0) + "\" width=\"" + num(x1 - x0) +
       "\" height=\"" + num(y1 - y0) + "\"/></g>\n<g font-size=\"11\" fill=\"#333\">\n";
  for (double t : ax.ticks)
    s += "<line x1=\"" + num(px(t)) + "\" y1=\"" + num(y1) + "\" x2=\"" + num(px(t)) + "\" y2=\"" + num(y1 + 5) + "\" stroke=\"#888\"/>"
         "<text x=\"" + num(px(t)) + "\" y=\"" + num(y1 + 18) + "\" text-anchor=\"middle\">" + num(t, "%.6g") + "</text>\n";
  for (double t : ay.ticks)
    s += "<line x1=\"" + num(x0 - 5) + "\" y1=\"" + num(py(ay, t)) + "\" x2=\"" + num(x1) + "\" y2=\"" + num(py(ay, t)) +
         "\" stroke=\"#ddd\"/><text x=\"" + num(x0 - 8) + "\" y=\"" + num(py(ay, t) + 4) + "\" text-anchor=\"end\">" + num(t, "%.6g") + "</text>\n";
  for (double t : ar.ticks)
    s += "<line x1=\"" + num(x1) + "\" y1=\"" + num(py(ar, t)) + "\" x2=\"" + num(x1 + 5) + "\" y2=\"" + num(py(ar, t)) +
         "\" stroke=\"#888\"/><text x=\"" + num(x1 + 8) + "\" y=\"" + num(py(ar, t) + 4) + "\">" + num(t, "%.6g") + "</text>\n";
  s += "</g>\n<text x=\"" + num((x0 + x1) / 2) + "\" y=\"" + num(kHeight - 12) + "\" text-anchor=\"middle\">" + xml_escape(axes.x_label) + "</text>\n";
  s += "<text transform=\"translate(18 " + num((y0 + y1) / 2) + ") rotate(-90)\" text-anchor=\"middle\">" + xml_escape(axes.y_label) + "</text>\n";
  if (!right.empty())
    s += "<text transform=\"translate(" + num(kWidth - 14) + " " + num((y0 + y1) / 2) + ") rotate(90)\" text-anchor=\"middle\">" +
         xml_escape(axes.y2_label) + "</text>\n";
  // One polyline per series (markers, when asked, as circles beside it).
  for (const PlotSeries* ser : series) {
    const Axis& a = ser->right_axis ? ar : ay;
    std::string points, dots;
    for (const auto& [x, y] : ser->points) {
      if (!std::isfinite(x) || !std::isfinite(y)) continue;
      const std::string cx = num(px(x)), cy = num(py(a, y));
      points += (points.empty() ? "" : " ") + cx + "," + cy;
      if (ser->markers) dots += "<circle cx=\"" + cx + "\" cy=\"" + cy + "\" r=\"2.5\" fill=\"" + xml_escape(ser->color) + "\"/>";
    }
    s += "<polyline fill=\"none\" stroke=\"" + xml_escape(ser->color) + "\" stroke-width=\"1.5\" stroke-linejoin=\"round\" stroke-linecap=\"round\"" +
         (ser->opacity < 1 ? " stroke-opacity=\"" + num(ser->opacity) + "\"" : "") + " points=\"" + points + "\"><title>" +
         xml_escape(ser->label) + "</title></polyline>\n";
    if (!dots.empty()) s += "<g>" + dots + "</g>\n";
  }
  // Legend, top right inside the frame.
  size_t longest = 0;
  for (const PlotSeries* ser : series) longest = std::max(longest, ser->label.size());
  const double lw = 36 + 7.0 * static_cast<double>(longest), lx = x1 - lw - 8;
  if (!series.empty())
    s += "<rect x=\"" + num(lx) + "\" y=\"" + num(y0 + 8) + "\" width=\"" + num(lw) + "\" height=\"" +
         num(8 + 16 * static_cast<double>(series.size())) + "\" fill=\"white\" fill-opacity=\"0.85\" stroke=\"#ccc\"/>\n";
  for (size_t i = 0; i < series.size(); ++i) {
    const double ly = y0 + 20 + 16 * static_cast<double>(i);
    s += "<line x1=\"" + num(lx + 6) + "\" y1=\"" + num(ly) + "\" x2=\"" + num(lx + 26) + "\" y2=\"" + num(ly) + "\" stroke=\"" +
         xml_escape(series[i]->color) + "\" stroke-width=\"2\"" +
         (series[i]->opacity < 1 ? " stroke-opacity=\"" + num(series[i]->opacity) + "\"" : "") + "/><text x=\"" + num(lx + 31) + "\" y=\"" + num(ly + 4) + "\">" +
         xml_escape(series[i]->label) + (series[i]->right_axis ? " (right axis)" : "") + "</text>\n";
  }
  s += "</svg>\n";
  return s;
}

void LossPlot::add(const nlohmann::json& record) {
  if (!record.contains("step") || !record["step"].is_number()) return;
  const double step = record["step"].get<double>();
  auto take = [&](const char* key, std::vector<std::pair<double, double>>& to) {
    if (record.contains(key) && record[key].is_number()) to.emplace_back(step, record[key].get<double>());
  };
  take("loss", loss_);
  take("lr", lr_);
  take("eval_loss", eval_loss_);
}

std::string LossPlot::svg() const {
  std::vector<std::pair<double, double>> smoothed;
  double ema = 0, weight = 0;
  for (const auto& [step, loss] : loss_) {
    if (!std::isfinite(loss)) continue;
    ema = kLossEmaFactor * ema + (1 - kLossEmaFactor) * loss;
    weight = kLossEmaFactor * weight + (1 - kLossEmaFactor);  // 1 - factor^t
    smoothed.emplace_back(step, ema / weight);
  }
  char ema_label[48];
  std::snprintf(ema_label, sizeof ema_label, "train loss (EMA %g)", kLossEmaFactor);
  return svg_line_chart({title_, "step", "loss", "learning rate"},
                        {{"train loss", "#1f77b4", loss_, false, false, 0.35},
                         {ema_label, "#1f77b4", smoothed},
                         {"eval loss", "#d62728", eval_loss_, false, true},
                         {"learning rate", "#2ca02c", lr_, true, false, 0.8}});
}

}  // namespace llmtune::train
