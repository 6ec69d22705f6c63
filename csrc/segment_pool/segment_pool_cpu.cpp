// CPU twin of the segment-pooling kernels. See segment_pool.h for the contract.
//
// Work is cut into (sample, tile) units whose boundaries depend only on the shape. Each
// unit accumulates its pixels sequentially into a private partial histogram; the partials
// are then combined in tile order. The result is therefore independent of the number of
// threads, and bitwise reproducible.
#include "segment_pool.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <atomic>
#include <cmath>
#include <limits>
#include <vector>

#include "../common/checks.h"

namespace gswfast {

Reduce parse_reduce(std::string_view reduce) {
  if (reduce == "sum") return Reduce::Sum;
  if (reduce == "mean") return Reduce::Mean;
  if (reduce == "max") return Reduce::Max;
  if (reduce == "min") return Reduce::Min;
  TORCH_CHECK(false, "reduce: expected one of 'sum', 'mean', 'max', 'min', got '", reduce, "'");
}

namespace {

// max that lets NaN win, so a NaN pixel shows up in its segment's result.
template <typename T>
inline T max_nan(T a, T b) {
  return (a != a || a > b) ? a : b;
}

template <typename scalar_t, typename label_t>
struct PoolProblem {
  const scalar_t* values;
  int64_t stride_b, stride_c, stride_n;
  const label_t* labels;
  const int64_t* limits;
  int64_t C, N, K, tile, num_tiles;
  Reduce reduce;
};

// Accumulates pixels [begin, end) of one channel into kLanes interleaved histograms
// (pixel i goes to lane i % kLanes). Consecutive pixels mostly share a label, so a single
// histogram would serialise every update on the previous one; four independent chains let
// the core overlap them. Returns the number of invalid labels when COUNT is set.
constexpr int kLanes = 4;

template <bool EXTREME, bool COUNT, bool VALUES, typename scalar_t, typename label_t,
          typename acc_t>
int64_t accumulate_lanes(const label_t* lab, const scalar_t* v, int64_t stride_n, int64_t begin,
                         int64_t end, uint64_t limit, acc_t sign, int64_t K, acc_t* lanes,
                         int32_t* count_lanes) {
  int64_t invalid = 0;
  auto visit = [&](int lane, int64_t i) {
    const auto l = static_cast<int64_t>(lab[i]);
    if (static_cast<uint64_t>(l) < limit) {
      if constexpr (VALUES) {
        acc_t& a = lanes[lane * K + l];
        const acc_t x = static_cast<acc_t>(v[i * stride_n]);
        if constexpr (EXTREME)
          a = max_nan(a, sign * x);
        else
          a += x;
      }
      if constexpr (COUNT) ++count_lanes[lane * K + l];
    } else if constexpr (COUNT) {
      invalid += l != -1;
    }
  };
  int64_t i = begin;
  for (; i + kLanes <= end; i += kLanes) {
    visit(0, i);
    visit(1, i + 1);
    visit(2, i + 2);
    visit(3, i + 3);
  }
  for (; i < end; ++i) visit(0, i);
  return invalid;
}

// One (sample, tile) unit: counts into cnt[K], per-channel accumulators into acc[C][K].
// Extremes are kept as max of (sign * value), so min shares the max code path.
template <typename scalar_t, typename label_t, typename acc_t>
int64_t pool_unit(const PoolProblem<scalar_t, label_t>& p, int64_t b, int64_t t, acc_t* acc,
                  int32_t* cnt, acc_t* lanes, int32_t* count_lanes) {
  const int64_t begin = t * p.tile;
  const int64_t end = std::min(begin + p.tile, p.N);
  const label_t* lab = p.labels + b * p.N;
  const uint64_t limit = label_limit(p.limits, b, p.K);
  const int64_t K = p.K;
  const bool extreme = p.reduce == Reduce::Max || p.reduce == Reduce::Min;
  const acc_t sign = p.reduce == Reduce::Min ? acc_t(-1) : acc_t(1);
  const acc_t init = extreme ? -std::numeric_limits<acc_t>::infinity() : acc_t(0);
  std::fill(count_lanes, count_lanes + kLanes * K, 0);
  int64_t invalid = 0;
  if (p.C == 0) {
    invalid = accumulate_lanes<false, true, false, scalar_t>(lab, p.values, p.stride_n, begin, end,
                                                             limit, sign, K, lanes, count_lanes);
  }
  for (int64_t c = 0; c < p.C; ++c) {
    const scalar_t* v = p.values + b * p.stride_b + c * p.stride_c;
    std::fill(lanes, lanes + kLanes * K, init);
    if (c == 0 && extreme)
      invalid = accumulate_lanes<true, true, true>(lab, v, p.stride_n, begin, end, limit, sign, K,
                                                   lanes, count_lanes);
    else if (c == 0)
      invalid = accumulate_lanes<false, true, true>(lab, v, p.stride_n, begin, end, limit, sign, K,
                                                    lanes, count_lanes);
    else if (extreme)
      accumulate_lanes<true, false, true>(lab, v, p.stride_n, begin, end, limit, sign, K, lanes,
                                          count_lanes);
    else
      accumulate_lanes<false, false, true>(lab, v, p.stride_n, begin, end, limit, sign, K, lanes,
                                           count_lanes);
    acc_t* a = acc + c * K;
    for (int64_t k = 0; k < K; ++k) {
      acc_t r = lanes[k];
      for (int lane = 1; lane < kLanes; ++lane)
        r = extreme ? max_nan(r, lanes[lane * K + k]) : r + lanes[lane * K + k];
      a[k] = r;
    }
  }
  for (int64_t k = 0; k < K; ++k) {
    int32_t n = 0;
    for (int lane = 0; lane < kLanes; ++lane) n += count_lanes[lane * K + k];
    cnt[k] = n;
  }
  return invalid;
}

// Combines the tile partials of one sample in tile order and writes out[b] and count[b].
template <typename scalar_t, typename acc_t>
void finish_sample(int64_t b, int64_t C, int64_t K, int64_t T, Reduce reduce, const acc_t* partial,
                   const int32_t* cnt_partial, scalar_t* out, int32_t* count) {
  const int32_t* cp = cnt_partial + b * T * K;
  int32_t* cnt = count + b * K;
  for (int64_t k = 0; k < K; ++k) {
    int32_t n = 0;
    for (int64_t t = 0; t < T; ++t) n += cp[t * K + k];
    cnt[k] = n;
  }
  const bool extreme = reduce == Reduce::Max || reduce == Reduce::Min;
  const acc_t sign = reduce == Reduce::Min ? acc_t(-1) : acc_t(1);
  for (int64_t c = 0; c < C; ++c) {
    const acc_t* pc = partial + (b * T * C + c) * K;  // partial[b][t][c][k]
    scalar_t* o = out + (b * C + c) * K;
    for (int64_t k = 0; k < K; ++k) {
      acc_t r = extreme ? -std::numeric_limits<acc_t>::infinity() : acc_t(0);
      for (int64_t t = 0; t < T; ++t) {
        const acc_t x = pc[t * C * K + k];
        r = extreme ? max_nan(r, x) : r + x;
      }
      if (cnt[k] == 0)
        r = acc_t(0);
      else if (reduce == Reduce::Mean)
        r /= static_cast<acc_t>(cnt[k]);
      else if (extreme)
        r *= sign;
      o[k] = static_cast<scalar_t>(r);
    }
  }
}

template <typename scalar_t, typename label_t>
int64_t pool_all(const PoolProblem<scalar_t, label_t>& p, int64_t B, scalar_t* out,
                 int32_t* count) {
  // float64 accumulation for sums; extremes are exact in the value type's float.
  using acc_t = double;
  const int64_t T = p.num_tiles, C = p.C, K = p.K;
  std::vector<acc_t> partial(static_cast<size_t>(B * T * C * K));
  std::vector<int32_t> cnt_partial(static_cast<size_t>(B * T * K));
  std::atomic<int64_t> invalid{0};
  at::parallel_for(0, B * T, 1, [&](int64_t begin, int64_t end) {
    int64_t local_invalid = 0;
    std::vector<acc_t> lanes(static_cast<size_t>(kLanes * K));
    std::vector<int32_t> count_lanes(static_cast<size_t>(kLanes * K));
    for (int64_t u = begin; u < end; ++u) {
      const int64_t b = u / T, t = u % T;
      local_invalid += pool_unit<scalar_t, label_t, acc_t>(p, b, t, partial.data() + u * C * K,
                                                           cnt_partial.data() + u * K, lanes.data(),
                                                           count_lanes.data());
    }
    invalid += local_invalid;
  });
  at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b)
      finish_sample<scalar_t, acc_t>(b, C, K, T, p.reduce, partial.data(), cnt_partial.data(), out,
                                     count);
  });
  return invalid.load();
}

// Labels of [B, N] outside [0, label_limit) other than -1: what paint counts as it
// paints, for the case with no channel to paint.
template <typename label_t>
int64_t count_invalid_labels(const label_t* lab, const int64_t* limits, int64_t B, int64_t N,
                             int64_t K) {
  int64_t bad = 0;
  for (int64_t b = 0; b < B; ++b) {
    const uint64_t limit = label_limit(limits, b, K);
    for (int64_t i = 0; i < N; ++i) {
      const auto l = static_cast<int64_t>(lab[b * N + i]);
      bad += static_cast<uint64_t>(l) >= limit && l != -1;
    }
  }
  return bad;
}

int32_t clamp_count(int64_t n) {
  return static_cast<int32_t>(std::min<int64_t>(n, std::numeric_limits<int32_t>::max()));
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> segment_pool_cpu(
    const at::Tensor& values, const at::Tensor& labels_in, const std::optional<at::Tensor>& limits,
    int64_t num_segments, std::string_view reduce_name) {
  check_pool_inputs(values, labels_in, limits, num_segments);
  const Reduce reduce = parse_reduce(reduce_name);
  const at::Tensor labels = labels_in.contiguous();
  const int64_t B = values.size(0), C = values.size(1), N = values.size(2), K = num_segments;

  at::Tensor out = at::empty({B, C, K}, values.options());
  at::Tensor count = at::empty({B, K}, labels.options().dtype(at::kInt));
  int64_t invalid = 0;
  if (B > 0 && N > 0) {
    const int64_t tile = pool_tile_size(B, N, 16384, 65536, 1);
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, values.scalar_type(), "segment_pool_cpu", [&] {
          AT_DISPATCH_INDEX_TYPES(labels.scalar_type(), "segment_pool_cpu_labels", [&] {
            PoolProblem<scalar_t, index_t> p{values.const_data_ptr<scalar_t>(),
                                             values.stride(0),
                                             values.stride(1),
                                             values.stride(2),
                                             labels.const_data_ptr<index_t>(),
                                             limits ? limits->const_data_ptr<int64_t>() : nullptr,
                                             C,
                                             N,
                                             K,
                                             tile,
                                             (N + tile - 1) / tile,
                                             reduce};
            invalid =
                pool_all(p, B, out.mutable_data_ptr<scalar_t>(), count.mutable_data_ptr<int32_t>());
          });
        });
  } else {
    out.zero_();
    count.zero_();
  }
  at::Tensor num_invalid = at::empty({}, labels.options().dtype(at::kInt));
  num_invalid.fill_(clamp_count(invalid));
  return {out, count, num_invalid};
}

std::tuple<at::Tensor, at::Tensor> paint_cpu(const at::Tensor& segment_values,
                                             const at::Tensor& labels_in,
                                             const std::optional<at::Tensor>& limits, double fill) {
  check_paint_inputs(segment_values, labels_in, limits);
  const int64_t B = segment_values.size(0), C = segment_values.size(1), K = segment_values.size(2),
                N = labels_in.size(1);
  const at::Tensor seg = segment_values.contiguous();
  const at::Tensor labels = labels_in.contiguous();
  at::Tensor out = at::empty({B, C, N}, seg.options());
  std::atomic<int64_t> invalid{0};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, seg.scalar_type(), "paint_cpu", [&] {
    AT_DISPATCH_INDEX_TYPES(labels.scalar_type(), "paint_cpu_labels", [&] {
      const scalar_t* sv = seg.const_data_ptr<scalar_t>();
      const index_t* lab = labels.const_data_ptr<index_t>();
      const int64_t* lim = limits ? limits->const_data_ptr<int64_t>() : nullptr;
      scalar_t* o = out.mutable_data_ptr<scalar_t>();
      const auto fill_value = static_cast<scalar_t>(fill);
      at::parallel_for(0, B * C, 1, [&](int64_t begin, int64_t end) {
        int64_t bad = 0;
        for (int64_t bc = begin; bc < end; ++bc) {
          const int64_t b = bc / C;
          const uint64_t limit = label_limit(lim, b, K);
          const scalar_t* s = sv + bc * K;
          const index_t* l = lab + b * N;
          scalar_t* row = o + bc * N;
          int64_t row_bad = 0;
          for (int64_t i = 0; i < N; ++i) {
            const auto li = static_cast<int64_t>(l[i]);
            const bool ok = static_cast<uint64_t>(li) < limit;
            row[i] = ok ? s[li] : fill_value;
            row_bad += (!ok && li != -1);
          }
          if (bc % C == 0) bad += row_bad;  // each sample's pixels counted once
        }
        invalid += bad;
      });
      if (C == 0) invalid += count_invalid_labels(lab, lim, B, N, K);  // no rows counted them
    });
  });
  at::Tensor num_invalid = at::empty({}, labels.options().dtype(at::kInt));
  num_invalid.fill_(clamp_count(invalid.load()));
  return {out, num_invalid};
}

TORCH_LIBRARY_IMPL(gswfast, CPU, m) {
  m.impl("segment_pool", &segment_pool_cpu);
  m.impl("paint", &paint_cpu);
}

}  // namespace gswfast
