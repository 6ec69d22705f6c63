// Tensor glue for the CUDA SLIC kernels in slic_cuda.cu: checks, allocation, stream and
// device selection, one ATen scan between two stages, and the CUDA registration.
//
// Scratch memory: about 80 bytes per pixel with F = 3 and connectivity (features, labels,
// root-indexed union-find, statistics, merge keys), about 160 when every pixel may be a
// segment (min_size <= 1: centre sums per pixel); released when the call returns. Calls run
// in pieces of at most kMaxCudaPixels pixels (slic.h) and of as many samples as the
// device's free memory holds (device_bytes_per_sample, piece_samples), so that this fits.
#include <ATen/ops/cumsum.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdlib>
#include <limits>

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

// Device bytes of one sample: what slic_cuda_chunk allocates for it (scratch: its tensors
// and the cumsum's result), and the part that outlives the piece (outputs: what it
// returns, which slic_in_chunks keeps until it concatenates every piece's). The state's
// extra row and the loop counters are a few bytes per call. Keep in step with
// slic_cuda_chunk.
struct SampleBytes {
  int64_t scratch;  // outputs included
  int64_t outputs;
};

SampleBytes device_bytes_per_sample(const Geometry& g) {
  const int64_t P = g.P, F = g.F, K = g.K, R = 3 + F, max_centers = g.max_centers;
  const int64_t cells = int64_t{g.cells[0]} * g.cells[1] * g.cells[2];
  // labels, cluster_labels, num_segments, iterations, out_centers, clusters, counts
  const int64_t outputs = 8 * P + 8 + 4 + max_centers * R * 4 + K * (4 * R + 4);
  int64_t per_pixel = 4 * F;  // features
  // parent, stats, orig_size, was_root, best, extra_rank and its cumsum, final_id
  if (g.connectivity) per_pixel += 4 + 8 * (1 + F) + 4 + 1 + 8 + 4 + 4 + 4;
  // cell_items, main_of, has_main, free_list, id_of_cluster
  const int64_t per_cluster = 4 + 8 + 4 + 4 + 4;
  const int64_t sums = std::max<int64_t>(K, max_centers) * (R + 1) * 8;
  const int64_t cell_lists = (2 * cells + 1) * 4;
  const int64_t per_sample = 4 * cuda::kStateSlots + 4 + 4;  // state, num_roots, free_low
  return {P * per_pixel + K * per_cluster + sums + cell_lists + per_sample + outputs, outputs};
}

// Device memory a call may use: the device's free memory and what torch's caching allocator
// holds without using (it frees its cache and retries before it fails), less a tenth and
// 64 MiB for fragmentation, the allocator's rounding of some 30 tensors and the scan's
// temporaries. An allocator without statistics (CUDAPluggableAllocator: RMM and others)
// counts no cache. GSWFAST_SLIC_CUDA_FREE_BYTES (a whole number of bytes) stands in for
// the result, so that the tests can make it small.
int64_t usable_device_bytes(const at::Device& device) {
  if (const char* given = std::getenv("GSWFAST_SLIC_CUDA_FREE_BYTES")) {
    char* rest = nullptr;
    const long long value = std::strtoll(given, &rest, 10);
    TORCH_CHECK(rest != given && *rest == '\0' && value >= 0,
                "GSWFAST_SLIC_CUDA_FREE_BYTES: expected a whole number of bytes, got '", given,
                "'");
    return value;
  }
  size_t free_bytes = 0, total_bytes = 0;
  C10_CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
  int64_t cached = 0;
  try {
    const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(device.index());
    constexpr size_t kAggregate = 0;  // StatType::AGGREGATE (its namespace moved in torch)
    cached = stats.reserved_bytes[kAggregate].current - stats.allocated_bytes[kAggregate].current;
  } catch (const c10::Error&) {
    cached = 0;
  }
  constexpr int64_t kSlack = int64_t{64} << 20;
  const int64_t usable = (static_cast<int64_t>(free_bytes) + std::max<int64_t>(cached, 0)) / 10 * 9;
  return std::max<int64_t>(usable - kSlack, 0);
}

// Samples per piece that the device's memory holds (at least one), else an out-of-memory
// error that names the memory needed and what the device has. Checks the arguments first
// (make_geometry on the first sample), so that no unchecked size reaches the arithmetic.
// A call in several pieces keeps the finished pieces' outputs while the next piece runs,
// then concatenates them (twice the outputs of the batch).
int64_t piece_samples(const at::Tensor& image, const std::optional<at::Tensor>& init_centers,
                      const std::optional<at::Tensor>& init_counts,
                      const std::optional<at::Tensor>& init_labels, at::IntArrayRef grid,
                      at::ArrayRef<double> weights, double compactness, bool convert_lab,
                      int64_t max_iter, double tol, bool connectivity, int64_t min_size,
                      int64_t max_centers, const std::optional<at::Tensor>& mask) {
  TORCH_CHECK(image.dim() == 5 && image.size(0) > 0,
              "image: expected [N, C, D, H, W] with N >= 1, got ", image.sizes());
  auto first = [](const std::optional<at::Tensor>& t) -> std::optional<at::Tensor> {
    if (!t || t->dim() == 0 || t->size(0) < 1) return t;
    return t->narrow(0, 0, 1);
  };
  const int64_t N = image.size(0);
  const Geometry g = make_geometry(image.narrow(0, 0, 1), first(init_centers), first(init_counts),
                                   first(init_labels), grid, weights, compactness, convert_lab,
                                   max_iter, tol, connectivity, min_size, max_centers, first(mask));
  const SampleBytes one = device_bytes_per_sample(g);
  const int64_t usable = usable_device_bytes(image.device());
  constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;
  TORCH_CHECK_WITH(OutOfMemoryError, one.scratch <= usable, "slic: one sample of ", g.P,
                   " pixels needs ", static_cast<double>(one.scratch) / kGiB,
                   " GiB of scratch memory on ", image.device(), ", which has ",
                   static_cast<double>(usable) / kGiB,
                   " GiB free for it (free memory and torch's cache, less a tenth and 64 MiB); "
                   "segment on the CPU, or free memory on the device");
  if (N <= usable / one.scratch) return N;  // one piece
  const int64_t left = usable - 2 * N * one.outputs;
  TORCH_CHECK_WITH(
      OutOfMemoryError, left >= one.scratch - one.outputs, "slic: ", N, " samples of ", g.P,
      " pixels need ", static_cast<double>(2 * N * one.outputs + one.scratch) / kGiB, " GiB on ",
      image.device(),
      " (their outputs twice, to concatenate, and one "
      "sample's scratch), which has ",
      static_cast<double>(usable) / kGiB, " GiB free for it; call slic on fewer samples at a time");
  return std::max<int64_t>(1, left / (one.scratch - one.outputs));
}

SlicOutputs slic_cuda(const at::Tensor& image, const std::optional<at::Tensor>& init_centers,
                      const std::optional<at::Tensor>& init_counts,
                      const std::optional<at::Tensor>& init_labels, at::IntArrayRef grid,
                      at::ArrayRef<double> weights, double compactness, bool convert_lab,
                      int64_t max_iter, double tol, bool connectivity, int64_t min_size,
                      int64_t max_centers, const std::optional<at::Tensor>& mask) {
  TORCH_CHECK(image.is_cuda(), "image: expected a CUDA tensor, got ", image.device());
  const c10::cuda::CUDAGuard guard(image.device());
  const int64_t samples =
      piece_samples(image, init_centers, init_counts, init_labels, grid, weights, compactness,
                    convert_lab, max_iter, tol, connectivity, min_size, max_centers, mask);
  return slic_in_chunks(&slic_cuda_chunk, kMaxCudaPixels, samples, image, init_centers, init_counts,
                        init_labels, grid, weights, compactness, convert_lab, max_iter, tol,
                        connectivity, min_size, max_centers, mask);
}

}  // namespace

TORCH_LIBRARY_IMPL(gswfast, CUDA, m) { m.impl("slic", &slic_cuda); }

}  // namespace slic
}  // namespace gswfast
