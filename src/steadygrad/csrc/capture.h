// GradCapture: the monitor's catch of back-propagated gradients (csrc/capture.cpp).
#pragma once

#include <torch/extension.h>

#include <memory>
#include <optional>
#include <vector>

// One recorded step's catch: `add(z)` hooks the autograd node that made z (a C++ pre-hook) and
// returns z's slot (−1 where z has no node: a leaf, or no gradient wanted); in the backward
// pass the hook keeps the first defined gradient of z's output in that slot, and the first
// gradient caught queues `callback` (if not None) to run when the backward pass ends.
// `grads()` gives the slots (None: nothing caught); `close()` drops the gradients and the
// callback and turns the hooks, which live as long as the graph, into no-ops.
class GradCapture {
 public:
  struct Shared;

  explicit GradCapture(const py::object& callback);
  int64_t add(const at::Tensor& z);
  std::vector<std::optional<at::Tensor>> grads() const;
  void close();

 private:
  std::shared_ptr<Shared> shared_;
};
