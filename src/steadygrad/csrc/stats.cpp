// steadygrad native kernels: the gradient monitor's reductions of one recorded step in one call
// (see steadygrad/monitor/_stats.py for the statistics and why they are batched).
//
// Each request reads its tensor once. On a CPU a recorded step's ~35 small reductions cost
// mostly their dispatch and a pass each (about 1.1 ms for the reference network against a
// 1.2 ms training step); here they are one call, and the moments accumulate in float64.
#include <ATen/ATen.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

namespace {

enum Kind : int64_t { kMoments = 0, kSaturated = 1, kDead = 2 };

// Σx and Σx² in float64, four independent partial sums each so the loop vectorises.
void moments(const float* __restrict__ x, int64_t n, double* out) {
  double s[4] = {0, 0, 0, 0}, q[4] = {0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    for (int k = 0; k < 4; ++k) {
      const double v = x[i + k];
      s[k] += v;
      q[k] += v * v;
    }
  }
  for (; i < n; ++i) {
    const double v = x[i];
    s[0] += v;
    q[0] += v * v;
  }
  out[0] = (s[0] + s[1]) + (s[2] + s[3]);
  out[1] = (q[0] + q[1]) + (q[2] + q[3]);
}

// #{i : x_i < lo or x_i > hi} (NaN counts in neither).
double saturated(const float* __restrict__ x, int64_t n, float lo, float hi) {
  int64_t count = 0;
  for (int64_t i = 0; i < n; ++i) count += (x[i] < lo) | (x[i] > hi);
  return static_cast<double>(count);
}

// Units (columns of a row-major (rows, units) matrix) whose maximum over the rows is ≤ below;
// a unit with a NaN is not dead (its maximum is NaN, as torch.amax gives).
double dead(const float* __restrict__ x, int64_t rows, int64_t units, float below) {
  std::vector<float> peak(static_cast<size_t>(units), -std::numeric_limits<float>::infinity());
  std::vector<unsigned char> nan(static_cast<size_t>(units), 0);
  float* p = peak.data();
  unsigned char* bad = nan.data();
  for (int64_t r = 0; r < rows; ++r) {
    const float* __restrict__ row = x + r * units;
    for (int64_t u = 0; u < units; ++u) {
      p[u] = row[u] > p[u] ? row[u] : p[u];
      bad[u] |= static_cast<unsigned char>(row[u] != row[u]);
    }
  }
  int64_t count = 0;
  for (int64_t u = 0; u < units; ++u) count += !bad[u] && p[u] <= below;
  return static_cast<double>(count);
}

}  // namespace

// reduce(tensors, kinds, params) -> float64 tensor of the results, in request order:
// kind 0 (moments): Σx, Σx²; kind 1 (saturated, params lo, hi): the count; kind 2 (dead, param
// below; a 2-d tensor, units along dim 1): the count. Two params per request. Tensors must be
// contiguous float32 on the CPU (the caller checks).
at::Tensor reduce(const std::vector<at::Tensor>& tensors, const std::vector<int64_t>& kinds,
                  const std::vector<double>& params) {
  TORCH_CHECK(kinds.size() == tensors.size() && params.size() == 2 * tensors.size(),
              "reduce: one kind and two params per tensor");
  int64_t size = 0;
  for (int64_t kind : kinds) size += kind == kMoments ? 2 : 1;
  at::Tensor out = at::empty({size}, at::TensorOptions().dtype(at::kDouble));
  double* o = out.data_ptr<double>();
  for (size_t k = 0; k < tensors.size(); ++k) {
    const at::Tensor& t = tensors[k];
    TORCH_CHECK(t.scalar_type() == at::kFloat && t.device().is_cpu() && t.is_contiguous(),
                "reduce: contiguous float32 CPU tensors only");
    const float* x = t.data_ptr<float>();
    const int64_t n = t.numel();
    switch (kinds[k]) {
      case kMoments:
        moments(x, n, o);
        o += 2;
        break;
      case kSaturated:
        *o++ = saturated(x, n, static_cast<float>(params[2 * k]),
                         static_cast<float>(params[2 * k + 1]));
        break;
      case kDead:
        TORCH_CHECK(t.dim() == 2, "reduce: dead units of a 2-d tensor only");
        *o++ = dead(x, t.size(0), t.size(1), static_cast<float>(params[2 * k]));
        break;
      default:
        TORCH_CHECK(false, "reduce: unknown kind ", kinds[k]);
    }
  }
  return out;
}
