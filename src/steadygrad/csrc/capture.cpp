// Catching the back-propagated gradients ∂L/∂z of a recorded step for the monitor
// (steadygrad/monitor/_watch.py, Monitor._watch_gradient).
//
// Why by hand: the Python way, `z.grad_fn.register_prehook(fn)`, builds a RemovableHandle and
// an OrderedDict per node and calls back into Python for every gradient: ~25-30 µs a layer on
// a recorded step of the reference network (measured inside the step, where the arithmetic
// has evicted the interpreter's objects from the caches), more than the statistics it feeds.
// Here one C++ pre-hook per node keeps the gradient it sees in a slot; the first one also
// queues the monitor's Python callback to run when the backward pass ends, as
// `torch.autograd.Variable._execution_engine.queue_callback` does (python_engine.cpp).
#include <torch/csrc/Exceptions.h>
#include <torch/csrc/autograd/engine.h>
#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/variable.h>
#include <torch/extension.h>

#include <memory>
#include <mutex>
#include <optional>
#include <vector>

#include "capture.h"

namespace {

using torch::autograd::variable_list;

// The Python callback, released under the GIL whatever thread drops the last reference.
std::shared_ptr<PyObject> own_callback(PyObject* callback) {
  Py_INCREF(callback);
  return std::shared_ptr<PyObject>(callback, [](PyObject* obj) {
    pybind11::gil_scoped_acquire gil;
    Py_DECREF(obj);
  });
}

}  // namespace

struct GradCapture::Shared {
  std::mutex mutex;
  std::vector<at::Tensor> grads;  // undefined: no gradient seen (yet)
  std::shared_ptr<PyObject> callback;  // null: none, or already queued, or closed
  bool closed = false;
};

namespace {

class CaptureHook : public torch::autograd::FunctionPreHook {
 public:
  CaptureHook(std::shared_ptr<GradCapture::Shared> shared, size_t slot, uint32_t output)
      : shared_(std::move(shared)), slot_(slot), output_(output) {}

  variable_list operator()(const variable_list& grads) override {
    std::shared_ptr<PyObject> callback;
    {
      std::lock_guard<std::mutex> lock(shared_->mutex);
      if (shared_->closed || output_ >= grads.size() || !grads[output_].defined()) {
        return grads;
      }
      at::Tensor& kept = shared_->grads[slot_];
      if (!kept.defined()) {
        kept = grads[output_];  // the first gradient wins, as in Monitor._take_gradient
      }
      callback = std::move(shared_->callback);  // queued once, by the first gradient
      shared_->callback.reset();
    }
    if (callback) {
      torch::autograd::Engine::get_default_engine().queue_callback([callback]() {
        pybind11::gil_scoped_acquire gil;
        THPObjectPtr result{PyObject_CallFunctionObjArgs(callback.get(), nullptr)};
        if (!result) {
          throw python_error();  // the engine hands the Python error to backward's caller
        }
      });
    }
    return grads;
  }

 private:
  std::shared_ptr<GradCapture::Shared> shared_;
  size_t slot_;
  uint32_t output_;
};

}  // namespace

GradCapture::GradCapture(const py::object& callback) : shared_(std::make_shared<Shared>()) {
  if (!callback.is_none()) {
    shared_->callback = own_callback(callback.ptr());
  }
}

int64_t GradCapture::add(const at::Tensor& z) {
  if (!z.requires_grad()) {
    return -1;
  }
  const auto& node = z.grad_fn();
  if (!node) {
    return -1;  // a leaf: the caller hooks the tensor itself
  }
  std::lock_guard<std::mutex> lock(shared_->mutex);
  TORCH_CHECK(!shared_->closed, "GradCapture.add: the capture is closed");
  const size_t slot = shared_->grads.size();
  shared_->grads.emplace_back();
  node->add_pre_hook(std::make_unique<CaptureHook>(shared_, slot, z.output_nr()));
  return static_cast<int64_t>(slot);
}

std::vector<std::optional<at::Tensor>> GradCapture::grads() const {
  std::lock_guard<std::mutex> lock(shared_->mutex);
  std::vector<std::optional<at::Tensor>> out;
  out.reserve(shared_->grads.size());
  for (const at::Tensor& g : shared_->grads) {
    out.push_back(g.defined() ? std::optional<at::Tensor>(g) : std::nullopt);
  }
  return out;
}

void GradCapture::close() {
  std::shared_ptr<PyObject> callback;
  {
    std::lock_guard<std::mutex> lock(shared_->mutex);
    shared_->closed = true;
    shared_->grads.clear();
    callback = std::move(shared_->callback);
    shared_->callback.reset();
  }
  // `callback` is released here, the GIL held (the caller is Python)
}
