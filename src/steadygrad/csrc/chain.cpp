// steadygrad native kernels: forward and backward of a chain of Linear / BatchNorm / activation
// layers with mean cross-entropy, in one call (see steadygrad/_native.py for why and how it is
// built, and steadygrad/fast.py for the formulas, which are the same as the Python fast step's).
//
// The matrix products are ATen's (at::addmm / at::mm_out: MKL or OpenBLAS, as on every other
// path). What is written here is everything between them, which on a CPU costs as much as the
// products for a small network: BatchNorm's statistics, normalisation and activation in one pass
// over the layer's output (and their backward in one more), the loss and its gradient in one pass
// over the logits, and no Python between kernels.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/grad_mode.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "gemm.h"

namespace {

enum Op : int64_t { kLinear = 0, kBatchNorm = 1, kActivation = 2 };
enum Act : int64_t { kNone = -1, kRelu = 0, kLeaky = 1, kElu = 2 };

// Values per op in `scalars`: BatchNorm (factor, eps, act, a, b); activation (act, a, b, 0, 0).
// act kRelu; kLeaky with a = negative slope; kElu with a = alpha, b = scale (SELU: λα, λ).
constexpr int64_t kScalars = 5;
// Tensors per op in `tensors`: Linear (W, b, W.grad, b.grad, -, -); BatchNorm (γ, β, γ.grad,
// β.grad, running_mean, running_var).
constexpr int64_t kTensors = 6;

// e^x for x ≤ 0 (the ELU branch), vectorisable: x = n ln2 + r, e^x = 2^n p(r) with Cephes'
// polynomial for expf (Moshier 1992), relative error ≈ 1e-7 (a float's rounding). Below −87 it
// returns ~0, where ELU is −α to float precision.
inline float exp_neg(float x) {
  x = std::max(x, -87.0f);
  // round(x log2 e) without a libm call (which would stop the loop's vectorisation): adding and
  // subtracting 1.5·2²³ rounds a float of magnitude < 2²² to the nearest integer.
  const float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  float r = x - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  return p * __builtin_bit_cast(float, (static_cast<int32_t>(n) + 127) << 23);
}

struct Activation {
  int64_t kind = kNone;
  float a = 0.0f;
  float b = 1.0f;
};

// y = f(z) and f'(z) from the output y, one template instance per kind so that the loops using
// them have no branch on the kind and vectorise. ReLU [y > 0]; leaky 1 or slope (slope ≥ 0);
// ELU b·z, or b·a·(eᶻ − 1), whose slope is b or y + b·a (= b·a·eᶻ) (a ≥ 0; SELU: a = α, b = λ).
template <int64_t K>
inline float act_forward(float z, float a, float b) {
  if constexpr (K == kRelu) return z > 0.0f ? z : 0.0f;
  if constexpr (K == kLeaky) return z > 0.0f ? z : z * a;
  if constexpr (K == kElu) {
    const float e = b * a * (exp_neg(std::min(z, 0.0f)) - 1.0f);
    return z > 0.0f ? b * z : e;
  }
  return z;
}
template <int64_t K>
inline float act_slope(float y, float a, float b) {
  if constexpr (K == kRelu) return y > 0.0f ? 1.0f : 0.0f;
  if constexpr (K == kLeaky) return y > 0.0f ? 1.0f : a;
  if constexpr (K == kElu) return y > 0.0f ? b : y + b * a;
  return 1.0f;
}

// Calls fn.template operator()<K>() for the activation's kind.
template <typename Fn>
void dispatch(const Activation& act, Fn&& fn) {
  switch (act.kind) {
    case kRelu:
      fn.template operator()<kRelu>();
      break;
    case kLeaky:
      fn.template operator()<kLeaky>();
      break;
    case kElu:
      fn.template operator()<kElu>();
      break;
    default:
      fn.template operator()<kNone>();
  }
}

// y_ij = f(h_ij·scale_j + shift_j) over rows [i0, i1) of an (m, n) block, n contiguous.
template <int64_t K>
void affine_act(const float* __restrict__ h, const float* __restrict__ scale,
                const float* __restrict__ shift, float* __restrict__ y, int64_t i0, int64_t i1,
                int64_t n, float a, float b) {
  for (int64_t i = i0; i < i1; ++i) {
    const float* __restrict__ row = h + i * n;
    float* __restrict__ out = y + i * n;
    for (int64_t j = 0; j < n; ++j) out[j] = act_forward<K>(row[j] * scale[j] + shift[j], a, b);
  }
}

// y_i = f(z_i) and dz_i = g_i f'(z_i) (from y_i) over [i0, i1).
template <int64_t K>
void act_map(const float* __restrict__ z, float* __restrict__ y, int64_t i0, int64_t i1, float a,
             float b) {
  for (int64_t i = i0; i < i1; ++i) y[i] = act_forward<K>(z[i], a, b);
}
template <int64_t K>
void act_grad(const float* __restrict__ g, const float* __restrict__ y, float* __restrict__ dz,
              int64_t i0, int64_t i1, float a, float b) {
  for (int64_t i = i0; i < i1; ++i) dz[i] = g[i] * act_slope<K>(y[i], a, b);
}

int64_t grain(int64_t rows) { return std::max<int64_t>(16, 32768 / std::max<int64_t>(rows, 1)); }

// One (batch m, features n) block in train mode: per feature j, μ_j = mean_i h_ij,
// σ²_j = mean_i (h_ij − μ_j)² (biased), invstd_j = 1/√(σ²_j + ε), y_ij = f(γ_j (h_ij − μ_j)
// invstd_j + β_j); moving statistics ← (1 − factor)·moving + factor·(μ, σ² m/(m − 1)).
void batch_norm_forward(const at::Tensor& h, const at::Tensor& gamma, const at::Tensor& beta,
                        const at::Tensor& running_mean, const at::Tensor& running_var,
                        double factor, double eps, const Activation& act, at::Tensor& y,
                        at::Tensor& mean, at::Tensor& invstd, at::Tensor* z = nullptr,
                        const at::Tensor& shift_in = at::Tensor()) {
  const int64_t m = h.size(0), n = h.size(1);
  const float* hp = h.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  float* mp = mean.data_ptr<float>();
  float* sp = invstd.data_ptr<float>();
  const float* gp = gamma.defined() ? gamma.data_ptr<float>() : nullptr;
  const float* bp = beta.defined() ? beta.data_ptr<float>() : nullptr;
  float* rmp = running_mean.defined() ? running_mean.data_ptr<float>() : nullptr;
  float* rvp = running_var.defined() ? running_var.data_ptr<float>() : nullptr;
  const float f = static_cast<float>(factor);
  const float e = static_cast<float>(eps);
  const float inv_m = 1.0f / static_cast<float>(m);
  const float unbias = m > 1 ? static_cast<float>(m) / static_cast<float>(m - 1) : 1.0f;
  // shift_in: a preceding Linear's bias b left out of h (see forward_backward): the output and
  // the batch variance do not depend on it, the moving mean does (of h + b: μ + b).
  const float* bin = shift_in.defined() ? shift_in.data_ptr<float>() : nullptr;
  std::vector<float> scale(static_cast<size_t>(n)), shift(scale.size());
  float* scp = scale.data();
  float* shp = shift.data();
  at::parallel_for(0, n, grain(m), [&](int64_t j0, int64_t j1) {
    const int64_t w = j1 - j0;
    std::vector<float> acc(static_cast<size_t>(w));
    float* s = acc.data();
    for (int64_t i = 0; i < m; ++i) {
      const float* row = hp + i * n + j0;
#pragma GCC ivdep
      for (int64_t j = 0; j < w; ++j) s[j] += row[j];
    }
    for (int64_t j = 0; j < w; ++j) {
      mp[j0 + j] = s[j] * inv_m;
      s[j] = 0.0f;
    }
    for (int64_t i = 0; i < m; ++i) {
      const float* row = hp + i * n + j0;
      const float* mu = mp + j0;
#pragma GCC ivdep
      for (int64_t j = 0; j < w; ++j) {
        const float d = row[j] - mu[j];
        s[j] += d * d;
      }
    }
    for (int64_t j = 0; j < w; ++j) {
      const float var = s[j] * inv_m;
      const float is = 1.0f / std::sqrt(var + e);
      sp[j0 + j] = is;
      const float g = gp ? gp[j0 + j] : 1.0f;
      scp[j0 + j] = g * is;
      shp[j0 + j] = (bp ? bp[j0 + j] : 0.0f) - mp[j0 + j] * g * is;
      const float mu = mp[j0 + j] + (bin ? bin[j0 + j] : 0.0f);
      if (rmp) rmp[j0 + j] = f * mu + (1.0f - f) * rmp[j0 + j];
      if (rvp) rvp[j0 + j] = f * var * unbias + (1.0f - f) * rvp[j0 + j];
    }
  });
  const int64_t rows = std::max<int64_t>(1, 32768 / std::max<int64_t>(n, 1));
  dispatch(act, [&]<int64_t K>() {
    at::parallel_for(0, m, rows, [&](int64_t i0, int64_t i1) {
      affine_act<K>(hp, scp, shp, yp, i0, i1, n, act.a, act.b);
    });
  });
  if (z != nullptr && z->defined()) {  // the pre-activation too, for an observer
    float* zp = z->data_ptr<float>();
    at::parallel_for(0, m, rows, [&](int64_t i0, int64_t i1) {
      affine_act<kNone>(hp, scp, shp, zp, i0, i1, n, 0.0f, 1.0f);
    });
  }
}

// Backward of y = f(γ x̂ + β), x̂ = (h − μ) invstd, from g = ∂L/∂y: gz = f'·g;
// ∂L/∂β = Σ_i gz, ∂L/∂γ = Σ_i gz x̂; ∂L/∂h = γ invstd/m · (m gz − Σ_i gz − x̂ Σ_i gz x̂)
// (Ioffe & Szegedy 2015). dh is written only when defined.
void batch_norm_backward(const at::Tensor& g, const at::Tensor& h, const at::Tensor& y,
                         const at::Tensor& mean, const at::Tensor& invstd,
                         const at::Tensor& gamma, const Activation& act, at::Tensor& dgamma,
                         at::Tensor& dbeta, at::Tensor& dh) {
  const int64_t m = h.size(0), n = h.size(1);
  const float* gp = g.data_ptr<float>();
  const float* hp = h.data_ptr<float>();
  const float* yp = y.data_ptr<float>();
  const float* mp = mean.data_ptr<float>();
  const float* sp = invstd.data_ptr<float>();
  const float* wp = gamma.defined() ? gamma.data_ptr<float>() : nullptr;
  float* dwp = dgamma.defined() ? dgamma.data_ptr<float>() : nullptr;
  float* dbp = dbeta.defined() ? dbeta.data_ptr<float>() : nullptr;
  float* dhp = dh.defined() ? dh.data_ptr<float>() : nullptr;
  const float inv_m = 1.0f / static_cast<float>(m);
  at::parallel_for(0, n, grain(m), [&](int64_t j0, int64_t j1) {
    const int64_t w = j1 - j0;
    std::vector<float> sum_g(static_cast<size_t>(w)), sum_gx(sum_g.size());
    float* s1 = sum_g.data();
    float* s2 = sum_gx.data();
    const float* mu = mp + j0;
    const float* is = sp + j0;
    dispatch(act, [&]<int64_t K>() {
      for (int64_t i = 0; i < m; ++i) {
        const float* grow = gp + i * n + j0;
        const float* hrow = hp + i * n + j0;
        const float* yrow = yp + i * n + j0;
#pragma GCC ivdep
        for (int64_t j = 0; j < w; ++j) {
          const float gz = grow[j] * act_slope<K>(yrow[j], act.a, act.b);
          s1[j] += gz;
          s2[j] += gz * (hrow[j] - mu[j]);
        }
      }
    });
    for (int64_t j = 0; j < w; ++j) s2[j] *= is[j];  // Σ gz x̂ = invstd · Σ gz (h − μ)
    for (int64_t j = 0; j < w; ++j) {
      if (dbp) dbp[j0 + j] = s1[j];
      if (dwp) dwp[j0 + j] = s2[j];
    }
    if (!dhp) return;
    std::vector<float> k(static_cast<size_t>(w)), c1(k.size()), c2(k.size());
    for (int64_t j = 0; j < w; ++j) {
      k[j] = (wp ? wp[j0 + j] : 1.0f) * is[j];  // γ invstd
      c1[j] = s1[j] * inv_m;                     // mean of gz
      c2[j] = s2[j] * inv_m * is[j];             // mean of gz x̂, per unit of (h − μ)
    }
    const float* kk = k.data();
    const float* cc1 = c1.data();
    const float* cc2 = c2.data();
    dispatch(act, [&]<int64_t K>() {
      for (int64_t i = 0; i < m; ++i) {
        const float* grow = gp + i * n + j0;
        const float* hrow = hp + i * n + j0;
        const float* yrow = yp + i * n + j0;
        float* out = dhp + i * n + j0;
#pragma GCC ivdep
        for (int64_t j = 0; j < w; ++j) {
          const float gz = grow[j] * act_slope<K>(yrow[j], act.a, act.b);
          out[j] = kk[j] * (gz - cc1[j] - (hrow[j] - mu[j]) * cc2[j]);
        }
      }
    });
  });
}

// Mean cross-entropy of logits (m, c) against labels, its gradient (softmax − onehot)/m, and the
// number of rows whose first largest logit is the label's (torch.argmax's choice; a NaN row
// counts as wrong).
at::Tensor cross_entropy(const at::Tensor& logits, const at::Tensor& labels, at::Tensor& grad,
                         int64_t& correct) {
  const int64_t m = logits.size(0), c = logits.size(1);
  const float* lp = logits.data_ptr<float>();
  const int64_t* yp = labels.data_ptr<int64_t>();
  float* gp = grad.data_ptr<float>();
  for (int64_t i = 0; i < m; ++i) {
    TORCH_CHECK_INDEX(yp[i] >= 0 && yp[i] < c, "Target ", yp[i], " is out of bounds.");
  }
  double total = 0.0;
  correct = 0;
  const float inv_m = 1.0f / static_cast<float>(m);
  for (int64_t i = 0; i < m; ++i) {
    const float* row = lp + i * c;
    float* grow = gp + i * c;
    float top = row[0];
    int64_t arg = 0;
    for (int64_t k = 1; k < c; ++k) {
      if (row[k] > top) {
        top = row[k];
        arg = k;
      }
    }
    correct += arg == yp[i];
    float sum = 0.0f;
    for (int64_t k = 0; k < c; ++k) {
      const float ek = std::exp(row[k] - top);
      grow[k] = ek;
      sum += ek;
    }
    const float log_sum = std::log(sum);
    total += static_cast<double>(top + log_sum - row[yp[i]]);
    const float w = inv_m / sum;
    for (int64_t k = 0; k < c; ++k) grow[k] *= w;
    grow[yp[i]] -= inv_m;
  }
  return at::scalar_tensor(total / static_cast<double>(m), logits.options());
}

struct Saved {
  at::Tensor input;   // Linear: its input a
  const float* const* input_rows = nullptr;  // ... or a's rows where they lie (Input::rows)
  at::Tensor h;       // BatchNorm: its input
  at::Tensor y;       // BatchNorm / activation: its output
  at::Tensor mean, invstd;
};

// The step's matrix products: csrc/gemm.h where it is compiled (AVX2 and FMA, no AVX-512) and
// torch uses at most kOwnGemmThreads threads (measured faster than MKL at 1 and 2 threads on an
// AMD EPYC; more were not measured on such a CPU), else ATen's (MKL). Inputs are contiguous
// float32 (the chain's own tensors and checked parameters).
constexpr int kOwnGemmThreads = 2;

bool own_gemm() {
#ifdef STEADYGRAD_GEMM
  return at::get_num_threads() <= kOwnGemmThreads;
#else
  return false;
#endif
}

#ifdef STEADYGRAD_GEMM
// sg_gemm::sgemm over torch's threads: C's columns in near-equal runs of 16-wide panels, one run
// per thread (each packs what it reads into its own thread_local buffers). Small products and
// calls from inside a parallel region run on the calling thread.
// a_rows / b_rows: rows read where they lie (sg_gemm::sgemm's), for the batch's input.
void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, const float* A,
          int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc,
          const float* const* a_rows = nullptr, const float* const* b_rows = nullptr) {
  const int64_t panels = (n + 15) / 16;
  const int64_t chunks = std::min<int64_t>(at::get_num_threads(), panels);
  if (chunks < 2 || at::in_parallel_region() || 2.0 * m * n * k < 2e6) {
    sg_gemm::sgemm(trans_a, trans_b, m, n, k, A, lda, B, ldb, beta, C, ldc, a_rows, b_rows);
    return;
  }
  at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t j0 = panels * c / chunks * 16;
      const int64_t j1 = std::min(n, panels * (c + 1) / chunks * 16);
      if (j1 <= j0) continue;
      const float* Bj = b_rows != nullptr ? nullptr : trans_b ? B + j0 * ldb : B + j0;
      sg_gemm::sgemm(trans_a, trans_b, m, j1 - j0, k, A, lda, Bj, ldb, beta, C + j0, ldc, a_rows,
                     b_rows, j0);
    }
  });
}
#endif

// The batch's input: a (batch, features) tensor, or its rows where they lie (`rows`, one pointer
// per sample, from csrc/loop.cpp's gather; only where csrc/gemm.h is in use and the first op is a
// Linear, whose products then read them without a copy).
struct Input {
  at::Tensor x;
  const float* const* rows = nullptr;
};

// a Wᵀ (+ b): (batch, in) × (out, in)ᵀ → (batch, out); a's data from `a.rows` where given.
at::Tensor linear(const Input& a, const at::Tensor& W, const at::Tensor& b) {
#ifdef STEADYGRAD_GEMM
  if (own_gemm()) {
    const int64_t m = a.x.size(0), k = a.x.size(1), n = W.size(0);
    at::Tensor out = at::empty({m, n}, a.x.options());
    float* c = out.data_ptr<float>();
    if (b.defined()) {
      const float* bp = b.data_ptr<float>();
      for (int64_t i = 0; i < m; ++i) std::memcpy(c + i * n, bp, sizeof(float) * n);
    }
    gemm(false, true, m, n, k, a.rows != nullptr ? nullptr : a.x.data_ptr<float>(), k,
         W.data_ptr<float>(), k, b.defined() ? 1.0f : 0.0f, c, n, a.rows);
    return out;
  }
#endif
  TORCH_CHECK(a.rows == nullptr, "linear: rows in place need csrc/gemm.h");
  return b.defined() ? at::addmm(b, a.x, W.t()) : at::mm(a.x, W.t());
}

// ∂L/∂W = gᵀ a into Wg: (batch, out)ᵀ × (batch, in) → (out, in); a's data from `a.rows` where
// given.
void weight_grad(at::Tensor& Wg, const at::Tensor& g, const Input& a) {
#ifdef STEADYGRAD_GEMM
  if (own_gemm()) {
    const int64_t m = g.size(1), k = g.size(0), n = a.x.size(1);
    gemm(true, false, m, n, k, g.data_ptr<float>(), m,
         a.rows != nullptr ? nullptr : a.x.data_ptr<float>(), n, 0.0f, Wg.data_ptr<float>(), n,
         nullptr, a.rows);
    return;
  }
#endif
  TORCH_CHECK(a.rows == nullptr, "weight_grad: rows in place need csrc/gemm.h");
  at::mm_out(Wg, g.t(), a.x);
}

// ∂L/∂a = g W: (batch, out) × (out, in) → (batch, in)
at::Tensor input_grad(const at::Tensor& g, const at::Tensor& W) {
#ifdef STEADYGRAD_GEMM
  if (own_gemm()) {
    const int64_t m = g.size(0), k = g.size(1), n = W.size(1);
    at::Tensor out = at::empty({m, n}, g.options());
    gemm(false, false, m, n, k, g.data_ptr<float>(), k, W.data_ptr<float>(), n, 0.0f,
                   out.data_ptr<float>(), n);
    return out;
  }
#endif
  return at::mm(g, W);
}

// What an observer is shown of each op (keep = true): its output, the pre-activation of a
// BatchNorm fused with its activation, and ∂L/∂output of a Linear.
struct Kept {
  at::Tensor out, z, grad_out;
};

}  // namespace

// forward_backward(x, labels, ops, scalars, tensors, needs_input_grad, keep) -> (loss, logits,
// correct) and, with keep, (output, pre-activation, ∂L/∂output) of each op (undefined where none).
// Writes every parameter gradient into the given .grad tensors and updates the BatchNorm moving
// statistics in place. Train-mode BatchNorm only; the caller checks everything else.
//
// forward_batch_rows: the same, with the batch's rows read where they lie (`x_rows`, one pointer
// per row of x, whose data is then not read: csrc/loop.cpp's batches without a gather); only where
// forward_rows_ok holds (the products are csrc/gemm.h's, the first op is a Linear and no ∂L/∂x is
// asked): the same products of the same numbers, so the same results bit for bit.
bool forward_rows_ok(const std::vector<int64_t>& ops, const std::vector<bool>& needs_input_grad) {
  return own_gemm() && !ops.empty() && ops[0] == kLinear && !needs_input_grad[0];
}

std::vector<at::Tensor> forward_batch_rows(const at::Tensor& x, const float* const* x_rows,
                                           const at::Tensor& labels,
                                           const std::vector<int64_t>& ops,
                                           const std::vector<double>& scalars,
                                           const std::vector<std::optional<at::Tensor>>& tensors,
                                           const std::vector<bool>& needs_input_grad, bool keep) {
  TORCH_CHECK(x_rows == nullptr || forward_rows_ok(ops, needs_input_grad),
              "forward_batch_rows: rows in place where forward_rows_ok does not hold");
  const int64_t count = static_cast<int64_t>(ops.size());
  TORCH_CHECK(static_cast<int64_t>(scalars.size()) == count * kScalars, "bad scalars");
  TORCH_CHECK(static_cast<int64_t>(tensors.size()) == count * kTensors, "bad tensors");
  TORCH_CHECK(static_cast<int64_t>(needs_input_grad.size()) == count, "bad needs_input_grad");
  auto T = [&](int64_t op, int64_t slot) -> at::Tensor {
    const auto& t = tensors[static_cast<size_t>(op * kTensors + slot)];
    return t.has_value() ? *t : at::Tensor();
  };
  auto S = [&](int64_t op, int64_t slot) { return scalars[static_cast<size_t>(op * kScalars + slot)]; };
  auto activation = [](double kind, double a, double b) {
    Activation act;
    act.kind = static_cast<int64_t>(kind);
    act.a = static_cast<float>(a);
    act.b = static_cast<float>(b);
    return act;
  };
  // Anything the loops below cannot take (another dtype or device, a strided parameter or .grad):
  // return nothing, having changed nothing, and the caller runs its Python step.
  for (const auto& t : tensors) {
    if (t.has_value() && t->defined() &&
        (t->scalar_type() != at::kFloat || !t->device().is_cpu() || !t->is_contiguous())) {
      return {};
    }
  }
  if (x.scalar_type() != at::kFloat || !x.device().is_cpu() || x.dim() != 2 ||
      labels.scalar_type() != at::kLong || labels.dim() != 1 || labels.size(0) != x.size(0)) {
    return {};
  }
  const at::Tensor y = labels.contiguous();
  // Labels out of range: decline before anything changes; the caller's Python step raises
  // torch's own error. (Not a C++ exception: thrown across the extension boundary, one raised
  // after the forward crashed the process under a GPU machine's torch 2.11.)
  int64_t classes = x.size(1);
  for (int64_t op = 0; op < count; ++op) {
    if (ops[static_cast<size_t>(op)] == kLinear) classes = T(op, 0).size(0);
  }
  {
    const int64_t* yp = y.data_ptr<int64_t>();
    for (int64_t i = 0; i < y.numel(); ++i) {
      if (yp[i] < 0 || yp[i] >= classes) return {};
    }
  }
  at::NoGradGuard no_grad;
  std::vector<Saved> saved(static_cast<size_t>(count));
  std::vector<Kept> kept(keep ? static_cast<size_t>(count) : 0);
  at::Tensor folded_bias;  // a Linear's bias left for the BatchNorm after it
  at::Tensor a = x.contiguous();
  for (int64_t op = 0; op < count; ++op) {
    Saved& s = saved[static_cast<size_t>(op)];
    switch (ops[static_cast<size_t>(op)]) {
      case kLinear: {
        const at::Tensor W = T(op, 0), b = T(op, 1);
        s.input = a;
        s.input_rows = op == 0 ? x_rows : nullptr;
        const Input in{a, s.input_rows};
        // Followed by a train-mode BatchNorm, the bias only shifts the batch mean, which the
        // BatchNorm subtracts: a W^T without it, and b handed to the BatchNorm for its moving
        // mean (saves addmm's pass that broadcasts b into the output and MKL's β-scaling).
        // An observer is shown the real h = a W^T + b.
        const bool fold = b.defined() && !keep && op + 1 < count &&
                          ops[static_cast<size_t>(op + 1)] == kBatchNorm;
        if (fold) {
          a = linear(in, W, at::Tensor());
          folded_bias = b;
        } else {
          a = linear(in, W, b);
        }
        if (keep) kept[static_cast<size_t>(op)].out = a;
        break;
      }
      case kBatchNorm: {
        const int64_t n = a.size(1);
        s.h = a;
        s.y = at::empty_like(a);
        s.mean = at::empty({n}, a.options());
        s.invstd = at::empty({n}, a.options());
        const Activation act = activation(S(op, 2), S(op, 3), S(op, 4));
        at::Tensor z = keep && act.kind != kNone ? at::empty_like(a) : at::Tensor();
        batch_norm_forward(a, T(op, 0), T(op, 1), T(op, 4), T(op, 5), S(op, 0), S(op, 1), act,
                           s.y, s.mean, s.invstd, &z, folded_bias);
        folded_bias = at::Tensor();
        a = s.y;
        if (keep) kept[static_cast<size_t>(op)] = {s.y, z, at::Tensor()};
        break;
      }
      case kActivation: {
        const Activation act = activation(S(op, 0), S(op, 1), S(op, 2));
        at::Tensor y = at::empty_like(a);
        const float* zp = a.data_ptr<float>();
        float* yp = y.data_ptr<float>();
        const int64_t size = a.numel();
        dispatch(act, [&]<int64_t K>() {
          at::parallel_for(0, size, 32768, [&](int64_t i0, int64_t i1) {
            act_map<K>(zp, yp, i0, i1, act.a, act.b);
          });
        });
        s.y = y;
        a = y;
        if (keep) kept[static_cast<size_t>(op)].out = y;
        break;
      }
      default:
        TORCH_CHECK(false, "unknown op ", ops[static_cast<size_t>(op)]);
    }
  }
  at::Tensor logits = a;
  at::Tensor g = at::empty_like(logits);
  int64_t correct = 0;
  at::Tensor loss = cross_entropy(logits, y, g, correct);
  for (int64_t op = count - 1; op >= 0; --op) {
    Saved& s = saved[static_cast<size_t>(op)];
    const bool need = needs_input_grad[static_cast<size_t>(op)];
    switch (ops[static_cast<size_t>(op)]) {
      case kLinear: {
        const at::Tensor W = T(op, 0);
        at::Tensor Wg = T(op, 2), bg = T(op, 3);
        if (keep) kept[static_cast<size_t>(op)].grad_out = g;
        weight_grad(Wg, g, Input{s.input, s.input_rows});  // ∂L/∂W = gᵀ a
        if (bg.defined()) at::sum_out(bg, g, {0});
        g = need ? input_grad(g, W) : at::Tensor();
        break;
      }
      case kBatchNorm: {
        at::Tensor gw = T(op, 2), gb = T(op, 3);
        at::Tensor dh = need ? at::empty_like(s.h) : at::Tensor();
        batch_norm_backward(g, s.h, s.y, s.mean, s.invstd, T(op, 0),
                            activation(S(op, 2), S(op, 3), S(op, 4)), gw, gb, dh);
        g = dh;
        break;
      }
      case kActivation: {
        if (!need) {
          g = at::Tensor();
          break;
        }
        const Activation act = activation(S(op, 0), S(op, 1), S(op, 2));
        at::Tensor dz = at::empty_like(g);
        const float* gp = g.data_ptr<float>();
        const float* yp = s.y.data_ptr<float>();
        float* dp = dz.data_ptr<float>();
        const int64_t size = g.numel();
        dispatch(act, [&]<int64_t K>() {
          at::parallel_for(0, size, 32768, [&](int64_t i0, int64_t i1) {
            act_grad<K>(gp, yp, dp, i0, i1, act.a, act.b);
          });
        });
        g = dz;
        break;
      }
    }
    s = Saved();
    // Layers that need no ∂L/∂input come first and have no parameters below them: stop.
    if (!g.defined()) break;
  }
  std::vector<at::Tensor> out = {loss, logits, at::scalar_tensor(correct, at::kLong)};
  for (const Kept& k : kept) {
    out.push_back(k.out);
    out.push_back(k.z);
    out.push_back(k.grad_out);
  }
  return out;
}

std::vector<at::Tensor> forward_backward(const at::Tensor& x, const at::Tensor& labels,
                                         const std::vector<int64_t>& ops,
                                         const std::vector<double>& scalars,
                                         const std::vector<std::optional<at::Tensor>>& tensors,
                                         const std::vector<bool>& needs_input_grad, bool keep) {
  return forward_batch_rows(x, nullptr, labels, ops, scalars, tensors, needs_input_grad, keep);
}

// sgemm(trans_a, trans_b, A, B, C, beta): C = op(A) op(B) + beta C through csrc/gemm.h on torch's
// threads, as the step calls it, for tests and benchmarks (rows contiguous; leading dimensions
// from the strides). False where it is not compiled.
bool sgemm_for_tests(bool trans_a, bool trans_b, const at::Tensor& A, const at::Tensor& B,
                     at::Tensor& C, double beta, const std::optional<at::Tensor>& a_index,
                     const std::optional<at::Tensor>& b_index) {
#ifdef STEADYGRAD_GEMM
  TORCH_CHECK(A.scalar_type() == at::kFloat && B.scalar_type() == at::kFloat &&
                  C.scalar_type() == at::kFloat && A.stride(1) == 1 && B.stride(1) == 1 &&
                  C.stride(1) == 1,
              "sgemm: float32 matrices with contiguous rows");
  // a_index / b_index: op(A) = A[a_index] / op(B) = B[b_index], their rows read in place
  auto rows_of = [](const at::Tensor& M, const std::optional<at::Tensor>& index) {
    std::vector<const float*> rows;
    if (index.has_value()) {
      const at::Tensor idx = index->contiguous();
      TORCH_CHECK(idx.scalar_type() == at::kLong && idx.dim() == 1, "sgemm: int64 index");
      for (int64_t i = 0; i < idx.numel(); ++i) {
        const int64_t r = idx.data_ptr<int64_t>()[i];
        TORCH_CHECK(r >= 0 && r < M.size(0), "sgemm: index out of range");
        rows.push_back(M.data_ptr<float>() + r * M.stride(0));
      }
    }
    return rows;
  };
  TORCH_CHECK(!(a_index.has_value() && trans_a) && !(b_index.has_value() && trans_b),
              "sgemm: indexed rows of an untransposed operand only");
  const std::vector<const float*> a_rows = rows_of(A, a_index), b_rows = rows_of(B, b_index);
  const int64_t m = C.size(0), n = C.size(1);
  const int64_t k = trans_a ? A.size(0) : A.size(1);
  TORCH_CHECK(!a_index.has_value() || static_cast<int64_t>(a_rows.size()) == m,
              "sgemm: a_index must give C's rows");
  TORCH_CHECK(!b_index.has_value() || static_cast<int64_t>(b_rows.size()) == k,
              "sgemm: b_index must give op(A)'s columns");
  gemm(trans_a, trans_b, m, n, k, A.data_ptr<float>(), A.stride(0), B.data_ptr<float>(),
       B.stride(0), static_cast<float>(beta), C.data_ptr<float>(), C.stride(0),
       a_rows.empty() ? nullptr : a_rows.data(), b_rows.empty() ? nullptr : b_rows.data());
  return true;
#else
  return false;
#endif
}

// Whether the step's products go through csrc/gemm.h now (compiled here, and few enough threads).
bool gemm_in_use() { return own_gemm(); }
