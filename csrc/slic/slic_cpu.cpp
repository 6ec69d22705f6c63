// CPU twin of the SLIC kernels. See slic.h for the contract.
//
// Parallel work is cut by shape only (pixel ranges for the features, (sample, z, cell row)
// chunks for the iterations, samples or bands of rows for the connectivity pass), and every
// reduction runs in a fixed order, so results do not depend on the number of threads.
#include "slic.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/Version.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/empty.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <numeric>
#include <vector>

#if defined(__linux__)
#include <dirent.h>  // own_running_threads
#include <unistd.h>  // sysconf
#endif

namespace gswfast {
namespace slic {

Geometry make_geometry(const at::Tensor& image, const std::optional<at::Tensor>& init_centers,
                       const std::optional<at::Tensor>& init_counts,
                       const std::optional<at::Tensor>& init_labels, at::IntArrayRef grid,
                       at::ArrayRef<double> weights, double compactness, bool convert_lab,
                       int64_t max_iter, double tol, bool connectivity, int64_t min_size,
                       int64_t max_centers, const std::optional<at::Tensor>& mask) {
  TORCH_CHECK(image.dim() == 5, "image: expected [N, C, D, H, W], got ", image.sizes());
  const auto s = image.scalar_type();
  TORCH_CHECK(
      s == at::kByte || s == at::kHalf || s == at::kBFloat16 || s == at::kFloat || s == at::kDouble,
      "image: expected uint8, float16, bfloat16, float32 or float64, got ", s);
  TORCH_CHECK(image.is_contiguous(), "image: expected a contiguous tensor");
  TORCH_CHECK(grid.size() >= 9 && grid.size() <= 11, "grid: expected 9 to 11 integers, got ",
              grid.size());
  TORCH_CHECK(grid.size() == 9 || grid[9] >= 1, "subsample: expected >= 1, got ",
              grid.size() >= 10 ? grid[9] : 0);
  TORCH_CHECK(grid.size() <= 10 || grid[10] >= 0, "max_size: expected >= 0, got ",
              grid.size() == 11 ? grid[10] : 0);
  TORCH_CHECK(weights.size() == 3, "weights: expected 3 floats, got ", weights.size());
  TORCH_CHECK(compactness > 0, "compactness: expected > 0, got ", compactness);
  TORCH_CHECK(max_iter >= 1, "max_iter: expected >= 1, got ", max_iter);
  TORCH_CHECK(tol >= 0 && tol <= 1, "tol: expected 0 <= tol <= 1, got ", tol);
  TORCH_CHECK(min_size >= 0, "min_size: expected >= 0, got ", min_size);
  TORCH_CHECK(max_centers >= 1 && max_centers < (int64_t{1} << 31),
              "max_centers: expected >= 1, got ", max_centers);
  Geometry g{};
  g.N = image.size(0);
  g.C = static_cast<int32_t>(image.size(1));
  TORCH_CHECK(g.C >= 1, "image: expected at least one channel");
  TORCH_CHECK(!convert_lab || g.C == 3, "convert_lab: needs 3 channels, got ", g.C);
  g.F = g.C;
  g.D = static_cast<int32_t>(image.size(2));
  g.H = static_cast<int32_t>(image.size(3));
  g.W = static_cast<int32_t>(image.size(4));
  g.P = int64_t{g.D} * g.H * g.W;
  TORCH_CHECK(g.P >= 1, "image: expected a non-empty spatial extent, got ", image.sizes());
  TORCH_CHECK(g.N * g.P < kMaxPixels, "image: at most 2^31 - 1 pixels per call (slic_in_chunks)");
  const int32_t dims[3] = {g.D, g.H, g.W};
  int64_t cells = 1;
  for (int d = 0; d < 3; ++d) {
    g.step[d] = static_cast<int32_t>(grid[d]);
    g.start[d] = static_cast<int32_t>(grid[3 + d]);
    g.cells[d] = static_cast<int32_t>(grid[6 + d]);
    TORCH_CHECK(g.step[d] >= 1 && g.cells[d] >= 1 && g.start[d] >= 0 &&
                    g.start[d] + int64_t{g.cells[d] - 1} * g.step[d] < dims[d],
                "grid: seeds outside the image along dim ", d);
    g.weight[d] = static_cast<float>(weights[d]);
    cells *= g.cells[d];
  }
  g.inv_m2 = static_cast<float>(1.0 / (compactness * compactness));
  g.max_iter = static_cast<int32_t>(max_iter);
  g.tol = tol;
  g.min_size = static_cast<int32_t>(std::min<int64_t>(min_size, g.P));
  g.max_centers = static_cast<int32_t>(max_centers);
  g.subsample = grid.size() >= 10 ? static_cast<int32_t>(std::min<int64_t>(grid[9], 1 << 30)) : 1;
  // Seed rows closer than 2 * subsample: every pass is full. A subsampled first pass hands
  // the visited rows to the seeds on or next to them, and the seeds between starve (420
  // seeds on a 20 x 21 image kept 153).
  if (g.step[1] < 2 * int64_t{g.subsample}) g.subsample = 1;
  g.max_size = grid.size() == 11 ? std::min<int64_t>(grid[10], g.P) : 0;
  g.convert_lab = convert_lab;
  g.connectivity = connectivity;
  g.warm = init_centers.has_value();
  g.mask = nullptr;
  if (mask.has_value()) {
    const at::Tensor& m = *mask;
    TORCH_CHECK(m.scalar_type() == at::kByte && m.dim() == 2 && m.size(0) == g.N &&
                    m.size(1) == g.P && m.is_contiguous(),
                "mask: expected uint8 [", g.N, ", ", g.P, "], got ", m.scalar_type(), " ",
                m.sizes());
    TORCH_CHECK(m.device() == image.device(), "mask: expected device ", image.device(), ", got ",
                m.device());
    g.mask = m.const_data_ptr<uint8_t>();
  }
  TORCH_CHECK(init_centers.has_value() == init_counts.has_value() &&
                  init_centers.has_value() == init_labels.has_value(),
              "init: expected centres, counts and labels together");
  if (g.warm) {
    const at::Tensor& c = *init_centers;
    TORCH_CHECK(c.scalar_type() == at::kFloat && c.dim() == 3 && c.size(0) == g.N &&
                    c.size(2) == 3 + g.F && c.size(1) >= 1 && c.is_contiguous(),
                "init: expected centres float32 [", g.N, ", K, ", 3 + g.F, "], got ", c.sizes());
    TORCH_CHECK(c.device() == image.device(), "init: expected device ", image.device());
    const at::Tensor& n = *init_counts;
    TORCH_CHECK(n.scalar_type() == at::kInt && n.dim() == 2 && n.size(0) == g.N &&
                    n.size(1) == c.size(1) && n.is_contiguous() && n.device() == image.device(),
                "init: expected cluster counts int32 [", g.N, ", ", c.size(1), "]");
    TORCH_CHECK(c.size(1) < (int64_t{1} << 31), "init: expected fewer than 2^31 clusters, got ",
                c.size(1));
    g.K = static_cast<int32_t>(c.size(1));
    const at::Tensor& l = *init_labels;
    TORCH_CHECK(l.scalar_type() == at::kInt && l.dim() == 2 && l.size(0) == g.N &&
                    l.size(1) == g.P && l.is_contiguous() && l.device() == image.device(),
                "init: expected labels int32 [", g.N, ", ", g.P, "]");
  } else {
    TORCH_CHECK(cells < (int64_t{1} << 31), "grid: too many cells");
    g.K = static_cast<int32_t>(cells);
  }
  return g;
}

namespace {

// Threads: a call of fewer than kParallelPixels pixels runs on the calling thread only.
// One photo takes a few milliseconds split into a dozen short parallel regions, where two
// OpenMP threads gain little and, on a machine another process keeps busy, lose a lot: a
// thread spinning at a barrier while its sibling waits for a core made a 640x480 image
// 3.5x slower on 2 threads than on 1. Results never depend on this (work is cut by shape).
constexpr int64_t kParallelPixels = int64_t{1} << 20;

// Larger calls use as many of ATen's threads as the machine has free cores for: OpenMP
// splits a region in fixed parts and its threads spin at the barriers, so a thread that
// waits for a core delays the whole region. Beside one busy process, a 1280x1024 photo
// took 66 ms on 2 threads of 2 cores against 52 ms on 1. Read once per call: the runnable
// tasks of the machine (procs_running of /proc/stat, machine-wide, against its online
// CPUs) less those of this process (its own OpenMP threads may still be spinning after
// the last region); where they cannot be read, every thread is used.
#if defined(__linux__)
// procs_running of /proc/stat, -1 when unreadable. Its long lines (intr) come in 256-byte
// pieces, none of which can start with "procs_running ".
long machine_running_tasks() {
  FILE* file = std::fopen("/proc/stat", "r");
  if (file == nullptr) return -1;
  char line[256];
  long running = -1;
  while (std::fgets(line, sizeof line, file) != nullptr) {
    if (std::strncmp(line, "procs_running ", 14) == 0) {
      running = std::strtol(line + 14, nullptr, 10);
      break;
    }
  }
  std::fclose(file);
  return running;
}

// Threads of this process in state R (running or runnable), this one included; at most
// kMaxTasksRead are read, so that a process of many threads pays a bounded cost.
long own_running_threads() {
  constexpr int kMaxTasksRead = 256;
  DIR* tasks = opendir("/proc/self/task");
  if (tasks == nullptr) return 1;
  long running = 0;
  int read = 0;
  while (const dirent* task = readdir(tasks)) {
    if (task->d_name[0] == '.') continue;
    if (++read > kMaxTasksRead) break;
    char path[300], stat[512];
    std::snprintf(path, sizeof path, "/proc/self/task/%s/stat", task->d_name);
    FILE* file = std::fopen(path, "r");
    if (file == nullptr) continue;
    const size_t n = std::fread(stat, 1, sizeof stat - 1, file);
    std::fclose(file);
    stat[n] = '\0';
    const char* name_end = std::strrchr(stat, ')');  // the name may hold spaces and ')'
    if (name_end != nullptr && name_end[1] == ' ' && name_end[2] == 'R') ++running;
  }
  closedir(tasks);
  return std::max<long>(running, 1);
}
#endif

// Of `threads` (the calling one included), how many have a free core now: at least 1.
int64_t threads_with_free_cores(int64_t threads) {
#if defined(__linux__)
  const long machine = machine_running_tasks();
  const long cpus = sysconf(_SC_NPROCESSORS_ONLN);
  if (machine < 1 || cpus < 1) return threads;
  const long others = std::max<long>(machine - own_running_threads(), 0);
  return std::clamp<int64_t>(cpus - others, 1, threads);
#else
  return threads;
#endif
}

// The threads of the call on this thread (ThreadCap): 0 for no cap. Results never depend
// on it: work is cut by shape, and a region's parts only move between threads.
thread_local int64_t call_threads = 0;

struct ThreadCap {
  int64_t before;
  explicit ThreadCap(int64_t threads) : before(call_threads) { call_threads = threads; }
  ~ThreadCap() { call_threads = before; }
  ThreadCap(const ThreadCap&) = delete;
  ThreadCap& operator=(const ThreadCap&) = delete;
};

// ATen's OpenMP regions take at most ceil(range / grain) threads: a larger grain caps them.
template <typename Fn>
void parallel_for(const Geometry& g, int64_t begin, int64_t end, int64_t grain, const Fn& fn) {
  if (begin >= end) return;
  if (g.N * g.P < kParallelPixels || call_threads == 1) {
    fn(begin, end);
  } else if (call_threads > 1) {
    const int64_t per_thread = (end - begin + call_threads - 1) / call_threads;
    at::parallel_for(begin, end, std::max(grain, per_thread), fn);
  } else {
    at::parallel_for(begin, end, grain, fn);
  }
}

// ---------------------------------------------------------------------------------------
// Features: image [N, C, P] -> float planes [N, F, P] (CIELAB or 0..1 values).

template <typename T>
float unit_value(T v) {
  if constexpr (std::is_same_v<T, uint8_t>) {
    return static_cast<float>(v) * (1.f / 255.f);
  } else {
    return static_cast<float>(v);
  }
}

// CIELAB of a span of linear RGB values, clamped. Plain IEEE products and sums (no FMA
// contraction in either build), so the AVX2 build gives the same bits as the baseline one
// and as CUDA; it only vectorises better (the integer division of fast_cbrt's first guess
// needs AVX2).
__attribute__((always_inline)) inline void lab_span_body(const float* __restrict r,
                                                         const float* __restrict gg,
                                                         const float* __restrict b,
                                                         float* __restrict L, float* __restrict A,
                                                         float* __restrict B, int64_t len) {
  for (int64_t j = 0; j < len; ++j) {
    float l, a, bb;
    linear_rgb_to_lab(r[j], gg[j], b[j], &l, &a, &bb);
    L[j] = clamp_feature(l);
    A[j] = clamp_feature(a);
    B[j] = clamp_feature(bb);
  }
}

using LabSpanFn = void (*)(const float*, const float*, const float*, float*, float*, float*,
                           int64_t);

void lab_span(const float* r, const float* gg, const float* b, float* L, float* A, float* B,
              int64_t len) {
  lab_span_body(r, gg, b, L, A, B, len);
}

#if defined(__x86_64__) && defined(__GNUC__)
// The AVX2 + FMA loops where the CPU has them, unless the portable ones are asked for:
// GSWFAST_SLIC_PORTABLE=1, or ATen's own kernels held to the baseline
// (ATEN_CPU_CAPABILITY=default, one of `make isa-check`'s set-ups). Both paths must give
// the same bits, and the tests run both.
bool cpu_has_avx2() {
  static const bool has = [] {
    const char* portable = std::getenv("GSWFAST_SLIC_PORTABLE");
    if (portable != nullptr && portable[0] != '\0' && portable[0] != '0') return false;
    if (at::get_cpu_capability() == "DEFAULT") return false;
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  }();
  return has;
}

// "avx2" without "fma": GCC may not contract a * b + c, so the bits equal lab_span's.
__attribute__((target("avx2"))) void lab_span_avx2(const float* r, const float* gg, const float* b,
                                                   float* L, float* A, float* B, int64_t len) {
  lab_span_body(r, gg, b, L, A, B, len);
}

#if !defined(__clang__)
// 16 lanes where the CPU has AVX-512 and ATen's kernels use it too: the conversion is
// compute-bound (a photo's SLIC with subsample=3 took 0.93x the CPU time). AVX-512F brings
// FMA: contraction off (GCC's optimize attribute, hence not with clang), so that every
// product and sum still rounds on its own, as in lab_span.
__attribute__((target("avx512f,avx512vl,avx512dq,avx512bw"), optimize("fp-contract=off"))) void
lab_span_avx512(const float* r, const float* gg, const float* b, float* L, float* A, float* B,
                int64_t len) {
  lab_span_body(r, gg, b, L, A, B, len);
}
#endif
#endif

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
// The 16-lane loops (GCC builds only, as they are): where the CPU has AVX-512 and ATen's kernels
// use it too, so that ATEN_CPU_CAPABILITY=avx2 (one of `make isa-check`'s set-ups) runs the 8-lane
// ones.
bool cpu_has_avx512() {
  static const bool has = cpu_has_avx2() && at::get_cpu_capability() == "AVX512" &&
                          __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
                          __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512bw");
  return has;
}
#endif

LabSpanFn pick_lab_span() {
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
  if (cpu_has_avx512()) return &lab_span_avx512;
#endif
#if defined(__x86_64__) && defined(__GNUC__)
  if (cpu_has_avx2()) return &lab_span_avx2;
#endif
  return &lab_span;
}

template <typename T>
void compute_features(const Geometry& g, const T* image, float* features, int32_t* fixed) {
  // sRGB decoding through the generated tables (srgb_tables.h), the same on CUDA.
  auto linearise = [](T v) -> float {
    if constexpr (std::is_same_v<T, uint8_t>) {
      return kSrgbU8[v];
    } else {
      return srgb_float_to_linear(kSrgbFloat, static_cast<float>(v));
    }
  };
  const LabSpanFn lab = pick_lab_span();
  const int64_t P = g.P;
  parallel_for(g, 0, g.N * P, 65536, [&](int64_t begin, int64_t end) {
    std::vector<float> r(1024), gg(1024), b(1024);
    for (int64_t i = begin; i < end;) {
      const int64_t n = i / P, p0 = i % P;
      const int64_t len = std::min<int64_t>({end - i, P - p0, 1024});
      const T* src = image + n * g.C * P + p0;
      float* dst = features + n * g.F * P + p0;
      if (g.convert_lab) {
        for (int64_t j = 0; j < len; ++j) {
          r[j] = linearise(src[j]);
          gg[j] = linearise(src[P + j]);
          b[j] = linearise(src[2 * P + j]);
        }
        lab(r.data(), gg.data(), b.data(), dst, dst + P, dst + 2 * P, len);
      } else {
        for (int32_t c = 0; c < g.C; ++c) {
          for (int64_t j = 0; j < len; ++j)
            dst[c * P + j] = clamp_feature(unit_value(src[c * P + j]));
        }
      }
      // The same values in fixed point while they are in the cache (int32: clamped
      // features fit): the k-means sums add integers, exactly and in any order, as on CUDA.
      int32_t* fix = fixed + n * g.F * P + p0;
      for (int32_t f = 0; f < g.F; ++f) {
        for (int64_t j = 0; j < len; ++j) fix[f * P + j] = to_fixed32(dst[f * P + j]);
      }
      i += len;
    }
  });
}

// ---------------------------------------------------------------------------------------
// Seeds and centres. Centres are rows (z, y, x, f_0 .. f_{F-1}).

void seed_centers(const Geometry& g, const float* features, float* centers, int32_t* counts) {
  const int32_t R = 3 + g.F;
  parallel_for(g, 0, g.N * g.K, 256, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t n = i / g.K;
      const bool live =
          seed_center(g, features + n * g.F * g.P, g.mask ? g.mask + n * g.P : nullptr,
                      static_cast<int32_t>(i % g.K), centers + i * R);
      counts[i] = live ? 1 : 0;
    }
  });
}

void warm_centers(const Geometry& g, const float* init, const int32_t* init_counts, float* centers,
                  int32_t* counts) {
  const int32_t R = 3 + g.F;
  std::copy(init, init + g.N * g.K * R, centers);
  // A sample without a live cluster is not an error here (as on CUDA, slic.h): no pixel
  // is ever claimed and all of them join cluster 0.
  for (int64_t i = 0; i < g.N * g.K; ++i) counts[i] = init_counts[i] > 0 ? 1 : 0;
}

// Counting sort of one sample's live clusters into the cells holding their centres.
int32_t cell_index(const Geometry& g, const float* c) {
  const int32_t cz = cell_of(c[0], g.step[0], g.cells[0]);
  const int32_t cy = cell_of(c[1], g.step[1], g.cells[1]);
  const int32_t cx = cell_of(c[2], g.step[2], g.cells[2]);
  return (cz * g.cells[1] + cy) * g.cells[2] + cx;
}

void bin_centers(const Geometry& g, const float* centers, const int32_t* counts,
                 int32_t* cell_start, int32_t* cell_items) {
  const int32_t R = 3 + g.F;
  const int32_t num_cells = g.cells[0] * g.cells[1] * g.cells[2];
  std::fill(cell_start, cell_start + num_cells + 1, 0);
  for (int32_t k = 0; k < g.K; ++k) {
    if (counts[k] > 0) ++cell_start[cell_index(g, centers + int64_t{k} * R) + 1];
  }
  for (int32_t c = 0; c < num_cells; ++c) cell_start[c + 1] += cell_start[c];
  std::vector<int32_t> cursor(cell_start, cell_start + num_cells);
  for (int32_t k = 0; k < g.K; ++k) {  // ascending k within each cell
    if (counts[k] > 0) cell_items[cursor[cell_index(g, centers + int64_t{k} * R)]++] = k;
  }
}

// ---------------------------------------------------------------------------------------
// One assignment + accumulation pass over a chunk: the rows of one cell row of one frame.
// The chunk visits its candidate clusters in ascending order and lets each one claim the
// pixels of its search window (|offset| <= step in every dimension) that it is strictly
// nearer to: the nearest cluster wins, ties to the lower index, as on CUDA, where each
// pixel scans the same clusters through the 3 x 3 (x 3) cells around it.

struct Chunk {
  std::vector<int32_t> clusters;  // clusters of the chunk's pixels, by first pixel
  std::vector<int64_t> sums;      // per cluster: count, z, y, x, fixed-point features
  int64_t changed = 0;

  // The S sums of cluster k, a new zero row the first time k appears (local_of: cluster ->
  // row, -1 when absent). A new row may move the earlier ones: use the pointer at once.
  int64_t* sums_of(int32_t k, int32_t S, std::vector<int32_t>& local_of) {
    int32_t local = local_of[k];
    if (local < 0) {
      local = static_cast<int32_t>(clusters.size());
      local_of[k] = local;
      clusters.push_back(k);
      sums.resize(sums.size() + S, 0);
    }
    return sums.data() + int64_t{local} * S;
  }
};

// The rows a pass reassigns: those with y % stride == phase (stride 1: all), and whether
// the chunk sums are differences (every pass after the first).
struct PassRows {
  bool changes_only;
  int32_t stride;
  int32_t phase;
  int32_t first_from(int32_t y) const { return y + (phase - y % stride + stride) % stride; }
};

struct Scratch {
  std::vector<float> best;
  std::vector<int32_t> winner;
  std::vector<int32_t> cands;
  std::vector<int32_t> local_of;      // cluster -> row of Chunk::sums, -1 when absent
  std::vector<int32_t> starts, ends;  // runs of changes of a row (accumulate_changes)
};

// Window of a centre along one dimension: the pixels in_window (slic.h) accepts, clipped
// to [lo, hi).
inline void window(float c, int32_t step, int32_t lo, int32_t hi, int32_t* first, int32_t* last) {
  *first = std::max(lo, window_first(c, step));
  *last = std::min(hi - 1, window_last(c, step));
}

// Clusters whose window reaches rows [y0, y1) of frame z, ascending.
void chunk_candidates(const Geometry& g, const float* centers, const int32_t* cell_start,
                      const int32_t* cell_items, int32_t z, int32_t cy, int32_t y0, int32_t y1,
                      std::vector<int32_t>& out) {
  const int32_t R = 3 + g.F;
  const int32_t cz = cell_of_pixel(z, g.step[0], g.cells[0]);
  out.clear();
  for (int32_t iz = std::max(cz - 1, 0); iz <= std::min(cz + 1, g.cells[0] - 1); ++iz) {
    for (int32_t iy = std::max(cy - 1, 0); iy <= std::min(cy + 1, g.cells[1] - 1); ++iy) {
      const int32_t c0 = (iz * g.cells[1] + iy) * g.cells[2];
      for (int32_t i = cell_start[c0]; i < cell_start[c0 + g.cells[2]]; ++i) {
        const int32_t k = cell_items[i];
        const float* c = centers + int64_t{k} * R;
        int32_t zf, zl, yf, yl;
        window(c[0], g.step[0], z, z + 1, &zf, &zl);
        window(c[1], g.step[1], y0, y1, &yf, &yl);
        if (zf <= zl && yf <= yl) out.push_back(k);
      }
    }
  }
  std::sort(out.begin(), out.end());
}

// Lets cluster k claim pixels [x0, x1) of rows [yf, yl] (every ystep-th) of the chunk
// where it is strictly nearer than the best so far. FC > 0 fixes the feature count at
// compile time. The distance is assignment_distance (slic.h), rounding for rounding.
template <int FC>
void claim(const Geometry& g, const float* const* planes, const float* c, int32_t k, float z,
           int32_t y0, int32_t yf, int32_t yl, int32_t ystep, int32_t x0, int32_t x1, float* best,
           int32_t* winner) {
  const int32_t F = FC > 0 ? FC : g.F;
  const float dz = z - c[0];
  for (int32_t y = yf; y <= yl; y += ystep) {
    const int64_t row = int64_t{y - y0} * g.W;
    const float zy = spatial_zy(g, dz, static_cast<float>(y) - c[1]);
    for (int32_t x = x0; x < x1; ++x) {
      float colour = 0.f;
      for (int32_t f = 0; f < F; ++f) colour = colour_step(colour, planes[f][row + x] - c[3 + f]);
      const float d = assignment_distance(g, colour, zy, static_cast<float>(x) - c[2]);
      if (d < best[row + x]) {
        best[row + x] = d;
        winner[row + x] = k;
      }
    }
  }
}

using ClaimFn = void (*)(const Geometry&, const float* const*, const float*, int32_t, float,
                         int32_t, int32_t, int32_t, int32_t, int32_t, int32_t, float*, int32_t*);

#if defined(__x86_64__) && defined(__GNUC__)
// The same claims 8 pixels at a time with AVX2 + FMA: the fused multiply-adds of
// assignment_distance in each lane. A row's last partial group is a whole group ending at
// the row's end, overlapping the previous one: its pixels claimed already give the same
// distance again, not strictly nearer, so they stay as they are. Rows narrower than a group
// (clipped at the border) use masked loads and stores instead.
template <int FC>
struct ClaimAvx2 {
  static constexpr int32_t kMax = FC > 0 ? FC : 1;
  const float* plane[kMax];  // locals: the stores to best could alias planes[]
  const float* const* planes;
  __m256 centre[kMax];
  const float* c;
  int32_t F;
  __m256 cx, wx, inv_m2;
  __m256i id;

  // Pixels x .. x + 7 of a row (from its first pixel `row`), x_float their coordinates;
  // valid: the lanes inside the window (kWhole: all of them).
  template <bool kWhole>
  __attribute__((target("avx2,fma"), always_inline)) void group(int64_t row, int32_t x,
                                                                __m256 x_float, __m256 zy,
                                                                __m256i valid, float* b_row,
                                                                int32_t* w_row) const {
    __m256 colour = _mm256_setzero_ps();
    for (int32_t f = 0; f < F; ++f) {
      const float* p = (FC > 0 ? plane[f] : planes[f]) + row + x;
      const __m256 v = kWhole ? _mm256_loadu_ps(p) : _mm256_maskload_ps(p, valid);
      const __m256 t = _mm256_sub_ps(v, FC > 0 ? centre[f] : _mm256_set1_ps(c[3 + f]));
      colour = _mm256_fmadd_ps(t, t, colour);
    }
    const __m256 dx = _mm256_sub_ps(x_float, cx);
    const __m256 d =
        _mm256_fmadd_ps(colour, inv_m2, _mm256_fmadd_ps(_mm256_mul_ps(wx, dx), dx, zy));
    if (kWhole) {
      const __m256 b = _mm256_loadu_ps(b_row + x);
      const __m256 take = _mm256_cmp_ps(d, b, _CMP_LT_OQ);
      const __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w_row + x));
      const __m256i new_w = _mm256_castps_si256(
          _mm256_blendv_ps(_mm256_castsi256_ps(w), _mm256_castsi256_ps(id), take));
      _mm256_storeu_ps(b_row + x, _mm256_blendv_ps(b, d, take));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(w_row + x), new_w);
    } else {  // lanes past the window are not taken: storing the taken lanes only is enough
      const __m256 b = _mm256_maskload_ps(b_row + x, valid);
      const __m256i taken = _mm256_castps_si256(
          _mm256_and_ps(_mm256_cmp_ps(d, b, _CMP_LT_OQ), _mm256_castsi256_ps(valid)));
      _mm256_maskstore_ps(b_row + x, taken, d);
      _mm256_maskstore_epi32(w_row + x, taken, id);
    }
  }
};

template <int FC>
__attribute__((target("avx2,fma"))) void claim_avx2(const Geometry& g, const float* const* planes,
                                                    const float* c, int32_t k, float z, int32_t y0,
                                                    int32_t yf, int32_t yl, int32_t ystep,
                                                    int32_t x0, int32_t x1, float* best,
                                                    int32_t* winner) {
  ClaimAvx2<FC> claim;
  for (int32_t f = 0; f < ClaimAvx2<FC>::kMax; ++f) {
    claim.plane[f] = FC > 0 ? planes[f] : nullptr;
    claim.centre[f] = _mm256_set1_ps(c[3 + f]);
  }
  claim.planes = planes;
  claim.c = c;
  claim.F = FC > 0 ? FC : g.F;
  claim.cx = _mm256_set1_ps(c[2]);
  claim.wx = _mm256_set1_ps(g.weight[2]);
  claim.inv_m2 = _mm256_set1_ps(g.inv_m2);
  claim.id = _mm256_set1_epi32(k);
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  // Coordinates below 2^24 are exact in float, and so are their sums with 8; wider rows
  // convert each group's, as the scalar claim does.
  const bool exact_steps = x1 <= (1 << 24);
  const __m256 x_first = _mm256_cvtepi32_ps(_mm256_add_epi32(_mm256_set1_epi32(x0), lane));
  const __m256 x_last = _mm256_cvtepi32_ps(_mm256_add_epi32(_mm256_set1_epi32(x1 - 8), lane));
  const __m256 eight = _mm256_set1_ps(8.f);
  const float dz = z - c[0];
  for (int32_t y = yf; y <= yl; y += ystep) {
    const int64_t row = int64_t{y - y0} * g.W;
    const __m256 zy = _mm256_set1_ps(spatial_zy(g, dz, static_cast<float>(y) - c[1]));
    float* b_row = best + row;
    int32_t* w_row = winner + row;
    if (x1 - x0 < 8) {
      const __m256i valid = _mm256_cmpgt_epi32(_mm256_set1_epi32(x1 - x0), lane);
      claim.template group<false>(row, x0, x_first, zy, valid, b_row, w_row);
      continue;
    }
    __m256 x_float = x_first;
    int32_t x = x0;
    for (; x + 8 <= x1; x += 8) {
      claim.template group<true>(row, x, x_float, zy, lane, b_row, w_row);
      x_float = exact_steps ? _mm256_add_ps(x_float, eight)
                            : _mm256_cvtepi32_ps(_mm256_add_epi32(_mm256_set1_epi32(x + 8), lane));
    }
    if (x < x1) claim.template group<true>(row, x1 - 8, x_last, zy, lane, b_row, w_row);
  }
}
#endif

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
// The same claims 16 pixels at a time with AVX-512: the same operations in each lane as
// the AVX2 loop (a wider FMA rounds no differently), so the same bits. A row's tail is one
// masked group; masked-off lanes neither fault nor store. A photo's window rows are some
// 55 pixels wide: 4 groups here against 7 with AVX2.
template <int FC>
struct ClaimAvx512 {
  static constexpr int32_t kMax = FC > 0 ? FC : 1;
  const float* plane[kMax];  // locals: the stores to best could alias planes[]
  const float* const* planes;
  __m512 centre[kMax];
  const float* c;
  int32_t F;
  __m512 cx, wx, inv_m2;
  __m512i id;

  // Pixels x .. x + 15 of a row, x_float their coordinates; valid: the lanes inside the
  // window (kWhole: all of them).
  template <bool kWhole>
  __attribute__((target("avx512f"), always_inline)) void group(int64_t row, int32_t x,
                                                               __m512 x_float, __m512 zy,
                                                               __mmask16 valid, float* b_row,
                                                               int32_t* w_row) const {
    __m512 colour = _mm512_setzero_ps();
    for (int32_t f = 0; f < F; ++f) {
      const float* p = (FC > 0 ? plane[f] : planes[f]) + row + x;
      const __m512 v = kWhole ? _mm512_loadu_ps(p) : _mm512_maskz_loadu_ps(valid, p);
      const __m512 t = _mm512_sub_ps(v, FC > 0 ? centre[f] : _mm512_set1_ps(c[3 + f]));
      colour = _mm512_fmadd_ps(t, t, colour);
    }
    const __m512 dx = _mm512_sub_ps(x_float, cx);
    const __m512 d =
        _mm512_fmadd_ps(colour, inv_m2, _mm512_fmadd_ps(_mm512_mul_ps(wx, dx), dx, zy));
    const __m512 b = kWhole ? _mm512_loadu_ps(b_row + x) : _mm512_maskz_loadu_ps(valid, b_row + x);
    const __mmask16 take = _mm512_mask_cmp_ps_mask(valid, d, b, _CMP_LT_OQ);
    _mm512_mask_storeu_ps(b_row + x, take, d);
    _mm512_mask_storeu_epi32(w_row + x, take, id);
  }
};

template <int FC>
__attribute__((target("avx512f"))) void claim_avx512(const Geometry& g, const float* const* planes,
                                                     const float* c, int32_t k, float z, int32_t y0,
                                                     int32_t yf, int32_t yl, int32_t ystep,
                                                     int32_t x0, int32_t x1, float* best,
                                                     int32_t* winner) {
  ClaimAvx512<FC> claim;
  for (int32_t f = 0; f < ClaimAvx512<FC>::kMax; ++f) {
    claim.plane[f] = FC > 0 ? planes[f] : nullptr;
    claim.centre[f] = _mm512_set1_ps(c[3 + f]);
  }
  claim.planes = planes;
  claim.c = c;
  claim.F = FC > 0 ? FC : g.F;
  claim.cx = _mm512_set1_ps(c[2]);
  claim.wx = _mm512_set1_ps(g.weight[2]);
  claim.inv_m2 = _mm512_set1_ps(g.inv_m2);
  claim.id = _mm512_set1_epi32(k);
  const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  // As in claim_avx2: coordinates below 2^24 step exactly in float. (The zero-masked
  // conversion with every lane kept is the plain one; GCC 12 warns on the plain one's
  // undefined pass-through operand.)
  const bool exact_steps = x1 <= (1 << 24);
  const __m512 x_first =
      _mm512_maskz_cvtepi32_ps(0xFFFF, _mm512_add_epi32(_mm512_set1_epi32(x0), lane));
  const __m512 sixteen = _mm512_set1_ps(16.f);
  const int32_t whole_end = x0 + (x1 - x0) / 16 * 16;
  const __mmask16 tail = static_cast<__mmask16>((1u << ((x1 - x0) % 16)) - 1u);
  const float dz = z - c[0];
  for (int32_t y = yf; y <= yl; y += ystep) {
    const int64_t row = int64_t{y - y0} * g.W;
    const __m512 zy = _mm512_set1_ps(spatial_zy(g, dz, static_cast<float>(y) - c[1]));
    float* b_row = best + row;
    int32_t* w_row = winner + row;
    __m512 x_float = x_first;
    int32_t x = x0;
    for (; x < whole_end; x += 16) {
      claim.template group<true>(row, x, x_float, zy, 0xFFFF, b_row, w_row);
      x_float = exact_steps ? _mm512_add_ps(x_float, sixteen)
                            : _mm512_maskz_cvtepi32_ps(
                                  0xFFFF, _mm512_add_epi32(_mm512_set1_epi32(x + 16), lane));
    }
    if (tail != 0) claim.template group<false>(row, x, x_float, zy, tail, b_row, w_row);
  }
}
#endif

ClaimFn pick_claim(int32_t F) {
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
  // Not with clang: some releases need "evex512" beside "avx512f" for 512-bit vectors.
  if (cpu_has_avx512()) {
    switch (F) {
      case 1:
        return &claim_avx512<1>;
      case 2:
        return &claim_avx512<2>;
      case 3:
        return &claim_avx512<3>;
      case 4:
        return &claim_avx512<4>;
      default:
        return &claim_avx512<0>;
    }
  }
#endif
#if defined(__x86_64__) && defined(__GNUC__)
  if (cpu_has_avx2()) {
    switch (F) {
      case 1:
        return &claim_avx2<1>;
      case 2:
        return &claim_avx2<2>;
      case 3:
        return &claim_avx2<3>;
      case 4:
        return &claim_avx2<4>;
      default:
        return &claim_avx2<0>;
    }
  }
#endif
  switch (F) {
    case 1:
      return &claim<1>;
    case 2:
      return &claim<2>;
    case 3:
      return &claim<3>;
    case 4:
      return &claim<4>;
    default:
      return &claim<0>;
  }
}

// Sum of v[x .. e). Runs are mostly a few pixels long, too short for a vector loop's
// set-up, so those are added one by one.
inline int64_t run_sum(const int32_t* v, int32_t x, int32_t e) {
  if (e - x <= 3) {
    int64_t sum = v[x];
    if (e - x > 1) sum += v[x + 1];
    if (e - x > 2) sum += v[x + 2];
    return sum;
  }
  int64_t sum = 0;
  for (int32_t q = x; q < e; ++q) sum += v[q];
  return sum;
}

// Sum of the fixed-point values of v[x .. e) (to_fixed32: the values of the fixed planes,
// computed again from the float ones, which the claims have just brought into the cache).
inline int64_t run_fixed_sum(const float* v, int32_t x, int32_t e) {
  int64_t sum = 0;
  for (int32_t q = x; q < e; ++q) sum += to_fixed32(v[q]);
  return sum;
}

// Positions of the set bits of each byte value, packed low: a compress-store table.
struct BitPositions {
  uint8_t at[256][8] = {};
  BitPositions() {
    for (int32_t m = 0; m < 256; ++m) {
      for (int32_t j = 0, k = 0; j < 8; ++j) {
        if (m >> j & 1) at[m][k++] = static_cast<uint8_t>(j);
      }
    }
  }
};

const BitPositions kBitPositions;

// The runs of changes of a row (accumulate_changes): maximal stretches of pixels that
// change cluster (claimed, w >= 0, by another one) with one claim and one label, as
// [starts[i], ends[i]), found without a branch per pixel or per run: runs are a few pixels
// long at random places, and branches on them mostly mispredicted. Each returns the number
// of runs; the arrays hold W + 8 values. The AVX2 variant gives the same runs.
struct PortableBits {
  static int32_t change_runs(const int32_t* w, const int32_t* l, int32_t W, int32_t* starts,
                             int32_t* ends) {
    return change_runs_from(w, l, 0, W, 0, 0, starts, ends);
  }
  // From pixel x on, ns runs started and ne ended before it.
  static int32_t change_runs_from(const int32_t* w, const int32_t* l, int32_t x, int32_t W,
                                  int32_t ns, int32_t ne, int32_t* starts, int32_t* ends) {
    for (; x < W; ++x) {
      const bool changed = w[x] >= 0 && w[x] != l[x];
      const bool same = x > 0 && w[x] == w[x - 1] && l[x] == l[x - 1];
      const bool prev_changed = x > 0 && w[x - 1] >= 0 && w[x - 1] != l[x - 1];
      starts[ns] = x;
      ns += changed && !same;
      ends[ne] = x;
      ne += prev_changed && !same;
    }
    ends[ne] = W;
    ne += W > 0 && w[W - 1] >= 0 && w[W - 1] != l[W - 1];
    return ns;
  }
};

#if defined(__x86_64__) && defined(__GNUC__)
struct Avx2Bits {
  // 8 pixels a step: starts and ends as bit masks, their positions compress-stored.
  __attribute__((target("avx2,popcnt"))) static int32_t change_runs(const int32_t* w,
                                                                    const int32_t* l, int32_t W,
                                                                    int32_t* starts,
                                                                    int32_t* ends) {
    if (W < 9) return PortableBits::change_runs(w, l, W, starts, ends);
    int32_t ns = 0, ne = 0;
    starts[0] = 0;
    ns += w[0] >= 0 && w[0] != l[0];
    int32_t x = 1;
    const __m256i none = _mm256_set1_epi32(-1);
    for (; x + 8 <= W; x += 8) {
      const __m256i wc = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + x));
      const __m256i lc = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(l + x));
      const __m256i wp = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + x - 1));
      const __m256i lp = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(l + x - 1));
      const __m256i changed =
          _mm256_andnot_si256(_mm256_cmpeq_epi32(wc, lc), _mm256_cmpgt_epi32(wc, none));
      const __m256i prev_changed =
          _mm256_andnot_si256(_mm256_cmpeq_epi32(wp, lp), _mm256_cmpgt_epi32(wp, none));
      const __m256i same = _mm256_and_si256(_mm256_cmpeq_epi32(wc, wp), _mm256_cmpeq_epi32(lc, lp));
      const uint32_t start = static_cast<uint32_t>(
          _mm256_movemask_ps(_mm256_castsi256_ps(_mm256_andnot_si256(same, changed))));
      const uint32_t end = static_cast<uint32_t>(
          _mm256_movemask_ps(_mm256_castsi256_ps(_mm256_andnot_si256(same, prev_changed))));
      const __m256i at = _mm256_set1_epi32(x);
      const __m256i start_at = _mm256_add_epi32(
          _mm256_cvtepu8_epi32(
              _mm_loadl_epi64(reinterpret_cast<const __m128i*>(kBitPositions.at[start]))),
          at);
      const __m256i end_at = _mm256_add_epi32(
          _mm256_cvtepu8_epi32(
              _mm_loadl_epi64(reinterpret_cast<const __m128i*>(kBitPositions.at[end]))),
          at);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(starts + ns), start_at);  // 8 slots
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(ends + ne), end_at);
      ns += _mm_popcnt_u32(start);
      ne += _mm_popcnt_u32(end);
    }
    return PortableBits::change_runs_from(w, l, x, W, ns, ne, starts, ends);
  }
};
#endif

// Labels of rows [y0, y1) of a chunk from the claims' winners (unclaimed pixels keep their
// previous cluster), and the chunk's partial sums, accumulated run by run since
// neighbouring pixels mostly share a cluster. FC > 0 fixes the feature count at compile
// time. Sizes are copied to locals: stores through the label pointers could otherwise
// alias the Geometry and keep the loops from vectorising.
template <int FC>
__attribute__((always_inline)) inline void accumulate_rows(
    const Geometry& g, const int32_t* fixed_feat, int32_t z, int32_t y0, int32_t y1, PassRows pass,
    const int32_t* winner, int32_t* lab, Chunk& chunk, std::vector<int32_t>& local_of) {
  const int32_t W = g.W;
  const int64_t P = g.P;
  const int32_t F = FC > 0 ? FC : g.F;
  const int32_t S = 4 + F;
  int64_t changed_total = 0;
  for (int32_t y = pass.first_from(y0); y < y1; y += pass.stride) {
    const int64_t row = int64_t{y - y0} * W;
    int32_t* __restrict l_row = lab + row;
    const int32_t* __restrict w_row = winner + row;
    int32_t changed = 0;  // int32 like the labels: the loop vectorises
    for (int32_t x = 0; x < W; ++x) {
      const int32_t w = w_row[x], l = l_row[x];
      const int32_t k = w >= 0 ? w : l;
      changed += static_cast<int32_t>(k != l);
      l_row[x] = k;
    }
    changed_total += changed;
    const int32_t* v_row = fixed_feat + row;
    for (int32_t x = 0; x < W;) {
      const int32_t k = l_row[x];
      int32_t e = x + 1;
      while (e < W && l_row[e] == k) ++e;
      if (k >= 0) {
        int64_t* s = chunk.sums_of(k, S, local_of);
        const int64_t count = e - x;
        s[0] += count;
        s[1] += count * z;
        s[2] += count * y;
        s[3] += count * (int64_t{x} + e - 1) / 2;  // x + .. + (e - 1)
        for (int32_t f = 0; f < F; ++f) s[4 + f] += run_sum(v_row + f * P, x, e);
      }
      x = e;
    }
  }
  chunk.changed = changed_total;
  for (const int32_t k : chunk.clusters) local_of[k] = -1;
}

// After the first pass: only the pixels that changed cluster move their (1, z, y, x,
// features) from the old cluster's sums to the new one's; the chunk's rows hold these
// differences. Integer sums, so the running totals equal a recount bit for bit, while a
// pass touches a few percent of the pixels instead of all of them. Changes come in runs
// (a boundary that moves shifts a stretch of a row from one cluster to the same other
// one), so they are moved run by run: each row's runs are listed first (change_runs),
// then moved. The feature sums come from the float planes (chunk_feat: the chunk's first
// pixel), converted to fixed point as compute_features does: the changed pixels lie
// scattered along the boundaries, where the fixed planes are rarely in the cache but the
// float ones are. starts and ends: room for W + 8 values each.
template <int FC, typename Bits>
__attribute__((always_inline)) inline void accumulate_changes(
    const Geometry& g, const float* chunk_feat, int32_t z, int32_t y0, int32_t y1, PassRows pass,
    const int32_t* winner, int32_t* lab, Chunk& chunk, std::vector<int32_t>& local_of,
    int32_t* starts, int32_t* ends) {
  const int32_t W = g.W;
  const int64_t P = g.P;
  const int32_t F = FC > 0 ? FC : g.F;
  const int32_t S = 4 + F;
  int64_t changed = 0;
  for (int32_t y = pass.first_from(y0); y < y1; y += pass.stride) {
    const int64_t row = int64_t{y - y0} * W;
    int32_t* __restrict l_row = lab + row;
    const int32_t* __restrict w_row = winner + row;
    const float* v_row = chunk_feat + row;
    // Unclaimed pixels (w < 0) keep their cluster.
    const int32_t runs = Bits::change_runs(w_row, l_row, W, starts, ends);
    for (int32_t i = 0; i < runs; ++i) {
      const int32_t x = starts[i], e = ends[i];
      const int32_t w = w_row[x], l = l_row[x];
      const int64_t count = e - x;
      // w is looked up again after l: a new row for l may move w's.
      chunk.sums_of(w, S, local_of);
      int64_t* sub = l >= 0 ? chunk.sums_of(l, S, local_of) : nullptr;
      int64_t* add = chunk.sums_of(w, S, local_of);
      const int64_t moved[4] = {count, count * z, count * y, count * (int64_t{x} + e - 1) / 2};
      for (int32_t j = 0; j < 4; ++j) add[j] += moved[j];
      if (sub) {
        for (int32_t j = 0; j < 4; ++j) sub[j] -= moved[j];
      }
      for (int32_t f = 0; f < F; ++f) {
        const int64_t sum = run_fixed_sum(v_row + f * P, x, e);
        add[4 + f] += sum;
        if (sub) sub[4 + f] -= sum;
      }
      std::fill(l_row + x, l_row + e, w);
      changed += count;
    }
  }
  chunk.changed = changed;
  for (const int32_t k : chunk.clusters) local_of[k] = -1;
}

template <typename Bits>
__attribute__((always_inline)) inline void run_chunk_body(
    const Geometry& g, const float* features, const int32_t* fixed, const float* centers,
    const int32_t* cell_start, const int32_t* cell_items, int64_t n, int32_t z, int32_t cy,
    PassRows pass, int32_t* labels, Chunk& chunk, Scratch& scratch) {
  const int32_t R = 3 + g.F;
  const int32_t y0 = cy * g.step[1];
  const int32_t y1 = cy == g.cells[1] - 1 ? g.H : std::min(g.H, (cy + 1) * g.step[1]);
  const int64_t pixels = int64_t{y1 - y0} * g.W;
  const float* feat = features + n * g.F * g.P;
  const int64_t first = (int64_t{z} * g.H + y0) * g.W;  // chunk's first pixel
  const int32_t* fixed_feat = fixed + n * g.F * g.P + first;
  if (pass.stride == 1) {
    scratch.best.assign(pixels, std::numeric_limits<float>::infinity());
    scratch.winner.assign(pixels, -1);
  } else {  // a subsampled pass reads its own rows only
    scratch.best.resize(pixels);
    scratch.winner.resize(pixels);
    for (int32_t y = pass.first_from(y0); y < y1; y += pass.stride) {
      const int64_t row = int64_t{y - y0} * g.W;
      std::fill_n(scratch.best.data() + row, g.W, std::numeric_limits<float>::infinity());
      std::fill_n(scratch.winner.data() + row, g.W, -1);
    }
  }
  if (g.mask != nullptr) {
    // Pixels outside the mask are never claimed (no distance is below -inf): they keep
    // label -1 and take no part in the sums.
    const uint8_t* m = g.mask + n * g.P + first;
    for (int32_t y = pass.first_from(y0); y < y1; y += pass.stride) {
      const int64_t row = int64_t{y - y0} * g.W;
      for (int32_t x = 0; x < g.W; ++x) {
        if (!m[row + x]) scratch.best[row + x] = -std::numeric_limits<float>::infinity();
      }
    }
  }
  chunk_candidates(g, centers, cell_start, cell_items, z, cy, y0, y1, scratch.cands);
  std::vector<const float*> planes(g.F);
  for (int32_t f = 0; f < g.F; ++f) planes[f] = feat + f * g.P + first;
  const ClaimFn claim_fn = pick_claim(g.F);
  for (const int32_t k : scratch.cands) {
    const float* c = centers + int64_t{k} * R;
    int32_t yf, yl, xf, xl, cell_first, cell_last;
    window(c[1], g.step[1], y0, y1, &yf, &yl);
    // Rows: the chunk's cell row is within one of k's (chunk_candidates); columns: clipped
    // to the cells around k's, as CUDA scans them (cell_span).
    cell_span(cell_of(c[2], g.step[2], g.cells[2]), g.step[2], g.cells[2], g.W, &cell_first,
              &cell_last);
    window(c[2], g.step[2], cell_first, cell_last + 1, &xf, &xl);
    if (xf > xl) continue;
    claim_fn(g, planes.data(), c, k, static_cast<float>(z), y0, pass.first_from(yf), yl,
             pass.stride, xf, xl + 1, scratch.best.data(), scratch.winner.data());
  }
  // Labels (unclaimed pixels keep their previous cluster) and the chunk's partial sums.
  chunk.clusters.clear();
  chunk.sums.clear();
  chunk.changed = 0;
  int32_t* lab = labels + n * g.P + first;
  const int32_t* win = scratch.winner.data();
  if (pass.changes_only) {
    scratch.starts.resize(g.W + 8);
    scratch.ends.resize(g.W + 8);
    if (g.F == 3) {
      accumulate_changes<3, Bits>(g, feat + first, z, y0, y1, pass, win, lab, chunk,
                                  scratch.local_of, scratch.starts.data(), scratch.ends.data());
    } else {
      accumulate_changes<0, Bits>(g, feat + first, z, y0, y1, pass, win, lab, chunk,
                                  scratch.local_of, scratch.starts.data(), scratch.ends.data());
    }
  } else if (g.F == 3) {
    accumulate_rows<3>(g, fixed_feat, z, y0, y1, pass, win, lab, chunk, scratch.local_of);
  } else {
    accumulate_rows<0>(g, fixed_feat, z, y0, y1, pass, win, lab, chunk, scratch.local_of);
  }
}

using RunChunkFn = void (*)(const Geometry&, const float*, const int32_t*, const float*,
                            const int32_t*, const int32_t*, int64_t, int32_t, int32_t, PassRows,
                            int32_t*, Chunk&, Scratch&);

void run_chunk(const Geometry& g, const float* features, const int32_t* fixed, const float* centers,
               const int32_t* cell_start, const int32_t* cell_items, int64_t n, int32_t z,
               int32_t cy, PassRows pass, int32_t* labels, Chunk& chunk, Scratch& scratch) {
  run_chunk_body<PortableBits>(g, features, fixed, centers, cell_start, cell_items, n, z, cy, pass,
                               labels, chunk, scratch);
}

#if defined(__x86_64__) && defined(__GNUC__)
// Integer work only (labels, counts, fixed-point sums): the same results with wider vectors.
__attribute__((target("avx2"))) void run_chunk_avx2(const Geometry& g, const float* features,
                                                    const int32_t* fixed, const float* centers,
                                                    const int32_t* cell_start,
                                                    const int32_t* cell_items, int64_t n, int32_t z,
                                                    int32_t cy, PassRows pass, int32_t* labels,
                                                    Chunk& chunk, Scratch& scratch) {
  run_chunk_body<Avx2Bits>(g, features, fixed, centers, cell_start, cell_items, n, z, cy, pass,
                           labels, chunk, scratch);
}
#endif

RunChunkFn pick_run_chunk() {
#if defined(__x86_64__) && defined(__GNUC__)
  if (cpu_has_avx2()) return &run_chunk_avx2;
#endif
  return &run_chunk;
}

// A pixel no cluster ever claimed (a warm start's, or one whose cluster died in a
// subsampled first pass) joins the nearest live
// cluster (as on CUDA).
void fill_unassigned(const Geometry& g, const float* centers, const int32_t* counts,
                     int32_t* labels) {
  const int32_t R = 3 + g.F;
  parallel_for(g, 0, g.N * g.P, 4096, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t n = i / g.P;
      if (labels[i] < 0 && in_mask(g, i))
        labels[i] = nearest_live_cluster(g, centers + n * g.K * R, counts + n * g.K, i % g.P);
    }
  });
}

// Per sample: the most pixels a converged pass may change (max_changed of its area).
std::vector<int64_t> change_limits(const Geometry& g) {
  std::vector<int64_t> limits(g.N, max_changed(g, g.P));
  if (g.mask == nullptr) return limits;
  for (int64_t n = 0; n < g.N; ++n) {
    const uint8_t* m = g.mask + n * g.P;
    limits[n] = max_changed(g, std::count_if(m, m + g.P, [](uint8_t v) { return v != 0; }));
  }
  return limits;
}

void iterate(const Geometry& g, const float* features, const int32_t* fixed, float* centers,
             int32_t* counts, const int32_t* init_labels, int32_t* labels, int32_t* iterations) {
  const int32_t R = 3 + g.F;
  const int32_t num_cells = g.cells[0] * g.cells[1] * g.cells[2];
  const int64_t chunks_per_sample = int64_t{g.D} * g.cells[1];
  std::vector<int32_t> cell_start(g.N * (num_cells + 1)), cell_items(g.N * g.K);
  std::vector<Chunk> chunks(g.N * chunks_per_sample);
  std::vector<uint8_t> done(g.N, 0);
  const int32_t S = 4 + g.F;
  std::vector<int64_t> totals(g.N * g.K * S, 0);  // per cluster: count, z, y, x, features
  std::vector<uint8_t> after_converged(g.N, 0);   // pass_is_full
  std::vector<PassRows> passes(g.N);
  const std::vector<int64_t> limits = change_limits(g);
  if (init_labels) {
    // Warm start: pixels begin in their previous segment (= cluster); out-of-range ids,
    // like a pixel no window reaches, stay unassigned until a cluster claims them.
    for (int64_t n = 0; n < g.N; ++n) {  // by sample: no division per pixel
      const int32_t* live = counts + n * g.K;
      for (int64_t i = n * g.P; i < (n + 1) * g.P; ++i) {
        const int32_t k = init_labels[i];
        labels[i] = (k >= 0 && k < g.K && live[k] > 0 && in_mask(g, i)) ? k : -1;
      }
    }
  } else {
    std::fill(labels, labels + g.N * g.P, -1);
  }
  for (int32_t it = 0; it < g.max_iter; ++it) {
    if (std::all_of(done.begin(), done.end(), [](uint8_t d) { return d != 0; })) break;
    for (int64_t n = 0; n < g.N; ++n) {
      if (!done[n]) {
        bin_centers(g, centers + n * g.K * R, counts + n * g.K,
                    cell_start.data() + n * (num_cells + 1), cell_items.data() + n * g.K);
      }
    }
    for (int64_t n = 0; n < g.N; ++n) {
      const bool full = pass_is_full(g, it, after_converged[n] != 0);
      passes[n] = PassRows{it > 0, full ? 1 : g.subsample, full ? 0 : it % g.subsample};
    }
    const RunChunkFn run_one = pick_run_chunk();
    parallel_for(g, 0, g.N * chunks_per_sample, 1, [&](int64_t begin, int64_t end) {
      Scratch scratch;
      scratch.local_of.assign(g.K, -1);
      for (int64_t i = begin; i < end; ++i) {
        const int64_t n = i / chunks_per_sample;
        if (done[n]) continue;
        const int32_t z = static_cast<int32_t>((i % chunks_per_sample) / g.cells[1]);
        const int32_t cy = static_cast<int32_t>(i % g.cells[1]);
        run_one(g, features, fixed, centers + n * g.K * R, cell_start.data() + n * (num_cells + 1),
                cell_items.data() + n * g.K, n, z, cy, passes[n], labels, chunks[i], scratch);
      }
    });
    // Combine the chunk partials in chunk order (fixed, thread-count independent).
    // From the second pass on the chunks hold differences: the totals are running sums.
    parallel_for(g, 0, g.N, 1, [&](int64_t begin, int64_t end) {
      for (int64_t n = begin; n < end; ++n) {
        if (done[n]) continue;
        ++iterations[n];
        int64_t changed = 0;
        for (int64_t c = 0; c < chunks_per_sample; ++c)
          changed += chunks[n * chunks_per_sample + c].changed;
        if (passes[n].stride == 1) {
          if (changed <= limits[n]) {
            done[n] = 1;
            continue;
          }
        } else if (subsampled_converged(changed, limits[n])) {
          after_converged[n] = 1;  // the next pass is full
        }
        int64_t* total = totals.data() + n * g.K * S;
        for (int64_t c = 0; c < chunks_per_sample; ++c) {
          const Chunk& chunk = chunks[n * chunks_per_sample + c];
          for (size_t i = 0; i < chunk.clusters.size(); ++i) {
            int64_t* t = total + int64_t{chunk.clusters[i]} * S;
            const int64_t* s = chunk.sums.data() + i * S;
            for (int32_t j = 0; j < S; ++j) t[j] += s[j];
          }
        }
        for (int32_t k = 0; k < g.K; ++k) {
          const int64_t* t = total + int64_t{k} * S;
          counts[n * g.K + k] = static_cast<int32_t>(t[0]);
          if (t[0] == 0) continue;  // an empty cluster dies; its centre is never used again
          mean_row(t, g.F, centers + (n * g.K + k) * R);
        }
      }
    });
  }
  fill_unassigned(g, centers, counts, labels);
}

// ---------------------------------------------------------------------------------------
// Connectivity: union-find components, small ones merged, then segment ids.
//
// The pass works on runs, maximal stretches of one cluster along x (a 640 x 480 photo has
// some 27k, of 11 pixels on average): one pass over the pixels finds them and their
// feature sums (from prefix sums of each row), and ids are written only over the runs
// whose id differs from their cluster; union-find, statistics, merges and ids touch runs,
// components and edges only, mostly without branches on the data (which go either way at
// random along ragged boundaries).
//
// Threads: a sample of kParallelPixels or more is cut into bands of rows (a range of y in
// every frame; bands_of: by shape only). The bands find their runs, sums and components
// in parallel; then they are joined at their first rows in band order on one thread.
// Unions link a set under its lowest run whatever their order, so the roots (lowest
// pixel), the component numbers (raster order of root) and everything after them are
// those of one band on one thread: the thread count changes no bit. Numbering, sums,
// edges and the final ids are written by band too; the merge rounds, the choice of ids
// and the centres (components and edges only) run on one thread.

int32_t find_root(int32_t* parent, int32_t p) {
  while (parent[p] != p) {
    parent[p] = parent[parent[p]];
    p = parent[p];
  }
  return p;
}

// Links the two sets under their lower root, so a set's root is its lowest index whatever
// the order of unions (the CUDA kernels rely on the same rule).
void unite(int32_t* parent, int32_t a, int32_t b) {
  a = find_root(parent, a);
  b = find_root(parent, b);
  if (a == b) return;
  if (a < b)
    parent[b] = a;
  else
    parent[a] = b;
}

// Runs of some rows, in order; the arrays keep spare room (their size is no count). Kept
// between calls (ConnectivityScratch), so each array is checked against this call's needs
// on its own: the runs of the last call say nothing of this call's feature count F.
struct RunArrays {
  std::vector<int32_t> end;          // one past the last x
  std::vector<int32_t> label;        // cluster (-1: outside the mask)
  std::vector<int64_t> feature_sum;  // [runs, F] fixed point
  // Room for `more` runs after the first `count` (8 spare: row_run_ends writes 8 at once),
  // with F feature sums each.
  void make_room(size_t count, size_t more, int32_t F) {
    const size_t need = count + more + 8;
    if (end.size() < need) {
      const size_t n = std::max(2 * end.size(), need);
      end.resize(n);
      label.resize(n);
    }
    if (feature_sum.size() < end.size() * F) feature_sum.resize(end.size() * F);
  }
};

// Runs of one sample in raster order of their first pixel; a run starts where the
// previous one of its row ends.
struct Runs : RunArrays {
  std::vector<int32_t> row_start;  // [D * H + 1] first run of each row (z, y)
  std::vector<int32_t> comp;       // [runs] union-find parent, then component (-1: outside)
  std::vector<int32_t> root;       // [runs] root run, when numbering in bands
  int32_t count() const { return row_start.back(); }
  int32_t begin(int32_t i, int32_t r) const { return i == row_start[r] ? 0 : end[i - 1]; }
};

// Components in raster order of their root (lowest pixel).
struct Components {
  int32_t stride = 4;            // 4 + F
  std::vector<int32_t> root;     // [M] root pixel
  std::vector<int32_t> cluster;  // [M]
  std::vector<int32_t> owner;    // [M] band of the root (numbering in bands)
  std::vector<int64_t> stats;    // [M, 4 + F] size, sums of z, y, x, fixed-point features
  std::vector<uint64_t> edges;   // adjacent pairs (a << 32 | b), a < b, one smaller than min_size
  int32_t count() const { return static_cast<int32_t>(stats.size() / stride); }
  int64_t size(int32_t m) const { return stats[int64_t{m} * stride]; }
};

uint64_t pack_pair(int32_t i, int32_t j) {
  return uint64_t{static_cast<uint32_t>(i)} << 32 | static_cast<uint32_t>(j);
}

// Appends values without a branch (room made), its count in a local: kept in memory, each
// append would wait for the previous one's store.
struct Appender {
  uint64_t* out;
  size_t count;
  void add_if(bool wanted, uint64_t value) {
    out[count] = value;
    count += wanted;
  }
};

// Pairs of runs (pack_pair): overlapping runs of one cluster to unite, and touching runs
// of different clusters (both inside the mask), which with the neighbouring runs of each
// row are the candidates for merge edges.
struct RunPairs {
  std::vector<uint64_t> pairs;
  size_t count = 0;
  Appender appender(size_t more) {  // room for `more` pairs
    if (pairs.size() < count + more) pairs.resize(std::max(2 * pairs.size(), count + more));
    return {pairs.data(), count};
  }
};

// Buffers for one band's rows: its runs (when there are several bands), prefix sums of a
// feature row, lists.
struct RowScratch {
  RunArrays runs;
  std::vector<int64_t> prefix;
  std::vector<uint32_t> prefix32;
  std::vector<int32_t> changed;  // runs whose pixels fill_ids rewrites
  std::vector<uint64_t> later;   // runs of components rooted in other bands (group_stats)
  RunPairs same;                 // overlapping runs of one cluster (link_rows)
};

// Edges of one band, and a small direct-mapped cache of the last ones, which drops most
// repeats (a boundary between two components crosses many rows; repeats left change no
// merge).
struct EdgeList {
  static constexpr int32_t kCacheBits = 12;
  std::vector<uint64_t> edges;
  std::vector<uint64_t> seen;
  size_t count = 0;
};

// Appends to an EdgeList without a branch (an Appender that skips what the cache saw).
struct EdgeAppender {
  Appender edges;
  uint64_t* seen;
  explicit EdgeAppender(EdgeList& list, size_t room) : edges{nullptr, 0} {
    if (list.edges.size() < room) list.edges.resize(room);
    list.seen.assign(size_t{1} << EdgeList::kCacheBits, ~uint64_t{0});
    edges.out = list.edges.data();
    seen = list.seen.data();
  }
  void add_if(bool wanted, uint64_t key) {
    uint64_t& slot = seen[(key * 0x9E3779B97F4A7C15ull) >> (64 - EdgeList::kCacheBits)];
    wanted &= slot != key;
    edges.add_if(wanted, key);
    slot = wanted ? key : slot;
  }
};

struct EdgeScratch {
  std::vector<RunPairs> touching;  // by band, found by link_components
  RunPairs joins;                  // found joining the bands
  std::vector<uint8_t> small;      // [M + 1]
  std::vector<EdgeList> band;      // by band, then the joins
};

struct MergeState {
  std::vector<int32_t> parent;  // [M] union-find over components: the final sets
  std::vector<int32_t> roots;   // the sets of the round, ascending
  std::vector<int64_t> size, sum;
  std::vector<float> mean;
  std::vector<uint8_t> fresh;  // the set's mean needs computing
  std::vector<uint64_t> best;
  std::vector<uint64_t> key_a, key_b;  // by edge: the pick of its first / second set
  std::vector<int32_t> links;
};

// Scratch of the connectivity pass, kept between calls on a thread (fresh pages cost a
// page fault each) unless a call needed more than kKeptRuns runs (some 40 bytes each).
// The rule for everything in it: the call that uses an array sizes it (resize, assign,
// make_room) for what it writes, in every unit it is indexed by (runs, runs x F, bands,
// components), before it writes or reads it, and reads nothing an earlier call left. The
// sizes of the last call say nothing of this one's: 1 then 3 feature channels overflowed
// the runs' feature sums when their room was checked in runs alone (tests/test_state.py).
struct ConnectivityScratch {
  static constexpr size_t kKeptRuns = size_t{1} << 20;
  Runs runs;
  Components comps;
  MergeState merge;
  std::vector<int32_t> piece_first, final_id;
  std::vector<RowScratch> rows;
  EdgeScratch edges;
  void release_if_large() {
    if (runs.end.capacity() > kKeptRuns) *this = ConnectivityScratch();
  }
};

ConnectivityScratch& connectivity_scratch() {
  thread_local ConnectivityScratch scratch;
  return scratch;
}

// Bands of rows: the y in [first(b), last(b)) of every frame. One band below
// kParallelPixels, else bands of about kBandPixels pixels: cut by shape only.
constexpr int64_t kBandPixels = int64_t{1} << 18;

struct Bands {
  int32_t rows;  // y per band (the last band may have fewer)
  int32_t count;
  int32_t first(int32_t b) const { return b * rows; }
  int32_t last(const Geometry& g, int32_t b) const { return std::min(g.H, (b + 1) * rows); }
};

Bands bands_of(const Geometry& g) {
  int32_t rows = g.H;
  if (g.P >= kParallelPixels) {
    const int64_t per_y = int64_t{g.D} * g.W;
    rows = static_cast<int32_t>(std::clamp<int64_t>((kBandPixels + per_y - 1) / per_y, 1, g.H));
  }
  return {rows, (g.H + rows - 1) / rows};
}

// fn(b) for every band, on several threads when the call is large (parallel_for).
template <typename Fn>
void for_each_band(const Geometry& g, const Bands& bands, const Fn& fn) {
  parallel_for(g, 0, bands.count, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) fn(static_cast<int32_t>(b));
  });
}

// fn(r, z, y) for the rows r = z * H + y of band b, frame by frame.
template <typename Fn>
void for_band_rows(const Geometry& g, const Bands& bands, int32_t b, Fn&& fn) {
  const int32_t y0 = bands.first(b), y1 = bands.last(g, b);
  for (int32_t z = 0; z < g.D; ++z) {
    for (int32_t y = y0; y < y1; ++y) fn(z * g.H + y, z, y);
  }
}

// Row kernels: the ends of a row's runs (into an array with 8 spare slots), without a
// branch per pixel, and the prefix sums of a feature row
// (prefix[x] = v[0] + ... + v[x - 1], x in 0..W). The AVX2 variants give the same results.
struct RowKernels {
  int32_t (*ends)(const int32_t* lab, int32_t W, int32_t* end);
  void (*prefix)(const int32_t* v, int32_t W, int64_t* prefix);
  // AVX2 only (else null): the prefix sums modulo 2^32, eight lanes a step; returns the
  // largest |v[x]|, which tells which run sums they give exactly (sums_over_runs).
  uint32_t (*prefix32)(const int32_t* v, int32_t W, uint32_t* prefix);
};

int32_t row_run_ends(const int32_t* lab, int32_t W, int32_t* end) {
  int32_t n = 0;
  for (int32_t x = 1; x < W; ++x) {
    end[n] = x;
    n += lab[x] != lab[x - 1];
  }
  end[n] = W;
  return n + 1;
}

// One dependent add per four pixels.
void prefix_sums(const int32_t* v, int32_t W, int64_t* prefix) {
  int64_t acc = 0;
  prefix[0] = 0;
  int32_t x = 0;
  for (; x + 4 <= W; x += 4) {
    const int64_t a = v[x], b = a + v[x + 1], c = b + v[x + 2], d = c + v[x + 3];
    prefix[x + 1] = acc + a;
    prefix[x + 2] = acc + b;
    prefix[x + 3] = acc + c;
    acc += d;
    prefix[x + 4] = acc;
  }
  for (; x < W; ++x) {
    acc += v[x];
    prefix[x + 1] = acc;
  }
}

#if defined(__x86_64__) && defined(__GNUC__)
// Rows are read once, in order, mostly from memory: the AVX2 kernels prefetch 2 KiB ahead
// (find_runs a third faster on 2048 x 1536 pixels and on a photo, where the hardware
// prefetchers alone keep too few lines in flight).
constexpr int32_t kPrefetchAhead = 512;

__attribute__((target("avx2"))) __m256i equal_neighbours(const int32_t* lab, int32_t x) {
  const __m256i left = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(lab + x - 1));
  const __m256i right = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(lab + x));
  return _mm256_cmpeq_epi32(left, right);  // lane j: lab[x + j] == lab[x + j - 1]
}

__attribute__((target("avx2,popcnt"))) int32_t row_run_ends_avx2(const int32_t* lab, int32_t W,
                                                                 int32_t* end) {
  int32_t n = 0, x = 1;
  for (; x + 8 <= W; x += 8) {
    if ((x & 15) == 1) __builtin_prefetch(lab + x + kPrefetchAhead);
    const uint32_t equal = _mm256_movemask_ps(_mm256_castsi256_ps(equal_neighbours(lab, x)));
    const uint32_t change = ~equal & 0xFFu;
    const __m128i packed =
        _mm_loadl_epi64(reinterpret_cast<const __m128i*>(kBitPositions.at[change]));
    const __m256i at = _mm256_add_epi32(_mm256_cvtepu8_epi32(packed), _mm256_set1_epi32(x));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(end + n), at);  // 8 slots, n advance
    n += _mm_popcnt_u32(change);
  }
  for (; x < W; ++x) {
    end[n] = x;
    n += lab[x] != lab[x - 1];
  }
  end[n] = W;
  return n + 1;
}

// Four pixels a step: in-lane shift and add, the low half's total onto the high half,
// then the running total (one add on the dependency chain).
__attribute__((target("avx2"))) void prefix_sums_avx2(const int32_t* v, int32_t W,
                                                      int64_t* prefix) {
  prefix[0] = 0;
  __m256i carry = _mm256_setzero_si256();
  int32_t x = 0;
  for (; x + 4 <= W; x += 4) {
    if ((x & 15) == 0) __builtin_prefetch(v + x + kPrefetchAhead);
    const __m256i a =
        _mm256_cvtepi32_epi64(_mm_loadu_si128(reinterpret_cast<const __m128i*>(v + x)));
    const __m256i pairs = _mm256_add_epi64(a, _mm256_slli_si256(a, 8));
    const __m256i low_total = _mm256_permute4x64_epi64(pairs, _MM_SHUFFLE(1, 1, 1, 1));
    const __m256i four =
        _mm256_add_epi64(pairs, _mm256_blend_epi32(_mm256_setzero_si256(), low_total, 0xF0));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(prefix + x + 1), _mm256_add_epi64(four, carry));
    carry = _mm256_add_epi64(carry, _mm256_permute4x64_epi64(four, _MM_SHUFFLE(3, 3, 3, 3)));
  }
  int64_t acc = prefix[x];
  for (; x < W; ++x) {
    acc += v[x];
    prefix[x + 1] = acc;
  }
}
// prefix_sums modulo 2^32 (eight pixels a step, as prefix_sums_avx2 does four), and the
// largest |v[x]| (below 2^31: the features are clamped).
__attribute__((target("avx2"))) uint32_t prefix_sums32_avx2(const int32_t* v, int32_t W,
                                                            uint32_t* prefix) {
  prefix[0] = 0;
  __m256i carry = _mm256_setzero_si256(), most = _mm256_setzero_si256();
  const __m256i lane3 = _mm256_set1_epi32(3), lane7 = _mm256_set1_epi32(7);
  int32_t x = 0;
  for (; x + 8 <= W; x += 8) {
    if ((x & 15) == 0) __builtin_prefetch(v + x + kPrefetchAhead);
    __m256i a = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(v + x));
    most = _mm256_max_epu32(most, _mm256_abs_epi32(a));
    a = _mm256_add_epi32(a, _mm256_slli_si256(a, 4));
    a = _mm256_add_epi32(a, _mm256_slli_si256(a, 8));
    const __m256i low_total = _mm256_permutevar8x32_epi32(a, lane3);
    a = _mm256_add_epi32(a, _mm256_blend_epi32(_mm256_setzero_si256(), low_total, 0xF0));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(prefix + x + 1), _mm256_add_epi32(a, carry));
    carry = _mm256_add_epi32(carry, _mm256_permutevar8x32_epi32(a, lane7));
  }
  alignas(32) uint32_t lanes[8];
  _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), most);
  uint32_t largest = *std::max_element(lanes, lanes + 8);
  uint32_t acc = prefix[x];
  for (; x < W; ++x) {
    acc += static_cast<uint32_t>(v[x]);
    prefix[x + 1] = acc;
    largest = std::max(largest, static_cast<uint32_t>(std::abs(v[x])));
  }
  return largest;
}
#endif

// The AVX2 row kernels where cpu_has_avx2() (which also honours the portable switches).
RowKernels row_kernels() {
#if defined(__x86_64__) && defined(__GNUC__)
  static const bool avx2 = cpu_has_avx2() && __builtin_cpu_supports("popcnt");
  if (avx2) return {&row_run_ends_avx2, &prefix_sums_avx2, &prefix_sums32_avx2};
#endif
  return {&row_run_ends, &prefix_sums, nullptr};
}

// Sums of the feature row v over the n runs ending at end[] (the first starts at 0), into
// sum[i * stride]: differences of prefix sums, exact in int64; modulo 2^32 with prefix32
// where a run is too short to reach 2^31 (its length times the largest |v|), else summed
// anew (a long run of large values: rare).
void sums_over_runs(const RowKernels& kernel, const int32_t* v, int32_t W, const int32_t* end,
                    int32_t n, RowScratch& s, int64_t* sum, int32_t stride) {
  if (kernel.prefix32 == nullptr) {
    kernel.prefix(v, W, s.prefix.data());
    for (int32_t i = 0, b = 0; i < n; b = end[i++])
      sum[int64_t{i} * stride] = s.prefix[end[i]] - s.prefix[b];
    return;
  }
  const uint32_t largest = kernel.prefix32(v, W, s.prefix32.data());
  const int64_t exact = largest == 0 ? W : std::numeric_limits<int32_t>::max() / largest;
  for (int32_t i = 0, b = 0; i < n; b = end[i++]) {
    if (end[i] - b <= exact) {
      sum[int64_t{i} * stride] = static_cast<int32_t>(s.prefix32[end[i]] - s.prefix32[b]);
    } else {
      sum[int64_t{i} * stride] = std::accumulate(v + b, v + end[i], int64_t{0});
    }
  }
}

// Appends the runs of row r (ends, clusters) to out after its first `count` runs, and
// each feature's sums over them (sums_over_runs: runs are short, some 11 pixels in a
// photo, and a loop per run costs a mispredicted branch or two each). Returns the number
// of runs of the row.
int32_t row_runs(const Geometry& g, const RowKernels& kernel, const int32_t* fixed,
                 const int32_t* labels, int32_t r, size_t count, RunArrays& out, RowScratch& s) {
  const int64_t row = int64_t{r} * g.W;
  const int32_t* lab = labels + row;
  out.make_room(count, g.W, g.F);
  int32_t* end = &out.end[count];
  const int32_t n = kernel.ends(lab, g.W, end);
  int32_t* label = &out.label[count];
  for (int32_t i = 0; i < n; ++i) label[i] = lab[end[i] - 1];
  for (int32_t f = 0; f < g.F; ++f) {
    sums_over_runs(kernel, fixed + f * g.P + row, g.W, end, n, s, &out.feature_sum[count * g.F + f],
                   g.F);
  }
  return n;
}

// Runs of the rows of band b into out, the count of each row r at row_start[r + 1].
void band_runs(const Geometry& g, const Bands& bands, int32_t b, const int32_t* fixed,
               const int32_t* labels, std::vector<int32_t>& row_start, RunArrays& out,
               RowScratch& s) {
  const RowKernels kernel = row_kernels();
  s.prefix.resize(g.W + 1);
  s.prefix32.resize(g.W + 1);
  size_t count = 0;
  for_band_rows(g, bands, b, [&](int32_t r, int32_t, int32_t) {
    row_start[r + 1] = row_runs(g, kernel, fixed, labels, r, count, out, s);
    count += row_start[r + 1];
  });
}

// Copies band b's runs (rows in band order) to their places in u.
void place_band_runs(const Geometry& g, const Bands& bands, int32_t b, const RunArrays& from,
                     Runs& u) {
  size_t at = 0;
  const int32_t rows = bands.last(g, b) - bands.first(b);
  for (int32_t z = 0; z < g.D; ++z) {
    const int32_t row = z * g.H + bands.first(b);
    const int32_t first = u.row_start[row], n = u.row_start[row + rows] - first;
    std::copy_n(&from.end[at], n, &u.end[first]);
    std::copy_n(&from.label[at], n, &u.label[first]);
    std::copy_n(&from.feature_sum[at * g.F], int64_t{n} * g.F,
                &u.feature_sum[int64_t{first} * g.F]);
    at += n;
  }
}

// The runs of every row and the sums of each feature over them, in one pass over the
// pixels: one band writes into u directly; several write their own, then copy them over.
void find_runs(const Geometry& g, const Bands& bands, const int32_t* fixed, const int32_t* labels,
               Runs& u, std::vector<RowScratch>& scratch) {
  const int32_t rows = g.D * g.H;
  u.row_start.resize(rows + 1);
  u.row_start[0] = 0;
  scratch.resize(bands.count);
  if (bands.count == 1) {
    band_runs(g, bands, 0, fixed, labels, u.row_start, u, scratch[0]);
  } else {
    for_each_band(g, bands, [&](int32_t b) {
      band_runs(g, bands, b, fixed, labels, u.row_start, scratch[b].runs, scratch[b]);
    });
  }
  for (int32_t r = 0; r < rows; ++r) u.row_start[r + 1] += u.row_start[r];
  if (bands.count == 1) return;
  u.make_room(0, u.count(), g.F);
  for_each_band(g, bands, [&](int32_t b) { place_band_runs(g, bands, b, scratch[b].runs, u); });
}

// Calls fn(i, j) for every pair of overlapping runs i of row a and j of row b (both rows
// are tiled by their runs). Inlined, so that fn's counters can stay in registers.
template <typename Fn>
__attribute__((always_inline)) inline void for_each_overlap(const Runs& u, int32_t a, int32_t b,
                                                            Fn&& fn) {
  int32_t i = u.row_start[a], j = u.row_start[b];
  const int32_t i_end = u.row_start[a + 1], j_end = u.row_start[b + 1];
  while (i < i_end && j < j_end) {
    fn(i, j);
    const int32_t ei = u.end[i], ej = u.end[j];
    i += ei <= ej;
    j += ej <= ei;
  }
}

// Unites the overlapping runs of rows a and b that hold the same cluster (runs outside
// the mask are no component); the overlapping runs of different clusters go to touching.
// The walk only lists the pairs (a branch on the clusters would go either way at random).
void link_rows(Runs& u, int32_t a, int32_t b, RunPairs& same, RunPairs& touching) {
  const size_t most = u.row_start[a + 1] - u.row_start[a] + u.row_start[b + 1] - u.row_start[b];
  same.count = 0;
  Appender to_unite = same.appender(most), to_edges = touching.appender(most);
  for_each_overlap(u, a, b, [&](int32_t i, int32_t j) {
    const int32_t k = u.label[i], l = u.label[j];
    to_unite.add_if((k == l) & (k >= 0), pack_pair(i, j));
    to_edges.add_if((k != l) & ((k | l) >= 0), pack_pair(i, j));
  });
  touching.count = to_edges.count;
  for (size_t p = 0; p < to_unite.count; ++p) {
    const uint64_t pair = same.pairs[p];
    unite(u.comp.data(), static_cast<int32_t>(pair >> 32),
          static_cast<int32_t>(pair & 0xFFFFFFFFu));
  }
}

// Union-find over runs (4-connected, 6 in volumes). Runs are numbered in raster order of
// their first pixel, so linking under the lower run keeps the lowest pixel as the root.
// The bands link their own rows in parallel (each touches its own runs only), then the
// bands are joined at their first rows, in order.
void link_components(const Geometry& g, const Bands& bands, Runs& u, EdgeScratch& s,
                     std::vector<RowScratch>& rows) {
  u.comp.resize(u.count());
  s.touching.resize(bands.count);
  s.joins.count = 0;
  for_each_band(g, bands, [&](int32_t b) {
    RunPairs& touching = s.touching[b];
    RunPairs& same = rows[b].same;
    touching.count = 0;
    for_band_rows(g, bands, b, [&](int32_t r, int32_t z, int32_t y) {
      std::iota(u.comp.data() + u.row_start[r], u.comp.data() + u.row_start[r + 1], u.row_start[r]);
      if (y > bands.first(b)) link_rows(u, r - 1, r, same, touching);  // the row above
      if (z > 0) link_rows(u, r - g.H, r, same, touching);             // the previous frame
    });
  });
  for (int32_t b = 1; b < bands.count; ++b) {
    for (int32_t z = 0; z < g.D; ++z) {
      const int32_t r = z * g.H + bands.first(b);
      link_rows(u, r - 1, r, rows[0].same, s.joins);
    }
  }
}

// Turns union-find parents into component numbers in raster order of the root run (-1
// outside the mask) and lists each component's root pixel and cluster; returns the number
// of components. A parent precedes its run, so one ascending pass finds it numbered; no
// branch on the runs (roots come at random).
int32_t number_components(const Geometry& g, Runs& u, Components& c) {
  c.root.resize(u.count() + 1);  // the slot past the last component takes every other run
  c.cluster.resize(u.count() + 1);
  int32_t M = 0;
  for (int32_t r = 0; r < g.D * g.H; ++r) {
    for (int32_t i = u.row_start[r]; i < u.row_start[r + 1]; ++i) {
      const int32_t parent = u.comp[i];
      const bool root = (parent == i) & (u.label[i] >= 0);
      c.root[M] = static_cast<int32_t>(int64_t{r} * g.W + u.begin(i, r));
      c.cluster[M] = u.label[i];
      u.comp[i] = u.label[i] < 0 ? -1 : (root ? M : u.comp[parent]);
      M += root;
    }
  }
  c.root.resize(M);
  c.cluster.resize(M);
  return M;
}

int32_t root_run(const int32_t* parent, int32_t p) {
  while (parent[p] != p) p = parent[p];
  return p;
}

// number_components in parallel: the pieces (the rows of one band in one frame: consecutive
// runs) count their roots, a prefix sum over the pieces in raster order gives each piece
// its first number, then every run takes its root's number. c.owner: the band of each
// component's root.
int32_t number_components_in_bands(const Geometry& g, const Bands& bands, Runs& u,
                                   std::vector<int32_t>& piece_first, Components& c) {
  u.root.resize(u.count());
  piece_first.assign(int64_t{g.D} * bands.count + 1, 0);
  auto for_each_piece = [&](auto&& fn) {  // fn(piece, band, first row, end row)
    for_each_band(g, bands, [&](int32_t b) {
      for (int32_t z = 0; z < g.D; ++z)
        fn(int64_t{z} * bands.count + b, b, z * g.H + bands.first(b), z * g.H + bands.last(g, b));
    });
  };
  for_each_piece([&](int64_t piece, int32_t, int32_t r0, int32_t r1) {
    int32_t roots = 0;
    for (int32_t i = u.row_start[r0]; i < u.row_start[r1]; ++i) {
      u.root[i] = u.label[i] < 0 ? -1 : root_run(u.comp.data(), i);
      roots += u.root[i] == i;
    }
    piece_first[piece + 1] = roots;
  });
  std::partial_sum(piece_first.begin(), piece_first.end(), piece_first.begin());
  const int32_t M = piece_first.back();
  c.root.resize(M);
  c.cluster.resize(M);
  c.owner.resize(M);
  for_each_piece([&](int64_t piece, int32_t b, int32_t r0, int32_t r1) {
    int32_t next = piece_first[piece];
    for (int32_t r = r0; r < r1; ++r) {
      for (int32_t i = u.row_start[r]; i < u.row_start[r + 1]; ++i) {
        if (u.root[i] != i) continue;
        c.root[next] = static_cast<int32_t>(int64_t{r} * g.W + u.begin(i, r));
        c.cluster[next] = u.label[i];
        c.owner[next] = b;
        u.comp[i] = next++;
      }
    }
  });
  for_each_piece([&](int64_t, int32_t, int32_t r0, int32_t r1) {
    for (int32_t i = u.row_start[r0]; i < u.row_start[r1]; ++i) {
      if (u.root[i] != i) u.comp[i] = u.root[i] < 0 ? -1 : u.comp[u.root[i]];
    }
  });
  return M;
}

// Adds run i of row r = (z, y) to the sums s (Components::stats row).
void add_run(const Geometry& g, const Runs& u, int32_t i, int32_t r, int32_t z, int32_t y,
             int64_t* s) {
  const int32_t x = u.begin(i, r), e = u.end[i];
  const int64_t count = e - x;
  s[0] += count;
  s[1] += count * z;
  s[2] += count * y;
  s[3] += count * (int64_t{x} + e - 1) / 2;
  const int64_t* run_sum = &u.feature_sum[int64_t{i} * g.F];
  for (int32_t f = 0; f < g.F; ++f) s[4 + f] += run_sum[f];
}

// Size, coordinate and feature sums (Components::stats) of the M groups that comp[i]
// gives each run (-1: none). With owner (the band of each group's root), the bands add the
// runs of the groups they own in parallel and set the others aside, added after in band
// order (integer sums: no order changes them).
void group_stats(const Geometry& g, const Bands& bands, const Runs& u, const int32_t* comp,
                 int32_t M, const int32_t* owner, Components& c, std::vector<RowScratch>& rows) {
  const int32_t S = 4 + g.F;
  c.stride = S;
  c.stats.assign(int64_t{M} * S, 0);
  auto add = [&](int32_t i, int32_t r, int32_t z, int32_t y) {
    add_run(g, u, i, r, z, y, &c.stats[int64_t{comp[i]} * S]);
  };
  if (owner == nullptr) {
    for (int32_t r = 0; r < g.D * g.H; ++r) {
      const int32_t z = r / g.H, y = r % g.H;
      for (int32_t i = u.row_start[r]; i < u.row_start[r + 1]; ++i) {
        if (comp[i] >= 0) add(i, r, z, y);
      }
    }
    return;
  }
  for_each_band(g, bands, [&](int32_t b) {
    std::vector<uint64_t>& later = rows[b].later;
    later.clear();
    for_band_rows(g, bands, b, [&](int32_t r, int32_t z, int32_t y) {
      for (int32_t i = u.row_start[r]; i < u.row_start[r + 1]; ++i) {
        if (comp[i] < 0) continue;
        if (owner[comp[i]] == b) {
          add(i, r, z, y);
        } else {
          later.push_back(pack_pair(r, i));
        }
      }
    });
  });
  for (int32_t b = 0; b < bands.count; ++b) {
    for (const uint64_t run : rows[b].later) {
      const int32_t r = static_cast<int32_t>(run >> 32);
      add(static_cast<int32_t>(run & 0xFFFFFFFFu), r, r / g.H, r % g.H);
    }
  }
}

// Adjacent component pairs of which one is smaller than min_size (the merges never look
// at others: sets only grow), from the neighbouring runs of each row and the touching
// runs link_components found. By band in parallel, listed in band order.
void find_edges(const Geometry& g, const Bands& bands, const Runs& u, Components& c,
                EdgeScratch& s) {
  const int32_t M = c.count();
  s.small.assign(M + 1, 0);  // small[m + 1]: component m is small; small[0]: outside the mask
  for (int32_t m = 0; m < M; ++m) s.small[m + 1] = c.size(m) < g.min_size;
  s.band.resize(bands.count + 1);
  auto add_edge = [&](EdgeAppender& out, int32_t i, int32_t j) {  // without a branch
    const int32_t ma = u.comp[i], mb = u.comp[j];
    const uint64_t key = pack_pair(std::min(ma, mb), std::max(ma, mb));
    out.add_if((ma != mb) & ((ma | mb) >= 0) & ((s.small[ma + 1] | s.small[mb + 1]) != 0), key);
  };
  auto add_touching = [&](EdgeAppender& out, const RunPairs& touching) {
    for (size_t p = 0; p < touching.count; ++p) {
      const uint64_t pair = touching.pairs[p];
      add_edge(out, static_cast<int32_t>(pair >> 32), static_cast<int32_t>(pair & 0xFFFFFFFFu));
    }
  };
  for_each_band(g, bands, [&](int32_t b) {
    size_t runs = 0;  // of the band: its neighbouring runs are at most as many
    for (int32_t z = 0; z < g.D; ++z)
      runs += u.row_start[z * g.H + bands.last(g, b)] - u.row_start[z * g.H + bands.first(b)];
    EdgeAppender out(s.band[b], runs + s.touching[b].count);
    for_band_rows(g, bands, b, [&](int32_t r, int32_t, int32_t) {
      for (int32_t i = u.row_start[r] + 1; i < u.row_start[r + 1]; ++i) add_edge(out, i - 1, i);
    });
    add_touching(out, s.touching[b]);
    s.band[b].count = out.edges.count;
  });
  EdgeAppender joins(s.band[bands.count], s.joins.count);
  add_touching(joins, s.joins);
  s.band[bands.count].count = joins.edges.count;
  c.edges.clear();
  for (const EdgeList& e : s.band)
    c.edges.insert(c.edges.end(), e.edges.begin(), e.edges.begin() + e.count);
}

// A merge round's snapshot: the means of new sets, no pick yet; false when no set is
// smaller than min_size.
bool snapshot_round(const Geometry& g, MergeState& s) {
  bool any_small = false;
  for (const int32_t r : s.roots) {
    if (s.fresh[r]) {
      for (int32_t f = 0; f < g.F; ++f)
        s.mean[int64_t{r} * g.F + f] = fixed_mean(s.sum[int64_t{r} * g.F + f], s.size[r]);
      s.fresh[r] = 0;
    }
    s.best[r] = ~uint64_t{0};
    any_small |= s.size[r] < g.min_size;
  }
  return any_small;
}

// Each set smaller than min_size picks the adjacent set with the nearest mean (ties: lower
// root) among those that take more (max_size). Edges that can no longer matter leave the
// list; the others are renamed by their sets. Two passes: the keys of every edge first
// (without a branch: the tests go either way at random; the distance is symmetric, x - y
// being -(y - x) exactly), then the minima, so that no running minimum waits on a distance.
// kF: the number of features when known at compile time (CIELAB: 3), else 0.
template <int32_t kF>
void pick_nearest(const Geometry& g, std::vector<uint64_t>& edges, MergeState& s) {
  const std::vector<int32_t>& parent = s.parent;
  const int32_t F = kF > 0 ? kF : g.F;
  auto distance = [&](int32_t a, int32_t b) {
    float d = 0.f;
    for (int32_t f = 0; f < F; ++f) {
      const float t = s.mean[int64_t{a} * F + f] - s.mean[int64_t{b} * F + f];
      d += t * t;
    }
    return d;
  };
  const uint64_t none = ~uint64_t{0};
  if (s.key_a.size() < edges.size()) {  // grown only: a resize would clear them each call
    s.key_a.resize(edges.size());
    s.key_b.resize(edges.size());
  }
  size_t kept = 0;
  for (const uint64_t e : edges) {
    const int32_t a = parent[static_cast<int32_t>(e >> 32)];
    const int32_t b = parent[static_cast<int32_t>(e & 0xFFFFFFFFu)];
    const bool a_small = s.size[a] < g.min_size, b_small = s.size[b] < g.min_size;
    const bool keep = (a != b) & (a_small | b_small);
    const float d = distance(a, b);
    const bool a_picks = a_small & takes_more(g, s.size[b]);
    const bool b_picks = b_small & takes_more(g, s.size[a]);
    edges[kept] = uint64_t{static_cast<uint32_t>(a)} << 32 | static_cast<uint32_t>(b);
    s.key_a[kept] = a_picks ? pack_distance(d, static_cast<uint32_t>(b)) : none;
    s.key_b[kept] = b_picks ? pack_distance(d, static_cast<uint32_t>(a)) : none;
    kept += keep;
  }
  edges.resize(kept);
  for (size_t k = 0; k < kept; ++k) {
    const int32_t a = static_cast<int32_t>(edges[k] >> 32);
    const int32_t b = static_cast<int32_t>(edges[k] & 0xFFFFFFFFu);
    s.best[a] = std::min(s.best[a], s.key_a[k]);
    s.best[b] = std::min(s.best[b], s.key_b[k]);
  }
}

// After the unions: each set of the round adds its size and sums into its new root, the
// roots stay flat for the next round's lookups, and the merged sets leave s.roots.
void gather_merged_sets(const Geometry& g, MergeState& s) {
  size_t kept = 0;
  for (const int32_t r : s.roots) {
    const int32_t root = find_root(s.parent.data(), r);
    s.parent[r] = root;
    if (root == r) {
      s.roots[kept++] = r;
      continue;
    }
    s.size[root] += s.size[r];
    for (int32_t f = 0; f < g.F; ++f) s.sum[int64_t{root} * g.F + f] += s.sum[int64_t{r} * g.F + f];
    s.fresh[root] = 1;
  }
  s.roots.resize(kept);
}

// Components smaller than min_size join the adjacent set with the nearest mean feature,
// round by round; s.parent: the union-find parents over components (flat). A round keeps
// the sets' sizes and sums up to date by adding each merged set into its new root (exact
// integer sums, so in any order), computes the means of new sets only, and keeps only the
// edges that can still matter (between two sets, one of them smaller than min_size),
// named by their sets.
void merge_small(const Geometry& g, Components& c, MergeState& s) {
  const int32_t M = c.count();
  std::vector<int32_t>& parent = s.parent;
  parent.resize(M);
  std::iota(parent.begin(), parent.end(), 0);
  if (g.min_size <= 1) return;
  s.roots = parent;
  s.size.resize(M);
  s.sum.resize(int64_t{M} * g.F);
  for (int32_t m = 0; m < M; ++m) {
    const int64_t* stats = &c.stats[int64_t{m} * c.stride];
    s.size[m] = stats[0];
    std::copy(stats + 4, stats + 4 + g.F, &s.sum[int64_t{m} * g.F]);
  }
  s.mean.resize(int64_t{M} * g.F);
  s.fresh.assign(M, 1);
  s.best.resize(M);
  for (int32_t round = 0; round < kMergeRounds; ++round) {
    if (!snapshot_round(g, s)) break;
    g.F == 3 ? pick_nearest<3>(g, c.edges, s) : pick_nearest<0>(g, c.edges, s);
    s.links.clear();
    for (const int32_t r : s.roots) {
      if (s.size[r] < g.min_size && s.best[r] != ~uint64_t{0}) s.links.push_back(r);
    }
    if (s.links.empty()) break;
    // Every pair is decided from the round's snapshot (parents are flat, sizes and means
    // fixed) before any of them is united: the partition does not depend on the order in
    // which the links are made (CUDA makes them concurrently).
    for (const int32_t r : s.links)
      unite(parent.data(), r, static_cast<int32_t>(s.best[r] & 0xFFFFFFFFu));
    gather_merged_sets(g, s);
  }
  for (int32_t m = 0; m < M; ++m) parent[m] = find_root(parent.data(), m);
}

// Stable ids: with n segments, the main segment of cluster k keeps id k when k < n. The
// ids below n left free go, ascending, first to the extra segments (raster order of their
// first pixel) and then to the mains of clusters k >= n (ascending k). Where the scene
// does not change nothing moves; a vanished segment frees one id instead of shifting
// every later one.
std::vector<int32_t> free_slots(const std::vector<uint8_t>& has_main, int32_t n) {
  std::vector<uint8_t> taken(n, 0);
  for (int32_t k = 0; k < std::min<int32_t>(n, static_cast<int32_t>(has_main.size())); ++k)
    taken[k] = has_main[k];
  std::vector<int32_t> slots;
  for (int32_t i = 0; i < n; ++i) {
    if (!taken[i]) slots.push_back(i);
  }
  return slots;
}

// Ids of the main segments (by cluster); extras take free_slots() from the front.
std::vector<int32_t> stable_ids(const std::vector<uint8_t>& has_main, int32_t n) {
  const int32_t K = static_cast<int32_t>(has_main.size());
  const std::vector<int32_t> slots = free_slots(has_main, n);
  int32_t mains = 0;
  for (int32_t k = 0; k < K; ++k) mains += has_main[k];
  int32_t next = n - mains;  // extras use slots[0 .. n - mains)
  std::vector<int32_t> id(K, -1);
  for (int32_t k = 0; k < K; ++k) {
    if (has_main[k]) id[k] = k < n ? k : slots[next++];
  }
  return id;
}

// Segment ids (slic.h, Ids) of the sets `set` (by component, flat): final_id[m] for each
// component; returns the number of segments. A set takes the cluster of its largest
// component; the set holding the largest component of cluster k is k's main segment.
int32_t assign_ids(const Geometry& g, const Components& c, const std::vector<int32_t>& set,
                   std::vector<int32_t>& final_id) {
  const int32_t M = c.count();
  std::vector<uint64_t> main_of(g.K, 0), largest(M, 0);
  std::vector<int32_t> largest_comp(M, -1);
  for (int32_t m = 0; m < M; ++m) {
    const uint64_t key = pack_size(c.size(m), static_cast<uint32_t>(c.root[m]));
    main_of[c.cluster[m]] = std::max(main_of[c.cluster[m]], key);
    if (key > largest[set[m]]) {
      largest[set[m]] = key;
      largest_comp[set[m]] = m;
    }
  }
  auto is_main = [&](int32_t r) { return main_of[c.cluster[largest_comp[r]]] == largest[r]; };
  std::vector<uint8_t> has_main(g.K, 0);
  int32_t count = 0;
  for (int32_t r = 0; r < M; ++r) {
    if (set[r] != r) continue;
    ++count;
    if (is_main(r)) has_main[c.cluster[largest_comp[r]]] = 1;
  }
  const std::vector<int32_t> id_of_cluster = stable_ids(has_main, count);
  const std::vector<int32_t> free_ids = free_slots(has_main, count);
  final_id.assign(M, -1);
  int32_t next_free = 0;
  for (int32_t r = 0; r < M; ++r) {  // sets in raster order of their root
    if (set[r] != r) continue;
    final_id[r] = is_main(r) ? id_of_cluster[c.cluster[largest_comp[r]]] : free_ids[next_free++];
  }
  for (int32_t m = 0; m < M; ++m) final_id[m] = final_id[set[m]];
  return count;
}

// Writes the id of each run's group (comp[i], -1: none) over its pixels where it differs
// from the run's cluster (a quarter of a photo's runs, a few pixels each): the runs to
// rewrite are listed first, without a branch.
void fill_ids(const Geometry& g, const Bands& bands, const Runs& u, const int32_t* comp,
              const std::vector<int32_t>& id, int32_t* labels, std::vector<RowScratch>& rows) {
  // No component (a sample wholly outside its mask): nothing to write, and the branchless
  // test below would read id[0] of an empty list.
  if (id.empty()) return;
  for_each_band(g, bands, [&](int32_t b) {
    rows[b].changed.resize(g.W);
    int32_t* changed = rows[b].changed.data();
    for_band_rows(g, bands, b, [&](int32_t r, int32_t, int32_t) {
      int32_t n = 0;
      for (int32_t i = u.row_start[r]; i < u.row_start[r + 1]; ++i) {
        const int32_t m = comp[i];
        changed[n] = i;
        n += (m >= 0) & (id[std::max(m, 0)] != u.label[i]);
      }
      int32_t* lab = labels + int64_t{r} * g.W;
      for (int32_t k = 0; k < n; ++k) {
        const int32_t i = changed[k];
        const int32_t value = id[comp[i]];
        for (int32_t x = u.begin(i, r); x < u.end[i]; ++x) lab[x] = value;  // a few pixels
      }
    });
  });
}

// Mean (z, y, x, features) of each segment from its groups' exact integer sums; groups
// without an id (-1) and rows past max_centers are dropped.
void write_centers(const Geometry& g, const Components& c, const std::vector<int32_t>& id,
                   float* out) {
  const int32_t R = 3 + g.F;
  const int32_t M = c.count();
  std::vector<int64_t> sums(int64_t{g.max_centers} * (R + 1), 0);
  for (int32_t m = 0; m < M; ++m) {
    if (id[m] < 0 || id[m] >= g.max_centers) continue;
    int64_t* s = sums.data() + int64_t{id[m]} * (R + 1);
    const int64_t* stats = &c.stats[int64_t{m} * c.stride];
    for (int32_t j = 0; j < R + 1; ++j) s[j] += stats[j];
  }
  for (int32_t k = 0; k < g.max_centers; ++k) {
    const int64_t* s = sums.data() + int64_t{k} * (R + 1);
    if (s[0] != 0) mean_row(s, g.F, out + int64_t{k} * R);
  }
}

// Connectivity and ids for one sample; labels hold clusters on entry, segment ids on exit.
int64_t connect_sample(const Geometry& g, const int32_t* fixed, int32_t* labels, float* centers) {
  ConnectivityScratch& s = connectivity_scratch();
  const Bands bands = bands_of(g);
  find_runs(g, bands, fixed, labels, s.runs, s.rows);
  link_components(g, bands, s.runs, s.edges, s.rows);
  const bool in_bands = bands.count > 1;
  const int32_t M = in_bands ? number_components_in_bands(g, bands, s.runs, s.piece_first, s.comps)
                             : number_components(g, s.runs, s.comps);
  group_stats(g, bands, s.runs, s.runs.comp.data(), M, in_bands ? s.comps.owner.data() : nullptr,
              s.comps, s.rows);
  s.comps.edges.clear();
  if (g.min_size > 1) find_edges(g, bands, s.runs, s.comps, s.edges);
  merge_small(g, s.comps, s.merge);
  const int32_t count = assign_ids(g, s.comps, s.merge.parent, s.final_id);
  fill_ids(g, bands, s.runs, s.runs.comp.data(), s.final_id, labels, s.rows);
  write_centers(g, s.comps, s.final_id, centers);
  s.release_if_large();
  return count;
}

// Without connectivity: every non-empty cluster is a segment, numbered in cluster order;
// its centre is the mean of its final pixels (the k-means centres are a pass older).
int64_t relabel_clusters(const Geometry& g, const int32_t* fixed, int32_t* labels, float* centers) {
  ConnectivityScratch& s = connectivity_scratch();
  const Bands bands = bands_of(g);
  find_runs(g, bands, fixed, labels, s.runs, s.rows);
  std::vector<uint8_t> used(g.K, 0);
  for (int32_t i = 0; i < s.runs.count(); ++i) {
    if (s.runs.label[i] >= 0) used[s.runs.label[i]] = 1;  // -1: outside the mask
  }
  int32_t n = 0;
  for (int32_t k = 0; k < g.K; ++k) n += used[k];
  const std::vector<int32_t> id = stable_ids(used, n);
  group_stats(g, bands, s.runs, s.runs.label.data(), g.K, nullptr, s.comps, s.rows);
  fill_ids(g, bands, s.runs, s.runs.label.data(), id, labels, s.rows);
  write_centers(g, s.comps, id, centers);
  s.release_if_large();
  return n;
}

template <typename T>
const T* image_ptr(const at::Tensor& t) {
  return reinterpret_cast<const T*>(t.const_data_ptr());
}

}  // namespace

SlicOutputs slic_in_chunks(SlicFn fn, int64_t max_pixels, int64_t max_samples,
                           const at::Tensor& image, const std::optional<at::Tensor>& init_centers,
                           const std::optional<at::Tensor>& init_counts,
                           const std::optional<at::Tensor>& init_labels, at::IntArrayRef grid,
                           at::ArrayRef<double> weights, double compactness, bool convert_lab,
                           int64_t max_iter, double tol, bool connectivity, int64_t min_size,
                           int64_t max_centers, const std::optional<at::Tensor>& mask) {
  TORCH_CHECK(image.dim() == 5, "image: expected [N, C, D, H, W], got ", image.sizes());
  const int64_t N = image.size(0), P = image.size(2) * image.size(3) * image.size(4);
  TORCH_CHECK(N > 0 && P > 0, "image: expected at least one sample and one pixel, got ",
              image.sizes());
  TORCH_CHECK(P < kMaxPixels, "image: at most 2^31 - 1 pixels per sample, got ", P);
  // Checked before the per-call narrowing below, which would silently cut a longer mask.
  TORCH_CHECK(!mask || (mask->dim() == 2 && mask->size(0) == N && mask->size(1) == P),
              "mask: expected [N, P] = [", N, ", ", P, "], got ",
              mask ? mask->sizes() : at::IntArrayRef{});
  if (const char* lowered = std::getenv("GSWFAST_SLIC_CHUNK_PIXELS")) {
    char* rest = nullptr;
    const long long value = std::strtoll(lowered, &rest, 10);
    TORCH_CHECK(rest != lowered && *rest == '\0' && value >= 0,
                "GSWFAST_SLIC_CHUNK_PIXELS: expected a whole number of pixels >= 0 (0: no "
                "limit), got '",
                lowered, "'");
    if (value > 0) max_pixels = std::min<int64_t>(max_pixels, value);
  }
  TORCH_CHECK(max_samples >= 1, "slic_in_chunks: expected max_samples >= 1, got ", max_samples);
  const int64_t per_call =
      std::min(max_samples, std::max<int64_t>(1, (std::min(max_pixels, kMaxPixels) - 1) / P));
  auto call = [&](int64_t start, int64_t length) {
    auto part = [&](const std::optional<at::Tensor>& t) -> std::optional<at::Tensor> {
      if (!t) return std::nullopt;
      return t->narrow(0, start, length);
    };
    return fn(image.narrow(0, start, length), part(init_centers), part(init_counts),
              part(init_labels), grid, weights, compactness, convert_lab, max_iter, tol,
              connectivity, min_size, max_centers, part(mask));
  };
  if (N <= per_call) return call(0, N);
  std::vector<at::Tensor> parts[7];
  for (int64_t start = 0; start < N; start += per_call) {
    const SlicOutputs out = call(start, std::min(per_call, N - start));
    parts[0].push_back(std::get<0>(out));
    parts[1].push_back(std::get<1>(out));
    parts[2].push_back(std::get<2>(out));
    parts[3].push_back(std::get<3>(out));
    parts[4].push_back(std::get<4>(out));
    parts[5].push_back(std::get<5>(out));
    parts[6].push_back(std::get<6>(out));
  }
  return {at::cat(parts[0]), at::cat(parts[1]), at::cat(parts[2]), at::cat(parts[3]),
          at::cat(parts[4]), at::cat(parts[5]), at::cat(parts[6])};
}

namespace {

// A buffer that keeps its memory between calls up to kKeptElements (larger ones are freed
// when the call ends, so one huge call does not pin its scratch). get(n) sizes it for this
// call's n elements, which the call writes in full before reading (ConnectivityScratch's
// rule).
template <typename T>
struct KeptBuffer {
  static constexpr int64_t kKeptElements = int64_t{1} << 24;
  std::vector<T> kept;
  std::vector<T> once;
  T* get(int64_t n) {
    if (n > kKeptElements) {
      once.resize(n);
      return once.data();
    }
    if (static_cast<int64_t>(kept.size()) < n) kept.resize(n);
    return kept.data();
  }
  void release_once() { std::vector<T>().swap(once); }
};

struct Workspace {
  KeptBuffer<float> features;
  KeptBuffer<int32_t> fixed;
};

Workspace& workspace() {
  thread_local Workspace ws;
  return ws;
}

// Zeros filled on the calling thread. ATen's fills and copies above 32k elements run on
// OpenMP threads, which spin against a busy machine as parallel_for's would: a call that
// runs on one thread writes its outputs itself (so no clone() or at::zeros below).
at::Tensor zeros_here(at::IntArrayRef sizes, const at::TensorOptions& options) {
  at::Tensor out = at::empty(sizes, options);
  if (out.nbytes() > 0) std::memset(out.data_ptr(), 0, out.nbytes());
  return out;
}

SlicOutputs slic_cpu_chunk(const at::Tensor& image, const std::optional<at::Tensor>& init_centers,
                           const std::optional<at::Tensor>& init_counts,
                           const std::optional<at::Tensor>& init_labels, at::IntArrayRef grid,
                           at::ArrayRef<double> weights, double compactness, bool convert_lab,
                           int64_t max_iter, double tol, bool connectivity, int64_t min_size,
                           int64_t max_centers, const std::optional<at::Tensor>& mask) {
  TORCH_CHECK(image.device().is_cpu(), "image: expected a CPU tensor, got ", image.device());
  const Geometry g =
      make_geometry(image, init_centers, init_counts, init_labels, grid, weights, compactness,
                    convert_lab, max_iter, tol, connectivity, min_size, max_centers, mask);
  const int32_t R = 3 + g.F;
  const auto f32 = image.options().dtype(at::kFloat);
  // Scratch planes (features, fixed point) reused across calls on this thread: fresh pages
  // cost a page fault each, about as much as the CIELAB conversion of a photo.
  Workspace& ws = workspace();
  float* features = ws.features.get(g.N * g.F * g.P);
  int32_t* fixed = ws.fixed.get(g.N * g.F * g.P);
  switch (image.scalar_type()) {
    case at::kByte:
      compute_features(g, image_ptr<uint8_t>(image), features, fixed);
      break;
    case at::kHalf:
      compute_features(g, image_ptr<c10::Half>(image), features, fixed);
      break;
    case at::kBFloat16:
      compute_features(g, image_ptr<c10::BFloat16>(image), features, fixed);
      break;
    case at::kFloat:
      compute_features(g, image_ptr<float>(image), features, fixed);
      break;
    default:
      compute_features(g, image_ptr<double>(image), features, fixed);
      break;
  }
  at::Tensor clusters = zeros_here({g.N, g.K, R}, f32);
  at::Tensor cluster_counts = at::empty({g.N, g.K}, image.options().dtype(at::kInt));
  float* centers = clusters.data_ptr<float>();
  int32_t* counts = cluster_counts.data_ptr<int32_t>();
  if (g.warm) {
    warm_centers(g, init_centers->const_data_ptr<float>(), init_counts->const_data_ptr<int32_t>(),
                 centers, counts);
  } else {
    seed_centers(g, features, centers, counts);
  }
  at::Tensor labels = at::empty({g.N, g.P}, image.options().dtype(at::kInt));
  at::Tensor iterations = zeros_here({g.N}, image.options().dtype(at::kInt));
  iterate(g, features, fixed, centers, counts,
          init_labels ? init_labels->const_data_ptr<int32_t>() : nullptr,
          labels.data_ptr<int32_t>(), iterations.data_ptr<int32_t>());
  at::Tensor cluster_labels = at::empty(labels.sizes(), labels.options());
  std::memcpy(cluster_labels.data_ptr(), labels.const_data_ptr(), labels.nbytes());

  at::Tensor num_segments = at::empty({g.N}, image.options().dtype(at::kLong));
  at::Tensor out_centers = zeros_here({g.N, g.max_centers, R}, f32);
  auto segment = [&](int64_t n) {
    int32_t* lab = labels.data_ptr<int32_t>() + n * g.P;
    const int32_t* feat = fixed + n * g.F * g.P;
    float* out = out_centers.data_ptr<float>() + n * int64_t{g.max_centers} * R;
    num_segments.data_ptr<int64_t>()[n] =
        g.connectivity ? connect_sample(g, feat, lab, out) : relabel_clusters(g, feat, lab, out);
  };
  if (g.N == 1) {
    segment(0);  // outside a parallel region: a large sample splits its bands across threads
  } else {
    parallel_for(g, 0, g.N, 1, [&](int64_t begin, int64_t end) {
      for (int64_t n = begin; n < end; ++n) segment(n);
    });
  }
  ws.features.release_once();
  ws.fixed.release_once();
  return {labels, num_segments, out_centers, iterations, clusters, cluster_counts, cluster_labels};
}

}  // namespace

SlicOutputs slic_cpu(const at::Tensor& image, const std::optional<at::Tensor>& init_centers,
                     const std::optional<at::Tensor>& init_counts,
                     const std::optional<at::Tensor>& init_labels, at::IntArrayRef grid,
                     at::ArrayRef<double> weights, double compactness, bool convert_lab,
                     int64_t max_iter, double tol, bool connectivity, int64_t min_size,
                     int64_t max_centers, const std::optional<at::Tensor>& mask) {
  auto run = [&](const at::Tensor& part, const std::optional<at::Tensor>& c,
                 const std::optional<at::Tensor>& k, const std::optional<at::Tensor>& l,
                 const std::optional<at::Tensor>& m) {
    return slic_in_chunks(&slic_cpu_chunk, kMaxPixels, std::numeric_limits<int64_t>::max(), part, c,
                          k, l, grid, weights, compactness, convert_lab, max_iter, tol,
                          connectivity, min_size, max_centers, m);
  };
  TORCH_CHECK(image.dim() == 5, "image: expected [N, C, D, H, W], got ", image.sizes());
  const int64_t N = image.size(0), P = image.size(2) * image.size(3) * image.size(4);
  if (N * P < kParallelPixels || at::get_num_threads() < 2 || at::in_parallel_region())
    return run(image, init_centers, init_counts, init_labels, mask);
  if (N < 2) {
    const ThreadCap cap(threads_with_free_cores(at::get_num_threads()));
    return run(image, init_centers, init_counts, init_labels, mask);
  }
  // Batches: one parallel region over samples, each segmented on one thread. Samples are
  // independent, so this changes no result; it replaces some fifty short parallel regions
  // per call, whose barriers make OpenMP threads spin while another process holds a core.
  std::vector<SlicOutputs> parts(N);
  at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
    auto one = [](const std::optional<at::Tensor>& t, int64_t n) -> std::optional<at::Tensor> {
      if (!t) return std::nullopt;
      return t->narrow(0, n, 1);
    };
    for (int64_t n = begin; n < end; ++n)
      parts[n] = run(image.narrow(0, n, 1), one(init_centers, n), one(init_counts, n),
                     one(init_labels, n), one(mask, n));
  });
  std::vector<at::Tensor> lists[7];
  for (const SlicOutputs& o : parts) {
    lists[0].push_back(std::get<0>(o));
    lists[1].push_back(std::get<1>(o));
    lists[2].push_back(std::get<2>(o));
    lists[3].push_back(std::get<3>(o));
    lists[4].push_back(std::get<4>(o));
    lists[5].push_back(std::get<5>(o));
    lists[6].push_back(std::get<6>(o));
  }
  return {at::cat(lists[0]), at::cat(lists[1]), at::cat(lists[2]), at::cat(lists[3]),
          at::cat(lists[4]), at::cat(lists[5]), at::cat(lists[6])};
}

TORCH_LIBRARY_IMPL(gswfast, CPU, m) { m.impl("slic", &slic_cpu); }

}  // namespace slic
}  // namespace gswfast
