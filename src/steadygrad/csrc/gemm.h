// steadygrad native kernels: a single-precision GEMM for x86-64 AVX2 + FMA, for the fast step's
// eight matrix products (csrc/chain.cpp: on at most 2 torch threads, split by column panels).
//
// Why by hand: on the 2-core AMD EPYC (Zen 3) this project is measured on, MKL's single-thread
// sgemm (torch 2.13) reaches 68-81 GFLOP/s on the reference network's first-layer shapes and
// 9-26 GFLOP/s on the 100x10 ones; this kernel, specialised for those shapes, ran the step's eight
// products 1.10-1.28x faster at batch 50 and 1.04-1.12x at batch 256 (interleaved in one process,
// best and median of 15 blocks; a 1024^3 product is a tie). oneDNN's brgemm through
// at::native::cpublas was slower than MKL here (44-66 GFLOP/s).
//
// DESIGN (BLIS / Goto, with two shape-driven deviations)
//   C[MxN] = op(A)[MxK] * op(B)[KxN] + beta*C, row-major, beta in {0,1}.
//   Classic path:
//     jc over N in NC blocks
//      pc over K in KC blocks (K split evenly into ceil(K/KC) parts)
//        pack op(B)[pc, jc] into 16-wide column micro-panels (k-major)
//        ic over M in MC blocks (M split evenly)
//          [op(A) = Aᵀ only] pack op(A)[ic, pc] into row micro-panels
//          jr over 16-wide panels, ir over row panels -> micro-kernel
//   * op(A) = A (row-major, k contiguous: X in forward, δ in input grad) is NOT
//     packed: the kernel broadcasts straight from the 6 source rows (measured
//     +4..15 % on the small-M shapes; packing A was 4 % of the b=50 time).
//     op(A) = Aᵀ (weight grad) is packed (direct access there was -15 % at
//     b=256: 6 floats per k spread over kc cache lines).
//   * Forward pass (trans_b, W stored out x in) with M <= 128: "B-panel
//     stationary" path -- per K block, transpose-pack ONE 16-wide panel of Wᵀ
//     (8x8 in-register transposes) and run all of M against it while hot
//     (+4..6 % at M=50; -7 % at M=256, hence the M limit).
//   micro-kernel: 6 x 16 (12 ymm accumulators + 2 B vectors + 1 broadcast),
//     FMA rank-1 updates. Rows are split into ceil(M/6) panels of near-equal
//     height (50 = 5x6 + 4x5), and the kernel is instantiated for 1..6 rows,
//     so no FLOPs are wasted on row edges and no latency-bound 1-3-row panels
//     appear unless M < 4. Column edges (N % 16) use masked loads/stores on C
//     (packed B panel zero-padded).
//   blocks (tuned here, noisy shared 2-vCPU VM): KC=400 (K=784 -> 2 x 392;
//     256 vs 400 vs 800 within ~2-3 %, 400/800 slightly ahead), MC=144,
//     NC=3072 (N <= 784 here, so one block).
//   beta == 0 never reads C (first K block stores, later blocks accumulate).
//   Rows where they lie: op(A) = A and op(B) = B may be given as one pointer per row
//   (a_rows / b_rows: a batch gathered by index from the images, read without a copy);
//   the direct kernels always take row pointers, built per block (row_starts).
//   Packing buffers are thread_local and grow on demand.
//
// Builds as C++17 (GCC 12), needs -mavx2 -mfma (e.g. -march=native).
#pragma once

// Compiled only for AVX2 + FMA CPUs without AVX-512 (the build uses -march=native): on an
// AVX-512 Intel Xeon (16 cores, torch 2.11) MKL's AVX-512 kernels ran the step's products
// 1.2x faster than this AVX2 kernel at 1 thread (0.82-0.83) and 1.0-1.6x at 2-16 threads.
#if defined(__AVX2__) && defined(__FMA__) && !defined(__AVX512F__)
#define STEADYGRAD_GEMM 1

#include <immintrin.h>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <algorithm>
#include <vector>

namespace sg_gemm {
namespace detail {

constexpr int MR = 6;
constexpr int NR = 16;
#ifndef SG_GEMM_KC
#define SG_GEMM_KC 400
#endif
#ifndef SG_GEMM_MC
#define SG_GEMM_MC 144
#endif
#ifndef SG_GEMM_DIRECT_A
#define SG_GEMM_DIRECT_A 2
#endif
#ifndef SG_GEMM_FUSED
#define SG_GEMM_FUSED 1
#endif
#ifndef SG_GEMM_FUSED_MMAX
#define SG_GEMM_FUSED_MMAX 128
#endif
#ifndef SG_GEMM_FUSED_ABYTES
#define SG_GEMM_FUSED_ABYTES (256 * 1024)
#endif
#ifndef SG_GEMM_NC
#define SG_GEMM_NC 3072
#endif
constexpr int64_t KC = SG_GEMM_KC;
constexpr int64_t MC = SG_GEMM_MC;   // multiple of MR
constexpr int64_t NC = SG_GEMM_NC;   // multiple of NR

struct Buf {
  float* p = nullptr;
  size_t cap = 0;  // floats
  ~Buf() { std::free(p); }
  float* get(size_t n) {
    if (n > cap) {
      std::free(p);
      size_t bytes = ((n + 64) * sizeof(float) + 63) & ~size_t(63);
      p = static_cast<float*>(std::aligned_alloc(64, bytes));
      cap = n;
    }
    return p;
  }
};

inline Buf& bufA() { static thread_local Buf b; return b; }
inline Buf& bufB() { static thread_local Buf b; return b; }

alignas(64) static const int32_t kMaskTab[32] = {
    -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
    0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0};

// mask with the first n (0..8) lanes set
static inline __m256i lane_mask(int n) {
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(kMaskTab + 16 - n));
}

static inline void transpose8(__m256& r0, __m256& r1, __m256& r2, __m256& r3,
                              __m256& r4, __m256& r5, __m256& r6, __m256& r7) {
  __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1);
  __m256 t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
  __m256 t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5);
  __m256 t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
  __m256 s0 = _mm256_shuffle_ps(t0, t2, 0x44), s1 = _mm256_shuffle_ps(t0, t2, 0xEE);
  __m256 s2 = _mm256_shuffle_ps(t1, t3, 0x44), s3 = _mm256_shuffle_ps(t1, t3, 0xEE);
  __m256 s4 = _mm256_shuffle_ps(t4, t6, 0x44), s5 = _mm256_shuffle_ps(t4, t6, 0xEE);
  __m256 s6 = _mm256_shuffle_ps(t5, t7, 0x44), s7 = _mm256_shuffle_ps(t5, t7, 0xEE);
  r0 = _mm256_permute2f128_ps(s0, s4, 0x20); r1 = _mm256_permute2f128_ps(s1, s5, 0x20);
  r2 = _mm256_permute2f128_ps(s2, s6, 0x20); r3 = _mm256_permute2f128_ps(s3, s7, 0x20);
  r4 = _mm256_permute2f128_ps(s0, s4, 0x31); r5 = _mm256_permute2f128_ps(s1, s5, 0x31);
  r6 = _mm256_permute2f128_ps(s2, s6, 0x31); r7 = _mm256_permute2f128_ps(s3, s7, 0x31);
}

// ---------------------------------------------------------------- packing B
// Packed layout: for each NR-wide panel p, kc rows of NR floats (zero pad).
// op(B)[k][n] = trans_b ? B[n*ldb + k] : B[k*ldb + n]; with `rows` (not trans_b), row k of B
// starts at rows[k] instead (a batch gathered by index, read where it lies).
static void pack_B(bool trans_b, int64_t kc, int64_t nc, const float* B,
                   int64_t ldb, float* dst, const float* const* rows = nullptr) {
  for (int64_t j0 = 0; j0 < nc; j0 += NR) {
    const int64_t nr = std::min<int64_t>(NR, nc - j0);
    float* d = dst + j0 * kc;  // panel base: kc*NR floats
    if (!trans_b) {
      auto row = [&](int64_t k) { return rows != nullptr ? rows[k] + j0 : B + j0 + k * ldb; };
      if (nr == NR) {
        for (int64_t k = 0; k < kc; ++k) {
          const float* s = row(k);
          _mm256_store_ps(d + k * NR, _mm256_loadu_ps(s));
          _mm256_store_ps(d + k * NR + 8, _mm256_loadu_ps(s + 8));
        }
      } else {
        const __m256i m0 = lane_mask((int)std::min<int64_t>(nr, 8));
        const __m256i m1 = lane_mask((int)std::max<int64_t>(nr - 8, 0));
        for (int64_t k = 0; k < kc; ++k) {
          const float* s = row(k);
          _mm256_store_ps(d + k * NR, _mm256_maskload_ps(s, m0));
          _mm256_store_ps(d + k * NR + 8, _mm256_maskload_ps(s + 8, m1));
        }
      }
    } else {
      const float* s = B + j0 * ldb;  // row n of W holds k contiguous
      if (nr == NR) {
        int64_t k = 0;
        for (; k + 8 <= kc; k += 8) {
          for (int h = 0; h < 2; ++h) {
            const float* sh = s + (int64_t)h * 8 * ldb + k;
            __m256 r0 = _mm256_loadu_ps(sh + 0 * ldb), r1 = _mm256_loadu_ps(sh + 1 * ldb);
            __m256 r2 = _mm256_loadu_ps(sh + 2 * ldb), r3 = _mm256_loadu_ps(sh + 3 * ldb);
            __m256 r4 = _mm256_loadu_ps(sh + 4 * ldb), r5 = _mm256_loadu_ps(sh + 5 * ldb);
            __m256 r6 = _mm256_loadu_ps(sh + 6 * ldb), r7 = _mm256_loadu_ps(sh + 7 * ldb);
            transpose8(r0, r1, r2, r3, r4, r5, r6, r7);
            float* dd = d + k * NR + h * 8;
            _mm256_store_ps(dd + 0 * NR, r0); _mm256_store_ps(dd + 1 * NR, r1);
            _mm256_store_ps(dd + 2 * NR, r2); _mm256_store_ps(dd + 3 * NR, r3);
            _mm256_store_ps(dd + 4 * NR, r4); _mm256_store_ps(dd + 5 * NR, r5);
            _mm256_store_ps(dd + 6 * NR, r6); _mm256_store_ps(dd + 7 * NR, r7);
          }
        }
        for (; k < kc; ++k)
          for (int j = 0; j < NR; ++j) d[k * NR + j] = s[j * ldb + k];
      } else {
        for (int64_t k = 0; k < kc; ++k) {
          int j = 0;
          for (; j < nr; ++j) d[k * NR + j] = s[j * ldb + k];
          for (; j < NR; ++j) d[k * NR + j] = 0.f;
        }
      }
    }
  }
}

// ---------------------------------------------------------------- packing A
// Packed layout: for each MR-row panel, kc columns of mr floats, where mr is
// the panel's real height (the last panel is not padded; the kernel is
// instantiated for that height). op(A)[m][k] = trans_a ? A[k*lda+m] : A[m*lda+k]
// Row panels of an mc block: np = ceil(mc/MR) panels whose heights differ by
// at most one (e.g. 50 = 5x6 + 4x5), so that no panel runs a latency-bound
// 1..3-row kernel unless mc itself is that small.
struct Panels {
  int64_t np, base, extra;
  explicit Panels(int64_t mc) : np((mc + MR - 1) / MR), base(mc / np), extra(mc % np) {}
  int64_t height(int64_t p) const { return base + (p < extra ? 1 : 0); }
};

static void pack_A(bool trans_a, int64_t mc, int64_t kc, const float* A,
                   int64_t lda, float* dst) {
  const Panels P(mc);
  int64_t i0 = 0;
  for (int64_t p = 0; p < P.np; i0 += P.height(p), ++p) {
    const int64_t mr = P.height(p);
    float* d = dst + i0 * kc;
    if (trans_a) {
      const float* s = A + i0;
      if (mr == MR) {
        for (int64_t k = 0; k < kc; ++k) {
          const float* sk = s + k * lda;
          d[k * 6 + 0] = sk[0]; d[k * 6 + 1] = sk[1]; d[k * 6 + 2] = sk[2];
          d[k * 6 + 3] = sk[3]; d[k * 6 + 4] = sk[4]; d[k * 6 + 5] = sk[5];
        }
      } else {
        for (int64_t k = 0; k < kc; ++k)
          for (int64_t i = 0; i < mr; ++i) d[k * mr + i] = s[k * lda + i];
      }
    } else {
      const float* s = A + i0 * lda;
      if (mr == MR) {
        int64_t k = 0;
        // 8 k at a time: load 6 rows (+2 dummies), transpose, store 8 floats
        // per k with overlap (each store writes 2 floats of the next k, which
        // the next store overwrites; the buffer has slack at the end).
        for (; k + 8 <= kc; k += 8) {
          __m256 r0 = _mm256_loadu_ps(s + 0 * lda + k), r1 = _mm256_loadu_ps(s + 1 * lda + k);
          __m256 r2 = _mm256_loadu_ps(s + 2 * lda + k), r3 = _mm256_loadu_ps(s + 3 * lda + k);
          __m256 r4 = _mm256_loadu_ps(s + 4 * lda + k), r5 = _mm256_loadu_ps(s + 5 * lda + k);
          __m256 r6 = _mm256_setzero_ps(), r7 = _mm256_setzero_ps();
          transpose8(r0, r1, r2, r3, r4, r5, r6, r7);
          float* dd = d + k * 6;
          _mm256_storeu_ps(dd + 0, r0); _mm256_storeu_ps(dd + 6, r1);
          _mm256_storeu_ps(dd + 12, r2); _mm256_storeu_ps(dd + 18, r3);
          _mm256_storeu_ps(dd + 24, r4); _mm256_storeu_ps(dd + 30, r5);
          _mm256_storeu_ps(dd + 36, r6);
          // last one: write only 6 floats so we never clobber the next panel
          _mm_storeu_ps(dd + 42, _mm256_castps256_ps128(r7));
          _mm_storel_pi(reinterpret_cast<__m64*>(dd + 46), _mm256_extractf128_ps(r7, 1));
        }
        for (; k < kc; ++k)
          for (int i = 0; i < 6; ++i) d[k * 6 + i] = s[i * lda + k];
      } else {
        for (int64_t k = 0; k < kc; ++k)
          for (int64_t i = 0; i < mr; ++i) d[k * mr + i] = s[i * lda + k];
      }
    }
  }
}

// ---------------------------------------------------------------- kernel
// C tile (ROWS x nr, nr<=16) (+)= A(ROWS x kc) * Bp(kc x 16, packed)
// A element (i,k) is at: packed (DIRECT=false): Ap[k*ROWS + i];
// direct from the caller's matrix (DIRECT=true): rows[i][k*cs].
template <int ROWS, bool DIRECT>
static inline __attribute__((always_inline)) void
kernel(int64_t kc, const float* __restrict Ap, const float* const* rows, int64_t cs,
       const float* __restrict Bp, float* C, int64_t ldc, bool acc, int nr) {
  __m256 c0[ROWS], c1[ROWS];
#pragma GCC unroll 6
  for (int i = 0; i < ROWS; ++i) { c0[i] = _mm256_setzero_ps(); c1[i] = _mm256_setzero_ps(); }

  if (!DIRECT) {
#pragma GCC unroll 4
    for (int64_t k = 0; k < kc; ++k) {
      const __m256 b0 = _mm256_load_ps(Bp);
      const __m256 b1 = _mm256_load_ps(Bp + 8);
#pragma GCC unroll 6
      for (int i = 0; i < ROWS; ++i) {
        const __m256 a = _mm256_broadcast_ss(Ap + i);
        c0[i] = _mm256_fmadd_ps(a, b0, c0[i]);
        c1[i] = _mm256_fmadd_ps(a, b1, c1[i]);
      }
      Ap += ROWS;
      Bp += NR;
    }
  } else {
    const float* ap[ROWS];
#pragma GCC unroll 6
    for (int i = 0; i < ROWS; ++i) ap[i] = rows[i];
    int64_t off = 0;
#pragma GCC unroll 4
    for (int64_t k = 0; k < kc; ++k) {
      const __m256 b0 = _mm256_load_ps(Bp);
      const __m256 b1 = _mm256_load_ps(Bp + 8);
#pragma GCC unroll 6
      for (int i = 0; i < ROWS; ++i) {
        const __m256 a = _mm256_broadcast_ss(ap[i] + off);
        c0[i] = _mm256_fmadd_ps(a, b0, c0[i]);
        c1[i] = _mm256_fmadd_ps(a, b1, c1[i]);
      }
      off += cs;
      Bp += NR;
    }
  }

  if (nr == NR) {
    if (acc) {
#pragma GCC unroll 6
      for (int i = 0; i < ROWS; ++i) {
        float* c = C + i * ldc;
        _mm256_storeu_ps(c, _mm256_add_ps(c0[i], _mm256_loadu_ps(c)));
        _mm256_storeu_ps(c + 8, _mm256_add_ps(c1[i], _mm256_loadu_ps(c + 8)));
      }
    } else {
#pragma GCC unroll 6
      for (int i = 0; i < ROWS; ++i) {
        float* c = C + i * ldc;
        _mm256_storeu_ps(c, c0[i]);
        _mm256_storeu_ps(c + 8, c1[i]);
      }
    }
  } else {
    const __m256i m0 = lane_mask(std::min(nr, 8));
    const __m256i m1 = lane_mask(std::max(nr - 8, 0));
#pragma GCC unroll 6
    for (int i = 0; i < ROWS; ++i) {
      float* c = C + i * ldc;
      __m256 v0 = c0[i], v1 = c1[i];
      if (acc) {
        v0 = _mm256_add_ps(v0, _mm256_maskload_ps(c, m0));
        v1 = _mm256_add_ps(v1, _mm256_maskload_ps(c + 8, m1));
      }
      _mm256_maskstore_ps(c, m0, v0);
      _mm256_maskstore_ps(c + 8, m1, v1);
    }
  }
}

template <int ROWS, bool DIRECT>
static __attribute__((noinline)) void
kernel_rows(int64_t kc, const float* Ap, const float* const* rows, int64_t cs, const float* Bp,
            float* C, int64_t ldc, bool acc, int nr) {
  kernel<ROWS, DIRECT>(kc, Ap, rows, cs, Bp, C, ldc, acc, nr);
}

// The row-panel dispatch: C rows [i0, i0 + mr) against one packed 16-wide B panel.
template <bool DIRECT>
static inline void panel_rows(int64_t mr, int64_t kc, const float* Ap, const float* const* rows,
                              int64_t cs, const float* bp, float* c, int64_t ldc, bool acc,
                              int nr) {
  switch (mr) {
    case 6: kernel_rows<6, DIRECT>(kc, Ap, rows, cs, bp, c, ldc, acc, nr); break;
    case 5: kernel_rows<5, DIRECT>(kc, Ap, rows, cs, bp, c, ldc, acc, nr); break;
    case 4: kernel_rows<4, DIRECT>(kc, Ap, rows, cs, bp, c, ldc, acc, nr); break;
    case 3: kernel_rows<3, DIRECT>(kc, Ap, rows, cs, bp, c, ldc, acc, nr); break;
    case 2: kernel_rows<2, DIRECT>(kc, Ap, rows, cs, bp, c, ldc, acc, nr); break;
    case 1: kernel_rows<1, DIRECT>(kc, Ap, rows, cs, bp, c, ldc, acc, nr); break;
  }
}

// Where each row of op(A) starts, for the direct kernels: row i of the block [i0, i0 + mc) at
// K offset pc — A[i*lda + pc] (op(A) = A), a_rows[i] + pc (rows gathered by the caller), or
// A[i + pc*lda] (op(A) = Aᵀ, then read with stride lda). In a thread_local buffer.
static inline const float* const* row_starts(bool trans_a, const float* A, int64_t lda,
                                             const float* const* a_rows, int64_t i0, int64_t mc,
                                             int64_t pc) {
  static thread_local std::vector<const float*> starts;
  if (static_cast<int64_t>(starts.size()) < mc) starts.resize(static_cast<size_t>(mc));
  for (int64_t i = 0; i < mc; ++i) {
    starts[static_cast<size_t>(i)] = trans_a   ? A + (i0 + i) + pc * lda
                                     : a_rows ? a_rows[i0 + i] + pc
                                              : A + (i0 + i) * lda + pc;
  }
  return starts.data();
}

// macro-kernel: C[mc x nc] (+)= A * Bpack. A is the packed block (DIRECT
// false) or the caller's matrix with element (i,k) at rows[i][k*cs].
template <bool DIRECT>
static void macro_kernel(int64_t mc, int64_t nc, int64_t kc, const float* A,
                         const float* const* rows, int64_t cs, const float* Bp, float* C,
                         int64_t ldc, bool acc) {
  const Panels P(mc);
  for (int64_t j0 = 0; j0 < nc; j0 += NR) {
    const int nr = (int)std::min<int64_t>(NR, nc - j0);
    const float* bp = Bp + j0 * kc;
    int64_t i0 = 0;
    for (int64_t p = 0; p < P.np; ++p) {
      const int64_t mr = P.height(p);
      panel_rows<DIRECT>(mr, kc, DIRECT ? nullptr : A + i0 * kc, DIRECT ? rows + i0 : nullptr,
                         cs, bp, C + i0 * ldc + j0, ldc, acc, nr);
      i0 += mr;
    }
  }
}

static inline int64_t split_even(int64_t n, int64_t blk, int64_t align) {
  // block size <= blk (roughly), splitting n into equal parts, rounded up to align
  const int64_t parts = (n + blk - 1) / blk;
  int64_t b = (n + parts - 1) / parts;
  b = (b + align - 1) / align * align;
  return b;
}

// "B-panel stationary" driver for A read in place (op(A) = A, row-major):
// for each K block and each 16-wide column panel of op(B): pack just that panel
// (kc x 16, L1/L2 resident) and run every row panel of M against it. Used for
// the forward pass (trans_b) with small M (b=50): the freshly transposed panel
// is consumed while hot instead of round-tripping a whole packed B block
// through L2. (Measured: +4-6 % at M=50, -7 % at M=256, neutral for
// non-transposed B; explicit software prefetch of the next panel was -8 %.)
static void sgemm_fused(bool trans_b, int64_t M, int64_t N, int64_t K,
                        const float* A, int64_t lda, const float* const* a_rows,
                        const float* B, int64_t ldb, bool acc0, float* C, int64_t ldc,
                        int64_t kcap) {
  const int64_t kcb = split_even(K, kcap, 1);
  float* Bp = bufB().get((size_t)kcb * NR);
  const Panels P(M);
  for (int64_t pc = 0; pc < K; pc += kcb) {
    const int64_t kc = std::min(kcb, K - pc);
    const bool acc = acc0 || pc > 0;
    const float* const* rows = row_starts(false, A, lda, a_rows, 0, M, pc);
    for (int64_t j0 = 0; j0 < N; j0 += NR) {
      const int nr = (int)std::min<int64_t>(NR, N - j0);
      pack_B(trans_b, kc, nr, trans_b ? B + j0 * ldb + pc : B + pc * ldb + j0, ldb, Bp);
      int64_t i0 = 0;
      for (int64_t p = 0; p < P.np; ++p) {
        const int64_t mr = P.height(p);
        panel_rows<true>(mr, kc, nullptr, rows + i0, 1, Bp, C + i0 * ldc + j0, ldc, acc, nr);
        i0 += mr;
      }
    }
  }
}

}  // namespace detail

// Row-major C[MxN] = op(A)[MxK] * op(B)[KxN] + beta*C, beta in {0, 1}.
// Rows read where they lie (a batch gathered by index, without a copy): with `a_rows` (op(A) = A
// only) row i of A starts at a_rows[i]; with `b_rows` (op(B) = B only) row k of B starts at
// b_rows[k] + b_col. A or B is then not read (may be null).
inline void sgemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K,
                  const float* A, int64_t lda, const float* B, int64_t ldb,
                  float beta, float* C, int64_t ldc, const float* const* a_rows = nullptr,
                  const float* const* b_rows = nullptr, int64_t b_col = 0) {
  using namespace detail;
  if (M <= 0 || N <= 0) return;
  const bool acc0 = (beta != 0.f);
  if (K <= 0) {
    if (!acc0)
      for (int64_t i = 0; i < M; ++i) std::memset(C + i * ldc, 0, sizeof(float) * N);
    return;
  }
  if (SG_GEMM_FUSED && !trans_a && (trans_b || SG_GEMM_FUSED == 2) && M <= SG_GEMM_FUSED_MMAX &&
      b_rows == nullptr) {
    const int64_t kcap = std::max<int64_t>(64, std::min<int64_t>(KC, SG_GEMM_FUSED_ABYTES / (4 * M)));
    sgemm_fused(trans_b, M, N, K, A, lda, a_rows, B, ldb, acc0, C, ldc, kcap);
    return;
  }
  static thread_local std::vector<const float*> b_starts;
  if (b_rows != nullptr && static_cast<int64_t>(b_starts.size()) < K) {
    b_starts.resize(static_cast<size_t>(K));
  }
  const int64_t kcb = split_even(K, KC, 1);
  const int64_t mcb = split_even(M, MC, MR);
  const int64_t ncb = split_even(N, NC, NR);
  float* Bp = bufB().get((size_t)kcb * ((std::min(ncb, N) + NR - 1) / NR * NR));
  float* Ap = bufA().get((size_t)kcb * std::min(mcb, M) + 16);

  for (int64_t jc = 0; jc < N; jc += ncb) {
    const int64_t nc = std::min(ncb, N - jc);
    for (int64_t pc = 0; pc < K; pc += kcb) {
      const int64_t kc = std::min(kcb, K - pc);
      const bool acc = acc0 || pc > 0;
      if (b_rows != nullptr) {
        for (int64_t k = 0; k < kc; ++k) b_starts[k] = b_rows[pc + k] + b_col + jc;
        pack_B(false, kc, nc, nullptr, 0, Bp, b_starts.data());
      } else {
        pack_B(trans_b, kc, nc, trans_b ? B + jc * ldb + pc : B + pc * ldb + jc, ldb, Bp);
      }
      for (int64_t ic = 0; ic < M; ic += mcb) {
        const int64_t mc = std::min(mcb, M - ic);
        if (a_rows != nullptr || SG_GEMM_DIRECT_A == 1 || (SG_GEMM_DIRECT_A == 2 && !trans_a)) {
          macro_kernel<true>(mc, nc, kc, nullptr,
                             row_starts(trans_a, A, lda, a_rows, ic, mc, pc),
                             trans_a ? lda : 1, Bp, C + ic * ldc + jc, ldc, acc);
        } else {
          pack_A(trans_a, mc, kc, trans_a ? A + pc * lda + ic : A + ic * lda + pc, lda, Ap);
          macro_kernel<false>(mc, nc, kc, Ap, nullptr, 0, Bp, C + ic * ldc + jc, ldc, acc);
        }
      }
    }
  }
}

}  // namespace sg_gemm

#endif  // __AVX2__ && __FMA__ && !__AVX512F__
