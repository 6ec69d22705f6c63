// SLIC superpixels (images) and supervoxels (frame stacks).
//
// Contract (both backends; the Python wrapper gswfast.segmentation normalises to this):
//
//   slic(image [N, C, D, H, W], init_centers [N, K, 3 + F]?, init_counts [N, K]?,
//        init_labels [N, P]?, grid [9], weights [3], compactness, convert_lab, max_iter,
//        tol, connectivity, min_size, max_centers, mask)
//       -> (labels [N, P] int32, num_segments [N] int64, centers [N, max_centers, 3 + F],
//           iterations [N] int32, clusters [N, K, 3 + F], cluster_counts [N, K] int32,
//           cluster_labels [N, P] int32)          with P = D * H * W
//
// * image: uint8 (0..255) or float16/bfloat16/float32/float64 (0..1), contiguous, finite
//   (the Python layer checks). N samples are segmented independently: images are D = 1
//   volumes; per-frame clips arrive as N = B * T samples. Any N: calls of 2^31 pixels or
//   more run in groups of samples (slic_in_chunks); one sample has fewer than 2^31 pixels.
// * Features F: CIELAB (F = 3) when convert_lab (C must be 3), else the C channels scaled
//   to 0..1 (uint8) or as given (floats), then clamped to +-kMaxFeature. Distance of pixel p to
//   cluster k, as in scikit-image's slic:
//       d = |f_p - f_k|^2 / compactness^2 + sum_dim weight[dim] * (p_dim - k_dim)^2
//   with weight = spacing^2 / S^2 and S the largest grid step, in float32 with every
//   rounding fixed (assignment_distance: fused multiply-adds written out), so both
//   backends compute the same bits. CIELAB comes from linear_rgb_to_lab (one rounding per
//   operation) and sRGB from the generated tables of srgb_tables.h on both backends.
// * grid = (step_z, step_y, step_x, start_z, start_y, start_x, cells_z, cells_y, cells_x
//   [, subsample [, max_size]]): seeds sit at start + i * step (scikit-image's
//   regular_grid); subsample (default 1) is the row stride of the middle passes
//   (Iterations); max_size (default 0: none) bounds merges (Connectivity). Cluster k may take the
//   pixels of its window, |p_dim - k_dim| <= step_dim in every dimension (SLIC's 2S x 2S
//   region: window_first .. window_last, integer bounds from c -+ step rounded to float)
//   and whose centre lies in the cell of the pixel or a neighbouring one (cell_of against
//   cell_of_pixel, within one in every dimension; cell_span); among the clusters that may
//   take a pixel the nearest wins, ties to the lower index. A pixel none may take keeps its
//   previous cluster. The CPU lets clusters claim their windows clipped to the cells
//   around theirs in ascending order; CUDA threads scan the clusters binned in the
//   3 x 3 (x 3) cells around their pixel: the same rule, for any centres.
// * Cold start (no init): one cluster per cell, seeded at the grid point moved to the
//   lowest feature gradient of its 3x3 in-frame neighbourhood (Achanta et al. 2012); not
//   moved along y or x where the step is below 3 (seeds must not meet).
//   Warm start: the k-means state of a previous call (centres, live flags, labels). A
//   sample with no live cluster is not an error: no pixel is claimed and every pixel joins
//   cluster 0 (one segment); the Python layer raises ValueError for it when validating.
// * Iterations: assign, then recompute centres as the exact means of each cluster's pixels
//   (integer sums, mean_row; an empty cluster dies); a sample stops once at most
//   floor(tol * A) pixels changed cluster in a full pass (that pass updates nothing), with A
//   the sample's area: its in-mask pixels with a mask, else P (max_changed). iterations[n]
//   counts its assignment passes. With subsample s > 1 (fast-slic's subsampled passes; taken
//   as 1 where step_y < 2 s, make_geometry), pass
//   `it` reassigns only the rows y with y % s == it % s (every frame), unless it is full: the
//   first pass of a warm start or of a masked call, the last (max_iter - 1), and the ones
//   after a subsampled pass in which at most floor(tol * A) pixels changed (pass_is_full).
//   The centres are the means of all assigned pixels' current clusters (an unmasked cold
//   start's first pass assigns every s-th row). Pixels still unassigned at the end join the live
//   cluster with the nearest centre in space.
// * Connectivity (when set): 4-connected (6 in volumes) components of each cluster by
//   union-find (root = lowest pixel index). Then merge rounds, at most kMergeRounds, until
//   no set is smaller than min_size or nothing merges. A round decides every choice from
//   its snapshot (sets, sizes, mean features in fixed point): each set smaller than
//   min_size picks the adjacent set with the nearest mean feature (squared distance in
//   float, one rounding per product and sum; ties: lower root) among those smaller than
//   max_size (when set: scikit-image's max_size_factor, a segment stops growing past it;
//   unlike scikit-image, a k-means component larger than max_size is not split); then all picked
//   pairs are united (root = lowest pixel). The partition depends on no visiting order or thread
//   timing. Without connectivity each non-empty cluster is one segment. (The CPU works on runs,
//   maximal stretches of one cluster along x, and splits a sample of 2^20 pixels or more into
//   bands of rows joined at their first rows: the same components, roots and sums.)
// * Ids 0..n-1 (n = num_segments[n]), stable: a set takes the cluster of its largest
//   original component; the set holding the largest component of cluster k is k's main
//   segment and gets id k when k < n. The ids below n left free go, ascending, to the other
//   sets (raster order of their root), then to the mains of clusters k >= n.
// * centers: mean (z, y, x, features) of each segment of the final labels, with or without
//   connectivity; rows >= num_segments are zero and a segment with id >= max_centers has
//   no row. Sums are exact (integer coordinates, features in 2^-16 fixed point, int64:
//   clamped features keep them in range), so equal labels give equal centres on both
//   backends. gswfast/_slic_reference.py is the plain-torch twin of the exact stages.
//   Exact parity between backends holds where the features are equal: any uint8 input,
//   and float input in 0..1, with or without CIELAB (sRGB decodes through the generated
//   tables of srgb_tables.h on both). Floats outside 0..1 (validate=False) with CIELAB
//   decode through powf, which differs in the last bits between libm and CUDA.
// * mask (optional, maskSLIC): uint8 [N, P] on the image's device, nonzero inside. A pixel
//   outside keeps cluster -1 throughout: it is never assigned (nor filled in at the end),
//   adds to no sum, is no component and touches none (connectivity and merges see only
//   inside pixels), and its final label is -1. A cold seed whose grid point lies outside
//   is dead from the start (count 0); a live one moves to in-mask pixels only. A warm
//   start's outside pixels start unassigned. Ids 0..n-1 number the inside segments. tol
//   counts against each sample's in-mask pixels (Iterations).
// * Determinism: bitwise on a given device. CPU work is cut by shape, not thread count;
//   CUDA uses no floating-point atomics (integer atomics only).
// * CPU threads: calls of fewer than 2^20 pixels (N * P) run on the calling thread (short
//   parallel regions gain little on one image, and OpenMP threads spinning at barriers
//   lose a lot on a busy machine). Larger calls of several samples run one parallel region
//   over samples (each on one thread); a single larger sample splits its passes across
//   threads, its connectivity pass by bands of rows (cut by shape). Thread count never changes
//   a result.
#pragma once

#include <cmath>
#include <cstdint>

#include "srgb_tables.h"

#if defined(__CUDACC__)
#define GSW_HD __host__ __device__ __forceinline__
#else
#define GSW_HD inline
#include <ATen/core/Tensor.h>
#include <optional>
#include <tuple>
#endif

namespace gswfast {
namespace slic {

constexpr int kMergeRounds = 16;
constexpr double kFixedScale = 65536.0;  // features are summed in 2^-16 fixed point
// Features are clamped to +-kMaxFeature when computed, on both backends: a fixed-point
// value then fits int32 (the CPU precomputes them so), and sums over up to 2^31 pixels
// fit int64.
constexpr float kMaxFeature = 32767.f;

struct Geometry {
  int64_t N;        // samples
  int32_t C, F;     // input channels, feature channels
  int32_t D, H, W;  // spatial shape of one sample
  int64_t P;        // D * H * W
  int32_t step[3], start[3], cells[3];
  float weight[3];  // spatial weights (z, y, x)
  float inv_m2;     // 1 / compactness^2
  int32_t K;        // cluster slots per sample
  int32_t max_iter;
  double tol;  // a pass converges when at most tol * area pixels changed (max_changed)
  int32_t min_size;
  int32_t max_centers;
  int32_t subsample;  // row stride of the subsampled passes (1: every pass is full)
  int64_t max_size;   // a set of max_size pixels or more takes no more merges (0: no limit)
  bool convert_lab;
  bool connectivity;
  bool warm;
  // maskSLIC: [N, P] uint8 on the image's device (nonzero: inside), or null (no mask).
  const uint8_t* mask;
};

// Whether pixel i = n * P + p takes part (is inside the mask, or there is none).
GSW_HD bool in_mask(const Geometry& g, int64_t i) { return g.mask == nullptr || g.mask[i] != 0; }

// Whether pass `it` reassigns every pixel (else the rows y % subsample == it % subsample);
// after_converged: a subsampled pass of this sample has met the tolerance. With a mask the
// first pass is full too: a seed whose in-mask pixels all lie on unvisited rows would end
// the pass with no pixel, and a cluster that loses all its pixels stays dead.
GSW_HD bool pass_is_full(const Geometry& g, int32_t it, bool after_converged) {
  return g.subsample <= 1 || (it == 0 && (g.warm || g.mask != nullptr)) || it == g.max_iter - 1 ||
         after_converged;
}

// The most pixels a pass of a sample may change and still converge: tol times the
// sample's area, its in-mask pixels with a mask (else P: the bound of earlier versions,
// bit for bit). Counted against P, a small mask would converge after its first pass.
GSW_HD int64_t max_changed(const Geometry& g, int64_t area) {
  return static_cast<int64_t>(g.tol * static_cast<double>(area));
}

// Whether a subsampled pass that changed `changed` pixels meets the tolerance (`limit`, the
// sample's max_changed); the next pass is then full. Not scaled to the share of rows it
// visits: those rows were last reassigned subsample passes ago, so their changes add up
// that many passes of drift.
GSW_HD bool subsampled_converged(int64_t changed, int64_t limit) { return changed <= limit; }

// The cell of a centre coordinate: the floor of coordinate / step rounded to float (a
// coordinate just below k * step may round up to cell k), clamped to [0, cells - 1] (NaN:
// 0); no float-to-int conversion out of range, whatever centres a warm start brings.
GSW_HD int32_t cell_of(float coordinate, int32_t step, int32_t cells) {
  const float q = coordinate / static_cast<float>(step);
  if (!(q >= 1.f)) return 0;
  if (q >= static_cast<float>(cells - 1)) return cells - 1;
  const int32_t c = static_cast<int32_t>(q);
  return c < cells - 1 ? c : cells - 1;
}

GSW_HD int32_t cell_of_pixel(int32_t coordinate, int32_t step, int32_t cells) {
  const int32_t c = coordinate / step;
  return c >= cells ? cells - 1 : c;
}

GSW_HD uint32_t float_bits(float v) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(v);
#else
  return __builtin_bit_cast(uint32_t, v);
#endif
}

// Products and sums rounded one at a time on both backends (nvcc would otherwise fuse
// a * b + c into one FMA where the CPU build rounds twice): for the stages the contract
// makes exact (seeds, nearest live cluster).
GSW_HD float mul_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}

GSW_HD float add_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}

// a * b + c with one rounding (a fused multiply-add) on every backend: CUDA's __fmaf_rn,
// the FMA instruction in the CPU's AVX2 code, libm's correctly rounded fmaf elsewhere.
GSW_HD float fma_rn(float a, float b, float c) {
#if defined(__CUDA_ARCH__)
  return __fmaf_rn(a, b, c);
#else
  return __builtin_fmaf(a, b, c);
#endif
}

// A float of integer value, saturated to int32 (NaN: INT32_MIN).
GSW_HD int32_t saturate_int32(float v) {
  if (v >= 2147483648.f) return INT32_MAX;
  return v > -2147483648.f ? static_cast<int32_t>(v) : INT32_MIN;
}

// Window of a centre at c along one dimension: the integer coordinates window_first ..
// window_last, those with |p - c| <= step, decided on c - step and c + step rounded to
// float (ceil and floor, saturated to int32). Pixels are compared as integers on both
// backends: a pixel coordinate of 2^24 or more would round as a float. A NaN centre has
// an empty window.
GSW_HD int32_t window_first(float c, int32_t step) {
  return saturate_int32(ceilf(add_rn(c, -static_cast<float>(step))));
}

GSW_HD int32_t window_last(float c, int32_t step) {
  return saturate_int32(floorf(add_rn(c, static_cast<float>(step))));
}

GSW_HD bool in_window(int32_t p, float c, int32_t step) {
  return p >= window_first(c, step) && p <= window_last(c, step);
}

// The pixels of cells ck - 1 .. ck + 1 along one dimension of `size` pixels: [first, last]
// (cell_of_pixel puts the pixels past the last cell's start into the last cell). A cluster
// may claim a pixel only when its centre's cell (cell_of) is within one cell of the pixel's
// in every dimension, besides the window: CUDA scans exactly those cells, and the window
// alone, rounded to float, can reach a pixel two cells away (a centre just below a cell
// edge whose c + step rounds up across a power of two).
GSW_HD void cell_span(int32_t ck, int32_t step, int32_t cells, int32_t size, int32_t* first,
                      int32_t* last) {
  *first = ck <= 1 ? 0 : (ck - 1) * step;
  *last = ck + 2 >= cells ? size - 1 : (ck + 2) * step - 1;
}

// The assignment distance (Distance in the contract), with every rounding written out so
// that equal features and centres give equal bits on both backends:
//   colour = fma(t_{F-1}, t_{F-1}, ... fma(t_1, t_1, fma(t_0, t_0, 0)))  (t_f = f_p - f_k)
//   zy     = fma(w_y * dy, dy, (w_z * dz) * dz)
//   d      = fma(colour, 1 / compactness^2, fma(w_x * dx, dx, zy))
// The CPU's vector loops (slic_cpu.cpp, claim) compute the same expressions lane by lane.
GSW_HD float colour_step(float colour, float t) { return fma_rn(t, t, colour); }

GSW_HD float spatial_zy(const Geometry& g, float dz, float dy) {
  return fma_rn(mul_rn(g.weight[1], dy), dy, mul_rn(mul_rn(g.weight[0], dz), dz));
}

GSW_HD float assignment_distance(const Geometry& g, float colour, float zy, float dx) {
  return fma_rn(colour, g.inv_m2, fma_rn(mul_rn(g.weight[2], dx), dx, zy));
}

GSW_HD float bits_float(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  return __builtin_bit_cast(float, u);
#endif
}

// Cube root for x > 0 without libm and without a division (divisions made the CIELAB
// conversion of a photo cost more than a k-means pass): a bit-level first guess of
// r = x^(-1/3) (within ~5%), two Newton steps r <- r (4 - x r^3) / 3 (quadratic
// convergence), y = x r^2, and one Newton correction y <- y - (y^3 - x) r^2 / 3: within one
// float ulp of the cube root on (1e-6, 1.2). Every product and sum rounded on its own
// (mul_rn, add_rn), so both backends give the same bits; it vectorises on the CPU.
GSW_HD float fast_cbrt(float x) {
  constexpr float kThird = 1.f / 3.f;
  float r = bits_float(0x54a2fa8cu - float_bits(x) / 3u);
  for (int step = 0; step < 2; ++step) {
    const float r3x = mul_rn(mul_rn(mul_rn(r, r), r), x);
    r = mul_rn(mul_rn(r, add_rn(4.f, -r3x)), kThird);
  }
  const float y = mul_rn(mul_rn(x, r), r);
  const float residual = add_rn(mul_rn(mul_rn(y, y), y), -x);
  return add_rn(y, -mul_rn(mul_rn(residual, mul_rn(r, r)), kThird));
}

// Both branches are computed and then selected with a bit mask: GCC 12 vectorises this
// form only (a ternary, or clamping the root's argument, leaves a branch in the loop).
// The root of t <= 0 is garbage but never selected.
GSW_HD float lab_f(float t) {
  const float root = fast_cbrt(t);
  const float linear = add_rn(mul_rn(7.787f, t), 16.f / 116.f);
  const uint32_t take_root = 0u - static_cast<uint32_t>(t > 0.008856f);
  return bits_float((float_bits(root) & take_root) | (float_bits(linear) & ~take_root));
}

GSW_HD float dot3_rn(float a, float r, float b, float g, float c, float bl) {
  return add_rn(add_rn(mul_rn(a, r), mul_rn(b, g)), mul_rn(c, bl));
}

// Linear RGB -> CIELAB, D65 white, as scikit-image's rgb2lab; one rounding per operation.
GSW_HD void linear_rgb_to_lab(float r, float g, float b, float* L, float* A, float* B) {
  const float x = mul_rn(dot3_rn(0.412453f, r, 0.357580f, g, 0.180423f, b), 1.f / 0.95047f);
  const float y = dot3_rn(0.212671f, r, 0.715160f, g, 0.072169f, b);
  const float z = mul_rn(dot3_rn(0.019334f, r, 0.119193f, g, 0.950227f, b), 1.f / 1.08883f);
  const float fx = lab_f(x), fy = lab_f(y), fz = lab_f(z);
  *L = add_rn(mul_rn(116.f, fy), -16.f);
  *A = mul_rn(500.f, add_rn(fx, -fy));
  *B = mul_rn(200.f, add_rn(fy, -fz));
}

// Comparisons rather than fminf/fmaxf: the same on both backends, and it vectorises.
GSW_HD float clamp_feature(float v) {
  return v < -kMaxFeature ? -kMaxFeature : (v > kMaxFeature ? kMaxFeature : v);
}

// Feature value in 2^-16 fixed point, rounded half away from zero. Integer sums of these
// are exact and order-independent, so both backends get the same component statistics.
GSW_HD int64_t to_fixed(float v) {
  const double s = static_cast<double>(v) * kFixedScale;
  return static_cast<int64_t>(s + copysign(0.5, s));  // branchless: vectorises
}

// to_fixed for a clamped feature (|v| <= kMaxFeature), in float and int32 arithmetic that
// vectorises: v * 2^16 is exact in float, truncation is exact below 2^31, and the
// fraction s - t is exact, so this rounds half away from zero like to_fixed, bit for bit.
GSW_HD int32_t to_fixed32(float v) {
  const float s = v * static_cast<float>(kFixedScale);
  const int32_t t = static_cast<int32_t>(s);
  const float frac = s - static_cast<float>(t);
  return t + static_cast<int32_t>(frac >= 0.5f) - static_cast<int32_t>(frac <= -0.5f);
}

GSW_HD float fixed_mean(int64_t sum, int64_t count) {
  return static_cast<float>(static_cast<double>(sum) / static_cast<double>(count) / kFixedScale);
}

// Centre row (z, y, x, features) from exact sums s = (count > 0, z, y, x, fixed-point
// features): coordinates as float64 quotients, features through fixed_mean. Every centre
// both backends write (k-means updates, segment centres) comes from here.
GSW_HD void mean_row(const int64_t* s, int32_t F, float* c) {
  for (int32_t j = 0; j < 3; ++j) {
    c[j] = static_cast<float>(static_cast<double>(s[1 + j]) / static_cast<double>(s[0]));
  }
  for (int32_t f = 0; f < F; ++f) c[3 + f] = fixed_mean(s[4 + f], s[0]);
}

GSW_HD float srgb_to_linear(float c) {
  return c > 0.04045f ? powf((c + 0.055f) / 1.055f, 2.4f) : c / 12.92f;
}

// Float sRGB in 0..1 through kSrgbFloat (srgb_tables.h), interpolated between its steps
// with one rounding per operation: the same bits on both backends (error ~1e-6 against the
// exact curve). Outside 0..1 (only with validate=False), powf, which differs in the last
// bits between libm and CUDA.
GSW_HD float srgb_float_to_linear(const float* table, float c) {
  if (!(c >= 0.f && c <= 1.f)) return srgb_to_linear(c);
  const float t = mul_rn(c, static_cast<float>(kSrgbFloatSteps));  // exact: a power of 2
  const int32_t i = static_cast<int32_t>(t);
  const float below = table[i], above = table[i + 1];
  return add_rn(below, mul_rn(add_rn(t, -static_cast<float>(i)), add_rn(above, -below)));
}

// Squared feature gradient at (z, y, x), central differences clamped at the borders.
GSW_HD float gradient_at(const Geometry& g, const float* feat, int32_t z, int32_t y, int32_t x) {
  const int32_t xl = x > 0 ? x - 1 : 0, xr = x < g.W - 1 ? x + 1 : g.W - 1;
  const int32_t yu = y > 0 ? y - 1 : 0, yd = y < g.H - 1 ? y + 1 : g.H - 1;
  const int64_t plane = int64_t{z} * g.H * g.W;
  float sum = 0.f;
  for (int32_t f = 0; f < g.F; ++f) {
    const float* fp = feat + f * g.P + plane;
    const float dx = fp[int64_t{y} * g.W + xr] - fp[int64_t{y} * g.W + xl];
    const float dy = fp[int64_t{yd} * g.W + x] - fp[int64_t{yu} * g.W + x];
    sum = add_rn(sum, add_rn(mul_rn(dx, dx), mul_rn(dy, dy)));
  }
  return sum;
}

// Cold start: the centre row (z, y, x, features) of grid seed k, moved to the lowest
// gradient of its 3x3 neighbourhood (first in raster order on ties). Along a dimension
// with a step below 3 the seed stays put: seeds one or two pixels apart would otherwise
// meet on the same pixel, and all but one would die (n_segments near the pixel count).
// mask: the sample's [P] mask or null. With a mask, a seed whose grid point lies outside
// is dead (returns false) and a live one moves to in-mask pixels only.
GSW_HD bool seed_center(const Geometry& g, const float* feat, const uint8_t* mask, int32_t k,
                        float* c) {
  const int32_t ix = k % g.cells[2], iy = (k / g.cells[2]) % g.cells[1],
                iz = k / (g.cells[2] * g.cells[1]);
  const int32_t z = g.start[0] + iz * g.step[0];
  const int32_t y0 = g.start[1] + iy * g.step[1], x0 = g.start[2] + ix * g.step[2];
  const int32_t ry = g.step[1] >= 3 ? 1 : 0, rx = g.step[2] >= 3 ? 1 : 0;
  int32_t y = y0, x = x0;
  float best = gradient_at(g, feat, z, y, x);
  for (int32_t dy = -ry; dy <= ry; ++dy) {
    for (int32_t dx = -rx; dx <= rx; ++dx) {
      const int32_t yy = y0 + dy, xx = x0 + dx;
      if (yy < 0 || yy >= g.H || xx < 0 || xx >= g.W) continue;
      if (mask != nullptr && !mask[(int64_t{z} * g.H + yy) * g.W + xx]) continue;
      const float grad = gradient_at(g, feat, z, yy, xx);
      if (grad < best) {
        best = grad;
        y = yy;
        x = xx;
      }
    }
  }
  c[0] = static_cast<float>(z);
  c[1] = static_cast<float>(y);
  c[2] = static_cast<float>(x);
  const int64_t p = (int64_t{z} * g.H + y) * g.W + x;
  for (int32_t f = 0; f < g.F; ++f) c[3 + f] = feat[f * g.P + p];
  return mask == nullptr || mask[(int64_t{z} * g.H + y0) * g.W + x0] != 0;
}

// The live cluster (counts > 0) whose centre is nearest to pixel p in space, ties to the
// lower index: where a pixel that no window ever reached goes.
GSW_HD int32_t nearest_live_cluster(const Geometry& g, const float* centers, const int32_t* counts,
                                    int64_t p) {
  const float z = static_cast<float>(p / (int64_t{g.H} * g.W));
  const float y = static_cast<float>((p / g.W) % g.H), x = static_cast<float>(p % g.W);
  const int32_t R = 3 + g.F;
  float best = INFINITY;
  int32_t best_k = 0;
  for (int32_t k = 0; k < g.K; ++k) {
    if (counts[k] <= 0) continue;
    const float* c = centers + int64_t{k} * R;
    const float dz = z - c[0], dy = y - c[1], dx = x - c[2];
    const float d =
        add_rn(add_rn(mul_rn(mul_rn(g.weight[0], dz), dz), mul_rn(mul_rn(g.weight[1], dy), dy)),
               mul_rn(mul_rn(g.weight[2], dx), dx));
    if (d < best) {
      best = d;
      best_k = k;
    }
  }
  return best_k;
}

// Whether a set of `size` pixels may still take a small set in a merge round (max_size,
// scikit-image's max_size_factor: a segment stops growing past max_size).
GSW_HD bool takes_more(const Geometry& g, int64_t size) {
  return g.max_size <= 0 || size < g.max_size;
}

// 64-bit key ordering (distance, id) pairs; distances are >= 0 so their bits sort as floats.
GSW_HD uint64_t pack_distance(float distance, uint32_t id) {
  return (static_cast<uint64_t>(float_bits(distance)) << 32) | id;
}

// 64-bit key ordering components by size, ties to the lower root.
GSW_HD uint64_t pack_size(int64_t size, uint32_t root) {
  return (static_cast<uint64_t>(size) << 32) | (0xFFFFFFFFu - root);
}

GSW_HD uint32_t unpack_size_root(uint64_t key) { return 0xFFFFFFFFu - static_cast<uint32_t>(key); }

#if !defined(__CUDACC__)
using SlicOutputs =
    std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
using SlicFn = SlicOutputs (*)(const at::Tensor&, const std::optional<at::Tensor>&,
                               const std::optional<at::Tensor>&, const std::optional<at::Tensor>&,
                               at::IntArrayRef, at::ArrayRef<double>, double, bool, int64_t, double,
                               bool, int64_t, int64_t, const std::optional<at::Tensor>&);

// Pixels per kernel call: every root-indexed array uses int32 indices n * P + p.
constexpr int64_t kMaxPixels = int64_t{1} << 31;

// CUDA pieces stay smaller: the glue's scratch is about 80-160 bytes per pixel (features,
// labels, root-indexed union-find, statistics, merge keys, centre sums), so a piece of 2^31
// pixels would need more memory than a GPU has; slic_cuda.cpp also sizes each piece from the
// device's free memory (max_samples). Samples are independent: the piece size changes no
// result.
constexpr int64_t kMaxCudaPixels = int64_t{1} << 28;

// Runs fn on consecutive groups of at most max_samples samples of fewer than max_pixels
// pixels each (at least one sample per group) and concatenates the outputs (samples are
// independent): both backends take any N. An empty image (N or P = 0) is an error on both
// backends. The environment variable GSWFAST_SLIC_CHUNK_PIXELS (a whole number; 0 or unset:
// no change) lowers max_pixels, so that the tests cut small batches into groups too.
SlicOutputs slic_in_chunks(SlicFn fn, int64_t max_pixels, int64_t max_samples,
                           const at::Tensor& image, const std::optional<at::Tensor>& init_centers,
                           const std::optional<at::Tensor>& init_counts,
                           const std::optional<at::Tensor>& init_labels, at::IntArrayRef grid,
                           at::ArrayRef<double> weights, double compactness, bool convert_lab,
                           int64_t max_iter, double tol, bool connectivity, int64_t min_size,
                           int64_t max_centers, const std::optional<at::Tensor>& mask);

SlicOutputs slic_cpu(const at::Tensor& image, const std::optional<at::Tensor>& init_centers,
                     const std::optional<at::Tensor>& init_counts,
                     const std::optional<at::Tensor>& init_labels, at::IntArrayRef grid,
                     at::ArrayRef<double> weights, double compactness, bool convert_lab,
                     int64_t max_iter, double tol, bool connectivity, int64_t min_size,
                     int64_t max_centers, const std::optional<at::Tensor>& mask);

// Shared by both backends: argument checks and the geometry they imply.
Geometry make_geometry(const at::Tensor& image, const std::optional<at::Tensor>& init_centers,
                       const std::optional<at::Tensor>& init_counts,
                       const std::optional<at::Tensor>& init_labels, at::IntArrayRef grid,
                       at::ArrayRef<double> weights, double compactness, bool convert_lab,
                       int64_t max_iter, double tol, bool connectivity, int64_t min_size,
                       int64_t max_centers, const std::optional<at::Tensor>& mask);
#endif

namespace cuda {
// Raw launchers (slic_cuda.cu); the tensor glue (slic_cuda.cpp) allocates every buffer.
// R = 3 + F. Root-indexed arrays use the global pixel index n * P + p.

// Per-sample state slots (slic_cuda.cu's State: done, changed, merging, merged,
// after_converged, area).
constexpr int kStateSlots = 6;
// Loops that stop early (slic_cuda.cu's Loop: the k-means passes, the merge rounds); their
// counters share the state allocation (a last row of kStateSlots).
constexpr int kLoops = 2;
static_assert(kLoops <= kStateSlots, "the loop counters fit a row of the state");

struct Buffers {
  const void* image;           // [N, C, P]
  int image_dtype;             // 0 uint8, 1 half, 2 bfloat16, 3 float, 4 double
  const float* init_centers;   // [N, K, R] or null (then cold start)
  const int32_t* init_counts;  // [N, K]
  const int32_t* init_labels;  // [N, P]
  float* features;             // [N, F, P]
  float* clusters;             // [N, K, R] k-means centres (output)
  int32_t* counts;             // [N, K] cluster sizes (output)
  int32_t* labels;             // [N, P] clusters, then segment ids (output)
  int32_t* cluster_labels;     // [N, P] the k-means labels (output)
  int32_t* cell_start;         // [N, cells + 1]
  int32_t* cell_cursor;        // [N, cells]
  int32_t* cell_items;         // [N, K]
  int64_t* sums;               // [N, max(K, max_centers), R + 1] fixed-point sums
  int32_t* state;              // [N, kStateSlots]: slic_cuda.cu's State slots
  int32_t* finished;           // [kLoops] samples that left each loop (state's last row)
  int32_t* iterations;         // [N] (output)
  int32_t* parent;             // [N * P] union-find
  int64_t* stats;              // [N * P, 1 + F] by root: size, feature sums
  int32_t* orig_size;          // [N * P] size of each original component, by its root
  uint8_t* was_root;           // [N * P]
  uint64_t* best;              // [N * P] merge choice, then the largest original component
  uint64_t* main_of;           // [N, K]
  int32_t* has_main;           // [N, K]
  int32_t* extra_rank;         // [N, P] 1 at extra final roots; the glue makes it a cumsum
  int32_t* num_roots;          // [N]
  int32_t* free_list;          // [N, K]
  int32_t* free_low;           // [N] length of each free_list
  int32_t* id_of_cluster;      // [N, K]
  int32_t* final_id;           // [N * P] by final root
  int64_t* num_segments;       // [N] (output)
  float* out_centers;          // [N, max_centers, R] (output, zero-filled by the glue)
};

// Stages, run in this order by the glue; between mark_segments and finish the glue turns
// extra_rank into its inclusive cumsum along P. Nothing is copied back to the host and the
// host never waits on the GPU; the k-means and merge loops stop enqueuing passes once a
// host-mapped flag says every sample has left them (slic_cuda.cu, early exit: skipped
// launches are no-ops, and nothing is skipped during CUDA graph capture).
void launch_features_and_seeds(const Geometry& g, const Buffers& b, void* stream);
void launch_iterations(const Geometry& g, const Buffers& b, void* stream);
void launch_mark_segments(const Geometry& g, const Buffers& b, void* stream);
void launch_finish(const Geometry& g, const Buffers& b, void* stream);
}  // namespace cuda

}  // namespace slic
}  // namespace gswfast
