/* A transformer step whose every number is computed the same way whatever else shares the step.
 *
 * The fast path's kernels are chosen by the step's row count (int4 for a few rows, a dense GEMM for
 * many), and a GEMM library picks its blocking, and so its summation order, by the matrix shape: the
 * same token's logits then differ with the batch around it. Here each output is one sum, always in
 * the same order, by construction:
 *   - a matmul output y[m][n] is one FMA chain over k = 0..K-1 in a single vector lane. Rows and
 *     outputs are tiled for speed (16 outputs a tile, up to 4 rows at a time), but tiling changes
 *     which chains run side by side, never the order within one; no sum is ever split over threads;
 *   - a weight is dequantized to fp32 by the same FMA wherever it is used (q·scale + low), which for
 *     GGUF's Q4_0, Q4_1 and Q8_0 gives exactly the fp32 numbers its reference dequantization gives;
 *   - attention runs per (query, head) over keys 0..ctx-1 in order, in two passes (scores, then a
 *     softmax and the value sum), so a query's answer depends on its position and the cache alone:
 *     a decode, a query inside a prefill chunk, and a query after a prefix-cache hit compute alike;
 *   - norms, RoPE and SiLU are per row, their vector lanes fixed by the index within the row.
 * Threads split outputs and (query, head) pairs, never a sum, so the thread count changes nothing.
 * Written for AVX2 + FMA (which AVX-512 machines also run), with a portable fallback using fmaf. */
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "vector_math.h"

#define NR 16     /* outputs per weight tile */
#define PANEL 8   /* from this many rows, a tile is dequantized once into a panel and reused by all rows */

enum { FORMAT_F32 = 0, FORMAT_Q4 = 1, FORMAT_Q8 = 2 };

/* A weight (n outputs × k inputs) in tiles of NR outputs; packed by kernels/batch_invariant.py.
 * f32: values (tiles, k, 16) fp32. q4: values (tiles, k, 8) bytes, byte i holding output i (low
 * nibble) and output i + 8 (high); q8: values (tiles, k, 16) int8. Both quantized formats: scales
 * and lows (tiles, k / group, 16) fp32, w = q·scale + low. */
typedef struct {
    int32_t format, n, k, group; /* group: GROUP for the quantized formats (kernels/batch_invariant.py) */
    const void *values;
    const float *scales, *lows;
} Weight;

#define GROUP 32 /* inputs per scale; a constant, so finding a k's group is a shift, not a division */

/* One layer's weights: the two norms' scales and the four fused projections. */
typedef struct {
    const float *attention_norm, *ffn_norm;
    Weight wqkv, wo, w13, w2;
} Layer;

/* ---- dequantizing one k of one tile into 16 fp32 weights ---------------------------------------- */

#ifdef __AVX2__
/* `format` is a constant in every caller (the kernels are made once per format), so the branches fold. */
static inline __attribute__((always_inline)) void dequant(const Weight *w, int format, int64_t t, int kk, __m256 *w0,
                                                          __m256 *w1) {
    const int64_t at = t * w->k + kk;
    if (format == FORMAT_F32) {
        const float *v = (const float *)w->values + at * NR;
        *w0 = _mm256_loadu_ps(v);
        *w1 = _mm256_loadu_ps(v + 8);
        return;
    }
    const int64_t g = (t * (w->k / GROUP) + kk / GROUP) * NR;
    __m256 q0, q1;
    if (format == FORMAT_Q4) {
        const __m256i bytes = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)((const uint8_t *)w->values + at * 8)));
        q0 = _mm256_cvtepi32_ps(_mm256_and_si256(bytes, _mm256_set1_epi32(15)));
        q1 = _mm256_cvtepi32_ps(_mm256_srli_epi32(bytes, 4));
    } else {
        const __m128i bytes = _mm_loadu_si128((const __m128i *)((const int8_t *)w->values + at * NR));
        q0 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(bytes));
        q1 = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(bytes, 8)));
    }
    *w0 = _mm256_fmadd_ps(q0, _mm256_loadu_ps(w->scales + g), _mm256_loadu_ps(w->lows + g));
    *w1 = _mm256_fmadd_ps(q1, _mm256_loadu_ps(w->scales + g + 8), _mm256_loadu_ps(w->lows + g + 8));
}
#endif

static inline void dequant_scalar(const Weight *w, int64_t t, int kk, float out[NR]) {
    const int64_t at = t * w->k + kk;
    if (w->format == FORMAT_F32) {
        memcpy(out, (const float *)w->values + at * NR, sizeof(float) * NR);
        return;
    }
    const int64_t g = (t * (w->k / GROUP) + kk / GROUP) * NR;
    for (int i = 0; i < NR; i++) {
        float q;
        if (w->format == FORMAT_Q4) {
            const uint8_t byte = ((const uint8_t *)w->values)[at * 8 + i % 8];
            q = (float)(i < 8 ? byte & 15 : byte >> 4);
        } else {
            q = (float)((const int8_t *)w->values)[at * NR + i];
        }
        out[i] = fmaf(q, w->scales[g + i], w->lows[g + i]);
    }
}

/* ---- matmul: y (m, n) = x (m, k) · Wᵀ ------------------------------------------------------------ */

static inline void store_tile(float *y, int64_t ldy, int rows, const float *acc, int valid) {
    for (int r = 0; r < rows; r++) memcpy(y + r * ldy, acc + r * NR, sizeof(float) * (size_t)valid);
}

#ifdef __AVX2__
/* Accumulators are named variables, not an array: GCC kept an array of vectors in memory too,
 * storing all twelve every k (half the speed). Rows past MR are dead code the compiler drops. */
#define ACC_ZERO(r) __m256 c##r##0 = _mm256_setzero_ps(), c##r##1 = _mm256_setzero_ps();
#define ACC_FMA(MR, x, ldx, kk, r)                                                                        \
    if ((MR) > r) {                                                                                       \
        const __m256 xr = _mm256_broadcast_ss((x) + r * (ldx) + (kk));                                   \
        c##r##0 = _mm256_fmadd_ps(xr, w0, c##r##0);                                                       \
        c##r##1 = _mm256_fmadd_ps(xr, w1, c##r##1);                                                       \
    }
#define ACC_STORE(MR, out, r)                                                                             \
    if ((MR) > r) {                                                                                       \
        _mm256_storeu_ps((out) + r * NR, c##r##0);                                                        \
        _mm256_storeu_ps((out) + r * NR + 8, c##r##1);                                                    \
    }
#define ALL_ROWS(M, ...) M(__VA_ARGS__, 0) M(__VA_ARGS__, 1) M(__VA_ARGS__, 2) M(__VA_ARGS__, 3) M(__VA_ARGS__, 4) M(__VA_ARGS__, 5)
#define ZERO_ALL ACC_ZERO(0) ACC_ZERO(1) ACC_ZERO(2) ACC_ZERO(3) ACC_ZERO(4) ACC_ZERO(5)

/* MR rows of one tile, each k's weights from LOAD_W: y[r][i] = Σ_k x[r][k]·w[k][i], one FMA chain each. */
#define DEFINE_TILE_ROWS(NAME, MR, PARAMS, LOAD_W, K)                                                     \
    static void NAME PARAMS {                                                                             \
        ZERO_ALL                                                                                          \
        for (int kk = 0; kk < (K); kk++) {                                                                \
            __m256 w0, w1;                                                                                \
            LOAD_W                                                                                        \
            ALL_ROWS(ACC_FMA, MR, x, ldx, kk)                                                             \
        }                                                                                                 \
        float out[6 * NR];                                                                                \
        ALL_ROWS(ACC_STORE, MR, out)                                                                      \
        store_tile(y, ldy, MR, out, valid);                                                               \
    }
/* Few rows: each k dequantized as it goes, where a panel would not pay. */
#define ROWS_PARAMS (const Weight *w, int64_t t, const float *x, int64_t ldx, float *y, int64_t ldy, int valid)
#define ROWS_LOAD(FORMAT) dequant(w, FORMAT, t, kk, &w0, &w1);
#define DEFINE_FEW_ROWS(FORMAT, SUFFIX)                                                                   \
    DEFINE_TILE_ROWS(rows_1_##SUFFIX, 1, ROWS_PARAMS, ROWS_LOAD(FORMAT), w->k)                            \
    DEFINE_TILE_ROWS(rows_2_##SUFFIX, 2, ROWS_PARAMS, ROWS_LOAD(FORMAT), w->k)                            \
    DEFINE_TILE_ROWS(rows_3_##SUFFIX, 3, ROWS_PARAMS, ROWS_LOAD(FORMAT), w->k)                            \
    DEFINE_TILE_ROWS(rows_4_##SUFFIX, 4, ROWS_PARAMS, ROWS_LOAD(FORMAT), w->k)
DEFINE_FEW_ROWS(FORMAT_F32, f32)
DEFINE_FEW_ROWS(FORMAT_Q4, q4)
DEFINE_FEW_ROWS(FORMAT_Q8, q8)
typedef void (*Rows)(const Weight *, int64_t, const float *, int64_t, float *, int64_t, int);
static const Rows ROWS[3][5] = {
    {NULL, rows_1_f32, rows_2_f32, rows_3_f32, rows_4_f32},
    {NULL, rows_1_q4, rows_2_q4, rows_3_q4, rows_4_q4},
    {NULL, rows_1_q8, rows_2_q8, rows_3_q8, rows_4_q8},
};
/* Many rows: against the tile's panel of fp32 weights (k × 16), dequantized once: the GEMM microkernel. */
#define PANEL_PARAMS (const float *panel, int k, const float *x, int64_t ldx, float *y, int64_t ldy, int valid)
#define PANEL_LOAD                                                                                        \
    w0 = _mm256_loadu_ps(panel + (int64_t)kk * NR);                                                       \
    w1 = _mm256_loadu_ps(panel + (int64_t)kk * NR + 8);
DEFINE_TILE_ROWS(panel_rows_1, 1, PANEL_PARAMS, PANEL_LOAD, k)
DEFINE_TILE_ROWS(panel_rows_2, 2, PANEL_PARAMS, PANEL_LOAD, k)
DEFINE_TILE_ROWS(panel_rows_3, 3, PANEL_PARAMS, PANEL_LOAD, k)
DEFINE_TILE_ROWS(panel_rows_4, 4, PANEL_PARAMS, PANEL_LOAD, k)
DEFINE_TILE_ROWS(panel_rows_5, 5, PANEL_PARAMS, PANEL_LOAD, k)
DEFINE_TILE_ROWS(panel_rows_6, 6, PANEL_PARAMS, PANEL_LOAD, k)
typedef void (*PanelRows)(const float *, int, const float *, int64_t, float *, int64_t, int);
static const PanelRows PANEL_ROWS[7] = {NULL, panel_rows_1, panel_rows_2, panel_rows_3, panel_rows_4, panel_rows_5, panel_rows_6};

/* One row across four tiles at once: eight FMA chains in flight instead of two (single-stream decode
 * would otherwise wait on each FMA's latency). Each chain is the same as rows_1's. */
#define TILE_FMA(i)                                                                                       \
    {                                                                                                     \
        __m256 w0, w1;                                                                                    \
        dequant(w, format, t + i, kk, &w0, &w1);                                                          \
        c##i##0 = _mm256_fmadd_ps(xr, w0, c##i##0);                                                      \
        c##i##1 = _mm256_fmadd_ps(xr, w1, c##i##1);                                                       \
    }
#define TILE_STORE(i)                                                                                     \
    {                                                                                                     \
        float out[NR];                                                                                    \
        _mm256_storeu_ps(out, c##i##0);                                                                   \
        _mm256_storeu_ps(out + 8, c##i##1);                                                               \
        const int64_t first = (t + i) * NR;                                                               \
        store_tile(y + first, n, 1, out, n - first < NR ? (int)(n - first) : NR);                         \
    }
static inline __attribute__((always_inline)) void row_4_tiles(const Weight *w, int format, int64_t t, const float *x,
                                                              float *y, int n) {
    ACC_ZERO(0) ACC_ZERO(1) ACC_ZERO(2) ACC_ZERO(3)
    for (int kk = 0; kk < w->k; kk++) {
        const __m256 xr = _mm256_broadcast_ss(x + kk);
        TILE_FMA(0) TILE_FMA(1) TILE_FMA(2) TILE_FMA(3)
    }
    TILE_STORE(0) TILE_STORE(1) TILE_STORE(2) TILE_STORE(3)
}
static void row_4_tiles_f32(const Weight *w, int64_t t, const float *x, float *y, int n) {
    row_4_tiles(w, FORMAT_F32, t, x, y, n);
}
static void row_4_tiles_q4(const Weight *w, int64_t t, const float *x, float *y, int n) {
    row_4_tiles(w, FORMAT_Q4, t, x, y, n);
}
static void row_4_tiles_q8(const Weight *w, int64_t t, const float *x, float *y, int n) {
    row_4_tiles(w, FORMAT_Q8, t, x, y, n);
}
static void (*const ROW_4_TILES[3])(const Weight *, int64_t, const float *, float *, int) = {
    row_4_tiles_f32, row_4_tiles_q4, row_4_tiles_q8};

static inline __attribute__((always_inline)) void fill_panel_as(const Weight *w, int format, int64_t t, float *panel) {
    for (int kk = 0; kk < w->k; kk++) {
        __m256 w0, w1;
        dequant(w, format, t, kk, &w0, &w1);
        _mm256_storeu_ps(panel + (int64_t)kk * NR, w0);
        _mm256_storeu_ps(panel + (int64_t)kk * NR + 8, w1);
    }
}
static void fill_panel(const Weight *w, int64_t t, float *panel) {
    switch (w->format) {
    case FORMAT_Q4: fill_panel_as(w, FORMAT_Q4, t, panel); break;
    case FORMAT_Q8: fill_panel_as(w, FORMAT_Q8, t, panel); break;
    default: fill_panel_as(w, FORMAT_F32, t, panel); break;
    }
}

static inline int valid_outputs(const Weight *w, int64_t t) { return w->n - t * NR < NR ? (int)(w->n - t * NR) : NR; }

static void few_rows(const Weight *w, int64_t t, const float *x, int m, float *y) {
    const int64_t first = t * NR;
    const int valid = valid_outputs(w, t);
    const Rows *rows = ROWS[w->format];
    for (int r = 0; r < m; r += 4) {
        const int mr = m - r < 4 ? m - r : 4;
        rows[mr](w, t, x + (int64_t)r * w->k, w->k, y + (int64_t)r * w->n + first, w->n, valid);
    }
}

/* Rows in blocks whose inputs stay in L2 while every tile passes over them; each tile's weights are
 * dequantized once per block into a panel. */
#define BLOCK_BYTES (192 * 1024)

static int many_rows(const Weight *w, const float *x, int m, float *y) {
    const int64_t tiles = (w->n + NR - 1) / NR;
    int block = (int)(BLOCK_BYTES / (sizeof(float) * (size_t)w->k)) / 6 * 6;
    block = block < 6 ? 6 : block;
    int failed = 0;
#pragma omp parallel reduction(| : failed)
    {
        float *panel = malloc(sizeof(float) * NR * (size_t)w->k);
        if (!panel) failed = 1;
        for (int r0 = 0; r0 < m; r0 += block) {
            const int rows = m - r0 < block ? m - r0 : block;
#pragma omp for schedule(static)
            for (int64_t t = 0; t < tiles; t++) {
                if (!panel) continue;
                fill_panel(w, t, panel);
                const int valid = valid_outputs(w, t);
                for (int r = 0; r < rows; r += 6) {
                    const int mr = rows - r < 6 ? rows - r : 6;
                    const int64_t row = r0 + r;
                    PANEL_ROWS[mr](panel, w->k, x + row * w->k, w->k, y + row * w->n + t * NR, w->n, valid);
                }
            }
        }
        free(panel);
    }
    return failed;
}

int bi_linear(const Weight *w, const float *x, int m, float *y) {
    const int64_t tiles = (w->n + NR - 1) / NR;
    if (m >= PANEL) return many_rows(w, x, m, y);
    if (m == 1) {
        const int64_t quads = tiles / 4;
#pragma omp parallel for schedule(static)
        for (int64_t i = 0; i < quads; i++) ROW_4_TILES[w->format](w, 4 * i, x, y, w->n);
        for (int64_t t = quads * 4; t < tiles; t++) few_rows(w, t, x, 1, y);
        return 0;
    }
#pragma omp parallel for schedule(static)
    for (int64_t t = 0; t < tiles; t++) few_rows(w, t, x, m, y);
    return 0;
}
#else
int bi_linear(const Weight *w, const float *x, int m, float *y) {
    const int64_t tiles = (w->n + NR - 1) / NR;
#pragma omp parallel for schedule(static)
    for (int64_t t = 0; t < tiles; t++) {
        const int valid = w->n - t * NR < NR ? (int)(w->n - t * NR) : NR;
        for (int r = 0; r < m; r++) {
            float acc[NR] = {0}, wk[NR];
            for (int kk = 0; kk < w->k; kk++) {
                dequant_scalar(w, t, kk, wk);
                for (int i = 0; i < NR; i++) acc[i] = fmaf(x[(int64_t)r * w->k + kk], wk[i], acc[i]);
            }
            memcpy(y + (int64_t)r * w->n + t * NR, acc, sizeof(float) * (size_t)valid);
        }
    }
    return 0;
}
#endif

/* The dequantized weights, (n, k) fp32: for checking the packing against the model's own weights. */
void bi_unpack(const Weight *w, float *out) {
    const int64_t tiles = (w->n + NR - 1) / NR;
    for (int64_t t = 0; t < tiles; t++)
        for (int kk = 0; kk < w->k; kk++) {
            float wk[NR];
            dequant_scalar(w, t, kk, wk);
            for (int i = 0; i < NR && t * NR + i < w->n; i++) out[(t * NR + i) * w->k + kk] = wk[i];
        }
}

/* ---- per-row steps -------------------------------------------------------------------------------- */

/* Σ a[i]·b[i] in eight lanes, then one fixed horizontal sum: the same order for every call of one n. */
static inline float dot(const float *a, const float *b, int n) {
    int i = 0;
    float s = 0.0f;
#ifdef __AVX2__
    __m256 acc = _mm256_setzero_ps();
    for (; i + 8 <= n; i += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc);
    s = hsum(acc);
#endif
    for (; i < n; i++) s = fmaf(a[i], b[i], s);
    return s;
}

/* out = x / rms(x) · weight for each row. */
static void rms_norm(const float *x, const float *weight, int rows, int dim, float eps, float *out) {
    for (int r = 0; r < rows; r++) {
        const float *xr = x + (int64_t)r * dim;
        const float inv = 1.0f / sqrtf(dot(xr, xr, dim) / (float)dim + eps);
        for (int d = 0; d < dim; d++) out[(int64_t)r * dim + d] = xr[d] * inv * weight[d];
    }
}

/* Rotate-half RoPE of one head in place: the first half pairs with the second. */
static void rope(float *x, const float *cos, const float *sin, int head_dim) {
    const int half = head_dim / 2;
    for (int i = 0; i < half; i++) {
        const float a = x[i], b = x[i + half];
        x[i] = a * cos[i] - b * sin[i];
        x[i + half] = b * cos[i + half] + a * sin[i + half];
    }
}

/* e^x of n values in place and their sum, eight lanes at a time; a short last group is padded, so
 * each value takes the same arithmetic wherever it falls. */
static float exp_sum(float *s, int n, float shift) {
#ifdef __AVX2__
    __m256 sum = _mm256_setzero_ps();
    for (int j = 0; j < n; j += 8) {
        const int count = n - j < 8 ? n - j : 8;
        float lanes[8] = {0};
        memcpy(lanes, s + j, sizeof(float) * (size_t)count);
        _mm256_storeu_ps(lanes, exp8(_mm256_sub_ps(_mm256_loadu_ps(lanes), _mm256_set1_ps(shift))));
        for (int i = count; i < 8; i++) lanes[i] = 0.0f; /* padding adds nothing to the sum */
        memcpy(s + j, lanes, sizeof(float) * (size_t)count);
        sum = _mm256_add_ps(sum, _mm256_loadu_ps(lanes));
    }
    return hsum(sum);
#else
    float sum = 0.0f;
    for (int j = 0; j < n; j++) sum += s[j] = expf(s[j] - shift);
    return sum;
#endif
}

/* One query head over its keys 0..ctx-1: scores, softmax, then Σ p_j·v_j, each in key order.
 * Scores go eight keys at a time: each key's eight lanes of partial products (over head_dim) are folded
 * by one fixed tree, eight keys to a register; a last group short of eight repeats a key whose score is
 * then dropped, so every score is folded the same way wherever it falls. */
#ifdef __AVX2__
static inline __m256 fold8(__m256 a0, __m256 a1, __m256 a2, __m256 a3, __m256 a4, __m256 a5, __m256 a6, __m256 a7) {
    const __m256 u0 = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
    const __m256 u1 = _mm256_hadd_ps(_mm256_hadd_ps(a4, a5), _mm256_hadd_ps(a6, a7));
    return _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31));
}
static inline __m256 load8_f32_same(const float *p) { return _mm256_loadu_ps(p); }
#define DOT8(LOAD8)                                                                                        \
    {                                                                                                      \
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;     \
        for (int d = 0; d < head_dim; d += 8) {                                                            \
            const __m256 qd = _mm256_loadu_ps(q + d);                                                      \
            a0 = _mm256_fmadd_ps(qd, LOAD8(keys[0] + d), a0);                                              \
            a1 = _mm256_fmadd_ps(qd, LOAD8(keys[1] + d), a1);                                              \
            a2 = _mm256_fmadd_ps(qd, LOAD8(keys[2] + d), a2);                                              \
            a3 = _mm256_fmadd_ps(qd, LOAD8(keys[3] + d), a3);                                              \
            a4 = _mm256_fmadd_ps(qd, LOAD8(keys[4] + d), a4);                                              \
            a5 = _mm256_fmadd_ps(qd, LOAD8(keys[5] + d), a5);                                              \
            a6 = _mm256_fmadd_ps(qd, LOAD8(keys[6] + d), a6);                                              \
            a7 = _mm256_fmadd_ps(qd, LOAD8(keys[7] + d), a7);                                              \
        }                                                                                                  \
        _mm256_storeu_ps(lanes, _mm256_mul_ps(fold8(a0, a1, a2, a3, a4, a5, a6, a7), _mm256_set1_ps(scale))); \
    }
#define PV_FMA(T, LOAD8)                                                                                      \
    for (int j = 0; j < ctx; j++) {                                                                        \
        const __m256 p = _mm256_set1_ps(scores[j]);                                                        \
        const T *v = v_cache + ((int64_t)table[j / block_size] * block_size + j % block_size) * token_stride; \
        for (int d = 0; d < head_dim; d += 8) _mm256_storeu_ps(out + d, _mm256_fmadd_ps(p, LOAD8(v + d), _mm256_loadu_ps(out + d))); \
    }
#define VECTOR_HEAD(T) (head_dim % 8 == 0)
#else
#define VECTOR_HEAD(T) 0
#define DOT8(LOAD8)
#define PV_FMA(T, LOAD8)
#endif
static inline float bf16_value(uint16_t v) { return load_bf16(&v, 0); }
static inline float same(float v) { return v; }

#define DEFINE_ATTEND_HEAD(NAME, T, LOAD, LOAD8)                                                           \
    static void NAME(const float *q, const T *k_cache, const T *v_cache, const int32_t *table, int ctx,    \
                     int block_size, int64_t token_stride, int head_dim, float scale, float *scores,        \
                     float *out) {                                                                          \
        if (VECTOR_HEAD(T)) {                                                                               \
            for (int j0 = 0; j0 < ctx; j0 += 8) {                                                           \
                const T *keys[8];                                                                           \
                float lanes[8];                                                                             \
                for (int i = 0; i < 8; i++) {                                                               \
                    const int j = j0 + i < ctx ? j0 + i : j0;                                               \
                    keys[i] = k_cache + ((int64_t)table[j / block_size] * block_size + j % block_size) * token_stride; \
                }                                                                                           \
                DOT8(LOAD8)                                                                                 \
                memcpy(scores + j0, lanes, sizeof(float) * (size_t)(ctx - j0 < 8 ? ctx - j0 : 8));           \
            }                                                                                               \
        } else {                                                                                            \
            for (int j = 0; j < ctx; j++) {                                                                 \
                const T *k = k_cache + ((int64_t)table[j / block_size] * block_size + j % block_size) * token_stride; \
                float s = 0.0f;                                                                             \
                for (int d = 0; d < head_dim; d++) s = fmaf(q[d], LOAD(k[d]), s);                           \
                scores[j] = s * scale;                                                                      \
            }                                                                                               \
        }                                                                                                   \
        float top = scores[0];                                                                              \
        for (int j = 1; j < ctx; j++) top = scores[j] > top ? scores[j] : top;                              \
        const float inverse = 1.0f / exp_sum(scores, ctx, top);                                             \
        for (int d = 0; d < head_dim; d++) out[d] = 0.0f;                                                   \
        if (VECTOR_HEAD(T)) {                                                                               \
            PV_FMA(T, LOAD8)                                                                                 \
        } else {                                                                                            \
            for (int j = 0; j < ctx; j++) {                                                                 \
                const T *v = v_cache + ((int64_t)table[j / block_size] * block_size + j % block_size) * token_stride; \
                for (int d = 0; d < head_dim; d++) out[d] = fmaf(scores[j], LOAD(v[d]), out[d]);            \
            }                                                                                               \
        }                                                                                                   \
        for (int d = 0; d < head_dim; d++) out[d] *= inverse;                                               \
    }
DEFINE_ATTEND_HEAD(attend_head_f32, float, same, load8_f32_same)
DEFINE_ATTEND_HEAD(attend_head_bf16, uint16_t, bf16_value, load8_bf16)

/* Where one step's queries read: query r sees context_lens[r] keys through the block ids at
 * block_tables + table_starts[r]. The same as native.QueryRows. */
typedef struct {
    const int32_t *block_tables, *table_starts, *context_lens;
    const int64_t *slots;  /* each row's new key and value go here: block · block_size + offset */
    const float *cos, *sin; /* (rows, head_dim): RoPE at each row's position */
} Step;

typedef struct {
    int32_t dim, hidden, n_heads, n_kv, head_dim, block_size, n_layers, kv_bf16;
    float eps;
} Shape;

/* qkv (rows, (n_heads + 2·n_kv)·head_dim) → the step's keys and values into one layer's cache, then
 * out (rows, n_heads·head_dim) = attention of every query, rotated. */
static int attend_layer(float *qkv, void *k_cache, void *v_cache, const Step *step, const Shape *s, int rows,
                        float *out) {
    const int64_t width = (int64_t)(s->n_heads + 2 * s->n_kv) * s->head_dim, token_stride = (int64_t)s->n_kv * s->head_dim;
    for (int r = 0; r < rows; r++) {
        float *row = qkv + r * width;
        const float *c = step->cos + (int64_t)r * s->head_dim, *sn = step->sin + (int64_t)r * s->head_dim;
        for (int h = 0; h < s->n_heads + s->n_kv; h++) rope(row + (int64_t)h * s->head_dim, c, sn, s->head_dim);
        const float *k = row + (int64_t)s->n_heads * s->head_dim, *v = k + token_stride;
        const int64_t at = step->slots[r] * token_stride;
        if (s->kv_bf16) {
            store_bf16((uint16_t *)k_cache + at, k, (int)token_stride);
            store_bf16((uint16_t *)v_cache + at, v, (int)token_stride);
        } else {
            memcpy((float *)k_cache + at, k, sizeof(float) * (size_t)token_stride);
            memcpy((float *)v_cache + at, v, sizeof(float) * (size_t)token_stride);
        }
    }
    const int group = s->n_heads / s->n_kv;
    const float scale = 1.0f / sqrtf((float)s->head_dim);
    int failed = 0;
#pragma omp parallel reduction(| : failed)
    {
        int most = 0;
        for (int r = 0; r < rows; r++) most = step->context_lens[r] > most ? step->context_lens[r] : most;
        float *scores = malloc(sizeof(float) * ((size_t)most + 8));
        if (!scores) failed = 1;
#pragma omp for schedule(dynamic)
        for (int64_t item = 0; item < (int64_t)rows * s->n_heads; item++) {
            if (!scores) continue;
            const int r = (int)(item / s->n_heads), h = (int)(item % s->n_heads);
            const float *q = qkv + r * width + (int64_t)h * s->head_dim;
            const int32_t *table = step->block_tables + step->table_starts[r];
            const int64_t kv = (int64_t)(h / group) * s->head_dim;
            float *o = out + ((int64_t)r * s->n_heads + h) * s->head_dim;
            if (s->kv_bf16)
                attend_head_bf16(q, (const uint16_t *)k_cache + kv, (const uint16_t *)v_cache + kv, table,
                                 step->context_lens[r], s->block_size, token_stride, s->head_dim, scale, scores, o);
            else
                attend_head_f32(q, (const float *)k_cache + kv, (const float *)v_cache + kv, table,
                                step->context_lens[r], s->block_size, token_stride, s->head_dim, scale, scores, o);
        }
        free(scores);
    }
    return failed;
}

/* gate_up (rows, 2·hidden), gate first → out (rows, hidden) = silu(gate) · up; silu(g) = g / (1 + e^-g). */
static void silu_mul(const float *gate_up, int rows, int hidden, float *out) {
    for (int r = 0; r < rows; r++) {
        const float *g = gate_up + (int64_t)r * 2 * hidden, *u = g + hidden;
        float *o = out + (int64_t)r * hidden;
        int i = 0;
#ifdef __AVX2__
        for (; i + 8 <= hidden; i += 8) {
            const __m256 gi = _mm256_loadu_ps(g + i);
            const __m256 e = exp8(_mm256_min_ps(_mm256_sub_ps(_mm256_setzero_ps(), gi), _mm256_set1_ps(88.0f)));
            _mm256_storeu_ps(o + i, _mm256_mul_ps(_mm256_div_ps(gi, _mm256_add_ps(_mm256_set1_ps(1.0f), e)),
                                                  _mm256_loadu_ps(u + i)));
        }
#endif
        for (; i < hidden; i++) o[i] = g[i] / (1.0f + expf(fminf(-g[i], 88.0f))) * u[i];
    }
}

static void add(float *x, const float *delta, int64_t n) {
    for (int64_t i = 0; i < n; i++) x[i] += delta[i];
}

/* Every layer of one step: x (rows, dim) fp32, the residual stream, updated in place; out (rows, dim)
 * its final norm. The caches hold every layer, layer_stride elements apart. Returns nonzero where
 * memory ran out. */
int bi_layers(float *x, int rows, const Layer *layers, const float *final_norm, void *k_cache, void *v_cache,
              int64_t layer_stride, const Step *step, const Shape *s, float *out) {
    const int64_t width = (int64_t)(s->n_heads + 2 * s->n_kv) * s->head_dim, attended = (int64_t)s->n_heads * s->head_dim;
    const int64_t sizes[5] = {s->dim, width, attended, s->dim, 2 * (int64_t)s->hidden};
    int64_t total = 0;
    for (int i = 0; i < 5; i++) total += sizes[i] * rows;
    float *scratch = malloc(sizeof(float) * (size_t)(total + (int64_t)s->hidden * rows));
    if (!scratch) return 1;
    float *normed = scratch, *qkv = normed + sizes[0] * rows, *att = qkv + sizes[1] * rows;
    float *delta = att + sizes[2] * rows, *gate_up = delta + sizes[3] * rows, *act = gate_up + sizes[4] * rows;
    const size_t element = s->kv_bf16 ? 2 : 4;
    int failed = 0;
    for (int l = 0; l < s->n_layers && !failed; l++) {
        const Layer *layer = layers + l;
        char *k = (char *)k_cache + l * layer_stride * (int64_t)element, *v = (char *)v_cache + l * layer_stride * (int64_t)element;
        rms_norm(x, layer->attention_norm, rows, s->dim, s->eps, normed);
        failed |= bi_linear(&layer->wqkv, normed, rows, qkv);
        failed |= attend_layer(qkv, k, v, step, s, rows, att);
        failed |= bi_linear(&layer->wo, att, rows, delta);
        add(x, delta, (int64_t)rows * s->dim);
        rms_norm(x, layer->ffn_norm, rows, s->dim, s->eps, normed);
        failed |= bi_linear(&layer->w13, normed, rows, gate_up);
        silu_mul(gate_up, rows, s->hidden, act);
        failed |= bi_linear(&layer->w2, act, rows, delta);
        add(x, delta, (int64_t)rows * s->dim);
    }
    if (!failed) rms_norm(x, final_norm, rows, s->dim, s->eps, out);
    free(scratch);
    return failed;
}
