// Tensor glue for the CUDA kernels in segment_pool_cuda.cu: checks, allocation, stream
// and device selection, and the CUDA dispatch-key registration.
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../common/checks.h"
#include "segment_pool.h"

namespace gswfast {
namespace {

void check_cuda_tensor(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.is_cuda(), name, ": expected a CUDA tensor, got ", t.device());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> segment_pool_cuda(
    const at::Tensor& values, const at::Tensor& labels_in, const std::optional<at::Tensor>& limits,
    int64_t num_segments, std::string_view reduce_name) {
  check_pool_inputs(values, labels_in, limits, num_segments);
  check_cuda_tensor(values, "values");
  const Reduce reduce = parse_reduce(reduce_name);
  const c10::cuda::CUDAGuard guard(values.device());
  const at::Tensor labels = labels_in.contiguous();
  const int64_t B = values.size(0), C = values.size(1), N = values.size(2), K = num_segments;

  at::Tensor out = at::empty({B, C, K}, values.options());
  at::Tensor count = at::empty({B, K}, labels.options().dtype(at::kInt));
  if (B == 0 || N == 0) {
    return {out.zero_(), count.zero_(), at::zeros({}, labels.options().dtype(at::kInt))};
  }
  at::Tensor num_invalid = at::empty({}, labels.options().dtype(at::kInt));  // set by the kernel
  cuda::PoolArgs args{values.const_data_ptr(),
                      values.stride(0),
                      values.stride(1),
                      values.stride(2),
                      labels.const_data_ptr(),
                      limits ? limits->const_data_ptr<int64_t>() : nullptr,
                      B,
                      C,
                      N,
                      K,
                      value_dtype_code(values.scalar_type()),
                      label_dtype_code(labels.scalar_type()),
                      reduce,
                      out.mutable_data_ptr(),
                      count.mutable_data_ptr<int32_t>(),
                      num_invalid.mutable_data_ptr<int32_t>(),
                      nullptr};
  at::Tensor workspace =
      at::empty({cuda::pool_workspace_bytes(args)}, values.options().dtype(at::kByte));
  args.partial = workspace.mutable_data_ptr();
  cuda::launch_segment_pool(args, c10::cuda::getCurrentCUDAStream().stream());
  return {out, count, num_invalid};
}

std::tuple<at::Tensor, at::Tensor> paint_cuda(const at::Tensor& segment_values,
                                              const at::Tensor& labels_in,
                                              const std::optional<at::Tensor>& limits,
                                              double fill) {
  check_paint_inputs(segment_values, labels_in, limits);
  check_cuda_tensor(segment_values, "segment_values");
  const int64_t B = segment_values.size(0), C = segment_values.size(1), K = segment_values.size(2),
                N = labels_in.size(1);
  const c10::cuda::CUDAGuard guard(segment_values.device());
  const at::Tensor seg = segment_values.contiguous();
  const at::Tensor labels = labels_in.contiguous();
  at::Tensor out = at::empty({B, C, N}, seg.options());
  at::Tensor num_invalid = at::zeros({}, labels.options().dtype(at::kInt));
  cuda::PaintArgs args{seg.const_data_ptr(),
                       labels.const_data_ptr(),
                       limits ? limits->const_data_ptr<int64_t>() : nullptr,
                       B,
                       C,
                       N,
                       K,
                       value_dtype_code(seg.scalar_type()),
                       label_dtype_code(labels.scalar_type()),
                       fill,
                       out.mutable_data_ptr(),
                       num_invalid.mutable_data_ptr<int32_t>()};
  cuda::launch_paint(args, c10::cuda::getCurrentCUDAStream().stream());
  return {out, num_invalid};
}

}  // namespace

TORCH_LIBRARY_IMPL(gswfast, CUDA, m) {
  m.impl("segment_pool", &segment_pool_cuda);
  m.impl("paint", &paint_cuda);
}

}  // namespace gswfast
