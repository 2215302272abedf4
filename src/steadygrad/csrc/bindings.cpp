// The Python module of steadygrad's native kernels (steadygrad/native.py builds it).
#include <torch/extension.h>

#include "capture.h"
#include "loop.h"

#include <optional>
#include <tuple>
#include <vector>

std::vector<at::Tensor> forward_backward(const at::Tensor& x, const at::Tensor& labels,
                                         const std::vector<int64_t>& ops,
                                         const std::vector<double>& scalars,
                                         const std::vector<std::optional<at::Tensor>>& tensors,
                                         const std::vector<bool>& needs_input_grad, bool keep);
at::Tensor reduce(const std::vector<at::Tensor>& tensors, const std::vector<int64_t>& kinds,
                  const std::vector<double>& params);
at::Tensor record_stats(const std::vector<at::Tensor>& tensors, const std::vector<int64_t>& kinds,
                        const std::vector<double>& params, const at::Tensor& sums,
                        const std::vector<int64_t>& rows, const std::vector<int64_t>& numels,
                        double cancellation);
at::Tensor distances_and_moments(const std::vector<at::Tensor>& a, const std::vector<at::Tensor>& b,
                                 bool copy);
at::Tensor sgd_step(const std::vector<at::Tensor>& params, const std::vector<at::Tensor>& grads,
                    const std::vector<at::Tensor>& buffers, double lr, double momentum,
                    double dampening, double weight_decay, bool nesterov, bool maximize,
                    bool first, bool stats);
bool gemm_in_use();
bool sgemm_for_tests(bool trans_a, bool trans_b, const at::Tensor& A, const at::Tensor& B,
                     at::Tensor& C, double beta, const std::optional<at::Tensor>& a_index,
                     const std::optional<at::Tensor>& b_index);
at::Tensor adam_step(const std::vector<at::Tensor>& params, const std::vector<at::Tensor>& grads,
                     const std::vector<at::Tensor>& exp_avgs,
                     const std::vector<at::Tensor>& exp_avg_sqs, const at::Tensor& steps,
                     double lr, double beta1, double beta2, double eps, double weight_decay,
                     bool decoupled, bool stats, bool change_only);
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward_backward", &forward_backward, py::arg("x"), py::arg("labels"), py::arg("ops"),
        py::arg("scalars"), py::arg("tensors"), py::arg("needs_input_grad"),
        py::arg("keep") = false,
        "Forward and backward of a Linear/BatchNorm/activation chain with mean cross-entropy "
        "(csrc/chain.cpp)");
  m.def("reduce", &reduce, "The monitor's reductions of one recorded step (csrc/stats.cpp)");
  m.def("record_stats", &record_stats,
        "The numbers of one recorded step's layers: reduce's requests finished into moments and "
        "fractions, and the update's sums into the weights' moments (csrc/stats.cpp)");
  m.def("distances_and_moments", &distances_and_moments, py::arg("a"), py::arg("b"),
        py::arg("copy"),
        "Σ (a − b)², Σa, Σa² of each pair, float64 (n, 3), and b ← a with copy "
        "(csrc/stats.cpp)");
  m.def("sgd_step", &sgd_step, py::arg("params"), py::arg("grads"), py::arg("buffers"),
        py::arg("lr"), py::arg("momentum"), py::arg("dampening"), py::arg("weight_decay"),
        py::arg("nesterov"), py::arg("maximize"), py::arg("first"), py::arg("stats"),
        "SGD update (momentum, Nesterov, dampening, weight decay, maximize), with the "
        "parameters' and the update's sums when asked (csrc/update.cpp)");
  m.def("gemm_in_use", &gemm_in_use,
        "Whether the step's products use csrc/gemm.h at torch's current thread count");
  m.def("sgemm", &sgemm_for_tests, py::arg("trans_a"), py::arg("trans_b"), py::arg("A"),
        py::arg("B"), py::arg("C"), py::arg("beta"), py::arg("a_index") = py::none(),
        py::arg("b_index") = py::none(),
        "C = op(A) op(B) + beta C by csrc/gemm.h (False where not compiled), for tests; with "
        "a_index / b_index, A[a_index] / B[b_index] read in place");
  m.def("adam_step", &adam_step, py::arg("params"), py::arg("grads"), py::arg("exp_avgs"),
        py::arg("exp_avg_sqs"), py::arg("steps"), py::arg("lr"), py::arg("beta1"),
        py::arg("beta2"), py::arg("eps"), py::arg("weight_decay"), py::arg("decoupled"),
        py::arg("stats"), py::arg("change_only") = false,
        "Adam/AdamW update, with the parameters' and the update's sums when asked "
        "(csrc/update.cpp)");
  py::class_<GradCapture>(m, "GradCapture",
                          "One recorded step's back-propagated gradients, caught by C++ "
                          "pre-hooks on the nodes that made them (csrc/capture.h)")
      .def(py::init<const py::object&>(), py::arg("callback"))
      .def("add", &GradCapture::add, py::arg("z"))
      .def("grads", &GradCapture::grads)
      .def("close", &GradCapture::close);
  py::class_<RecordPlan>(m, "RecordPlan",
                         "What a monitor records of a TrainLoop run's recorded steps "
                         "(csrc/loop.h)")
      .def(py::init<std::vector<int64_t>, std::vector<int64_t>, std::vector<double>,
                    std::vector<int64_t>, std::vector<int64_t>, double>(),
           py::arg("tensors"), py::arg("kinds"), py::arg("params"), py::arg("rows"),
           py::arg("numels"), py::arg("cancellation"));
  py::class_<TrainLoop>(m, "TrainLoop",
                        "One model's training steps, many per call: gather, forward and backward, "
                        "the optimizer's update, BatchNorm's counters and the epoch's sums "
                        "(csrc/loop.cpp)")
      .def(py::init<std::vector<int64_t>, std::vector<double>,
                    std::vector<std::optional<at::Tensor>>, std::vector<bool>,
                    std::vector<at::Tensor>, int64_t, std::vector<at::Tensor>,
                    std::vector<at::Tensor>, std::vector<std::vector<at::Tensor>>, at::Tensor>())
      // The GIL is released while the steps run (rich's refresh thread keeps drawing the bar).
      .def("run", &TrainLoop::run, py::call_guard<py::gil_scoped_release>());
}
