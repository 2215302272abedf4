// steadygrad native kernels: the optimizer updates of the fast step on monitored steps (Adam/AdamW
// and SGD with momentum, Nesterov, dampening, weight decay, maximize), with the parameter
// statistics a monitor records taken in the same pass.
//
// The update is torch's (torch.optim.Adam, Kingma & Ba 2015; AdamW, Loshchilov & Hutter 2019),
// written as aten/src/ATen/native/cpu/FusedAdamKernel.cpp writes it:
//
//   g ← g + λθ (Adam's L2)          or   θ ← θ(1 − ηλ) (AdamW's decoupled decay)
//   m ← m + (1 − β₁)(g − m)          (torch's lerp; for 1 − β₁ ≥ 0.5 its other branch)
//   v ← β₂v + (1 − β₂)g²
//   θ ← θ − (η / (1 − β₁ᵗ)) · m / (√v / √(1 − β₂ᵗ) + ε)
//
// and SGD as torch.optim.SGD writes it: g ← ±g + λθ; with momentum μ, b ← g on the first step,
// else b ← μb + (1 − dampening)g, then g ← g + μb (Nesterov) or g ← b; θ ← θ − ηg.
//
// Why by hand: a monitor's recorded step needs Σθ, Σθ², Σg, Σg² (the weights' and gradients'
// moments, before the update) and Σ(θ_new − θ_old)² (the update's norm). torch computes them in
// three more passes over the parameters and a copy of the weights taken before the update
// (about 0.25 ms of a 1.3 ms step on the reference network); here they cost a few additions in
// the update's own pass. Sums: float32 within blocks of 512 entries, float64 across blocks, as
// csrc/stats.cpp. Parallel over blocks with per-block partial sums, so the result does not depend
// on the number of threads.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

namespace {

constexpr int64_t kBlock = 512;
constexpr int64_t kStats = 5;  // Σθ, Σθ², Σg, Σg², Σ(Δθ)²
typedef float v8f __attribute__((vector_size(32)));

inline v8f load8(const float* p) {
  v8f v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline void store8(float* p, v8f v) { std::memcpy(p, &v, sizeof v); }
inline v8f splat(float a) { return v8f{a, a, a, a, a, a, a, a}; }
inline double hsum(v8f v) {
  double t = 0.0;
  for (int k = 0; k < 8; ++k) t += v[k];
  return t;
}
inline v8f sqrt8(v8f v) {
  for (int k = 0; k < 8; ++k) v[k] = std::sqrt(v[k]);  // one vsqrtps with -fno-math-errno
  return v;
}

// Which sums an update pass takes: none, Σ(Δθ)² alone (one accumulator instead of five: the
// update's norm; the other four come back NaN), or all five.
enum Sums : int { kNoSums = 0, kChangeOnly = 1, kAllSums = 2 };

// Σθ, Σθ², Σg, Σg², Σ(Δθ)² in lanes of T: v8f for a block's vector part, float for its tail.
// Named members, not an array: GCC keeps these in registers in the update's loop.
template <typename T>
struct Sums5 {
  T s0 = {}, s1 = {}, s2 = {}, s3 = {}, s4 = {};
  template <int kSums>
  inline void add(T old, T grad, T now) {
    if (kSums == kAllSums) {
      s0 += old;
      s1 += old * old;
      s2 += grad;
      s3 += grad * grad;
    }
    if (kSums != kNoSums) {
      const T d = now - old;
      s4 += d * d;
    }
  }
};

// The sums of one block (512 entries): float32 lanes within it, float64 when written; the sums
// not taken are written as NaN, so that no caller can read them as sums.
template <int kSums>
struct BlockSums {
  Sums5<v8f> vec;
  Sums5<float> tail;
  template <typename V>
  inline void add(V old, V grad, V now) {
    if constexpr (sizeof(V) == sizeof(v8f)) {
      vec.template add<kSums>(old, grad, now);
    } else {
      tail.template add<kSums>(old, grad, now);
    }
  }
  void write(double* stats) const {
    stats[4] = hsum(vec.s4) + tail.s4;
    if (kSums == kAllSums) {
      stats[0] = hsum(vec.s0) + tail.s0;
      stats[1] = hsum(vec.s1) + tail.s1;
      stats[2] = hsum(vec.s2) + tail.s2;
      stats[3] = hsum(vec.s3) + tail.s3;
    } else {
      for (int j = 0; j < 4; ++j) stats[j] = std::numeric_limits<double>::quiet_NaN();
    }
  }
};

struct Scalars {
  float step_size, bc2_sqrt, eps, lerp, beta2, one_minus_beta2, l2, decay;
  bool small_lerp;  // 1 − β₁ < 0.5: m + w(g − m); else g + (w − 1)(g − m), as torch's lerp
  bool decoupled;
};

// The decay, the L2 term and the moment updates of one entry or one vector of 8 (p, m, v in
// place); the step itself follows in the caller.
template <typename V>
inline void adam_one(V& p, V g, V& m, V& v, const Scalars& s) {
  if (s.decoupled) {
    p = p * s.decay;
  } else {
    g = g + p * s.l2;
  }
  if (s.small_lerp) {
    m = m + s.lerp * (g - m);
  } else {
    m = g + (s.lerp - 1.0f) * (g - m);
  }
  v = v * s.beta2 + s.one_minus_beta2 * g * g;
}

// One block [begin, end) of one tensor; its sums (5 doubles; those not taken NaN) into
// stats, which is null exactly when kSums is kNoSums. The scalars are copied in: read through
// the reference, GCC reloaded them on every vector (the stores through p, m, v might alias).
template <int kSums>
void update_block(float* __restrict__ p, const float* __restrict__ g, float* __restrict__ m,
                  float* __restrict__ v, int64_t begin, int64_t end, const Scalars& scalars,
                  double* stats) {
  const Scalars s = scalars;
  const v8f step_size = splat(s.step_size), bc2 = splat(s.bc2_sqrt), eps = splat(s.eps);
  BlockSums<kSums> sums;
  int64_t i = begin;
  for (; i + 8 <= end; i += 8) {
    const v8f old = load8(p + i), grad = load8(g + i);
    v8f pv = old, mv = load8(m + i), vv = load8(v + i);
    adam_one(pv, grad, mv, vv, s);
    const v8f denom = sqrt8(vv) / bc2 + eps;
    pv = pv - step_size * mv / denom;
    store8(m + i, mv);
    store8(v + i, vv);
    store8(p + i, pv);
    sums.add(old, grad, pv);
  }
  for (; i < end; ++i) {
    const float old = p[i], grad = g[i];
    float pv = old, mv = m[i], vv = v[i];
    adam_one(pv, grad, mv, vv, s);
    const float denom = std::sqrt(vv) / s.bc2_sqrt + s.eps;
    pv = pv - s.step_size * mv / denom;
    m[i] = mv;
    v[i] = vv;
    p[i] = pv;
    sums.add(old, grad, pv);
  }
  if (kSums != kNoSums) sums.write(stats);
}

void check(const at::Tensor& t, const at::Tensor& like, const char* what) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kFloat && t.is_contiguous() &&
                  t.numel() == like.numel(),
              "adam_step: ", what, " must be contiguous float32 CPU tensors like the parameter");
}

// ``block(begin, end, sums)`` over the 512-entry blocks of a tensor of ``size`` entries on
// torch's threads; with ``row``, each block's sums (``sums`` non-null) added into row[0..5) in
// block order, so the result does not depend on the number of threads.
template <typename Block>
void over_blocks(int64_t size, double* row, const Block& block) {
  const int64_t blocks = (size + kBlock - 1) / kBlock;
  std::vector<double> partial(row != nullptr ? blocks * kStats : 0);
  at::parallel_for(0, blocks, 16, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      block(b * kBlock, std::min(size, (b + 1) * kBlock),
            row != nullptr ? partial.data() + b * kStats : nullptr);
    }
  });
  if (row != nullptr) {
    for (int64_t b = 0; b < blocks; ++b)
      for (int64_t j = 0; j < kStats; ++j) row[j] += partial[b * kStats + j];
  }
}

}  // namespace

// One Adam/AdamW step of every parameter (their step counters already advanced: ``steps``,
// float, one per parameter). With ``stats``: returns a float64 (n, 5) tensor of Σθ, Σθ², Σg, Σg²
// (before the update; g the raw gradient) and Σ(θ_new − θ_old)² per parameter (with
// ``change_only`` only the last, the others NaN: the update's norm a monitor needs on the step
// before a recorded one); else an empty one.
at::Tensor adam_step(const std::vector<at::Tensor>& params, const std::vector<at::Tensor>& grads,
                     const std::vector<at::Tensor>& exp_avgs,
                     const std::vector<at::Tensor>& exp_avg_sqs, const at::Tensor& steps,
                     double lr, double beta1, double beta2, double eps, double weight_decay,
                     bool decoupled, bool stats, bool change_only) {
  const int64_t n = static_cast<int64_t>(params.size());
  TORCH_CHECK(grads.size() == params.size() && exp_avgs.size() == params.size() &&
                  exp_avg_sqs.size() == params.size() && steps.numel() == n,
              "adam_step: one gradient, exp_avg, exp_avg_sq and step per parameter");
  const at::Tensor step_values = steps.to(at::kDouble).contiguous();
  const double* step_ptr = step_values.data_ptr<double>();
  at::Tensor out = stats ? at::zeros({n, kStats}, at::kDouble) : at::empty({0}, at::kDouble);
  for (int64_t k = 0; k < n; ++k) {
    const at::Tensor& p = params[k];
    check(p, p, "parameters");
    check(grads[k], p, "gradients");
    check(exp_avgs[k], p, "exp_avg");
    check(exp_avg_sqs[k], p, "exp_avg_sq");
    const double step = step_ptr[k];
    const double bias_correction1 = 1.0 - std::pow(beta1, step);
    const double bias_correction2 = 1.0 - std::pow(beta2, step);
    Scalars s;
    s.step_size = static_cast<float>(lr / bias_correction1);
    s.bc2_sqrt = static_cast<float>(std::sqrt(bias_correction2));
    s.eps = static_cast<float>(eps);
    s.lerp = static_cast<float>(1.0 - beta1);
    s.small_lerp = std::abs(1.0 - beta1) < 0.5;
    s.beta2 = static_cast<float>(beta2);
    s.one_minus_beta2 = static_cast<float>(1.0 - beta2);
    s.decoupled = decoupled;
    s.l2 = decoupled ? 0.0f : static_cast<float>(weight_decay);
    s.decay = decoupled ? static_cast<float>(1.0 - lr * weight_decay) : 1.0f;
    float* pp = p.data_ptr<float>();
    const float* gp = grads[k].data_ptr<float>();
    float* mp = exp_avgs[k].data_ptr<float>();
    float* vp = exp_avg_sqs[k].data_ptr<float>();
    over_blocks(p.numel(), stats ? out.data_ptr<double>() + k * kStats : nullptr,
                [&](int64_t begin, int64_t end, double* sums) {
                  if (sums == nullptr) {
                    update_block<kNoSums>(pp, gp, mp, vp, begin, end, s, sums);
                  } else if (change_only) {
                    update_block<kChangeOnly>(pp, gp, mp, vp, begin, end, s, sums);
                  } else {
                    update_block<kAllSums>(pp, gp, mp, vp, begin, end, s, sums);
                  }
                });
  }
  return out;
}

namespace {

struct SgdScalars {
  float lr, momentum, one_minus_dampening, weight_decay, sign;
  bool nesterov, first, with_momentum;
};

template <typename V>
inline V sgd_direction(V p, V g, V* b, const SgdScalars& s) {
  g = g * s.sign + p * s.weight_decay;
  if (!s.with_momentum) return g;
  V buf = s.first ? g : *b * s.momentum + g * s.one_minus_dampening;
  *b = buf;
  return s.nesterov ? g + buf * s.momentum : buf;
}

void sgd_block(float* __restrict__ p, const float* __restrict__ g, float* __restrict__ b,
               int64_t begin, int64_t end, const SgdScalars& s, double* stats) {
  BlockSums<kAllSums> sums;
  int64_t i = begin;
  for (; i + 8 <= end; i += 8) {
    const v8f old = load8(p + i), grad = load8(g + i);
    v8f buf = b != nullptr ? load8(b + i) : v8f{};
    const v8f d = sgd_direction(old, grad, &buf, s);
    const v8f pv = old - s.lr * d;
    store8(p + i, pv);
    if (b != nullptr) store8(b + i, buf);
    if (stats != nullptr) sums.add(old, grad, pv);
  }
  for (; i < end; ++i) {
    const float old = p[i], grad = g[i];
    float buf = b != nullptr ? b[i] : 0.0f;
    const float d = sgd_direction(old, grad, &buf, s);
    const float pv = old - s.lr * d;
    p[i] = pv;
    if (b != nullptr) b[i] = buf;
    sums.add(old, grad, pv);
  }
  if (stats != nullptr) sums.write(stats);
}

}  // namespace

// One SGD step of every parameter (``buffers``: the momentum buffers, one per parameter, or none
// when momentum is 0; ``first``: fill them with the gradient, torch's first momentum step). With
// ``stats``: the (n, 5) float64 sums of adam_step, else an empty tensor.
at::Tensor sgd_step(const std::vector<at::Tensor>& params, const std::vector<at::Tensor>& grads,
                    const std::vector<at::Tensor>& buffers, double lr, double momentum,
                    double dampening, double weight_decay, bool nesterov, bool maximize,
                    bool first, bool stats) {
  const int64_t n = static_cast<int64_t>(params.size());
  const bool with_momentum = momentum != 0.0;
  TORCH_CHECK(grads.size() == params.size() &&
                  (with_momentum ? buffers.size() == params.size() : buffers.empty()),
              "sgd_step: one gradient per parameter, and one buffer each with momentum");
  at::Tensor out = stats ? at::zeros({n, kStats}, at::kDouble) : at::empty({0}, at::kDouble);
  SgdScalars s;
  s.lr = static_cast<float>(lr);
  s.momentum = static_cast<float>(momentum);
  s.one_minus_dampening = static_cast<float>(1.0 - dampening);
  s.weight_decay = static_cast<float>(weight_decay);
  s.sign = maximize ? -1.0f : 1.0f;
  s.nesterov = nesterov;
  s.first = first;
  s.with_momentum = with_momentum;
  for (int64_t k = 0; k < n; ++k) {
    const at::Tensor& p = params[k];
    check(p, p, "parameters");
    check(grads[k], p, "gradients");
    if (with_momentum) check(buffers[k], p, "momentum buffers");
    float* pp = p.data_ptr<float>();
    const float* gp = grads[k].data_ptr<float>();
    float* bp = with_momentum ? buffers[k].data_ptr<float>() : nullptr;
    over_blocks(p.numel(), stats ? out.data_ptr<double>() + k * kStats : nullptr,
                [&](int64_t begin, int64_t end, double* sums) {
                  sgd_block(pp, gp, bp, begin, end, s, sums);
                });
  }
  return out;
}
