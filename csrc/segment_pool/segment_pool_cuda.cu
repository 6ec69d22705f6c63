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

#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "segment_pool.h"

namespace gswfast::cuda {
namespace {

constexpr int kWarps = 8;
constexpr int kThreads = kWarps * 32;
constexpr int kVec = 4;                // consecutive pixels per lane per step
constexpr int kMaxChannels = 4;        // channels per block
constexpr int kSmemBytes = 48 * 1024;  // per block, no opt-in needed
constexpr unsigned kFull = 0xffffffffu;

void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess)
    throw std::runtime_error(std::string("gswfast: CUDA error in ") + what + ": " +
                             cudaGetErrorString(err));
}

template <typename T> struct AccOf { using type = float; };
template <> struct AccOf<double> { using type = double; };

__device__ __forceinline__ float to_acc(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float to_acc(float v) { return v; }
__device__ __forceinline__ double to_acc(double v) { return v; }

template <typename T> __device__ __forceinline__ T from_acc(float v) { return T(v); }
template <> __device__ __forceinline__ __half from_acc<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}
template <typename T> __device__ __forceinline__ T from_acc(double v) { return T(v); }

template <typename T, int V>
struct alignas(sizeof(T) * V) Vec {
  T v[V];
};

// Sum, or max that lets NaN win (min is computed as max of negated values).
template <bool EXTREME, typename A>
__device__ __forceinline__ A combine(A a, A b) {
  if constexpr (EXTREME) return (a != a || a > b) ? a : b;
  else return a + b;
}

template <bool EXTREME, typename A>
__device__ __forceinline__ A identity() {
  if constexpr (EXTREME) return -INFINITY;
  else return A(0);
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
  bool negate;             // min is computed as -max(-x)
  void* partial;           // [B, T, C, K] accumulator type
  int32_t* count_partial;  // [B, T, K]
  int32_t* num_invalid;
};

template <typename T, typename L, int CC, bool EXTREME>
__global__ void __launch_bounds__(kThreads) pool_tiles_kernel(TileArgs a) {
  using A = typename AccOf<T>::type;
  extern __shared__ __align__(16) unsigned char smem[];
  const int kc = a.label_chunk;
  A* hist = reinterpret_cast<A*>(smem);                    // [warp][CC][kc]
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
  const uint64_t limit = a.limits ? uint64_t(a.limits[b]) : uint64_t(a.num_segments);
  const A sign = a.negate ? A(-1) : A(1);
  int invalid = 0;

  for (int64_t step = begin; step < end; step += kThreads * kVec) {
    const int64_t p = step + int64_t(threadIdx.x) * kVec;
    int64_t raw[kVec];
    if (a.vectorized && p < end) {
      const Vec<L, kVec> lv = *reinterpret_cast<const Vec<L, kVec>*>(labels + p);
#pragma unroll
      for (int j = 0; j < kVec; ++j) raw[j] = int64_t(lv.v[j]);
    } else {
#pragma unroll
      for (int j = 0; j < kVec; ++j) raw[j] = p + j < end ? int64_t(labels[p + j]) : -1;
    }
    int lbl[kVec], cnt[kVec];
#pragma unroll
    for (int j = 0; j < kVec; ++j) {
      const bool valid = uint64_t(raw[j]) < limit;
      invalid += (!valid && raw[j] != -1);
      const int64_t local = raw[j] - k0;
      lbl[j] = (valid && local >= 0 && local < kc_here) ? int(local) : -1;
      cnt[j] = lbl[j] >= 0;
    }
    A val[CC][kVec];
#pragma unroll
    for (int c = 0; c < CC; ++c) {
      const int64_t ch = c0 + c;
      const T* v = values + ch * a.stride_c;
      if (ch < a.channels && a.vectorized && p < end) {
        const Vec<T, kVec> vv = *reinterpret_cast<const Vec<T, kVec>*>(v + p);
#pragma unroll
        for (int j = 0; j < kVec; ++j) val[c][j] = sign * to_acc(vv.v[j]);
      } else {
#pragma unroll
        for (int j = 0; j < kVec; ++j)
          val[c][j] = (ch < a.channels && p + j < end) ? sign * to_acc(v[(p + j) * a.stride_n])
                                                       : identity<EXTREME, A>();
      }
    }
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
#pragma unroll
    for (int off = 16; off > 0; off /= 2) invalid += __shfl_xor_sync(kFull, invalid, off);
    if (lane == 0 && invalid) atomicAdd(a.num_invalid, invalid);
  }
}

template <typename T, bool EXTREME>
__global__ void finish_kernel(const typename AccOf<T>::type* partial, const int32_t* count_partial,
                              int64_t batch, int64_t num_tiles, int64_t channels, int64_t K,
                              bool mean, bool negate, T* out, int32_t* count) {
  using A = typename AccOf<T>::type;
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
    if (n == 0) r = A(0);
    else if (mean) r /= A(n);
    else if (negate) r = -r;
    out[(b * channels + c) * K + k] = from_acc<T>(r);
  }
}

struct PoolPlan {
  int channel_chunk, label_chunk, label_chunks, channel_chunks;
  int64_t tile, num_tiles;
  size_t acc_bytes, smem_bytes;
};

PoolPlan plan_pool(const PoolArgs& a) {
  PoolPlan p{};
  p.acc_bytes = a.value_dtype == 3 ? sizeof(double) : sizeof(float);
  p.channel_chunk = int(a.channels < 1 ? 1 : (a.channels < kMaxChannels ? a.channels : kMaxChannels));
  p.channel_chunks = int(a.channels < 1 ? 1 : (a.channels + p.channel_chunk - 1) / p.channel_chunk);
  const size_t per_label = kWarps * (p.channel_chunk * p.acc_bytes + sizeof(int));
  int64_t kc = int64_t(kSmemBytes / per_label);
  if (kc > a.num_segments) kc = a.num_segments;
  if (kc < 1) kc = 1;
  p.label_chunk = int(kc);
  p.label_chunks = int(a.num_segments > 0 ? (a.num_segments + kc - 1) / kc : 1);
  p.tile = pool_tile_size(a.batch, a.num_pixels, 1024, 8192, kThreads * kVec);
  p.num_tiles = (a.num_pixels + p.tile - 1) / p.tile;
  p.smem_bytes = per_label * size_t(kc);
  return p;
}

bool aligned(const void* ptr, size_t bytes) { return reinterpret_cast<uintptr_t>(ptr) % bytes == 0; }

template <typename T, typename L, int CC, bool EXTREME>
void launch_tiles(const PoolArgs& a, const PoolPlan& plan, cudaStream_t stream) {
  const size_t vbytes = sizeof(T) * kVec, lbytes = sizeof(L) * kVec;
  TileArgs t{a.values, a.stride_b, a.stride_c, a.stride_n, a.labels, a.limits,
             a.channels, a.num_pixels, a.num_segments, plan.tile, plan.num_tiles,
             plan.label_chunk, false, a.reduce == Reduce::Min, a.partial,
             reinterpret_cast<int32_t*>(static_cast<char*>(a.partial) +
                                        plan.acc_bytes * a.batch * plan.num_tiles * a.channels *
                                            a.num_segments),
             a.num_invalid};
  t.vectorized = a.stride_n == 1 && a.num_pixels % kVec == 0 && a.stride_b % kVec == 0 &&
                 a.stride_c % kVec == 0 && aligned(a.values, vbytes) && aligned(a.labels, lbytes);
  if (plan.label_chunks > 65535)
    throw std::invalid_argument("num_segments: too many segments for the CUDA kernel (at most " +
                                std::to_string(65535L * plan.label_chunk) + " with these channels)");
  dim3 grid(unsigned(a.batch * plan.num_tiles), unsigned(plan.label_chunks),
            unsigned(plan.channel_chunks));
  pool_tiles_kernel<T, L, CC, EXTREME><<<grid, kThreads, plan.smem_bytes, stream>>>(t);
  check(cudaGetLastError(), "segment_pool tiles");
}

template <typename T, typename L, bool EXTREME>
void launch_tiles_cc(const PoolArgs& a, const PoolPlan& plan, cudaStream_t stream) {
  switch (plan.channel_chunk) {
    case 1: return launch_tiles<T, L, 1, EXTREME>(a, plan, stream);
    case 2: return launch_tiles<T, L, 2, EXTREME>(a, plan, stream);
    case 3: return launch_tiles<T, L, 3, EXTREME>(a, plan, stream);
    default: return launch_tiles<T, L, 4, EXTREME>(a, plan, stream);
  }
}

template <typename T, bool EXTREME>
void launch_pool_typed(const PoolArgs& a, const PoolPlan& plan, cudaStream_t stream) {
  if (a.label_dtype == 1) launch_tiles_cc<T, int64_t, EXTREME>(a, plan, stream);
  else launch_tiles_cc<T, int32_t, EXTREME>(a, plan, stream);
  using A = typename AccOf<T>::type;
  const int64_t total = a.batch * (a.channels > 0 ? a.channels : 1) * a.num_segments;
  if (total == 0) return;
  const auto* partial = static_cast<const A*>(a.partial);
  const auto* count_partial = reinterpret_cast<const int32_t*>(
      static_cast<const char*>(a.partial) +
      sizeof(A) * a.batch * plan.num_tiles * a.channels * a.num_segments);
  const int threads = 256;
  const int64_t blocks = (total + threads - 1) / threads;
  finish_kernel<T, EXTREME><<<unsigned(blocks < 65535 ? blocks : 65535), threads, 0, stream>>>(
      partial, count_partial, a.batch, plan.num_tiles, a.channels, a.num_segments,
      a.reduce == Reduce::Mean, a.reduce == Reduce::Min, static_cast<T*>(a.out), a.count);
  check(cudaGetLastError(), "segment_pool finish");
}

template <typename T>
void launch_pool_reduce(const PoolArgs& a, const PoolPlan& plan, cudaStream_t stream) {
  if (a.reduce == Reduce::Max || a.reduce == Reduce::Min) launch_pool_typed<T, true>(a, plan, stream);
  else launch_pool_typed<T, false>(a, plan, stream);
}

template <typename T, typename L>
__global__ void paint_kernel(const T* seg, const L* labels, const int64_t* limits, int64_t batch,
                             int64_t channels, int64_t N, int64_t K, T fill, T* out,
                             int32_t* num_invalid) {
  const int64_t total = batch * N;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t b = i / N, p = i % N;
    const int64_t l = int64_t(labels[i]);
    const uint64_t limit = limits ? uint64_t(limits[b]) : uint64_t(K);
    const bool ok = uint64_t(l) < limit;
    for (int64_t c = 0; c < channels; ++c)
      out[(b * channels + c) * N + p] = ok ? seg[(b * channels + c) * K + l] : fill;
    if (!ok && l != -1) atomicAdd(num_invalid, 1);
  }
}

template <typename T>
T fill_as(double v) { return T(v); }
template <>
__half fill_as<__half>(double v) { return __float2half_rn(float(v)); }
template <>
__nv_bfloat16 fill_as<__nv_bfloat16>(double v) { return __float2bfloat16_rn(float(v)); }

template <typename T, typename L>
void launch_paint_typed(const PaintArgs& a, cudaStream_t stream) {
  const int64_t total = a.batch * a.num_pixels;
  if (total == 0) return;
  const int threads = 256;
  const int64_t blocks = (total + threads - 1) / threads;
  paint_kernel<T, L><<<unsigned(blocks < 65535 * 8 ? blocks : 65535 * 8), threads, 0, stream>>>(
      static_cast<const T*>(a.segment_values), static_cast<const L*>(a.labels), a.limits,
      a.batch, a.channels, a.num_pixels, a.num_segments, fill_as<T>(a.fill),
      static_cast<T*>(a.out), a.num_invalid);
  check(cudaGetLastError(), "paint");
}

template <typename T>
void launch_paint_labels(const PaintArgs& a, cudaStream_t stream) {
  if (a.label_dtype == 1) launch_paint_typed<T, int64_t>(a, stream);
  else launch_paint_typed<T, int32_t>(a, stream);
}

}  // namespace

int64_t pool_workspace_bytes(const PoolArgs& a) {
  const PoolPlan plan = plan_pool(a);
  return int64_t(plan.acc_bytes) * a.batch * plan.num_tiles * a.channels * a.num_segments +
         int64_t(sizeof(int32_t)) * a.batch * plan.num_tiles * a.num_segments;
}

void launch_segment_pool(const PoolArgs& a, void* stream_ptr) {
  if (a.batch == 0 || a.num_pixels == 0) return;
  const PoolPlan plan = plan_pool(a);
  auto stream = static_cast<cudaStream_t>(stream_ptr);
  switch (a.value_dtype) {
    case 0: return launch_pool_reduce<__half>(a, plan, stream);
    case 1: return launch_pool_reduce<__nv_bfloat16>(a, plan, stream);
    case 2: return launch_pool_reduce<float>(a, plan, stream);
    default: return launch_pool_reduce<double>(a, plan, stream);
  }
}

void launch_paint(const PaintArgs& a, void* stream_ptr) {
  auto stream = static_cast<cudaStream_t>(stream_ptr);
  switch (a.value_dtype) {
    case 0: return launch_paint_labels<__half>(a, stream);
    case 1: return launch_paint_labels<__nv_bfloat16>(a, stream);
    case 2: return launch_paint_labels<float>(a, stream);
    default: return launch_paint_labels<double>(a, stream);
  }
}

}  // namespace gswfast::cuda
