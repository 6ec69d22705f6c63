// Segment pooling: reduce pixel values per segment label, and paint segment values back.
//
// Contract (both backends, the Python wrapper gswfast.ops normalises shapes to this):
//
//   segment_pool(values [B, C, N], labels [B, N], limits [B]?, K, reduce)
//       -> (out [B, C, K], count [B, K] int32, num_invalid [] int32)
//   paint(segment_values [B, C, K], labels [B, N], limits [B]?, fill)
//       -> (out [B, C, N], num_invalid [] int32)
//
// * values: float16, bfloat16, float32 or float64, any strides (N is the flattened
//   spatial extent H*W or T*H*W). labels: int32 or int64, contiguous.
// * Label -1 means "ignore this pixel". A label l of sample b is valid when
//   0 <= l < label_limit(limits, b, K): limits[b] clamped to [0, K] (without limits the
//   bound is K). Any other label is skipped (never used as an index) and counted in
//   num_invalid, which the Python layer turns into an exception: no out-of-bounds access on
//   either backend, whatever limits a direct caller passes (the Python layer passes
//   limits <= K; checking them on CUDA would cost a device sync, clamping costs nothing).
// * reduce: "sum", "mean", "max", "min". Empty segments give 0 for every reduction.
//   C may be 0 (only count is wanted). NaN in a segment propagates to its result.
// * Accumulation: float64 for float64 values; otherwise float64 on the CPU and float32 on
//   CUDA. Output has the dtype of values.
// * Determinism: the result depends only on the input, bitwise, on a given device. The
//   pixels are cut into tiles (CPU: size from the shape only, so independent of the thread
//   count; CUDA: size from the shape and the GPU's SM count and occupancy); each tile is
//   reduced in a fixed order (CPU: four interleaved sequential histograms; CUDA: per-warp
//   private histograms, with equal labels combined across lanes by a fixed shuffle tree),
//   and the tile partials are combined in tile order. No floating-point atomics are used.
#pragma once

#include <cstdint>
#include <string_view>

#ifndef __CUDACC__
#include <ATen/core/Tensor.h>
#include <optional>
#include <tuple>
#endif

namespace gswfast {

enum class Reduce : int { Sum = 0, Mean = 1, Max = 2, Min = 3 };

#if defined(__CUDACC__)
#define GSW_POOL_HD __host__ __device__ __forceinline__
#else
#define GSW_POOL_HD inline
#endif

// The bound of sample b's valid labels (the contract above): limits[b] clamped to [0, K],
// as an unsigned value, so that one comparison uint64(label) < bound also rejects
// negative labels.
GSW_POOL_HD uint64_t label_limit(const int64_t* limits, int64_t b, int64_t K) {
  if (limits == nullptr) return static_cast<uint64_t>(K);
  const int64_t l = limits[b];
  return static_cast<uint64_t>(l < 0 ? 0 : (l > K ? K : l));
}

// CPU pixels per tile of one sample: a function of the shape only (never of the thread
// count) so that results stay bitwise reproducible. Big enough to amortise the per-tile
// partial histogram, small enough to give every core some tiles.
inline int64_t pool_tile_size(int64_t batch, int64_t num_pixels, int64_t min_tile, int64_t max_tile,
                              int64_t align) {
  const int64_t target_tiles = 512;
  int64_t tile = (batch * num_pixels + target_tiles - 1) / target_tiles;
  tile = tile < min_tile ? min_tile : (tile > max_tile ? max_tile : tile);
  return (tile + align - 1) / align * align;
}

#ifndef __CUDACC__
Reduce parse_reduce(std::string_view reduce);

std::tuple<at::Tensor, at::Tensor, at::Tensor> segment_pool_cpu(
    const at::Tensor& values, const at::Tensor& labels, const std::optional<at::Tensor>& limits,
    int64_t num_segments, std::string_view reduce);

std::tuple<at::Tensor, at::Tensor> paint_cpu(const at::Tensor& segment_values,
                                             const at::Tensor& labels,
                                             const std::optional<at::Tensor>& limits, double fill);
#endif

namespace cuda {

// Raw-pointer launchers implemented in segment_pool_cuda.cu (no ATen there, to keep nvcc
// fast). dtype codes: 0 float16, 1 bfloat16, 2 float32, 3 float64. label codes: 0 int32,
// 1 int64. All pointers are device pointers; `stream` is a cudaStream_t.
struct PoolArgs {
  const void* values;
  int64_t stride_b, stride_c, stride_n;  // in elements
  const void* labels;                    // [B, N], contiguous
  const int64_t* limits;                 // [B] or nullptr
  int64_t batch, channels, num_pixels, num_segments;
  int value_dtype, label_dtype;
  Reduce reduce;
  void* out;             // [B, C, K], dtype of values
  int32_t* count;        // [B, K]
  int32_t* num_invalid;  // [], written by the launch
  void* partial;         // workspace of pool_workspace_bytes(); no initialisation needed
};

// Bytes of device workspace the launch needs (tile partials).
int64_t pool_workspace_bytes(const PoolArgs& args);
void launch_segment_pool(const PoolArgs& args, void* stream);

struct PaintArgs {
  const void* segment_values;  // [B, C, K], contiguous
  const void* labels;          // [B, N], contiguous
  const int64_t* limits;
  int64_t batch, channels, num_pixels, num_segments;
  int value_dtype, label_dtype;
  double fill;
  void* out;  // [B, C, N], contiguous
  int32_t* num_invalid;
};

void launch_paint(const PaintArgs& args, void* stream);

}  // namespace cuda
}  // namespace gswfast
