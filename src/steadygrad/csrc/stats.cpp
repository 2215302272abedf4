// steadygrad native kernels: the gradient monitor's reductions of one recorded step in one call
// (see steadygrad/monitor/_stats.py for the statistics and why they are batched).
//
// Each request reads its tensor once. On a CPU a recorded step's ~35 small reductions cost
// mostly their dispatch and a pass each (about 1.1 ms for the reference network against a
// 1.2 ms training step); here they are one call, and the moments accumulate in float64.
#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

namespace {

enum Kind : int64_t { kMoments = 0, kSaturated = 1, kDead = 2 };

// Σx and Σx²: float32 partial sums over blocks of 512 entries in 2 × 8 lanes, each block's sums
// added into float64 — the rounding error of a 512-term float32 sum, not of an n-term one.
// GCC's vector extension (not intrinsics: any x86 or ARM target) because its auto-vectoriser
// turned the 16-lane array version into shuffles, 10× slower.
constexpr int64_t kBlock = 512;
typedef float v8f __attribute__((vector_size(32)));

inline v8f load8(const float* p) {
  v8f v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline double hsum(v8f v) {
  double t = 0.0;
  for (int k = 0; k < 8; ++k) t += v[k];
  return t;
}

void moments(const float* __restrict__ x, int64_t n, double* out) {
  double s = 0.0, q = 0.0;
  for (int64_t start = 0; start < n; start += kBlock) {
    const int64_t stop = std::min(n, start + kBlock);
    v8f s0 = {}, s1 = {}, q0 = {}, q1 = {};
    int64_t i = start;
    for (; i + 16 <= stop; i += 16) {
      const v8f a = load8(x + i), b = load8(x + i + 8);
      s0 += a;
      s1 += b;
      q0 += a * a;
      q1 += b * b;
    }
    float ts = 0.0f, tq = 0.0f;
    for (; i < stop; ++i) {
      ts += x[i];
      tq += x[i] * x[i];
    }
    s += hsum(s0 + s1) + ts;
    q += hsum(q0 + q1) + tq;
  }
  out[0] = s;
  out[1] = q;
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

// (mean, std, norm) of n entries from s = Σx and q = Σx², as steadygrad/monitor/_stats.py's
// from_sums: s/n, sqrt(max(q/n − mean², 0)), sqrt(max(q, 0)). ok becomes false where the sums do
// not give the moments (sufficient(): not finite, or var < cancellation · mean²).
inline void finish(double s, double q, double n, double cancellation, double* out, bool& ok) {
  const double mean = s / n;
  const double var = q / n - mean * mean;
  ok = ok && std::isfinite(s) && std::isfinite(q) && var >= cancellation * mean * mean;
  out[0] = mean;
  out[1] = std::sqrt(std::max(var, 0.0));
  out[2] = std::sqrt(std::max(q, 0.0));
}

// record_stats(tensors, kinds, params, sums, rows, numels, cancellation) -> float64 tensor, the
// numbers of one recorded step's layers in one call (steadygrad/monitor/_watch.py,
// Monitor._finalize_kept), in order:
//   per request (as reduce): kind 0 → mean, std, norm; kind 1 → the saturated fraction
//   (count / numel); kind 2 → the dead fraction (count / units);
//   per row r = rows[j] of sums (an optimizer update's (Σθ, Σθ², Σg, Σg², ·) rows, float64,
//   csrc/update.cpp), for numels[j] entries: mean, std, norm of θ, then of g;
//   last: 1 if every moment was finite and without cancellation, else 0 (the caller then
//   recomputes; see finish).
at::Tensor record_stats(const std::vector<at::Tensor>& tensors, const std::vector<int64_t>& kinds,
                        const std::vector<double>& params, const at::Tensor& sums,
                        const std::vector<int64_t>& rows, const std::vector<int64_t>& numels,
                        double cancellation) {
  TORCH_CHECK(rows.size() == numels.size(), "record_stats: one numel per row");
  TORCH_CHECK(sums.scalar_type() == at::kDouble && sums.device().is_cpu() &&
                  sums.is_contiguous() && sums.dim() == 2 && sums.size(1) == 5,
              "record_stats: sums must be a contiguous (n, 5) float64 CPU tensor");
  const at::Tensor raw = reduce(tensors, kinds, params);
  const double* r = raw.data_ptr<double>();
  int64_t size = 1 + 6 * static_cast<int64_t>(rows.size());
  for (int64_t kind : kinds) size += kind == kMoments ? 3 : 1;
  at::Tensor out = at::empty({size}, at::TensorOptions().dtype(at::kDouble));
  double* o = out.data_ptr<double>();
  bool ok = true;
  for (size_t k = 0; k < tensors.size(); ++k) {
    const at::Tensor& t = tensors[k];
    switch (kinds[k]) {
      case kMoments:
        finish(r[0], r[1], static_cast<double>(t.numel()), cancellation, o, ok);
        r += 2;
        o += 3;
        break;
      case kSaturated:
        *o++ = *r++ / static_cast<double>(t.numel());
        break;
      default:  // kDead (reduce checked the kinds)
        *o++ = *r++ / static_cast<double>(t.size(1));
    }
  }
  const double* table = sums.data_ptr<double>();
  for (size_t j = 0; j < rows.size(); ++j) {
    TORCH_CHECK(rows[j] >= 0 && rows[j] < sums.size(0), "record_stats: row out of range");
    const double* row = table + 5 * rows[j];
    const double n = static_cast<double>(numels[j]);
    finish(row[0], row[1], n, cancellation, o, ok);
    finish(row[2], row[3], n, cancellation, o + 3, ok);
    o += 6;
  }
  *o = ok ? 1.0 : 0.0;
  return out;
}

// For each pair (a monitored weight now, b its copy from before the last update): Σ(a − b)² (the
// update's squared norm ‖ΔW‖²), Σa and Σa², float64 rows of 3, in one pass over both; with `copy`, b ← a in the same pass (the
// copy the next record's update norm is measured against). One pass where a recorded step that is
// also the step before the next one (every=1) made three: the copy, the distance and the weight's
// moments, each over the whole weight (~1 MB for the reference network's first layer).
at::Tensor distances_and_moments(const std::vector<at::Tensor>& a, const std::vector<at::Tensor>& b,
                                 bool copy) {
  TORCH_CHECK(a.size() == b.size(), "distances_and_moments: as many tensors on each side");
  at::Tensor out = at::empty({static_cast<int64_t>(a.size()), 3},
                             at::TensorOptions().dtype(at::kDouble));
  double* o = out.data_ptr<double>();
  for (size_t k = 0; k < a.size(); ++k) {
    TORCH_CHECK(a[k].scalar_type() == at::kFloat && b[k].scalar_type() == at::kFloat &&
                    a[k].is_contiguous() && b[k].is_contiguous() && a[k].device().is_cpu() &&
                    b[k].device().is_cpu() && a[k].numel() == b[k].numel(),
                "distances_and_moments: contiguous float32 CPU tensors of equal size only");
    const float* __restrict__ x = a[k].data_ptr<float>();
    float* __restrict__ y = b[k].data_ptr<float>();
    const int64_t n = a[k].numel();
    double dist = 0.0, sum = 0.0, squares = 0.0;
    for (int64_t start = 0; start < n; start += kBlock) {
      const int64_t stop = std::min(n, start + kBlock);
      v8f d0 = {}, d1 = {}, s0 = {}, s1 = {}, q0 = {}, q1 = {};
      int64_t i = start;
      for (; i + 16 <= stop; i += 16) {
        const v8f x0 = load8(x + i), x1 = load8(x + i + 8);
        const v8f e0 = x0 - load8(y + i), e1 = x1 - load8(y + i + 8);
        d0 += e0 * e0;
        d1 += e1 * e1;
        s0 += x0;
        s1 += x1;
        q0 += x0 * x0;
        q1 += x1 * x1;
        if (copy) {
          std::memcpy(y + i, &x0, sizeof x0);
          std::memcpy(y + i + 8, &x1, sizeof x1);
        }
      }
      float td = 0.0f, ts = 0.0f, tq = 0.0f;
      for (; i < stop; ++i) {
        const float e = x[i] - y[i];
        td += e * e;
        ts += x[i];
        tq += x[i] * x[i];
        if (copy) y[i] = x[i];
      }
      dist += hsum(d0 + d1) + td;
      sum += hsum(s0 + s1) + ts;
      squares += hsum(q0 + q1) + tq;
    }
    o[3 * k] = dist;
    o[3 * k + 1] = sum;
    o[3 * k + 2] = squares;
  }
  return out;
}
