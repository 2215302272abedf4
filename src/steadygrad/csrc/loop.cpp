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
#include <limits>
#include <optional>
#include <tuple>
#include <vector>

bool forward_rows_ok(const std::vector<int64_t>& ops, const std::vector<bool>& needs_input_grad);
std::vector<at::Tensor> forward_batch_rows(const at::Tensor& x, const float* const* x_rows,
                                           const at::Tensor& labels,
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
at::Tensor record_stats(const std::vector<at::Tensor>& tensors, const std::vector<int64_t>& kinds,
                        const std::vector<double>& params, const at::Tensor& sums,
                        const std::vector<int64_t>& rows, const std::vector<int64_t>& numels,
                        double cancellation);

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

RecordPlan::RecordPlan(std::vector<int64_t> tensors, std::vector<int64_t> kinds,
                       std::vector<double> params, std::vector<int64_t> rows,
                       std::vector<int64_t> numels, double cancellation)
    : tensors(std::move(tensors)),
      kinds(std::move(kinds)),
      params(std::move(params)),
      rows(std::move(rows)),
      numels(std::move(numels)),
      cancellation(cancellation) {
  TORCH_CHECK(this->kinds.size() == this->tensors.size() &&
                  this->params.size() == 2 * this->tensors.size(),
              "RecordPlan: one kind and two params per tensor");
  TORCH_CHECK(this->rows.size() == this->numels.size(), "RecordPlan: one numel per row");
}

at::Tensor TrainLoop::update(const std::vector<double>& hyper, int64_t sums) {
  const bool adam = update_ == kAdam || update_ == kAdamW;
  if (sums != 0) {  // what FastStep._apply_update does with want_stats
    if (adam) {
      flat_steps_.add_(1);
      return adam_step(params_, grads_, state_[0], state_[1], flat_steps_, hyper[0], hyper[1],
                       hyper[2], hyper[3], hyper[4], update_ == kAdamW, true, sums == 1);
    }
    const bool fused = update_ == kSgdFused;  // else plain: no momentum, decay or maximize
    return sgd_step(params_, grads_, fused ? state_[0] : std::vector<at::Tensor>{}, hyper[0],
                    fused ? hyper[1] : 0.0, fused ? hyper[2] : 0.0, fused ? hyper[3] : 0.0,
                    fused && hyper[4] != 0.0, fused && hyper[5] != 0.0, false, true);
  }
  if (adam) {
    flat_steps_.add_(1);
    // (lr, β₁, β₂, weight decay, ε, amsgrad, maximize): torch's argument order
    if (update_ == kAdamW) {
      at::_fused_adamw_(params_, grads_, state_[0], state_[1], state_[2], state_[3], hyper[0],
                        hyper[1], hyper[2], hyper[4], hyper[3], hyper[5] != 0.0, hyper[6] != 0.0);
    } else {
      at::_fused_adam_(params_, grads_, state_[0], state_[1], state_[2], state_[3], hyper[0],
                       hyper[1], hyper[2], hyper[4], hyper[3], hyper[5] != 0.0, hyper[6] != 0.0);
    }
  } else if (update_ == kSgdPlain) {
    at::_foreach_add_(params_, grads_, -hyper[0]);
  } else {
    // (weight decay, momentum, lr, dampening, nesterov, maximize, first step): torch's order
    at::_fused_sgd_(params_, grads_, state_[0], hyper[3], hyper[1], hyper[0], hyper[2],
                    hyper[4] != 0.0, hyper[5] != 0.0, false);
  }
  return at::Tensor();
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
//
// With a `plan`, the steps `record_at` (ascending positions in the run) are recorded where they
// run: the step keeps its tensors, its update gives all the sums, and record_stats (stats.cpp)
// reduces them into a row of the result's fourth tensor (float64, one row per recorded step
// taken): record_stats's numbers (its last: 1 if they suffice), the step's loss, then per plan
// row Σ(Δθ)² of the update just before the step (from that update's sums; NaN where that update
// was not in this run). The step before each recorded one takes its update with Σ(Δθ)² (sums 1).
// A row whose numbers do not suffice (last 0: a sum not finite, or cancelling) ends the run after
// its step, which is then returned as a kept last step (sums second, tensors third) for the
// caller's precise path. The recorded steps are the monitor's: the same kernels in the same
// order as the per-step path that records them (steadygrad.fast's try_fast), bit for bit.
std::tuple<int64_t, at::Tensor, std::vector<at::Tensor>, at::Tensor> TrainLoop::run(
    const at::Tensor& images, const at::Tensor& labels, const at::Tensor& perm,
    const std::vector<int64_t>& bounds, const std::vector<double>& hyper,
    const at::Tensor& loss_sum, const at::Tensor& correct, int64_t last_sums, bool keep_last,
    const std::vector<int64_t>& record_at, const RecordPlan* plan) {
  const bool adam = update_ == kAdam || update_ == kAdamW;
  TORCH_CHECK(bounds.size() % 2 == 0, "bounds: pairs of (begin, end) expected");
  TORCH_CHECK(hyper.size() == (adam ? 7u : update_ == kSgdPlain ? 1u : 6u), "bad hyper");
  TORCH_CHECK(record_at.empty() || plan != nullptr, "record_at needs a plan");
  const int64_t steps = static_cast<int64_t>(bounds.size() / 2);
  for (size_t r = 0; r < record_at.size(); ++r) {
    TORCH_CHECK(record_at[r] >= 0 && record_at[r] < steps &&
                    (r == 0 || record_at[r] > record_at[r - 1]),
                "record_at: ascending positions of the run's steps expected");
  }
  if (!is_cpu(images, at::kFloat, 2) || !is_cpu(labels, at::kLong, 1) ||
      !is_cpu(perm, at::kLong, 1) || !is_cpu(loss_sum, at::kDouble, 0) ||
      !is_cpu(correct, at::kLong, 0) || images.size(0) != labels.size(0)) {
    return {0, at::Tensor(), {}, at::Tensor()};
  }
  at::NoGradGuard no_grad;
  const int64_t n = images.size(0), features = images.size(1), order = perm.size(0);
  int64_t widest = 0;
  for (size_t k = 0; k < bounds.size(); k += 2) {
    if (bounds[k] < 0 || bounds[k + 1] > order || bounds[k + 1] - bounds[k] < 1) {
      return {0, at::Tensor(), {}, at::Tensor()};
    }
    widest = std::max(widest, bounds[k + 1] - bounds[k]);
  }
  // One batch buffer for all steps: nothing the step returns refers to its input. Where the
  // first op is a Linear whose products are csrc/gemm.h's, they read the batch's rows where they
  // lie instead (forward_rows_ok): no copy of the batch, the buffer then only gives its shape.
  // The copy was ~3 % of a step's samples at batch 256; reading in place gained 1-2 % at batch
  // 50 and 256 (reference network, 1 thread, copy and in place interleaved in one process, 40
  // rounds of 6,000 images: median paired ratios 0.982-0.990), less than the copy's share
  // because the products then read rows scattered over the images.
  const bool in_place = forward_rows_ok(ops_, needs_input_grad_);
  std::vector<const float*> rows(in_place ? static_cast<size_t>(widest) : 0);
  at::Tensor x_all = at::empty({widest, features}, images.options());
  at::Tensor y_all = at::empty({widest}, labels.options());
  const float* src = images.data_ptr<float>();
  const int64_t* label = labels.data_ptr<int64_t>();
  const int64_t* index = perm.data_ptr<int64_t>();
  double* total_loss = loss_sum.data_ptr<double>();
  int64_t* total_correct = correct.data_ptr<int64_t>();

  // The recorded steps' rows, and Σ(Δθ)² of the latest update that gave it (per plan row).
  const int64_t layers = plan == nullptr ? 0 : static_cast<int64_t>(plan->rows.size());
  std::vector<double> change(static_cast<size_t>(layers),
                             std::numeric_limits<double>::quiet_NaN());
  std::vector<at::Tensor> inputs(plan == nullptr ? 0 : plan->tensors.size());
  at::Tensor records;
  double* row = nullptr;
  int64_t width = 0;
  size_t next = 0;  // the next recorded step's index in record_at

  int64_t done = 0;
  at::Tensor sums;
  std::vector<at::Tensor> kept;
  for (int64_t k = 0; k < steps; ++k) {
    const bool last = k + 1 == steps;
    const bool record = next < record_at.size() && record_at[next] == k;
    const size_t after = next + (record ? 1 : 0);
    const bool before_record = after < record_at.size() && record_at[after] == k + 1;
    const int64_t lo = bounds[2 * k], m = bounds[2 * k + 1] - bounds[2 * k];
    at::Tensor x = x_all.narrow(0, 0, m), y = y_all.narrow(0, 0, m);
    float* xp = x.data_ptr<float>();
    int64_t* yp = y.data_ptr<int64_t>();
    bool in_range = true;
    for (int64_t i = 0; i < m; ++i) {
      const int64_t at_row = index[lo + i];
      if (at_row < 0 || at_row >= n) {
        in_range = false;
        break;
      }
      if (in_place) {
        rows[static_cast<size_t>(i)] = src + at_row * features;
      } else {
        std::memcpy(xp + i * features, src + at_row * features,
                    static_cast<size_t>(features) * sizeof(float));
      }
      yp[i] = label[at_row];
    }
    if (!in_range) break;
    std::vector<at::Tensor> out =
        forward_batch_rows(x, in_place ? rows.data() : nullptr, y, ops_, scalars_, tensors_,
                           needs_input_grad_, record || (last && keep_last));
    if (out.empty()) break;
    // fit's _EpochSums.add: loss_sum += m · loss in float64 (the product is exact), correct +=
    // the step's right argmaxes, counted by the kernel.
    const float loss = out[0].item<float>();
    *total_loss += static_cast<double>(loss) * static_cast<double>(m);
    *total_correct += out[2].item<int64_t>();
    const int64_t mode = record ? 2 : before_record ? 1 : last ? last_sums : 0;
    at::Tensor step_sums = update(hyper, mode);
    ++done;
    bool stop = false;
    if (record) {
      for (size_t t = 0; t < inputs.size(); ++t) inputs[t] = out[plan->tensors[t]];
      const at::Tensor values = record_stats(inputs, plan->kinds, plan->params, step_sums,
                                             plan->rows, plan->numels, plan->cancellation);
      if (!records.defined()) {
        width = values.numel() + 1 + layers;
        records = at::empty({static_cast<int64_t>(record_at.size()), width},
                            at::TensorOptions().dtype(at::kDouble));
        row = records.data_ptr<double>();
      }
      const double* v = values.data_ptr<double>();
      std::copy(v, v + values.numel(), row);
      row[values.numel()] = static_cast<double>(loss);
      std::copy(change.begin(), change.end(), row + values.numel() + 1);
      row += width;
      ++next;
      stop = v[values.numel() - 1] == 0.0;  // the caller's precise path needs the tensors
    }
    if (step_sums.defined()) {
      const double* table = step_sums.data_ptr<double>();
      for (int64_t j = 0; j < layers; ++j) change[j] = table[5 * plan->rows[j] + 4];
    } else {
      std::fill(change.begin(), change.end(), std::numeric_limits<double>::quiet_NaN());
    }
    if (stop || last) {
      sums = step_sums;
      if (stop || keep_last) kept = std::move(out);
      break;
    }
  }
  for (const auto& counter : counters_) counter.add_(done);
  if (records.defined()) records = records.narrow(0, 0, static_cast<int64_t>(next));
  return {done, sums, kept, records};
}
