// CUDA kernels of segment pooling (raw pointers, no ATen). See segment_pool.h for the
// contract; segment_pool_cuda.cpp is the tensor glue.
//
// segment_pool, pass 1 (pool_tiles_kernel): one block per (sample, tile, label chunk,
// channel chunk). Each warp owns a private histogram in shared memory, so shared-memory
// updates never race. A lane reads kVec consecutive pixels (16-byte loads where aligned),
// merges runs of equal labels in registers, then the warp combines equal labels across
// lanes (__match_any_sync + a fixed shuffle tree) and one leader lane per label updates the
// warp histogram. SLIC labels come in runs along rows, so a warp step of 128 pixels usually
// needs only one or two such rounds. At the end the block adds its warp histograms in warp
// order and writes one partial per (tile, channel, label).
// segment_pool, pass 2 (finish_kernel): adds the tile partials in tile order, divides for
// the mean and writes the output dtype. Every order is fixed, so results are bitwise
// reproducible, and no floating-point atomic is used.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <stdexcept>
#include <string>

#include "segment_pool.h"

namespace gswfast::cuda {
namespace {

constexpr int kWarps = 8;
constexpr int kThreads = kWarps * 32;
// Build-time tuning knobs (CMake GSWFAST_POOL_VEC / GSWFAST_POOL_PREFETCH, see
// benchmarks/pool_variants.sh): pixels per lane per step, and whether the next step's
// loads are issued before the current step's shuffle rounds.
#ifndef GSWFAST_POOL_VEC
#define GSWFAST_POOL_VEC 4
#endif
#ifndef GSWFAST_POOL_PREFETCH
#define GSWFAST_POOL_PREFETCH 1
#endif
constexpr int kVec = GSWFAST_POOL_VEC;  // consecutive pixels per lane per step
constexpr bool kPrefetch = GSWFAST_POOL_PREFETCH != 0;
constexpr int kMaxChannels = 4;  // channels per block
constexpr int kSmemBytes =
    47 * 1024;  // dynamic, per block: with the static bytes under the 48 KB default
constexpr int64_t kMinTile = 4 * kThreads * kVec;  // amortises a block's histogram set-up
constexpr unsigned kFull = 0xffffffffu;

void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess)
    throw std::runtime_error(std::string("gswfast: CUDA error in ") + what + ": " +
                             cudaGetErrorString(err));
}

template <typename T>
struct AccOf {
  using type = float;
};
template <>
struct AccOf<double> {
  using type = double;
};

__device__ __forceinline__ float to_acc(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float to_acc(float v) { return v; }
__device__ __forceinline__ double to_acc(double v) { return v; }

template <typename T>
__device__ __forceinline__ T from_acc(float v) {
  return T(v);
}
template <>
__device__ __forceinline__ __half from_acc<__half>(float v) {
  return __float2half_rn(v);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}
template <typename T>
__device__ __forceinline__ T from_acc(double v) {
  return T(v);
}

template <typename T, int V>
struct alignas(sizeof(T) * V) Vec {
  T v[V];
};

// Sum, or max that lets NaN win (min is computed as max of negated values).
template <bool EXTREME, typename A>
__device__ __forceinline__ A combine(A a, A b) {
  if constexpr (EXTREME)
    return (a != a || a > b) ? a : b;
  else
    return a + b;
}

template <bool EXTREME, typename A>
__device__ __forceinline__ A identity() {
  if constexpr (EXTREME)
    return -INFINITY;
  else
    return A(0);
}

// Combines x and n over the lanes of `peers` (lanes holding the same label) with a fixed
// binary tree; the lowest lane of each group ends up with the group's total. The tree
// depends only on `peers`, so the result is deterministic.
template <bool EXTREME, int CC, typename A>
__device__ __forceinline__ void reduce_peers(unsigned peers, int lane, A (&x)[CC], int& n) {
  const unsigned below = (1u << lane) - 1u;
  int rank = __popc(peers & below);
  unsigned rest = peers & ~(below | (1u << lane));  // peers above this lane
  while (__any_sync(kFull, rest != 0)) {
    const int next = __ffs(rest);  // 1-based; 0 when none
    const int src = next ? next - 1 : lane;
#pragma unroll
    for (int c = 0; c < CC; ++c) {
      const A t = __shfl_sync(kFull, x[c], src);
      if (next) x[c] = combine<EXTREME>(x[c], t);
    }
    const int tn = __shfl_sync(kFull, n, src);
    if (next) n += tn;
    rest &= ~__ballot_sync(kFull, rank & 1);  // odd ranks were absorbed by their neighbour
    rank >>= 1;
  }
}

struct TileArgs {
  const void* values;
  int64_t stride_b, stride_c, stride_n;
  const void* labels;
  const int64_t* limits;
  int64_t channels, num_pixels, num_segments, tile, num_tiles;
  int label_chunk;
  bool vectorized;
  bool negate;               // min is computed as -max(-x)
  void* partial;             // [B, T, C, K] accumulator type
  int32_t* count_partial;    // [B, T, K]
  int32_t* invalid_partial;  // [B, T]: invalid labels per unit, written by blockIdx.y/z == 0
};

template <typename T, typename L, int CC>
struct StepData {
  L label[kVec];
  T value[CC][kVec];
};

// Loads kVec consecutive pixels starting at p (labels, and CC channels from c0): 16-byte
// vector loads where the layout allows, else element by element. Pixels at or past `end`
// get label -1; channels past C get 0.
template <typename T, typename L, int CC>
__device__ __forceinline__ void load_step(const TileArgs& a, const L* labels, const T* values,
                                          int64_t c0, int64_t p, int64_t end,
                                          StepData<T, L, CC>& d) {
  const bool vector = a.vectorized && p < end;
  if (vector) {
    const Vec<L, kVec> lv = *reinterpret_cast<const Vec<L, kVec>*>(labels + p);
#pragma unroll
    for (int j = 0; j < kVec; ++j) d.label[j] = lv.v[j];
  } else {
#pragma unroll
    for (int j = 0; j < kVec; ++j) d.label[j] = p + j < end ? labels[p + j] : L(-1);
  }
#pragma unroll
  for (int c = 0; c < CC; ++c) {
    const int64_t ch = c0 + c;
    const T* v = values + ch * a.stride_c;
    if (ch < a.channels && vector) {
      const Vec<T, kVec> vv = *reinterpret_cast<const Vec<T, kVec>*>(v + p);
#pragma unroll
      for (int j = 0; j < kVec; ++j) d.value[c][j] = vv.v[j];
    } else {
#pragma unroll
      for (int j = 0; j < kVec; ++j)
        d.value[c][j] = (ch < a.channels && p + j < end) ? v[(p + j) * a.stride_n] : T(0.0f);
    }
  }
}

template <typename T, typename L, int CC, bool EXTREME>
__global__ void __launch_bounds__(kThreads) pool_tiles_kernel(TileArgs a) {
  using A = typename AccOf<T>::type;
  extern __shared__ __align__(16) unsigned char smem[];
  const int kc = a.label_chunk;
  A* hist = reinterpret_cast<A*>(smem);                           // [warp][CC][kc]
  int* hcount = reinterpret_cast<int*>(hist + kWarps * CC * kc);  // [warp][kc]

  const int64_t b = blockIdx.x / a.num_tiles, t = blockIdx.x % a.num_tiles;
  const int64_t k0 = int64_t(blockIdx.y) * kc;
  const int64_t left = a.num_segments - k0;
  const int kc_here = int(left < kc ? left : int64_t(kc));
  const int64_t c0 = int64_t(blockIdx.z) * CC;
  const bool count_block = blockIdx.z == 0;
  const bool invalid_block = count_block && blockIdx.y == 0;

  for (int i = threadIdx.x; i < kWarps * CC * kc; i += kThreads) hist[i] = identity<EXTREME, A>();
  for (int i = threadIdx.x; i < kWarps * kc; i += kThreads) hcount[i] = 0;
  __syncthreads();

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  A* my_hist = hist + warp * CC * kc;
  int* my_count = hcount + warp * kc;
  const int64_t begin = t * a.tile;
  const int64_t end = min(begin + a.tile, a.num_pixels);
  const L* labels = static_cast<const L*>(a.labels) + b * a.num_pixels;
  const T* values = static_cast<const T*>(a.values) + b * a.stride_b;
  const uint64_t limit = label_limit(a.limits, b, a.num_segments);
  const A sign = a.negate ? A(-1) : A(1);
  int invalid = 0;

  // Software pipelining: the loads of the next step are issued before the current step's
  // shuffle rounds, so memory latency overlaps with them.
  const int64_t lane_offset = int64_t(threadIdx.x) * kVec;
  StepData<T, L, CC> next;
  if constexpr (kPrefetch) load_step(a, labels, values, c0, begin + lane_offset, end, next);
  for (int64_t step = begin; step < end; step += kThreads * kVec) {
    StepData<T, L, CC> cur;
    if constexpr (kPrefetch) {
      cur = next;
      if (step + kThreads * kVec < end)
        load_step(a, labels, values, c0, step + kThreads * kVec + lane_offset, end, next);
    } else {
      load_step(a, labels, values, c0, step + lane_offset, end, cur);
    }
    int lbl[kVec], cnt[kVec];
#pragma unroll
    for (int j = 0; j < kVec; ++j) {
      const int64_t raw = int64_t(cur.label[j]);
      const bool valid = uint64_t(raw) < limit;
      invalid += (!valid && raw != -1);
      const int64_t local = raw - k0;
      lbl[j] = (valid && local >= 0 && local < kc_here) ? int(local) : -1;
      cnt[j] = lbl[j] >= 0;
    }
    // Pixels with lbl == -1 (ignored, out of range, past the tile, other label chunk) and
    // channels past C are never written to the output, whatever their values.
    A val[CC][kVec];
#pragma unroll
    for (int c = 0; c < CC; ++c)
#pragma unroll
      for (int j = 0; j < kVec; ++j) val[c][j] = sign * to_acc(cur.value[c][j]);
    // Merge runs of equal labels inside the lane, last pixel into its left neighbour.
    unsigned pending = 0;
#pragma unroll
    for (int j = kVec - 1; j >= 1; --j) {
      if (lbl[j] >= 0 && lbl[j] == lbl[j - 1]) {
#pragma unroll
        for (int c = 0; c < CC; ++c) val[c][j - 1] = combine<EXTREME>(val[c][j - 1], val[c][j]);
        cnt[j - 1] += cnt[j];
        lbl[j] = -1;
      }
    }
#pragma unroll
    for (int j = 0; j < kVec; ++j) pending |= unsigned(lbl[j] >= 0) << j;
    // One round per run: each lane offers its next run; equal labels combine across lanes.
    while (__any_sync(kFull, pending != 0)) {
      const int j = pending ? __ffs(pending) - 1 : -1;
      pending &= pending - 1;
      int my_label = -1, n = 0;
      A x[CC];
#pragma unroll
      for (int c = 0; c < CC; ++c) x[c] = identity<EXTREME, A>();
#pragma unroll
      for (int jj = 0; jj < kVec; ++jj) {
        if (jj == j) {
          my_label = lbl[jj];
          n = cnt[jj];
#pragma unroll
          for (int c = 0; c < CC; ++c) x[c] = val[c][jj];
        }
      }
      const unsigned peers = __match_any_sync(kFull, my_label);
      reduce_peers<EXTREME, CC>(peers, lane, x, n);
      if (my_label >= 0 && __ffs(peers) - 1 == lane) {
#pragma unroll
        for (int c = 0; c < CC; ++c)
          my_hist[c * kc + my_label] = combine<EXTREME>(my_hist[c * kc + my_label], x[c]);
        my_count[my_label] += n;
      }
      __syncwarp();
    }
  }
  __syncthreads();

  // Add the warp histograms in warp order; write this tile's partials.
  const int64_t unit = b * a.num_tiles + t;
  A* partial = static_cast<A*>(a.partial);
  for (int i = threadIdx.x; i < CC * kc_here; i += kThreads) {
    const int c = i / kc_here, k = i % kc_here;
    if (c0 + c >= a.channels) continue;
    A r = identity<EXTREME, A>();
#pragma unroll
    for (int w = 0; w < kWarps; ++w) r = combine<EXTREME>(r, hist[(w * CC + c) * kc + k]);
    partial[(unit * a.channels + c0 + c) * a.num_segments + k0 + k] = r;
  }
  if (count_block) {
    for (int k = threadIdx.x; k < kc_here; k += kThreads) {
      int n = 0;
#pragma unroll
      for (int w = 0; w < kWarps; ++w) n += hcount[w * kc + k];
      a.count_partial[unit * a.num_segments + k0 + k] = n;
    }
  }
  if (invalid_block) {
    __shared__ int block_invalid;
    if (threadIdx.x == 0) block_invalid = 0;
    __syncthreads();
#pragma unroll
    for (int off = 16; off > 0; off /= 2) invalid += __shfl_xor_sync(kFull, invalid, off);
    if (lane == 0) atomicAdd(&block_invalid, invalid);  // integer: order does not matter
    __syncthreads();
    if (threadIdx.x == 0) a.invalid_partial[unit] = block_invalid;
  }
}

struct FinishArgs {
  const void* partial;             // [B, T, C, K] accumulator type
  const int32_t* count_partial;    // [B, T, K]
  const int32_t* invalid_partial;  // [B, T]
  int64_t batch, num_tiles, channels, num_segments;
  bool mean, negate;
  void* out;             // [B, C, K] value type
  int32_t* count;        // [B, K]
  int32_t* num_invalid;  // []
};

template <typename T, bool EXTREME>
__global__ void finish_kernel(FinishArgs f) {
  using A = typename AccOf<T>::type;
  const A* partial = static_cast<const A*>(f.partial);
  const int32_t* count_partial = f.count_partial;
  const int64_t batch = f.batch, num_tiles = f.num_tiles, channels = f.channels, K = f.num_segments;
  const int32_t* invalid_partial = f.invalid_partial;
  T* out = static_cast<T*>(f.out);
  int32_t* count = f.count;
  int32_t* num_invalid = f.num_invalid;
  const bool mean = f.mean, negate = f.negate;
  if (blockIdx.x == 0 && threadIdx.x < 32) {
    int64_t bad = 0;
    for (int64_t u = threadIdx.x; u < batch * num_tiles; u += 32) bad += invalid_partial[u];
#pragma unroll
    for (int off = 16; off > 0; off /= 2) bad += __shfl_xor_sync(kFull, bad, off);
    if (threadIdx.x == 0) *num_invalid = int32_t(bad < INT32_MAX ? bad : INT32_MAX);
  }
  const int64_t planes = channels > 0 ? channels : 1;
  const int64_t total = batch * planes * K;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t k = i % K, c = (i / K) % planes, b = i / (K * planes);
    int n = 0;
    for (int64_t t = 0; t < num_tiles; ++t) n += count_partial[(b * num_tiles + t) * K + k];
    if (c == 0) count[b * K + k] = n;
    if (channels == 0) continue;
    A r = identity<EXTREME, A>();
    for (int64_t t = 0; t < num_tiles; ++t)
      r = combine<EXTREME>(r, partial[((b * num_tiles + t) * channels + c) * K + k]);
    if (n == 0)
      r = A(0);
    else if (mean)
      r /= A(n);
    else if (negate)
      r = -r;
    out[(b * channels + c) * K + k] = from_acc<T>(r);
  }
}

using TilesKernel = void (*)(TileArgs);
using FinishKernel = void (*)(FinishArgs);

template <typename T, typename L, bool EXTREME>
TilesKernel tiles_kernel_for(int channel_chunk) {
  switch (channel_chunk) {
    case 1:
      return pool_tiles_kernel<T, L, 1, EXTREME>;
    case 2:
      return pool_tiles_kernel<T, L, 2, EXTREME>;
    case 3:
      return pool_tiles_kernel<T, L, 3, EXTREME>;
    default:
      return pool_tiles_kernel<T, L, 4, EXTREME>;
  }
}

template <typename T, bool EXTREME>
void pick_kernels(const PoolArgs& a, int channel_chunk, TilesKernel& tiles, FinishKernel& finish) {
  tiles = a.label_dtype == 1 ? tiles_kernel_for<T, int64_t, EXTREME>(channel_chunk)
                             : tiles_kernel_for<T, int32_t, EXTREME>(channel_chunk);
  finish = finish_kernel<T, EXTREME>;
}

template <typename T>
void pick_kernels_reduce(const PoolArgs& a, int channel_chunk, TilesKernel& tiles,
                         FinishKernel& finish) {
  if (a.reduce == Reduce::Max || a.reduce == Reduce::Min)
    pick_kernels<T, true>(a, channel_chunk, tiles, finish);
  else
    pick_kernels<T, false>(a, channel_chunk, tiles, finish);
}

int multiprocessor_count() {
  // Per device, relaxed atomics: threads that race store the same value. Devices past the
  // table are asked every time (a cached slot must never stand for another device).
  constexpr int kCached = 128;
  static std::atomic<int> cache[kCached] = {};
  int device = 0;
  check(cudaGetDevice(&device), "cudaGetDevice");
  const bool cached = device >= 0 && device < kCached;
  if (cached) {
    const int known = cache[device].load(std::memory_order_relaxed);
    if (known > 0) return known;
  }
  int n = 0;
  check(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device), "SM count");
  if (cached) cache[device].store(n, std::memory_order_relaxed);
  return n;
}

// Tuning knob for benchmarks: GSWFAST_POOL_TILE=<pixels> fixes the tile size.
int64_t tile_override() {
  static const int64_t value = [] {
    const char* env = std::getenv("GSWFAST_POOL_TILE");
    return env ? std::atoll(env) : int64_t(0);
  }();
  return value;
}

struct PoolPlan {
  TilesKernel tiles;
  FinishKernel finish;
  int channel_chunk, channel_chunks, label_chunk, label_chunks;
  int64_t tile, num_tiles;
  size_t smem_bytes;
  int64_t count_offset, invalid_offset, workspace_bytes;  // workspace layout, in bytes
};

// Tiles are sized so that one wave of resident blocks covers the input: each sample gets
// floor(resident / B) tiles (at least one). The tile size thus depends on the shape and on
// the GPU's SM count and occupancy, so results are bitwise reproducible on a given GPU.
PoolPlan plan_pool(const PoolArgs& a) {
  PoolPlan p{};
  const size_t acc_bytes = a.value_dtype == 3 ? sizeof(double) : sizeof(float);
  p.channel_chunk =
      int(a.channels < 1 ? 1 : (a.channels < kMaxChannels ? a.channels : kMaxChannels));
  p.channel_chunks = int(a.channels < 1 ? 1 : (a.channels + p.channel_chunk - 1) / p.channel_chunk);
  const size_t per_label = kWarps * (p.channel_chunk * acc_bytes + sizeof(int));
  int64_t kc = int64_t(kSmemBytes / per_label);
  kc = kc > a.num_segments ? a.num_segments : kc;
  kc = kc < 1 ? 1 : kc;
  p.label_chunk = int(kc);
  p.label_chunks = int(a.num_segments > 0 ? (a.num_segments + kc - 1) / kc : 1);
  p.smem_bytes = per_label * size_t(kc);
  switch (a.value_dtype) {
    case 0:
      pick_kernels_reduce<__half>(a, p.channel_chunk, p.tiles, p.finish);
      break;
    case 1:
      pick_kernels_reduce<__nv_bfloat16>(a, p.channel_chunk, p.tiles, p.finish);
      break;
    case 2:
      pick_kernels_reduce<float>(a, p.channel_chunk, p.tiles, p.finish);
      break;
    default:
      pick_kernels_reduce<double>(a, p.channel_chunk, p.tiles, p.finish);
      break;
  }
  int per_sm = 0;
  check(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, p.tiles, kThreads, p.smem_bytes),
        "occupancy");
  const int64_t resident = int64_t(per_sm < 1 ? 1 : per_sm) * multiprocessor_count();
  int64_t per_sample = resident / (int64_t(p.label_chunks) * p.channel_chunks) / a.batch;
  per_sample = per_sample < 1 ? 1 : per_sample;
  const int64_t step = kThreads * kVec;
  int64_t tile =
      tile_override() > 0 ? tile_override() : (a.num_pixels + per_sample - 1) / per_sample;
  tile = (tile + step - 1) / step * step;
  p.tile = tile < kMinTile ? kMinTile : tile;
  p.num_tiles = (a.num_pixels + p.tile - 1) / p.tile;
  const int64_t units = a.batch * p.num_tiles;
  p.count_offset = int64_t(acc_bytes) * units * a.channels * a.num_segments;
  p.invalid_offset = p.count_offset + int64_t(sizeof(int32_t)) * units * a.num_segments;
  p.workspace_bytes = p.invalid_offset + int64_t(sizeof(int32_t)) * units;
  return p;
}

bool aligned(const void* ptr, size_t bytes) {
  return reinterpret_cast<uintptr_t>(ptr) % bytes == 0;
}

size_t value_bytes(int dtype) { return dtype == 3 ? 8 : (dtype == 2 ? 4 : 2); }
template <typename T, typename L>
__global__ void paint_kernel(const T* seg, const L* labels, const int64_t* limits, int64_t batch,
                             int64_t channels, int64_t N, int64_t K, T fill, T* out,
                             int32_t* num_invalid) {
  const int64_t total = batch * N;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t b = i / N, p = i % N;
    const int64_t l = int64_t(labels[i]);
    const uint64_t limit = label_limit(limits, b, K);
    const bool ok = uint64_t(l) < limit;
    for (int64_t c = 0; c < channels; ++c)
      out[(b * channels + c) * N + p] = ok ? seg[(b * channels + c) * K + l] : fill;
    if (!ok && l != -1) atomicAdd(num_invalid, 1);
  }
}

template <typename T>
T fill_as(double v) {
  return T(v);
}
template <>
__half fill_as<__half>(double v) {
  return __float2half_rn(float(v));
}
template <>
__nv_bfloat16 fill_as<__nv_bfloat16>(double v) {
  return __float2bfloat16_rn(float(v));
}

template <typename T, typename L>
void launch_paint_typed(const PaintArgs& a, cudaStream_t stream) {
  const int64_t total = a.batch * a.num_pixels;
  if (total == 0) return;
  const int threads = 256;
  const int64_t blocks = (total + threads - 1) / threads;
  paint_kernel<T, L><<<unsigned(blocks < 65535 * 8 ? blocks : 65535 * 8), threads, 0, stream>>>(
      static_cast<const T*>(a.segment_values), static_cast<const L*>(a.labels), a.limits, a.batch,
      a.channels, a.num_pixels, a.num_segments, fill_as<T>(a.fill), static_cast<T*>(a.out),
      a.num_invalid);
  check(cudaGetLastError(), "paint");
}

template <typename T>
void launch_paint_labels(const PaintArgs& a, cudaStream_t stream) {
  if (a.label_dtype == 1)
    launch_paint_typed<T, int64_t>(a, stream);
  else
    launch_paint_typed<T, int32_t>(a, stream);
}

}  // namespace

int64_t pool_workspace_bytes(const PoolArgs& a) { return plan_pool(a).workspace_bytes; }

void launch_segment_pool(const PoolArgs& a, void* stream_ptr) {
  if (a.batch == 0 || a.num_pixels == 0) return;
  const PoolPlan plan = plan_pool(a);
  auto stream = static_cast<cudaStream_t>(stream_ptr);
  char* workspace = static_cast<char*>(a.partial);
  auto* count_partial = reinterpret_cast<int32_t*>(workspace + plan.count_offset);
  auto* invalid_partial = reinterpret_cast<int32_t*>(workspace + plan.invalid_offset);
  if (plan.label_chunks > 65535)
    throw std::invalid_argument("num_segments: too many segments for the CUDA kernel (at most " +
                                std::to_string(65535L * plan.label_chunk) +
                                " with these channels)");

  TileArgs t{a.values,       a.stride_b,
             a.stride_c,     a.stride_n,
             a.labels,       a.limits,
             a.channels,     a.num_pixels,
             a.num_segments, plan.tile,
             plan.num_tiles, plan.label_chunk,
             false,          a.reduce == Reduce::Min,
             workspace,      count_partial,
             invalid_partial};
  t.vectorized = a.stride_n == 1 && a.num_pixels % kVec == 0 && a.stride_b % kVec == 0 &&
                 a.stride_c % kVec == 0 && aligned(a.values, value_bytes(a.value_dtype) * kVec) &&
                 aligned(a.labels, (a.label_dtype == 1 ? 8 : 4) * kVec);
  const dim3 grid(unsigned(a.batch * plan.num_tiles), unsigned(plan.label_chunks),
                  unsigned(plan.channel_chunks));
  plan.tiles<<<grid, kThreads, plan.smem_bytes, stream>>>(t);
  check(cudaGetLastError(), "segment_pool tiles");

  const FinishArgs f{workspace,
                     count_partial,
                     invalid_partial,
                     a.batch,
                     plan.num_tiles,
                     a.channels,
                     a.num_segments,
                     a.reduce == Reduce::Mean,
                     a.reduce == Reduce::Min,
                     a.out,
                     a.count,
                     a.num_invalid};
  const int64_t total = a.batch * (a.channels > 0 ? a.channels : 1) * a.num_segments;
  int64_t blocks = (total + 255) / 256;
  blocks = blocks < 1 ? 1 : (blocks > 65535 ? 65535 : blocks);  // block 0 also sums invalid counts
  plan.finish<<<unsigned(blocks), 256, 0, stream>>>(f);
  check(cudaGetLastError(), "segment_pool finish");
}

void launch_paint(const PaintArgs& a, void* stream_ptr) {
  auto stream = static_cast<cudaStream_t>(stream_ptr);
  switch (a.value_dtype) {
    case 0:
      return launch_paint_labels<__half>(a, stream);
    case 1:
      return launch_paint_labels<__nv_bfloat16>(a, stream);
    case 2:
      return launch_paint_labels<float>(a, stream);
    default:
      return launch_paint_labels<double>(a, stream);
  }
}

}  // namespace gswfast::cuda
