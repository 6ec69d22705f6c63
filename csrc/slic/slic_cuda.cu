// CUDA kernels of SLIC (raw pointers, no ATen). See slic.h for the contract and
// slic_cuda.cpp for the tensor glue. Each stage mirrors the CPU twin in slic_cpu.cpp:
//
// * assignment is pixel-centric: a thread scans the clusters binned in the 3 x 3 (x 3)
//   cells around its pixel, keeps those whose window (|offset| <= step) holds it, and
//   takes the nearest, ties to the lower index (the CPU lets clusters claim their windows
//   in ascending order: the same rule);
// * every sum (cluster and component statistics, centres) is an integer sum (coordinates,
//   features in 2^-16 fixed point) added with warp-aggregated integer atomics, so results
//   are bitwise reproducible whatever the scheduling;
// * connected components use union-find with atomicMin links (root = lowest index, the
//   CPU's rule), and small components merge round by round as on the CPU;
// * per-sample flags (converged, still merging) live on the device, so nothing is copied
//   back to the host: kernels of a finished sample return at once, and once every sample
//   has left a loop (k-means passes, merge rounds) the host stops enqueuing it, told by a
//   host-mapped flag that it reads without waiting on the GPU (early exit, below).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <c10/cuda/CUDAException.h>  // launch checks only (c10, not ATen)

#include <atomic>
#include <cstdint>
#include <mutex>
#include <type_traits>
#include <unordered_map>
#include <vector>

#include "slic.h"

namespace gswfast {
namespace slic {
namespace cuda {
namespace {

constexpr int kThreads = 256;
// Per-sample state [N, kSlots]; kAfterConverged: a subsampled pass met the tolerance, so
// the next pass is full (pass_is_full); kArea: the sample's in-mask pixels (with a mask).
enum State {
  kDone = 0,
  kChanged = 1,
  kMerging = 2,
  kMerged = 3,
  kAfterConverged = 4,
  kArea = 5,
  kSlots = kStateSlots
};
static_assert(kArea < kSlots, "slic.h's kStateSlots counts the State slots");
// Slots of Buffers::finished: samples that left the k-means loop, the merge loop.
enum Loop { kIterationLoop = 0, kMergeLoop = 1 };
static_assert(kMergeLoop < kLoops, "slic.h's kLoops counts the loops");

unsigned blocks_for(int64_t n) { return static_cast<unsigned>((n + kThreads - 1) / kThreads); }

// Grid of (pixel blocks, sample slots): every block belongs to one sample at a time, and
// the kernels loop over samples blockIdx.y, blockIdx.y + gridDim.y, ... (gridDim.y is at
// most 65535).
constexpr int64_t kMaxGridY = 65535;
dim3 pixel_grid(const Geometry& g) {
  return dim3(blocks_for(g.P), static_cast<unsigned>(g.N < kMaxGridY ? g.N : kMaxGridY));
}

__device__ __forceinline__ void pixel_coords(const Geometry& g, int64_t p, int32_t* z, int32_t* y,
                                             int32_t* x) {
  *x = static_cast<int32_t>(p % g.W);
  *y = static_cast<int32_t>((p / g.W) % g.H);
  *z = static_cast<int32_t>(p / (int64_t{g.W} * g.H));
}

// Sum of v over the lanes of `group` (all lanes of the group get it).
__device__ __forceinline__ int32_t group_sum(unsigned group, int32_t v) {
#if __CUDA_ARCH__ >= 800
  return static_cast<int32_t>(__reduce_add_sync(group, static_cast<unsigned>(v)));
#else
  int32_t sum = 0;
  for (int lane = 0; lane < 32; ++lane) {
    const int32_t other = __shfl_sync(0xFFFFFFFFu, v, lane);
    if (group & (1u << lane)) sum += other;
  }
  return sum;
#endif
}

__device__ __forceinline__ void atomic_add_i64(int64_t* address, int64_t v) {
  atomicAdd(reinterpret_cast<unsigned long long*>(address), static_cast<unsigned long long>(v));
}

// Sum of a 64-bit v over the lanes of `group`, exact for |v| < 2^42 (fixed-point features
// stay below 2^32, coordinates below 2^31): v = hi * 2^16 + lo with 0 <= lo < 2^16, and
// each half is summed in 32 bits without overflow over 32 lanes.
__device__ __forceinline__ int64_t group_sum64(unsigned group, int64_t v) {
  const int32_t hi = static_cast<int32_t>(v >> 16);
  const int32_t lo = static_cast<int32_t>(v & 0xFFFF);
  return static_cast<int64_t>(group_sum(group, hi)) * 65536 + group_sum(group, lo);
}

// Warp-aggregated integer sums into the rows of a table: lanes with equal keys are one
// group (found once per pixel), each group sums its values in the warp and its first lane
// adds them atomically. Integer sums: any order gives the same result. Built by all 32
// lanes; key < 0 contributes nothing.
struct WarpRow {
  unsigned group;
  bool leader;
  int64_t* row;  // slot + key * stride, or null
  // All lanes call add for the same columns in the same order.
  __device__ __forceinline__ void add(int32_t column, int64_t value) const {
    const int64_t sum = group_sum64(group, value);
    if (leader) atomic_add_i64(row + column, sum);
  }
  __device__ __forceinline__ void add_count(int32_t column) const {
    const int32_t sum = group_sum(group, 1);
    if (leader) atomic_add_i64(row + column, sum);
  }
};

__device__ __forceinline__ WarpRow warp_row(int64_t* slot, int64_t key, int32_t stride) {
  WarpRow r;
  r.group = __match_any_sync(0xFFFFFFFFu, key);
  r.leader = key >= 0 && static_cast<int>(threadIdx.x & 31) == __ffs(r.group) - 1;
  r.row = key >= 0 ? slot + key * stride : nullptr;
  return r;
}

// ------------------------------------------------------------------------- features

template <typename T>
__device__ __forceinline__ float unit_value(T v);
template <>
__device__ __forceinline__ float unit_value<uint8_t>(uint8_t v) {
  return static_cast<float>(v) * (1.f / 255.f);
}
template <>
__device__ __forceinline__ float unit_value<__half>(__half v) {
  return __half2float(v);
}
template <>
__device__ __forceinline__ float unit_value<__nv_bfloat16>(__nv_bfloat16 v) {
  return __bfloat162float(v);
}
template <>
__device__ __forceinline__ float unit_value<float>(float v) {
  return v;
}
template <>
__device__ __forceinline__ float unit_value<double>(double v) {
  return static_cast<float>(v);
}

// sRGB decodes through the generated tables, as on the CPU: uint8 through kSrgbU8 (copied
// to shared memory: threads of a warp read different entries, which constant memory would
// serialise), floats through kSrgbFloat (global memory, 16 KiB, cached).
template <typename T>
__global__ void features_kernel(Geometry g, const T* __restrict__ image, float* __restrict__ feat) {
  __shared__ float srgb_u8[256];
  if constexpr (std::is_same_v<T, uint8_t>) {
    for (int j = threadIdx.x; j < 256; j += blockDim.x) srgb_u8[j] = kSrgbU8[j];
    __syncthreads();
  }
  const int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (i >= g.N * g.P) return;
  const int64_t n = i / g.P, p = i % g.P;
  const T* src = image + n * g.C * g.P + p;
  float* dst = feat + n * g.F * g.P + p;
  auto linear = [&](T v) -> float {
    if constexpr (std::is_same_v<T, uint8_t>) {
      return srgb_u8[v];
    } else {
      return srgb_float_to_linear(kSrgbFloat, unit_value(v));
    }
  };
  if (g.convert_lab) {
    float L, A, B;
    linear_rgb_to_lab(linear(src[0]), linear(src[g.P]), linear(src[2 * g.P]), &L, &A, &B);
    dst[0] = clamp_feature(L);
    dst[g.P] = clamp_feature(A);
    dst[2 * g.P] = clamp_feature(B);
  } else {
    for (int32_t c = 0; c < g.C; ++c) dst[c * g.P] = clamp_feature(unit_value(src[c * g.P]));
  }
}

// Cold start: each grid seed moves to the lowest gradient of its 3x3 neighbourhood.
__global__ void seed_kernel(Geometry g, const float* __restrict__ features, float* clusters,
                            int32_t* counts) {
  const int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (i >= g.N * g.K) return;
  const int64_t n = i / g.K;
  const bool live = seed_center(g, features + n * g.F * g.P, g.mask ? g.mask + n * g.P : nullptr,
                                static_cast<int32_t>(i % g.K), clusters + i * (3 + g.F));
  counts[i] = live ? 1 : 0;
}

// Warm start: live clusters and each pixel's starting cluster (-1 when not a live one).
__global__ void warm_counts_kernel(Geometry g, const int32_t* init_counts, int32_t* counts) {
  const int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (i < g.N * g.K) counts[i] = init_counts[i] > 0 ? 1 : 0;
}

__global__ void warm_labels_kernel(Geometry g, const int32_t* init_labels, const int32_t* counts,
                                   int32_t* labels) {
  const int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (i >= g.N * g.P) return;
  const int32_t k = init_labels[i];
  labels[i] = (k >= 0 && k < g.K && counts[(i / g.P) * g.K + k] > 0 && in_mask(g, i)) ? k : -1;
}

// ------------------------------------------------------------------------- early exit

// Device side of a loop's early exit (the host side and the invariant: "early exit" below
// the kernels).
struct LoopSignal {
  int32_t* finished;  // samples of this call that left the loop (zeroed by the glue)
  uint32_t* flag;     // device address of this host thread's mapped flag, or null: no signal
  uint32_t token;     // this loop's token
};

// Counts a sample out of the loop (once per sample); the one that completes the call
// writes the loop's token into the host's flag. The fence only orders that write after
// this thread's earlier ones (it does not make it reach the host sooner), and nothing
// needs that ordering (see the invariant).
__device__ void count_finished(const LoopSignal& signal, int64_t N) {
  if (atomicAdd(signal.finished, 1) + 1 < N || signal.flag == nullptr) return;
  *static_cast<volatile uint32_t*>(signal.flag) = signal.token;
  __threadfence_system();
}

// ------------------------------------------------------------------------- iterations

__device__ __forceinline__ int32_t cell_index(const Geometry& g, const float* c) {
  const int32_t cz = cell_of(c[0], g.step[0], g.cells[0]);
  const int32_t cy = cell_of(c[1], g.step[1], g.cells[1]);
  const int32_t cx = cell_of(c[2], g.step[2], g.cells[2]);
  return (cz * g.cells[1] + cy) * g.cells[2] + cx;
}

// Exclusive prefix sum of v over the threads of a block of kThreads, in thread order;
// *total gets the block's sum. Every thread of the block calls it (it synchronises).
__device__ int32_t block_exclusive_scan(int32_t v, int32_t* total) {
  __shared__ int32_t buf[kThreads];
  const int t = threadIdx.x;
  buf[t] = v;
  __syncthreads();
  for (int offset = 1; offset < kThreads; offset <<= 1) {
    const int32_t add = t >= offset ? buf[t - offset] : 0;
    __syncthreads();
    buf[t] += add;
    __syncthreads();
  }
  const int32_t inclusive = buf[t];
  *total = buf[kThreads - 1];
  __syncthreads();  // buf is reused by the next call
  return inclusive - v;
}

// One block per sample: counting sort of the live clusters into the cells of their centres.
__global__ void bin_kernel(Geometry g, const float* clusters, const int32_t* counts,
                           const int32_t* state, int32_t* cell_start, int32_t* cell_cursor,
                           int32_t* cell_items) {
  const int64_t n = blockIdx.x;
  if (state[n * kSlots + kDone]) return;
  const int32_t R = 3 + g.F;
  const int32_t cells = g.cells[0] * g.cells[1] * g.cells[2];
  int32_t* start = cell_start + n * (cells + 1);
  int32_t* cursor = cell_cursor + n * cells;
  for (int32_t c = threadIdx.x; c <= cells; c += blockDim.x) start[c] = 0;
  __syncthreads();
  for (int32_t k = threadIdx.x; k < g.K; k += blockDim.x) {
    if (counts[n * g.K + k] > 0)
      atomicAdd(&start[cell_index(g, clusters + (n * g.K + k) * R) + 1], 1);
  }
  __syncthreads();
  // Prefix sum of the counts start[1..cells]: each thread sums a contiguous range of cells,
  // the block scans the range totals, then each thread writes its range.
  const int64_t per = (int64_t{cells} + kThreads - 1) / kThreads;
  const int64_t c0 = min(int64_t{cells}, int64_t{threadIdx.x} * per);
  const int64_t c1 = min(int64_t{cells}, c0 + per);
  int32_t local = 0;
  for (int64_t c = c0; c < c1; ++c) local += start[c + 1];
  int32_t total;
  int32_t run = block_exclusive_scan(local, &total);
  for (int64_t c = c0; c < c1; ++c) {
    run += start[c + 1];
    start[c + 1] = run;
  }
  __syncthreads();
  for (int32_t c = threadIdx.x; c < cells; c += blockDim.x) cursor[c] = start[c];
  __syncthreads();
  // The order inside a cell is not fixed, and need not be: the assignment's tie-break
  // (lower index) does not depend on it.
  for (int32_t k = threadIdx.x; k < g.K; k += blockDim.x) {
    if (counts[n * g.K + k] > 0) {
      const int32_t slot = atomicAdd(&cursor[cell_index(g, clusters + (n * g.K + k) * R)], 1);
      cell_items[n * g.K + slot] = k;
    }
  }
}

// The candidates of a pixel: the live clusters binned in the 3x3 (3x3x3) cells around its
// own. The cells of one (z, y) row are consecutive in cell_items, so each row of candidate
// cells is one contiguous range. kF > 0: the feature count, known when compiled (1 or 3, the
// common cases), so the pixel's features stay in registers (a runtime-indexed array would
// live in local memory); kF == 0 reads any F from global memory. The order of candidates
// does not matter: ties go to the lower cluster index.
template <int kF>
__device__ __forceinline__ void assign_sample(int64_t n, const Geometry& g,
                                              const float* __restrict__ features,
                                              const float* __restrict__ clusters,
                                              const int32_t* __restrict__ cell_start,
                                              const int32_t* __restrict__ cell_items, int32_t it,
                                              int32_t* state, int32_t* labels) {
  if (state[n * kSlots + kDone]) return;  // the whole block belongs to sample n
  const int64_t p = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  const bool full = pass_is_full(g, it, state[n * kSlots + kAfterConverged] != 0);
  int changed = 0;
  int32_t z = 0, y = 0, x = 0;
  if (p < g.P) pixel_coords(g, p, &z, &y, &x);
  // A subsampled pass reassigns the rows y % subsample == it % subsample only.
  // Pixels outside the mask are never assigned (they keep -1, as on the CPU).
  if (p < g.P && in_mask(g, n * g.P + p) && (full || y % g.subsample == it % g.subsample)) {
    const int32_t F = kF > 0 ? kF : g.F;
    const float* feat = features + n * int64_t{F} * g.P + p;
    float fv[kF > 0 ? kF : 1];
    if constexpr (kF > 0) {
#pragma unroll
      for (int32_t f = 0; f < kF; ++f) fv[f] = feat[f * g.P];
    }
    const int32_t cells = g.cells[0] * g.cells[1] * g.cells[2];
    const int32_t* start = cell_start + n * (cells + 1);
    const int32_t* items = cell_items + n * g.K;
    const int32_t cz = cell_of_pixel(z, g.step[0], g.cells[0]);
    const int32_t cy = cell_of_pixel(y, g.step[1], g.cells[1]);
    const int32_t cx = cell_of_pixel(x, g.step[2], g.cells[2]);
    const int32_t x_lo = max(cx - 1, 0), x_hi = min(cx + 1, g.cells[2] - 1);
    const int32_t R = 3 + F;
    const float* sample_clusters = clusters + n * g.K * int64_t{R};
    float best = __int_as_float(0x7f800000);  // +inf
    int32_t best_k = -1;
    for (int32_t iz = max(cz - 1, 0); iz <= min(cz + 1, g.cells[0] - 1); ++iz) {
      for (int32_t iy = max(cy - 1, 0); iy <= min(cy + 1, g.cells[1] - 1); ++iy) {
        const int32_t row = (iz * g.cells[1] + iy) * g.cells[2];
        const int32_t end = start[row + x_hi + 1];
        for (int32_t i = start[row + x_lo]; i < end; ++i) {
          const int32_t k = items[i];
          const float* cen = sample_clusters + int64_t{k} * R;
          if (!in_window(z, cen[0], g.step[0]) || !in_window(y, cen[1], g.step[1]) ||
              !in_window(x, cen[2], g.step[2])) {
            continue;
          }
          const float dz = static_cast<float>(z) - cen[0];
          const float dy = static_cast<float>(y) - cen[1];
          const float dx = static_cast<float>(x) - cen[2];
          float colour = 0.f;
          if constexpr (kF > 0) {
#pragma unroll
            for (int32_t f = 0; f < kF; ++f) colour = colour_step(colour, fv[f] - cen[3 + f]);
          } else {
            for (int32_t f = 0; f < F; ++f)
              colour = colour_step(colour, feat[f * g.P] - cen[3 + f]);
          }
          const float d = assignment_distance(g, colour, spatial_zy(g, dz, dy), dx);
          if (d < best || (d == best && k < best_k)) {
            best = d;
            best_k = k;
          }
        }
      }
    }
    const int32_t old = labels[n * g.P + p];
    const int32_t now = best_k >= 0 ? best_k : old;  // unclaimed pixels keep their cluster
    changed = now != old;
    labels[n * g.P + p] = now;
  }
  const int block_changed = __syncthreads_count(changed);
  if (threadIdx.x == 0 && block_changed) atomicAdd(&state[n * kSlots + kChanged], block_changed);
}

template <int kF>
__global__ void assign_kernel(Geometry g, const float* __restrict__ features,
                              const float* __restrict__ clusters, const int32_t* cell_start,
                              const int32_t* cell_items, int32_t it, int32_t* state,
                              int32_t* labels) {
  for (int64_t n = blockIdx.y; n < g.N; n += gridDim.y) {
    assign_sample<kF>(n, g, features, clusters, cell_start, cell_items, it, state, labels);
  }
}

void launch_assign(const Geometry& g, const Buffers& b, int32_t it, cudaStream_t stream) {
  const auto launch = [&](auto kernel) {
    kernel<<<pixel_grid(g), kThreads, 0, stream>>>(g, b.features, b.clusters, b.cell_start,
                                                   b.cell_items, it, b.state, b.labels);
  };
  if (g.F == 3) {
    launch(assign_kernel<3>);
  } else if (g.F == 1) {
    launch(assign_kernel<1>);
  } else {
    launch(assign_kernel<0>);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// With a mask: state[n, kArea] = the in-mask pixels of sample n (the glue zeroes state).
__global__ void mask_area_kernel(Geometry g, int32_t* state) {
  for (int64_t n = blockIdx.y; n < g.N; n += gridDim.y) {
    const int64_t p = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
    const int inside = __syncthreads_count(p < g.P && g.mask[n * g.P + p] != 0);
    if (threadIdx.x == 0 && inside) atomicAdd(&state[n * kSlots + kArea], inside);
  }
}

// Per sample, after an assignment: count the pass and stop once a full pass converged; a
// subsampled pass that meets the tolerance makes the next pass full (as on the CPU).
__global__ void step_kernel(Geometry g, int32_t it, int32_t* state, int32_t* iterations,
                            LoopSignal signal) {
  const int64_t n = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (n >= g.N || state[n * kSlots + kDone]) return;
  ++iterations[n];
  int32_t* st = state + n * kSlots;
  const int64_t changed = st[kChanged];
  const int64_t limit = max_changed(g, g.mask != nullptr ? st[kArea] : g.P);
  if (pass_is_full(g, it, st[kAfterConverged] != 0)) {
    if (changed <= limit) {
      st[kDone] = 1;  // never cleared: the sample has left the k-means loop
      count_finished(signal, g.N);
    }
  } else if (subsampled_converged(changed, limit)) {
    st[kAfterConverged] = 1;
  }
  st[kChanged] = 0;
}

__global__ void zero_sums_kernel(Geometry g, const int32_t* state, int64_t* sums, int32_t rows,
                                 bool skip_done) {
  const int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  const int32_t S = 4 + g.F;
  if (i >= g.N * rows * S) return;
  if (skip_done && state[(i / (int64_t{rows} * S)) * kSlots + kDone]) return;
  sums[i] = 0;
}

// sums[n, label, :] += (1, z, y, x, fixed features) over the sample's pixels.
__device__ __forceinline__ void accumulate_sample(int64_t n, const Geometry& g,
                                                  const float* __restrict__ features,
                                                  const int32_t* __restrict__ labels,
                                                  const int32_t* state, bool skip_done,
                                                  int32_t rows, int64_t* sums) {
  if (skip_done && state[n * kSlots + kDone]) return;
  const int64_t p = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  int64_t key = -1;
  int32_t z = 0, y = 0, x = 0;
  if (p < g.P) {
    const int32_t l = labels[n * g.P + p];
    if (l >= 0 && l < rows) key = n * rows + l;
    pixel_coords(g, p, &z, &y, &x);
  }
  const WarpRow row = warp_row(sums, key, 4 + g.F);
  row.add_count(0);
  row.add(1, z);
  row.add(2, y);
  row.add(3, x);
  for (int32_t f = 0; f < g.F; ++f) {
    row.add(4 + f, p < g.P ? to_fixed(features[(n * g.F + f) * g.P + p]) : 0);
  }
}

__global__ void accumulate_kernel(Geometry g, const float* __restrict__ features,
                                  const int32_t* __restrict__ labels, const int32_t* state,
                                  bool skip_done, int32_t rows, int64_t* sums) {
  for (int64_t n = blockIdx.y; n < g.N; n += gridDim.y) {
    accumulate_sample(n, g, features, labels, state, skip_done, rows, sums);
  }
}

// Means from the sums: the new cluster centres (an empty cluster dies and keeps its row).
__global__ void update_kernel(Geometry g, const int64_t* sums, const int32_t* state,
                              float* clusters, int32_t* counts) {
  const int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (i >= g.N * g.K || state[(i / g.K) * kSlots + kDone]) return;
  const int32_t S = 4 + g.F, R = 3 + g.F;
  const int64_t* s = sums + i * S;
  counts[i] = static_cast<int32_t>(s[0]);
  if (s[0] != 0) mean_row(s, g.F, clusters + i * R);
}

// A pixel no cluster ever claimed (a warm start's, or one whose cluster died in a
// subsampled first pass) joins the nearest live
// cluster (as on the CPU).
__global__ void fill_unassigned_kernel(Geometry g, const float* clusters, const int32_t* counts,
                                       int32_t* labels) {
  const int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (i >= g.N * g.P || labels[i] >= 0 || !in_mask(g, i)) return;
  const int64_t n = i / g.P;
  labels[i] = nearest_live_cluster(g, clusters + n * g.K * (3 + g.F), counts + n * g.K, i % g.P);
}

// ------------------------------------------------------------------------- components

__device__ __forceinline__ int32_t find_root(const int32_t* parent, int32_t a) {
  while (parent[a] != a) a = parent[a];
  return a;
}

// Union under the lower root (Playne & Hawick's atomicMin merge).
__device__ void merge_sets(int32_t* parent, int32_t a, int32_t b) {
  while (true) {
    a = find_root(parent, a);
    b = find_root(parent, b);
    if (a == b) return;
    if (a < b) {
      const int32_t old = atomicMin(&parent[b], a);
      if (old == b) return;
      b = old;
    } else {
      const int32_t old = atomicMin(&parent[a], b);
      if (old == a) return;
      a = old;
    }
  }
}

__global__ void ccl_init_kernel(Geometry g, int32_t* parent) {
  const int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (i < g.N * g.P) parent[i] = static_cast<int32_t>(i);
}

__global__ void ccl_merge_kernel(Geometry g, const int32_t* labels, int32_t* parent) {
  const int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (i >= g.N * g.P) return;
  int32_t z, y, x;
  pixel_coords(g, i % g.P, &z, &y, &x);
  const int32_t l = labels[i];
  if (l < 0) return;  // outside the mask: no component
  const int64_t plane = int64_t{g.H} * g.W;
  if (x > 0 && labels[i - 1] == l)
    merge_sets(parent, static_cast<int32_t>(i), static_cast<int32_t>(i - 1));
  if (y > 0 && labels[i - g.W] == l)
    merge_sets(parent, static_cast<int32_t>(i), static_cast<int32_t>(i - g.W));
  if (z > 0 && labels[i - plane] == l)
    merge_sets(parent, static_cast<int32_t>(i), static_cast<int32_t>(i - plane));
}

__global__ void compress_kernel(Geometry g, const int32_t* state, bool only_merging,
                                int32_t* parent) {
  const int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (i >= g.N * g.P) return;
  if (only_merging && !state[(i / g.P) * kSlots + kMerging]) return;
  parent[i] = find_root(parent, static_cast<int32_t>(i));
}

// Size and fixed-point feature sums of every component, by root.
__device__ __forceinline__ void component_stats_sample(int64_t n, const Geometry& g,
                                                       const float* __restrict__ features,
                                                       const int32_t* parent, const int32_t* labels,
                                                       int64_t* stats) {
  const int64_t p = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  const int64_t key = p < g.P && labels[n * g.P + p] >= 0 ? parent[n * g.P + p] : -1;
  const WarpRow row = warp_row(stats, key, 1 + g.F);
  row.add_count(0);
  for (int32_t f = 0; f < g.F; ++f) {
    row.add(1 + f, p < g.P ? to_fixed(features[(n * g.F + f) * g.P + p]) : 0);
  }
}

__global__ void component_stats_kernel(Geometry g, const float* __restrict__ features,
                                       const int32_t* parent, const int32_t* labels,
                                       int64_t* stats) {
  for (int64_t n = blockIdx.y; n < g.N; n += gridDim.y) {
    component_stats_sample(n, g, features, parent, labels, stats);
  }
}

__global__ void roots_kernel(Geometry g, const int32_t* parent, const int32_t* labels,
                             const int64_t* stats, int32_t* orig_size, uint8_t* was_root) {
  const int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (i >= g.N * g.P) return;
  const bool root = parent[i] == i && labels[i] >= 0;  // outside the mask: no set
  was_root[i] = root;
  orig_size[i] = root ? static_cast<int32_t>(stats[i * (1 + g.F)]) : 0;
}

__global__ void reset_best_kernel(Geometry g, const int32_t* parent, const int32_t* state,
                                  uint64_t* best) {
  const int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (i >= g.N * g.P || !state[(i / g.P) * kSlots + kMerging]) return;
  if (parent[i] == i) best[i] = ~0ull;
}

// Squared distance of two sets' mean features; _rn intrinsics keep the CPU's rounding
// (no fused multiply-add), so both backends take the same merge decisions.
__device__ float set_distance(const Geometry& g, const int64_t* stats, int64_t a, int64_t b) {
  const int32_t S = 1 + g.F;
  float d = 0.f;
  for (int32_t f = 0; f < g.F; ++f) {
    const float t = __fsub_rn(fixed_mean(stats[a * S + 1 + f], stats[a * S]),
                              fixed_mean(stats[b * S + 1 + f], stats[b * S]));
    d = __fadd_rn(d, __fmul_rn(t, t));
  }
  return d;
}

__device__ __forceinline__ void offer(const Geometry& g, const int64_t* stats, uint64_t* best,
                                      int64_t small, int64_t other, int64_t base) {
  if (stats[small * (1 + g.F)] >= g.min_size || !takes_more(g, stats[other * (1 + g.F)])) return;
  atomicMin(reinterpret_cast<unsigned long long*>(&best[small]),
            static_cast<unsigned long long>(pack_distance(set_distance(g, stats, small, other),
                                                          static_cast<uint32_t>(other - base))));
}

// Every edge between two sets offers each small side the other side.
__global__ void merge_edges_kernel(Geometry g, const int32_t* parent, const int32_t* labels,
                                   const int64_t* stats, const int32_t* state, uint64_t* best) {
  const int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (i >= g.N * g.P) return;
  const int64_t n = i / g.P;
  if (!state[n * kSlots + kMerging] || labels[i] < 0) return;
  int32_t z, y, x;
  pixel_coords(g, i % g.P, &z, &y, &x);
  const int64_t plane = int64_t{g.H} * g.W;
  const int64_t a = parent[i];
  const int64_t neighbours[3] = {x > 0 ? i - 1 : -1, y > 0 ? i - g.W : -1, z > 0 ? i - plane : -1};
#pragma unroll  // unrolled, neighbours stays in registers (indexed at run time: local memory)
  for (int j = 0; j < 3; ++j) {
    if (neighbours[j] < 0 || labels[neighbours[j]] < 0) continue;
    const int64_t b = parent[neighbours[j]];
    if (a == b) continue;
    offer(g, stats, best, a, b, n * g.P);
    offer(g, stats, best, b, a, n * g.P);
  }
}

// Links every small set of the round's snapshot to its choice. Whether i is a set is read
// from was_root (the roots at the start of the round), never from parent, which other
// threads' merge_sets change during this kernel: the links made, and so the partition, do
// not depend on thread timing (the CPU's rule, slic.h).
__global__ void merge_link_kernel(Geometry g, const int64_t* stats, const uint64_t* best,
                                  const uint8_t* was_root, int32_t* state, int32_t* parent) {
  const int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (i >= g.N * g.P) return;
  const int64_t n = i / g.P;
  if (!state[n * kSlots + kMerging] || !was_root[i]) return;
  if (stats[i * (1 + g.F)] >= g.min_size || best[i] == ~0ull) return;
  const int64_t target = n * g.P + static_cast<int64_t>(best[i] & 0xFFFFFFFFull);
  merge_sets(parent, static_cast<int32_t>(i), static_cast<int32_t>(target));
  state[n * kSlots + kMerged] = 1;
}

// Sets that stopped being roots hand their statistics to their new root.
__global__ void merge_fold_kernel(Geometry g, const int32_t* parent, const int32_t* state,
                                  uint8_t* was_root, int64_t* stats) {
  const int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (i >= g.N * g.P || !state[(i / g.P) * kSlots + kMerging]) return;
  if (!was_root[i] || parent[i] == i) return;
  was_root[i] = 0;
  const int32_t S = 1 + g.F;
  for (int32_t j = 0; j < S; ++j)
    atomic_add_i64(&stats[int64_t{parent[i]} * S + j], stats[i * S + j]);
}

__global__ void merge_step_kernel(Geometry g, int32_t* state, LoopSignal signal) {
  const int64_t n = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (n >= g.N || !state[n * kSlots + kMerging]) return;
  if (!state[n * kSlots + kMerged]) {
    state[n * kSlots + kMerging] = 0;  // never set again: the sample has left the merge loop
    count_finished(signal, g.N);
  }
  state[n * kSlots + kMerged] = 0;
}

// The largest original component of each cluster, and of each final set.
__global__ void largest_kernel(Geometry g, const int32_t* parent, const int32_t* orig_size,
                               const int32_t* cluster_labels, uint64_t* main_of,
                               uint64_t* largest) {
  const int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (i >= g.N * g.P || orig_size[i] == 0) return;
  const int64_t n = i / g.P;
  const uint64_t key = pack_size(orig_size[i], static_cast<uint32_t>(i - n * g.P));
  atomicMax(reinterpret_cast<unsigned long long*>(&main_of[n * g.K + cluster_labels[i]]),
            static_cast<unsigned long long>(key));
  atomicMax(reinterpret_cast<unsigned long long*>(&largest[parent[i]]),
            static_cast<unsigned long long>(key));
}

// Final sets: count them, and flag each as its cluster's main segment or as an extra.
__global__ void mark_kernel(Geometry g, const int32_t* parent, const uint64_t* largest,
                            const uint64_t* main_of, const int32_t* cluster_labels,
                            int32_t* has_main, int32_t* extra_rank, int32_t* num_roots) {
  const int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (i >= g.N * g.P || parent[i] != i || cluster_labels[i] < 0) return;
  const int64_t n = i / g.P;
  atomicAdd(&num_roots[n], 1);
  const int32_t k = cluster_labels[n * g.P + unpack_size_root(largest[i])];
  if (main_of[n * g.K + k] == largest[i])
    has_main[n * g.K + k] = 1;
  else
    extra_rank[i] = 1;
}

// Without connectivity every used cluster is a segment.
__global__ void used_clusters_kernel(Geometry g, const int32_t* labels, int32_t* has_main) {
  const int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (i < g.N * g.P && labels[i] >= 0) has_main[(i / g.P) * g.K + labels[i]] = 1;
}

// ------------------------------------------------------------------------- ids

// slot(j): the j-th id below num_segments left free by the main segments (slic_cpu.cpp,
// stable_ids): the free ids below K in ascending order, then K, K + 1, ...
__device__ __forceinline__ int32_t free_slot(const int32_t* free_list, int32_t free_low, int32_t K,
                                             int32_t j) {
  return j < free_low ? free_list[j] : K + (j - free_low);
}

// One block (of kThreads) per sample: ids of the main segments and the free-slot list,
// as the CPU's stable_ids, with block-wide counts and scans over the K clusters.
__global__ void id_table_kernel(Geometry g, const int32_t* has_main, const int32_t* num_roots,
                                bool connectivity, int32_t* free_list, int32_t* id_of_cluster,
                                int32_t* free_low_out, int64_t* num_segments) {
  const int64_t n = blockIdx.x;
  const int32_t* main = has_main + n * g.K;
  int32_t* free = free_list + n * g.K;
  int32_t local = 0;
  for (int32_t k = threadIdx.x; k < g.K; k += blockDim.x) local += main[k];
  int32_t mains;
  block_exclusive_scan(local, &mains);
  const int32_t count = connectivity ? num_roots[n] : mains;
  // The ids below min(count, K) no main segment holds, ascending.
  const int32_t low = min(count, g.K);
  int32_t free_low = 0;
  for (int32_t base = 0; base < low; base += kThreads) {
    const int32_t i = base + static_cast<int32_t>(threadIdx.x);
    const int32_t is_free = i < low && !main[i];
    int32_t chunk;
    const int32_t rank = block_exclusive_scan(is_free, &chunk);
    if (is_free) free[free_low + rank] = i;
    free_low += chunk;
  }
  __syncthreads();  // the free list is complete before free_slot reads it
  // Extras use slots [0, count - mains); mains of clusters k >= count take the next ones in
  // ascending k.
  int32_t next = count - mains;
  for (int32_t base = 0; base < g.K; base += kThreads) {
    const int32_t k = base + static_cast<int32_t>(threadIdx.x);
    const int32_t late = k < g.K && main[k] && k >= count;
    int32_t chunk;
    const int32_t rank = block_exclusive_scan(late, &chunk);
    if (k < g.K) {
      id_of_cluster[n * g.K + k] =
          main[k] ? (k < count ? k : free_slot(free, free_low, g.K, next + rank)) : -1;
    }
    next += chunk;
  }
  if (threadIdx.x == 0) {
    num_segments[n] = count;
    free_low_out[n] = free_low;
  }
}

__global__ void final_id_kernel(Geometry g, const int32_t* parent, const uint64_t* largest,
                                const uint64_t* main_of, const int32_t* cluster_labels,
                                const int32_t* id_of_cluster, const int32_t* extra_rank,
                                const int32_t* free_list, const int32_t* free_low,
                                int32_t* final_id) {
  const int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (i >= g.N * g.P || parent[i] != i || cluster_labels[i] < 0) return;
  const int64_t n = i / g.P;
  const int32_t k = cluster_labels[n * g.P + unpack_size_root(largest[i])];
  final_id[i] = main_of[n * g.K + k] == largest[i]
                    ? id_of_cluster[n * g.K + k]
                    : free_slot(free_list + n * g.K, free_low[n], g.K, extra_rank[i] - 1);
}

__global__ void relabel_kernel(Geometry g, const int32_t* parent, const int32_t* final_id,
                               const int32_t* id_of_cluster, bool connectivity, int32_t* labels) {
  const int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (i >= g.N * g.P || labels[i] < 0) return;  // outside the mask: stays -1
  labels[i] = connectivity ? final_id[parent[i]] : id_of_cluster[(i / g.P) * g.K + labels[i]];
}

__global__ void centers_kernel(Geometry g, const int64_t* sums, float* out) {
  const int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (i >= g.N * g.max_centers) return;
  const int32_t S = 4 + g.F, R = 3 + g.F;
  const int64_t* s = sums + i * S;
  if (s[0] != 0) mean_row(s, g.F, out + i * R);
}

template <typename T>
void launch_features(const Geometry& g, const Buffers& b, cudaStream_t stream) {
  features_kernel<T><<<blocks_for(g.N * g.P), kThreads, 0, stream>>>(
      g, static_cast<const T*>(b.image), b.features);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// ------------------------------------------------------------------------- early exit
//
// The k-means passes and the merge rounds are host loops of launches (6 per pass or round)
// whose kernels return at once for a sample that has left the loop: converged (kDone) or
// stopped merging (kMerging cleared). Small calls spend most of their time launching such
// empty kernels (a 16 x 112 x 112 clip: some 150 launches of a few microseconds each). So
// the host stops enqueuing a loop once every sample of the call has left it, without ever
// waiting on the GPU (no stream sync, no device-to-host copy: for large batches the host
// must keep enqueuing ahead of the GPU):
//
// * a sample leaves a loop once, in the loop's step kernel (step_kernel, merge_step_kernel),
//   and counts itself in Buffers::finished; the sample that brings the count to N writes
//   the loop's token into a flag: a word of pinned host memory mapped into the device, one
//   per host thread and device (thread_flag);
// * before enqueuing each pass or round, the host reads the flag (a relaxed atomic load, no
//   CUDA call) and stops when it holds this loop's token.
//
// Invariant: skipped launches are no-ops. Tokens are process-unique (next_token), so the
// flag holds this loop's token only once a kernel of this call has counted all N samples
// out of the loop. Every launch not yet enqueued would run after that kernel, on the same
// stream, and no sample re-enters a loop (kDone is never cleared, kMerging never set
// again), so each skipped kernel would have returned at once for every sample: results,
// `iterations` included, cannot change. Everything else errs towards launching: a flag
// read before the GPU's write arrives, overwritten by a late write of an earlier call
// (another stream of this thread), or unavailable only skips fewer launches, so no
// ordering of the mapped write against other memory is needed (the host reads nothing
// else). While the stream is captured into a CUDA graph nothing is skipped and no kernel
// gets a flag: the graph must replay every pass (captured kernels do not run, so no token
// could arrive during capture anyway; without a flag, replays write no host memory).

// A word of pinned host memory mapped into one device.
struct MappedFlag {
  uint32_t* host = nullptr;  // null: none (the loops launch every pass)
  uint32_t* device = nullptr;
};

// A new flag for the current device `device`, or none where it cannot map host memory or
// any step fails (then calls simply launch every pass). The thread's graph-capture mode is
// relaxed around the allocation, as PyTorch's allocator does: a capture in global mode on
// another thread would otherwise forbid cudaHostAlloc here (and be invalidated). The flag
// is optional, so no error escapes: each return code is checked here, the thread's own
// capture mode is put back whenever it was changed, and the error is cleared (it is not
// the caller's: the call runs without early exit).
MappedFlag allocate_flag(int device) {
  int can_map = 0;
  if (cudaDeviceGetAttribute(&can_map, cudaDevAttrCanMapHostMemory, device) != cudaSuccess ||
      !can_map) {
    (void)cudaGetLastError();
    return {};
  }
  cudaStreamCaptureMode mode = cudaStreamCaptureModeRelaxed;
  if (cudaThreadExchangeStreamCaptureMode(&mode) != cudaSuccess) {
    (void)cudaGetLastError();  // the mode did not change: nothing to put back
    return {};
  }
  void* host = nullptr;
  void* mapped = nullptr;
  cudaError_t error = cudaHostAlloc(&host, sizeof(uint32_t), cudaHostAllocMapped);
  if (error == cudaSuccess) {
    error = cudaHostGetDevicePointer(&mapped, host, 0);
    if (error != cudaSuccess) (void)cudaFreeHost(host);  // no kernel has seen it
  }
  // The thread's own mode again, whether or not the allocation worked. Should this fail,
  // the flag is not used and its word is left allocated: freeing it is no longer known to
  // be allowed (a capture in global mode on another thread).
  const cudaError_t restored = cudaThreadExchangeStreamCaptureMode(&mode);
  if (error != cudaSuccess || restored != cudaSuccess) {
    (void)cudaGetLastError();
    return {};
  }
  *static_cast<uint32_t*>(host) = 0;  // no token is 0 (no kernel has seen the flag yet)
  return {static_cast<uint32_t*>(host), static_cast<uint32_t*>(mapped)};
}

// Flags by device, shared by the host threads. Never freed: a kernel still queued when its
// thread exits may write its flag later. A thread's flags return here when it exits and
// serve the next thread, which is safe since tokens are process-unique.
class FlagPool {
 public:
  MappedFlag take(int device) {
    {
      const std::lock_guard<std::mutex> lock(mutex_);
      std::vector<MappedFlag>& free = free_[device];
      if (!free.empty()) {
        const MappedFlag flag = free.back();
        free.pop_back();
        return flag;
      }
    }
    return allocate_flag(device);
  }
  void give_back(int device, MappedFlag flag) {
    if (flag.host == nullptr) return;
    const std::lock_guard<std::mutex> lock(mutex_);
    free_[device].push_back(flag);
  }

 private:
  std::mutex mutex_;
  std::unordered_map<int, std::vector<MappedFlag>> free_;
};

FlagPool& flag_pool() {
  static FlagPool* pool = new FlagPool;  // never destroyed: threads may exit after statics
  return *pool;
}

// The calling thread's flags, one per device, taken on first use and given back when the
// thread exits. Per thread, so that calls running at once on other threads do not
// overwrite each other's tokens.
class ThreadFlags {
 public:
  MappedFlag get(int device) {
    auto it = flags_.find(device);
    if (it == flags_.end()) it = flags_.emplace(device, flag_pool().take(device)).first;
    return it->second;
  }
  ~ThreadFlags() {
    for (const auto& entry : flags_) flag_pool().give_back(entry.first, entry.second);
  }

 private:
  std::unordered_map<int, MappedFlag> flags_;
};

MappedFlag thread_flag(int device) {
  thread_local ThreadFlags flags;
  return flags.get(device);
}

// A token no other loop of this process has had (until the 32-bit counter wraps, which
// would need a kernel to stay queued for 2^32 loops), never 0.
uint32_t next_token() {
  static std::atomic<uint32_t> counter{0};
  uint32_t token = 0;
  while (token == 0) token = counter.fetch_add(1, std::memory_order_relaxed) + 1;
  return token;
}

// Whether `stream` is being captured into a CUDA graph; when CUDA cannot tell (the legacy
// stream while another stream captures), assume it is.
bool capturing(cudaStream_t stream) {
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  if (cudaStreamIsCapturing(stream, &status) != cudaSuccess) {
    (void)cudaGetLastError();
    return true;
  }
  return status != cudaStreamCaptureStatusNone;
}

// The host side of one loop's early exit; `finished` is the loop's Buffers::finished slot.
class EarlyExit {
 public:
  EarlyExit(cudaStream_t stream, int32_t* finished) : signal_{finished, nullptr, 0} {
    if (capturing(stream)) return;
    int device = 0;
    C10_CUDA_CHECK(cudaGetDevice(&device));  // the glue's CUDAGuard: the tensors' device
    const MappedFlag flag = thread_flag(device);
    host_flag_ = flag.host;
    signal_.flag = flag.device;
    signal_.token = next_token();
  }
  // For the loop's step kernel.
  LoopSignal signal() const { return signal_; }
  // Whether every sample has left the loop, so that every further launch of it is a no-op.
  // The flag is read with a relaxed atomic load: the GPU writes it at any time, and the
  // host reads nothing else that the write would have to be ordered with.
  bool reached() const {
    return host_flag_ != nullptr && __atomic_load_n(host_flag_, __ATOMIC_RELAXED) == signal_.token;
  }

 private:
  const uint32_t* host_flag_ = nullptr;
  LoopSignal signal_;
};

}  // namespace

void launch_features_and_seeds(const Geometry& g, const Buffers& b, void* stream_ptr) {
  auto stream = static_cast<cudaStream_t>(stream_ptr);
  switch (b.image_dtype) {
    case 0:
      launch_features<uint8_t>(g, b, stream);
      break;
    case 1:
      launch_features<__half>(g, b, stream);
      break;
    case 2:
      launch_features<__nv_bfloat16>(g, b, stream);
      break;
    case 3:
      launch_features<float>(g, b, stream);
      break;
    default:
      launch_features<double>(g, b, stream);
      break;
  }
  if (g.warm) {
    // The glue copied init_centers into clusters.
    warm_counts_kernel<<<blocks_for(g.N * g.K), kThreads, 0, stream>>>(g, b.init_counts, b.counts);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    warm_labels_kernel<<<blocks_for(g.N * g.P), kThreads, 0, stream>>>(g, b.init_labels, b.counts,
                                                                       b.labels);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  } else {
    seed_kernel<<<blocks_for(g.N * g.K), kThreads, 0, stream>>>(g, b.features, b.clusters,
                                                                b.counts);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    C10_CUDA_CHECK(cudaMemsetAsync(b.labels, 0xFF, sizeof(int32_t) * g.N * g.P, stream));
  }
}

void launch_iterations(const Geometry& g, const Buffers& b, void* stream_ptr) {
  auto stream = static_cast<cudaStream_t>(stream_ptr);
  const int32_t S = 4 + g.F;
  if (g.mask != nullptr) {
    mask_area_kernel<<<pixel_grid(g), kThreads, 0, stream>>>(g, b.state);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  const EarlyExit early_exit(stream, b.finished + kIterationLoop);
  for (int32_t it = 0; it < g.max_iter && !early_exit.reached(); ++it) {
    bin_kernel<<<static_cast<unsigned>(g.N), kThreads, 0, stream>>>(
        g, b.clusters, b.counts, b.state, b.cell_start, b.cell_cursor, b.cell_items);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    launch_assign(g, b, it, stream);
    step_kernel<<<blocks_for(g.N), kThreads, 0, stream>>>(g, it, b.state, b.iterations,
                                                          early_exit.signal());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    zero_sums_kernel<<<blocks_for(g.N * g.K * S), kThreads, 0, stream>>>(g, b.state, b.sums, g.K,
                                                                         true);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    accumulate_kernel<<<pixel_grid(g), kThreads, 0, stream>>>(g, b.features, b.labels, b.state,
                                                              true, g.K, b.sums);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    update_kernel<<<blocks_for(g.N * g.K), kThreads, 0, stream>>>(g, b.sums, b.state, b.clusters,
                                                                  b.counts);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  fill_unassigned_kernel<<<blocks_for(g.N * g.P), kThreads, 0, stream>>>(g, b.clusters, b.counts,
                                                                         b.labels);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  C10_CUDA_CHECK(cudaMemcpyAsync(b.cluster_labels, b.labels, sizeof(int32_t) * g.N * g.P,
                                 cudaMemcpyDeviceToDevice, stream));
}

void launch_mark_segments(const Geometry& g, const Buffers& b, void* stream_ptr) {
  auto stream = static_cast<cudaStream_t>(stream_ptr);
  const unsigned pixel_blocks = blocks_for(g.N * g.P);
  if (!g.connectivity) {
    used_clusters_kernel<<<pixel_blocks, kThreads, 0, stream>>>(g, b.labels, b.has_main);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return;
  }
  ccl_init_kernel<<<pixel_blocks, kThreads, 0, stream>>>(g, b.parent);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  ccl_merge_kernel<<<pixel_blocks, kThreads, 0, stream>>>(g, b.labels, b.parent);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  compress_kernel<<<pixel_blocks, kThreads, 0, stream>>>(g, b.state, false, b.parent);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  component_stats_kernel<<<pixel_grid(g), kThreads, 0, stream>>>(g, b.features, b.parent, b.labels,
                                                                 b.stats);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  roots_kernel<<<pixel_blocks, kThreads, 0, stream>>>(g, b.parent, b.labels, b.stats, b.orig_size,
                                                      b.was_root);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (g.min_size > 1) {
    const EarlyExit early_exit(stream, b.finished + kMergeLoop);
    for (int32_t round = 0; round < kMergeRounds && !early_exit.reached(); ++round) {
      reset_best_kernel<<<pixel_blocks, kThreads, 0, stream>>>(g, b.parent, b.state, b.best);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      merge_edges_kernel<<<pixel_blocks, kThreads, 0, stream>>>(g, b.parent, b.labels, b.stats,
                                                                b.state, b.best);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      merge_link_kernel<<<pixel_blocks, kThreads, 0, stream>>>(g, b.stats, b.best, b.was_root,
                                                               b.state, b.parent);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      compress_kernel<<<pixel_blocks, kThreads, 0, stream>>>(g, b.state, true, b.parent);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      merge_fold_kernel<<<pixel_blocks, kThreads, 0, stream>>>(g, b.parent, b.state, b.was_root,
                                                               b.stats);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      merge_step_kernel<<<blocks_for(g.N), kThreads, 0, stream>>>(g, b.state, early_exit.signal());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  }
  C10_CUDA_CHECK(cudaMemsetAsync(b.best, 0, sizeof(uint64_t) * g.N * g.P, stream));
  largest_kernel<<<pixel_blocks, kThreads, 0, stream>>>(g, b.parent, b.orig_size, b.cluster_labels,
                                                        b.main_of, b.best);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  mark_kernel<<<pixel_blocks, kThreads, 0, stream>>>(
      g, b.parent, b.best, b.main_of, b.cluster_labels, b.has_main, b.extra_rank, b.num_roots);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void launch_finish(const Geometry& g, const Buffers& b, void* stream_ptr) {
  auto stream = static_cast<cudaStream_t>(stream_ptr);
  const unsigned pixel_blocks = blocks_for(g.N * g.P);
  id_table_kernel<<<static_cast<unsigned>(g.N), kThreads, 0, stream>>>(
      g, b.has_main, b.num_roots, g.connectivity, b.free_list, b.id_of_cluster, b.free_low,
      b.num_segments);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (g.connectivity) {
    final_id_kernel<<<pixel_blocks, kThreads, 0, stream>>>(
        g, b.parent, b.best, b.main_of, b.cluster_labels, b.id_of_cluster, b.extra_rank,
        b.free_list, b.free_low, b.final_id);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  relabel_kernel<<<pixel_blocks, kThreads, 0, stream>>>(g, b.parent, b.final_id, b.id_of_cluster,
                                                        g.connectivity, b.labels);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  // Centres: exact means of the final labels, with or without connectivity.
  const int32_t S = 4 + g.F;
  zero_sums_kernel<<<blocks_for(g.N * g.max_centers * S), kThreads, 0, stream>>>(
      g, b.state, b.sums, g.max_centers, false);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  accumulate_kernel<<<pixel_grid(g), kThreads, 0, stream>>>(g, b.features, b.labels, b.state, false,
                                                            g.max_centers, b.sums);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  centers_kernel<<<blocks_for(g.N * g.max_centers), kThreads, 0, stream>>>(g, b.sums,
                                                                           b.out_centers);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace cuda
}  // namespace slic
}  // namespace gswfast
