// Tensor glue for the CUDA SLIC kernels in slic_cuda.cu: checks, allocation, stream and
// device selection, one ATen scan between two stages, and the CUDA registration.
//
// Scratch memory: about 80 bytes per pixel with F = 3 and connectivity (features, labels,
// root-indexed union-find, statistics, merge keys), about 160 when every pixel may be a
// segment (min_size <= 1: centre sums per pixel); released when the call returns. Calls run
// in pieces of at most kMaxCudaPixels pixels (slic.h) so that this fits on a GPU.
#include <ATen/ops/cumsum.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>

#include "slic.h"

namespace gswfast {
namespace slic {
namespace {

int image_dtype_code(at::ScalarType s) {
  switch (s) {
    case at::kByte:
      return 0;
    case at::kHalf:
      return 1;
    case at::kBFloat16:
      return 2;
    case at::kFloat:
      return 3;
    default:
      return 4;
  }
}

SlicOutputs slic_cuda_chunk(const at::Tensor& image, const std::optional<at::Tensor>& init_centers,
                            const std::optional<at::Tensor>& init_counts,
                            const std::optional<at::Tensor>& init_labels, at::IntArrayRef grid,
                            at::ArrayRef<double> weights, double compactness, bool convert_lab,
                            int64_t max_iter, double tol, bool connectivity, int64_t min_size,
                            int64_t max_centers, const std::optional<at::Tensor>& mask) {
  TORCH_CHECK(image.is_cuda(), "image: expected a CUDA tensor, got ", image.device());
  const Geometry g =
      make_geometry(image, init_centers, init_counts, init_labels, grid, weights, compactness,
                    convert_lab, max_iter, tol, connectivity, min_size, max_centers, mask);
  const c10::cuda::CUDAGuard guard(image.device());
  const auto i32 = image.options().dtype(at::kInt);
  const auto i64 = image.options().dtype(at::kLong);
  const auto f32 = image.options().dtype(at::kFloat);
  const int64_t N = g.N, P = g.P, K = g.K, R = 3 + g.F;
  const int64_t cells = int64_t{g.cells[0]} * g.cells[1] * g.cells[2];

  at::Tensor features = at::empty({N, g.F, P}, f32);
  at::Tensor clusters = g.warm ? init_centers->clone() : at::zeros({N, K, R}, f32);
  at::Tensor counts = at::empty({N, K}, i32);
  at::Tensor labels = at::empty({N, P}, i32);
  at::Tensor cluster_labels = at::empty({N, P}, i32);
  at::Tensor cell_start = at::empty({N, cells + 1}, i32);
  at::Tensor cell_cursor = at::empty({N, cells}, i32);
  at::Tensor cell_items = at::empty({N, K}, i32);
  at::Tensor sums = at::empty({N, std::max<int64_t>(K, g.max_centers), R + 1}, i64);
  // slic_cuda.cu's State slots, a row per sample, and a last row for the loop counters
  // (Buffers::finished): one zero fill for both, a launch less per call.
  at::Tensor state = at::zeros({N + 1, cuda::kStateSlots}, i32);
  state.narrow(0, 0, N).select(1, 2).fill_(1);  // every sample starts "merging"
  at::Tensor iterations = at::zeros({N}, i32);
  at::Tensor main_of = at::zeros({N, K}, i64);
  at::Tensor has_main = at::zeros({N, K}, i32);
  at::Tensor num_roots = at::zeros({N}, i32);
  at::Tensor free_list = at::empty({N, K}, i32);
  at::Tensor free_low = at::empty({N}, i32);
  at::Tensor id_of_cluster = at::empty({N, K}, i32);
  at::Tensor num_segments = at::empty({N}, i64);
  at::Tensor out_centers = at::zeros({N, g.max_centers, R}, f32);
  // Connectivity scratch (root-indexed, one entry per pixel).
  const int64_t scratch = connectivity ? N * P : 1;
  at::Tensor parent = at::empty({scratch}, i32);
  at::Tensor stats = at::zeros({scratch, 1 + g.F}, i64);
  at::Tensor orig_size = at::empty({scratch}, i32);
  at::Tensor was_root = at::empty({scratch}, image.options().dtype(at::kByte));
  at::Tensor best = at::empty({scratch}, i64);
  at::Tensor extra_rank = at::zeros({connectivity ? N : 1, connectivity ? P : 1}, i32);
  at::Tensor final_id = at::empty({scratch}, i32);

  cuda::Buffers b{};
  b.image = image.const_data_ptr();
  b.image_dtype = image_dtype_code(image.scalar_type());
  b.init_centers = g.warm ? init_centers->const_data_ptr<float>() : nullptr;
  b.init_counts = g.warm ? init_counts->const_data_ptr<int32_t>() : nullptr;
  b.init_labels = g.warm ? init_labels->const_data_ptr<int32_t>() : nullptr;
  b.features = features.mutable_data_ptr<float>();
  b.clusters = clusters.mutable_data_ptr<float>();
  b.counts = counts.mutable_data_ptr<int32_t>();
  b.labels = labels.mutable_data_ptr<int32_t>();
  b.cluster_labels = cluster_labels.mutable_data_ptr<int32_t>();
  b.cell_start = cell_start.mutable_data_ptr<int32_t>();
  b.cell_cursor = cell_cursor.mutable_data_ptr<int32_t>();
  b.cell_items = cell_items.mutable_data_ptr<int32_t>();
  b.sums = sums.mutable_data_ptr<int64_t>();
  b.state = state.mutable_data_ptr<int32_t>();
  b.finished = b.state + N * cuda::kStateSlots;
  b.iterations = iterations.mutable_data_ptr<int32_t>();
  b.parent = parent.mutable_data_ptr<int32_t>();
  b.stats = stats.mutable_data_ptr<int64_t>();
  b.orig_size = orig_size.mutable_data_ptr<int32_t>();
  b.was_root = was_root.mutable_data_ptr<uint8_t>();
  b.best = reinterpret_cast<uint64_t*>(best.mutable_data_ptr<int64_t>());
  b.main_of = reinterpret_cast<uint64_t*>(main_of.mutable_data_ptr<int64_t>());
  b.has_main = has_main.mutable_data_ptr<int32_t>();
  b.extra_rank = extra_rank.mutable_data_ptr<int32_t>();
  b.num_roots = num_roots.mutable_data_ptr<int32_t>();
  b.free_list = free_list.mutable_data_ptr<int32_t>();
  b.free_low = free_low.mutable_data_ptr<int32_t>();
  b.id_of_cluster = id_of_cluster.mutable_data_ptr<int32_t>();
  b.final_id = final_id.mutable_data_ptr<int32_t>();
  b.num_segments = num_segments.mutable_data_ptr<int64_t>();
  b.out_centers = out_centers.mutable_data_ptr<float>();

  void* stream = c10::cuda::getCurrentCUDAStream().stream();
  cuda::launch_features_and_seeds(g, b, stream);
  cuda::launch_iterations(g, b, stream);
  cuda::launch_mark_segments(g, b, stream);
  if (connectivity) extra_rank.copy_(at::cumsum(extra_rank, 1, at::kInt));  // raster rank of extras
  cuda::launch_finish(g, b, stream);
  return {labels, num_segments, out_centers, iterations, clusters, counts, cluster_labels};
}

SlicOutputs slic_cuda(const at::Tensor& image, const std::optional<at::Tensor>& init_centers,
                      const std::optional<at::Tensor>& init_counts,
                      const std::optional<at::Tensor>& init_labels, at::IntArrayRef grid,
                      at::ArrayRef<double> weights, double compactness, bool convert_lab,
                      int64_t max_iter, double tol, bool connectivity, int64_t min_size,
                      int64_t max_centers, const std::optional<at::Tensor>& mask) {
  return slic_in_chunks(&slic_cuda_chunk, kMaxCudaPixels, image, init_centers, init_counts,
                        init_labels, grid, weights, compactness, convert_lab, max_iter, tol,
                        connectivity, min_size, max_centers, mask);
}

}  // namespace

TORCH_LIBRARY_IMPL(gswfast, CUDA, m) { m.impl("slic", &slic_cuda); }

}  // namespace slic
}  // namespace gswfast
