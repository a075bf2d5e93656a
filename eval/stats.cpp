#include "eval/stats.h"

#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>

namespace mole {

namespace {

// The continued fraction of the regularised incomplete beta function I_x(a, b) (the modified Lentz method, as
// in Numerical Recipes' betacf), valid for x < (a + 1) / (a + b + 2).
double beta_continued_fraction(double a, double b, double x) {
  const double tiny = 1e-300, eps = 1e-15;
  double c = 1.0, d = 1.0 - (a + b) * x / (a + 1.0);
  if (std::fabs(d) < tiny) d = tiny;
  d = 1.0 / d;
  double h = d;
  for (int m = 1; m <= 500; ++m) {
    const double m2 = 2.0 * m;
    double num = m * (b - m) * x / ((a + m2 - 1.0) * (a + m2));  // even step
    d = 1.0 + num * d, c = 1.0 + num / c;
    if (std::fabs(d) < tiny) d = tiny;
    if (std::fabs(c) < tiny) c = tiny;
    d = 1.0 / d, h *= d * c;
    num = -(a + m) * (a + b + m) * x / ((a + m2) * (a + m2 + 1.0));  // odd step
    d = 1.0 + num * d, c = 1.0 + num / c;
    if (std::fabs(d) < tiny) d = tiny;
    if (std::fabs(c) < tiny) c = tiny;
    d = 1.0 / d;
    const double delta = d * c;
    h *= delta;
    if (std::fabs(delta - 1.0) < eps) break;
  }
  return h;
}

double regularised_incomplete_beta(double a, double b, double x) {
  if (x <= 0.0) return 0.0;
  if (x >= 1.0) return 1.0;
  const double front =
      std::exp(std::lgamma(a + b) - std::lgamma(a) - std::lgamma(b) + a * std::log(x) + b * std::log1p(-x));
  if (x < (a + 1.0) / (a + b + 2.0)) return front * beta_continued_fraction(a, b, x) / a;
  return 1.0 - front * beta_continued_fraction(b, a, 1.0 - x) / b;  // the symmetry I_x(a,b) = 1 - I_{1-x}(b,a)
}

// P(T <= t) for t >= 0 under Student's t with df degrees of freedom.
double student_t_cdf(double t, double df) {
  const double tail = 0.5 * regularised_incomplete_beta(df / 2.0, 0.5, df / (df + t * t));  // P(T > t)
  return 1.0 - tail;
}

}  // namespace

double student_t_quantile_975(int64_t df) {
  if (df < 1) throw std::invalid_argument("student_t_quantile_975: df must be >= 1, got " + std::to_string(df));
  double lo = 0.0, hi = 20.0;  // t(0.975, 1) = 12.706
  for (int i = 0; i < 200 && hi - lo > 1e-12; ++i) {
    const double mid = 0.5 * (lo + hi);
    (student_t_cdf(mid, double(df)) < 0.975 ? lo : hi) = mid;
  }
  return 0.5 * (lo + hi);
}

MeanInterval mean_interval(const std::vector<double>& values) {
  MeanInterval r;
  double sum = 0.0;
  for (double v : values)
    if (std::isfinite(v)) sum += v, ++r.n;
  const double nan = std::numeric_limits<double>::quiet_NaN();
  if (r.n == 0) {
    r.mean = r.sd = r.lo = r.hi = nan;
    return r;
  }
  r.mean = sum / double(r.n);
  if (r.n == 1) {
    r.sd = r.lo = r.hi = nan;
    return r;
  }
  double squares = 0.0;
  for (double v : values)
    if (std::isfinite(v)) squares += (v - r.mean) * (v - r.mean);
  r.sd = std::sqrt(squares / double(r.n - 1));
  const double half = student_t_quantile_975(r.n - 1) * r.sd / std::sqrt(double(r.n));
  r.lo = r.mean - half, r.hi = r.mean + half;
  return r;
}

MeanInterval paired_difference(const std::vector<double>& a, const std::vector<double>& b) {
  if (a.size() != b.size())
    throw std::invalid_argument("paired_difference: " + std::to_string(a.size()) + " values against " +
                                std::to_string(b.size()));
  std::vector<double> d;
  for (size_t i = 0; i < a.size(); ++i)
    if (std::isfinite(a[i]) && std::isfinite(b[i])) d.push_back(a[i] - b[i]);
  return mean_interval(d);
}

}  // namespace mole
