// steadygrad native kernels: many training steps in one call. Per step it does what
// steadygrad.fit's Python loop does around FastStep's native path: gather the batch's rows
// (index_select), forward and backward by chain.cpp, the optimizer's update by torch's own fused
// kernels (the ones FastStep._apply_update calls), BatchNorm's batch counters, and the epoch's
// loss and accuracy sums (fit's _EpochSums.add).
//
// Why by hand: at batch 50 the interpreter and pybind around each step (argument lists, the
// update's call, the sums' two small kernels, the loop itself) cost ~130 µs of a ~1.3 ms step on
// the reference network; jax.lax.scan runs a whole epoch without them. Nothing here is new
// arithmetic: the same kernels run in the same order, so the weights, optimizer state and sums
// after N steps equal the native per-step path's bit for bit (tests/test_loop.py).
#include "loop.h"

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <optional>
#include <tuple>
#include <vector>

std::vector<at::Tensor> forward_backward(const at::Tensor& x, const at::Tensor& labels,
                                         const std::vector<int64_t>& ops,
                                         const std::vector<double>& scalars,
                                         const std::vector<std::optional<at::Tensor>>& tensors,
                                         const std::vector<bool>& needs_input_grad, bool keep);
at::Tensor adam_step(const std::vector<at::Tensor>& params, const std::vector<at::Tensor>& grads,
                     const std::vector<at::Tensor>& exp_avgs,
                     const std::vector<at::Tensor>& exp_avg_sqs, const at::Tensor& steps,
                     double lr, double beta1, double beta2, double eps, double weight_decay,
                     bool decoupled, bool stats, bool change_only);
at::Tensor sgd_step(const std::vector<at::Tensor>& params, const std::vector<at::Tensor>& grads,
                    const std::vector<at::Tensor>& buffers, double lr, double momentum,
                    double dampening, double weight_decay, bool nesterov, bool maximize,
                    bool first, bool stats);

namespace {

bool is_cpu(const at::Tensor& t, at::ScalarType type, int64_t dim) {
  return t.defined() && t.device().is_cpu() && t.scalar_type() == type && t.dim() == dim &&
         t.is_contiguous();
}

}  // namespace

TrainLoop::TrainLoop(std::vector<int64_t> ops, std::vector<double> scalars,
                     std::vector<std::optional<at::Tensor>> tensors,
                     std::vector<bool> needs_input_grad, std::vector<at::Tensor> counters,
                     int64_t update, std::vector<at::Tensor> params, std::vector<at::Tensor> grads,
                     std::vector<std::vector<at::Tensor>> state, at::Tensor flat_steps)
    : ops_(std::move(ops)),
      scalars_(std::move(scalars)),
      tensors_(std::move(tensors)),
      needs_input_grad_(std::move(needs_input_grad)),
      counters_(std::move(counters)),
      update_(update),
      params_(std::move(params)),
      grads_(std::move(grads)),
      state_(std::move(state)),
      flat_steps_(std::move(flat_steps)) {
  TORCH_CHECK(update_ >= kAdam && update_ <= kSgdFused, "bad update");
  TORCH_CHECK(state_.size() == (update_ == kAdam || update_ == kAdamW ? 4u
                                : update_ == kSgdFused               ? 1u
                                                                     : 0u),
              "bad state");
}

// run(): take the steps whose batches are perm[bounds[2k] : bounds[2k + 1]] of (images, labels), in
// order; return how many were taken. It stops early, before changing anything of that step, where
// a step cannot be taken here (an index or a label out of range, or anything forward_backward
// declines): the caller takes that step by its Python path, which raises torch's own error where
// there is one. 0 with nothing changed where the inputs do not suit (dtype, device, layout).
//
// The last step of the run may serve a monitor (steadygrad.monitor): `last_sums` 1 or 2 takes its
// update by update.cpp with the parameters' sums (1: Σ(Δθ)² only, the others NaN; 2: all five),
// returned second; `keep_last` returns that step's forward_backward(..., keep=true) result third
// (loss, logits, correct, then each op's output, pre-activation and ∂L/∂output). Both are
// undefined/empty where not asked or where the run stopped before its last step.
std::tuple<int64_t, at::Tensor, std::vector<at::Tensor>> TrainLoop::run(
    const at::Tensor& images, const at::Tensor& labels, const at::Tensor& perm,
    const std::vector<int64_t>& bounds, const std::vector<double>& hyper,
    const at::Tensor& loss_sum, const at::Tensor& correct, int64_t last_sums, bool keep_last) {
  const bool adam = update_ == kAdam || update_ == kAdamW;
  TORCH_CHECK(bounds.size() % 2 == 0, "bounds: pairs of (begin, end) expected");
  TORCH_CHECK(hyper.size() == (adam ? 7u : update_ == kSgdPlain ? 1u : 6u), "bad hyper");
  if (!is_cpu(images, at::kFloat, 2) || !is_cpu(labels, at::kLong, 1) ||
      !is_cpu(perm, at::kLong, 1) || !is_cpu(loss_sum, at::kDouble, 0) ||
      !is_cpu(correct, at::kLong, 0) || images.size(0) != labels.size(0)) {
    return {0, at::Tensor(), {}};
  }
  at::NoGradGuard no_grad;
  const int64_t n = images.size(0), features = images.size(1), order = perm.size(0);
  int64_t widest = 0;
  for (size_t k = 0; k < bounds.size(); k += 2) {
    if (bounds[k] < 0 || bounds[k + 1] > order || bounds[k + 1] - bounds[k] < 1) {
      return {0, at::Tensor(), {}};
    }
    widest = std::max(widest, bounds[k + 1] - bounds[k]);
  }
  // One batch buffer for all steps: nothing the step returns refers to its input.
  at::Tensor x_all = at::empty({widest, features}, images.options());
  at::Tensor y_all = at::empty({widest}, labels.options());
  const float* src = images.data_ptr<float>();
  const int64_t* label = labels.data_ptr<int64_t>();
  const int64_t* index = perm.data_ptr<int64_t>();
  double* total_loss = loss_sum.data_ptr<double>();
  int64_t* total_correct = correct.data_ptr<int64_t>();

  int64_t done = 0;
  at::Tensor sums;
  std::vector<at::Tensor> kept;
  for (size_t k = 0; k < bounds.size(); k += 2) {
    const bool last = k + 2 == bounds.size();
    const int64_t lo = bounds[k], m = bounds[k + 1] - bounds[k];
    at::Tensor x = x_all.narrow(0, 0, m), y = y_all.narrow(0, 0, m);
    float* xp = x.data_ptr<float>();
    int64_t* yp = y.data_ptr<int64_t>();
    bool in_range = true;
    for (int64_t i = 0; i < m; ++i) {
      const int64_t row = index[lo + i];
      if (row < 0 || row >= n) {
        in_range = false;
        break;
      }
      std::memcpy(xp + i * features, src + row * features,
                  static_cast<size_t>(features) * sizeof(float));
      yp[i] = label[row];
    }
    if (!in_range) break;
    std::vector<at::Tensor> out =
        forward_backward(x, y, ops_, scalars_, tensors_, needs_input_grad_, last && keep_last);
    if (out.empty()) break;
    // fit's _EpochSums.add: loss_sum += m · loss in float64 (the product is exact), correct +=
    // the step's right argmaxes, counted by the kernel.
    *total_loss += static_cast<double>(out[0].item<float>()) * static_cast<double>(m);
    *total_correct += out[2].item<int64_t>();
    if (last && last_sums != 0) {  // what FastStep._apply_update does with want_stats
      if (adam) {
        flat_steps_.add_(1);
        sums = adam_step(params_, grads_, state_[0], state_[1], flat_steps_, hyper[0], hyper[1],
                         hyper[2], hyper[3], hyper[4], update_ == kAdamW, true, last_sums == 1);
      } else {
        const bool fused = update_ == kSgdFused;  // else plain: no momentum, decay or maximize
        sums = sgd_step(params_, grads_, fused ? state_[0] : std::vector<at::Tensor>{}, hyper[0],
                        fused ? hyper[1] : 0.0, fused ? hyper[2] : 0.0, fused ? hyper[3] : 0.0,
                        fused && hyper[4] != 0.0, fused && hyper[5] != 0.0, false, true);
      }
    } else if (adam) {
      flat_steps_.add_(1);
      // (lr, β₁, β₂, weight decay, ε, amsgrad, maximize): torch's argument order
      if (update_ == kAdamW) {
        at::_fused_adamw_(params_, grads_, state_[0], state_[1], state_[2], state_[3], hyper[0],
                          hyper[1], hyper[2], hyper[4], hyper[3], hyper[5] != 0.0,
                          hyper[6] != 0.0);
      } else {
        at::_fused_adam_(params_, grads_, state_[0], state_[1], state_[2], state_[3], hyper[0],
                         hyper[1], hyper[2], hyper[4], hyper[3], hyper[5] != 0.0,
                         hyper[6] != 0.0);
      }
    } else if (update_ == kSgdPlain) {
      at::_foreach_add_(params_, grads_, -hyper[0]);
    } else {
      // (weight decay, momentum, lr, dampening, nesterov, maximize, first step): torch's order
      at::_fused_sgd_(params_, grads_, state_[0], hyper[3], hyper[1], hyper[0], hyper[2],
                      hyper[4] != 0.0, hyper[5] != 0.0, false);
    }
    if (last && keep_last) kept = std::move(out);
    ++done;
  }
  for (const auto& counter : counters_) counter.add_(done);
  return {done, sums, kept};
}
