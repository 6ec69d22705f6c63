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
  // image [N, C, D, H, W] -> labels [N, P] int32, num_segments [N], centers [N, M, 3 + F],
  // iterations [N], clusters [N, K, 3 + F], cluster_counts [N, K], cluster_labels [N, P]
  // mask [N, P] uint8 (maskSLIC; pixels outside get label -1); contract in csrc/slic/slic.h
  m.def(
      "slic(Tensor image, Tensor? init_centers, Tensor? init_counts, Tensor? init_labels, int[] "
      "grid,"
      " float[] weights, float compactness, bool convert_lab, int max_iter, float tol,"
      " bool connectivity, int min_size, int max_centers, Tensor? mask=None)"
      " -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "paint(Tensor segment_values, Tensor labels, Tensor? limits, float fill) -> (Tensor, "
      "Tensor)");
}
