// Schemas of every gswfast op, and the Python module that loads them.
//
// The module gswfast._C holds no Python functions: importing it runs the static
// registrations below (TORCH_LIBRARY) and in each op's backend files (TORCH_LIBRARY_IMPL),
// after which the ops are reachable as torch.ops.gswfast.*. Typed wrappers, fake kernels
// and autograd live in gswfast/ops.py.
#include <Python.h>
#include <torch/library.h>

extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(gswfast, m) {
  // values [B, C, N], labels [B, N], limits [B] -> out [B, C, K], count [B, K], num_invalid []
  m.def(
      "segment_pool(Tensor values, Tensor labels, Tensor? limits, int num_segments, str reduce)"
      " -> (Tensor, Tensor, Tensor)");
  // segment_values [B, C, K], labels [B, N], limits [B] -> out [B, C, N], num_invalid []
  m.def("paint(Tensor segment_values, Tensor labels, Tensor? limits, float fill) -> (Tensor, Tensor)");
}
