// Argument checks shared by the ops' C++ entry points. The Python layer (gswfast/ops.py)
// validates first and raises ValueError/TypeError naming the argument; these checks are
// the last line of defence for callers that use torch.ops.gswfast.* directly.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <optional>

namespace gswfast {

inline void check_float_values(const at::Tensor& t, const char* name) {
  const auto s = t.scalar_type();
  TORCH_CHECK(s == at::kHalf || s == at::kBFloat16 || s == at::kFloat || s == at::kDouble, name,
              ": expected float16, bfloat16, float32 or float64, got ", s);
}

inline void check_labels(const at::Tensor& labels, const at::Tensor& values, int64_t pixel_dim) {
  const auto s = labels.scalar_type();
  TORCH_CHECK(s == at::kInt || s == at::kLong, "labels: expected int32 or int64, got ", s);
  TORCH_CHECK(labels.dim() == 2, "labels: expected [B, N], got ", labels.sizes());
  TORCH_CHECK(labels.device() == values.device(), "labels: expected device ", values.device(),
              ", got ", labels.device());
  TORCH_CHECK(labels.size(0) == values.size(0) && labels.size(1) == values.size(pixel_dim),
              "labels: shape ", labels.sizes(), " does not match values ", values.sizes());
  TORCH_CHECK(labels.size(1) < (int64_t{1} << 31), "labels: at most 2^31 - 1 pixels per sample");
}

inline void check_limits(const std::optional<at::Tensor>& limits, const at::Tensor& labels,
                         int64_t num_segments) {
  TORCH_CHECK(num_segments >= 0 && num_segments < (int64_t{1} << 31),
              "num_segments: expected 0 <= num_segments < 2^31, got ", num_segments);
  if (!limits) return;
  TORCH_CHECK(limits->scalar_type() == at::kLong && limits->dim() == 1 &&
                  limits->size(0) == labels.size(0) && limits->is_contiguous(),
              "num_segments: expected a contiguous int64 tensor [B]");
  TORCH_CHECK(limits->device() == labels.device(), "num_segments: expected device ",
              labels.device(), ", got ", limits->device());
}

// segment_pool's inputs: values [B, C, N], labels [B, N], limits [B]?, K.
inline void check_pool_inputs(const at::Tensor& values, const at::Tensor& labels,
                              const std::optional<at::Tensor>& limits, int64_t num_segments) {
  check_float_values(values, "values");
  TORCH_CHECK(values.dim() == 3, "values: expected [B, C, N], got ", values.sizes());
  check_labels(labels, values, 2);
  check_limits(limits, labels, num_segments);
}

// paint's inputs: segment_values [B, C, K], labels [B, N], limits [B]?.
inline void check_paint_inputs(const at::Tensor& segment_values, const at::Tensor& labels,
                               const std::optional<at::Tensor>& limits) {
  check_float_values(segment_values, "segment_values");
  TORCH_CHECK(segment_values.dim() == 3, "segment_values: expected [B, C, K], got ",
              segment_values.sizes());
  TORCH_CHECK(labels.dim() == 2 && labels.size(0) == segment_values.size(0),
              "labels: expected [B, N] with B = ", segment_values.size(0), ", got ",
              labels.sizes());
  TORCH_CHECK(labels.scalar_type() == at::kInt || labels.scalar_type() == at::kLong,
              "labels: expected int32 or int64, got ", labels.scalar_type());
  TORCH_CHECK(labels.device() == segment_values.device(), "labels: expected device ",
              segment_values.device(), ", got ", labels.device());
  check_limits(limits, labels, segment_values.size(2));
}

// dtype codes used by the raw CUDA launchers (see segment_pool.h).
inline int value_dtype_code(at::ScalarType s) {
  switch (s) {
    case at::kHalf:
      return 0;
    case at::kBFloat16:
      return 1;
    case at::kFloat:
      return 2;
    case at::kDouble:
      return 3;
    default:
      TORCH_CHECK(false, "unsupported value dtype ", s);
  }
}

inline int label_dtype_code(at::ScalarType s) { return s == at::kLong ? 1 : 0; }

}  // namespace gswfast
