// Statistics over repeated runs (seeds), for `mole compare`: the mean of a metric with its 95% confidence
// interval from Student's t distribution (n - 1 degrees of freedom), and the same for paired differences (each
// seed's value of a configuration minus the baseline's value on the same seed). Pairing by seed removes what the
// seed moves in both runs alike (the data order, here the same for every configuration of one seed), so a paired
// interval is narrower than the difference of two unpaired ones when the runs of one seed go up and down
// together. The interval assumes the seeds' values are a sample from a normal distribution; with 2-5 seeds it is
// wide, which is the honest answer.
#pragma once

#include <cstdint>
#include <vector>

namespace mole {

// The two-sided 95% quantile of Student's t with df degrees of freedom (12.706 for 1, 1.96 in the limit), from
// the t distribution's CDF (the regularised incomplete beta function) by bisection, to ~1e-10. df >= 1.
double student_t_quantile_975(int64_t df);

// A mean over n values and its 95% interval mean -/+ t(0.975, n-1) * sd / sqrt(n), sd the sample standard
// deviation (n - 1 in the denominator). With one value lo = hi = NaN (no interval); with none mean is NaN too.
// NaN values are left out (a run that did not report the metric).
struct MeanInterval {
  int64_t n = 0;
  double mean = 0.0, sd = 0.0, lo = 0.0, hi = 0.0;
  double half_width() const { return (hi - lo) / 2.0; }
  bool has_interval() const { return n >= 2; }
  bool excludes_zero() const { return has_interval() && (lo > 0.0 || hi < 0.0); }
};
MeanInterval mean_interval(const std::vector<double>& values);

// The mean of a[i] - b[i] over the indices where both are finite, with its interval (a paired t interval).
// a and b must have the same length (throws std::invalid_argument otherwise).
MeanInterval paired_difference(const std::vector<double>& a, const std::vector<double>& b);

}  // namespace mole
