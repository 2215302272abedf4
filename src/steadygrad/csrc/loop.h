// steadygrad native kernels: the training loop's program (csrc/loop.cpp), bound to one model's
// tensors once and run for many steps per call.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <optional>
#include <tuple>
#include <vector>

// The optimizer update after each step, and the layout of `hyper` and `state` for each:
//   kAdam, kAdamW:  hyper = lr, β₁, β₂, ε, weight decay, amsgrad, maximize;
//                   state = exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps (views of flat_steps)
//   kSgdPlain:      hyper = lr; state empty (θ ← θ − ηg: one foreach add)
//   kSgdFused:      hyper = lr, momentum, dampening, weight decay, nesterov, maximize;
//                   state = momentum buffers (after torch's first momentum step)
enum Update : int64_t { kAdam = 0, kAdamW = 1, kSgdPlain = 2, kSgdFused = 3 };

// What a monitor (steadygrad.monitor) records of a run's recorded steps, fixed for one model and
// monitor (steadygrad.fast.RunRecords builds it once): stats.cpp's record_stats requests over a
// step's kept tensors (`tensors`: indices into forward_backward(..., keep=true)'s result; kinds
// and two params each) and the weights' rows of the update's sums (`rows`, with their `numels`).
struct RecordPlan {
  RecordPlan(std::vector<int64_t> tensors, std::vector<int64_t> kinds, std::vector<double> params,
             std::vector<int64_t> rows, std::vector<int64_t> numels, double cancellation);
  std::vector<int64_t> tensors, kinds;
  std::vector<double> params;
  std::vector<int64_t> rows, numels;
  double cancellation;
};

// One model's steps: chain.cpp's program (ops, scalars, the 6-per-op tensors, needs_input_grad),
// BatchNorm's batch counters, and the optimizer's parameters, gradients and state. Bound once:
// converting these ~120 tensors from Python costs ~50 µs a call (steadygrad.fast keeps the
// object while every tensor is still its owner's, as _NativeChain._arguments_now does).
class TrainLoop {
 public:
  TrainLoop(std::vector<int64_t> ops, std::vector<double> scalars,
            std::vector<std::optional<at::Tensor>> tensors, std::vector<bool> needs_input_grad,
            std::vector<at::Tensor> counters, int64_t update, std::vector<at::Tensor> params,
            std::vector<at::Tensor> grads, std::vector<std::vector<at::Tensor>> state,
            at::Tensor flat_steps);

  std::tuple<int64_t, at::Tensor, std::vector<at::Tensor>, at::Tensor> run(
      const at::Tensor& images, const at::Tensor& labels, const at::Tensor& perm,
      const std::vector<int64_t>& bounds, const std::vector<double>& hyper,
      const at::Tensor& loss_sum, const at::Tensor& correct, int64_t last_sums, bool keep_last,
      const std::vector<int64_t>& record_at, const RecordPlan* plan);

 private:
  std::vector<int64_t> ops_;
  std::vector<double> scalars_;
  std::vector<std::optional<at::Tensor>> tensors_;
  std::vector<bool> needs_input_grad_;
  std::vector<at::Tensor> counters_;
  int64_t update_;
  std::vector<at::Tensor> params_;
  std::vector<at::Tensor> grads_;
  std::vector<std::vector<at::Tensor>> state_;
  at::Tensor flat_steps_;

  // The optimizer's update of one step; with sums 1 (Σ(Δθ)² only) or 2 (all five), by
  // update.cpp, returning the parameters' sums (else undefined).
  at::Tensor update(const std::vector<double>& hyper, int64_t sums);
};
