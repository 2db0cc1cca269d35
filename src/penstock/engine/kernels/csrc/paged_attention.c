/* Attention read straight from the paged KV cache, for every query of a step: decodes one query at
 * a time, a prefill chunk's queries in tiles (see "A prefill chunk's queries" below).
 *
 * The PyTorch path gathers each sequence's blocks into a contiguous copy and calls SDPA once per
 * sequence and layer: for a batch of decodes that is dozens of small ops per sequence and a copy of
 * every key and value. This reads each key and value once, in place, through the block table.
 * A block holds block_size tokens × n_kv heads × head_dim contiguously, so a sequence's keys are
 * read as a few long runs, which the CPU's prefetcher streams; every query head is served from
 * that one read (GQA included). A decode is bound by memory bandwidth, as decode attention must be.
 *
 * Sequences are spread over threads with OpenMP; the library links the libgomp that PyTorch
 * loaded, so both share one thread pool and torch.set_num_threads governs both.
 */
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define MAX_TILED_HEAD_DIM 256 /* the widest head the register-tiled paths take */

#include "vector_math.h"

#ifdef __AVX512F__
/* Ask for a sequence's next block while this one is worked on. Blocks lie anywhere in the cache, so
 * the hardware prefetcher, which follows a run only once it has seen it start, stalls at every block;
 * and a decode, one query against its whole context, has too little arithmetic to hide that. Into L2
 * (T2), not L1: a block is 96-192 lines, more than L1 can have in flight. On a 2-core Zen 4 EPYC,
 * 32 decodes over 64-700 keys, bf16 cache, took 22 ms a step (30 layers) instead of 29-31. */
#define PREFETCH_NEXT_BLOCK(cache, table, b, n_blocks)                                                 \
    if ((b) + 1 < (n_blocks)) {                                                                       \
        const char *next = (const char *)((cache) + (int64_t)(table)[(b) + 1] * block_size * token_stride); \
        for (int64_t o = 0; o < (int64_t)block_size * token_stride * (int64_t)sizeof(*(cache)); o += 64) \
            _mm_prefetch(next + o, _MM_HINT_T2);                                                      \
    }
#endif

/* One name per vector operation, so the register-tiled paths below are written once for AVX-512
 * (VL = 16 lanes, 32 registers) and AVX2 (VL = 8, 16 registers). */
#if defined(__AVX512F__)
typedef __m512 vec;
typedef __mmask16 vmask;
#define VL 16
#define NV_MOST 4
#define vload _mm512_loadu_ps
#define vstore _mm512_storeu_ps
#define vset1 _mm512_set1_ps
#define vzero _mm512_setzero_ps
#define vfma _mm512_fmadd_ps
#define vsub _mm512_sub_ps
#define vadd _mm512_add_ps
#define vmul _mm512_mul_ps
#define vdiv _mm512_div_ps
#define vexp exp16
#define vload_f32 load16_f32
#define vload_bf16 load16_bf16
static inline vmask vbelow(const int32_t *limit, int j) { /* lanes whose limit is above j */
    return _mm512_cmpgt_epi32_mask(_mm512_loadu_si512(limit), _mm512_set1_epi32(j));
}
static inline vec vmax_where(vmask m, vec a, vec b) { return _mm512_mask_max_ps(a, m, a, b); }
static inline vec vkeep(vmask m, vec a) { return _mm512_maskz_mov_ps(m, a); }
#elif defined(__AVX2__)
typedef __m256 vec;
typedef __m256 vmask;
#define VL 8
#define NV_MOST 2
#define vload _mm256_loadu_ps
#define vstore _mm256_storeu_ps
#define vset1 _mm256_set1_ps
#define vzero _mm256_setzero_ps
#define vfma _mm256_fmadd_ps
#define vsub _mm256_sub_ps
#define vadd _mm256_add_ps
#define vmul _mm256_mul_ps
#define vdiv _mm256_div_ps
#define vexp exp8
#define vload_f32 load8_f32
#define vload_bf16 load8_bf16
static inline vmask vbelow(const int32_t *limit, int j) {
    const __m256i lim = _mm256_loadu_si256((const __m256i *)limit);
    return _mm256_castsi256_ps(_mm256_cmpgt_epi32(lim, _mm256_set1_epi32(j)));
}
static inline vec vmax_where(vmask m, vec a, vec b) { return _mm256_blendv_ps(a, _mm256_max_ps(a, b), m); }
static inline vec vkeep(vmask m, vec a) { return _mm256_and_ps(m, a); }
#endif

/* q·k over head_dim. The sum stays in a vector register until one final reduction; the compiler's
 * own vectorization spills it to the stack for every key, which costs more than the multiplications.
 * head_dim is a multiple of 16 in every Llama-family model; others take the AVX2 or portable loop. */
#ifdef __AVX512F__
#define DOT_WIDE(T, LOAD16)                                                                          \
    if (n % 16 == 0) {                                                                               \
        __m512 acc = _mm512_setzero_ps();                                                            \
        for (int d = 0; d < n; d += 16) acc = _mm512_fmadd_ps(_mm512_loadu_ps(q + d), LOAD16(k + d), acc); \
        return _mm512_reduce_add_ps(acc);                                                            \
    }
#else
#define DOT_WIDE(T, LOAD16)
#endif
#ifdef __AVX2__
#define DOT_AVX2(LOAD8)                                                                              \
    if (n % 8 == 0) {                                                                                \
        __m256 acc = _mm256_setzero_ps();                                                            \
        for (int d = 0; d < n; d += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(q + d), LOAD8(k + d), acc); \
        return hsum(acc);                                                                            \
    }
#else
#define DOT_AVX2(LOAD8)
#endif
#define DEFINE_DOT(NAME, T, LOAD, LOAD8, LOAD16)                                                     \
    static inline float NAME(const float *q, const T *k, int n) {                                    \
        DOT_WIDE(T, LOAD16)                                                                          \
        DOT_AVX2(LOAD8)                                                                              \
        float s = 0.0f;                                                                              \
        for (int d = 0; d < n; d++) s += q[d] * LOAD(k, d);                                          \
        return s;                                                                                    \
    }
DEFINE_DOT(dot_f32, float, load_f32, load8_f32, load16_f32)
DEFINE_DOT(dot_bf16, uint16_t, load_bf16, load8_bf16, load16_bf16)

/* scores[h][j] = q_h·k_j · scale for every head and key. With AVX-512, sixteen keys at a time: each
 * key's products stay in a register of 16 partial sums, and one transpose-and-add turns the sixteen
 * registers into one register of sixteen scores (about 3 operations per score, against 8 for a
 * reduction per key). Keys past the end repeat the first; their lanes are not stored. A bf16 cache's
 * sixteen keys are widened to fp32 once per KV head, into `tile` (L1), not once per query head: with
 * GQA, widening for every head cost more than the multiplications. */
#ifdef __AVX512F__
static inline __m512 sum16x16(__m512 v[16]) {
    __m512 a[8], b[4];
    for (int i = 0; i < 8; i++)
        a[i] = _mm512_add_ps(_mm512_unpacklo_ps(v[2 * i], v[2 * i + 1]), _mm512_unpackhi_ps(v[2 * i], v[2 * i + 1]));
    for (int i = 0; i < 4; i++)
        b[i] = _mm512_add_ps(_mm512_shuffle_ps(a[2 * i], a[2 * i + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                             _mm512_shuffle_ps(a[2 * i], a[2 * i + 1], _MM_SHUFFLE(3, 2, 3, 2)));
    /* b[i]'s 128-bit lanes each hold partial sums of v[4i..4i+3]; fold the lanes pairwise, twice */
    const __m512 c0 = _mm512_add_ps(_mm512_shuffle_f32x4(b[0], b[1], 0x88), _mm512_shuffle_f32x4(b[0], b[1], 0xDD));
    const __m512 c1 = _mm512_add_ps(_mm512_shuffle_f32x4(b[2], b[3], 0x88), _mm512_shuffle_f32x4(b[2], b[3], 0xDD));
    return _mm512_add_ps(_mm512_shuffle_f32x4(c0, c1, 0x88), _mm512_shuffle_f32x4(c0, c1, 0xDD));
}
#define SCORES_WIDE(T, LOAD16, WIDEN)                                                                \
    if (head_dim % 16 == 0 && head_dim <= MAX_TILED_HEAD_DIM) {                                      \
        float tile[16 * MAX_TILED_HEAD_DIM];                                                         \
        for (int j0 = 0; j0 < ctx; j0 += 16) {                                                       \
            const int n = ctx - j0 < 16 ? ctx - j0 : 16;                                             \
            const __mmask16 lanes = n == 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << n) - 1);        \
            if (j0 % block_size == 0) PREFETCH_NEXT_BLOCK(k_cache, table, j0 / block_size, (ctx + block_size - 1) / block_size) \
            const T *keys[16];                                                                       \
            for (int t = 0; t < 16; t++) {                                                           \
                const int j = j0 + (t < n ? t : 0);                                                  \
                keys[t] = k_cache + ((int64_t)table[j / block_size] * block_size + j % block_size) * token_stride; \
            }                                                                                        \
            for (int g = 0; g < n_heads / group; g++) {                                              \
                const int64_t head = (int64_t)g * head_dim;                                          \
                if (WIDEN)                                                                           \
                    for (int t = 0; t < 16; t++)                                                     \
                        for (int d = 0; d < head_dim; d += 16)                                       \
                            _mm512_storeu_ps(tile + t * head_dim + d, LOAD16(keys[t] + head + d));   \
                for (int h = g * group; h < (g + 1) * group; h++) {                                  \
                    const float *qh = q + (int64_t)h * head_dim;                                     \
                    __m512 acc[16];                                                                  \
                    for (int t = 0; t < 16; t++) acc[t] = _mm512_setzero_ps();                       \
                    for (int d = 0; d < head_dim; d += 16) {                                         \
                        const __m512 qd = _mm512_loadu_ps(qh + d);                                   \
                        for (int t = 0; t < 16; t++)                                                 \
                            acc[t] = _mm512_fmadd_ps(                                                \
                                qd, WIDEN ? _mm512_loadu_ps(tile + t * head_dim + d) : LOAD16(keys[t] + head + d), \
                                acc[t]);                                                             \
                    }                                                                                \
                    _mm512_mask_storeu_ps(scores + (int64_t)h * ctx + j0, lanes,                     \
                                          _mm512_mul_ps(sum16x16(acc), _mm512_set1_ps(scale)));      \
                }                                                                                    \
            }                                                                                        \
        }                                                                                            \
        return;                                                                                      \
    }
#else
#define SCORES_WIDE(T, LOAD16, WIDEN)
#endif
#define DEFINE_SCORES(NAME, T, DOT, LOAD16, WIDEN)                                                   \
    static void NAME(const float *q, const T *k_cache, const int32_t *table, int ctx, int n_heads, int group, \
                     int head_dim, int block_size, int64_t token_stride, float scale, float *scores) { \
        SCORES_WIDE(T, LOAD16, WIDEN)                                                                \
        for (int j = 0, b = 0; j < ctx; b++) { /* a block's keys are one contiguous run */          \
            const T *k = k_cache + (int64_t)table[b] * block_size * token_stride;                    \
            for (int t = 0; t < block_size && j < ctx; t++, j++, k += token_stride)                  \
                for (int h = 0; h < n_heads; h++)                                                    \
                    scores[(int64_t)h * ctx + j] =                                                   \
                        DOT(q + (int64_t)h * head_dim, k + (int64_t)(h / group) * head_dim, head_dim) * scale; \
        }                                                                                            \
    }
DEFINE_SCORES(scores_f32, float, dot_f32, load16_f32, 0)
DEFINE_SCORES(scores_bf16, uint16_t, dot_bf16, load16_bf16, 1)

/* out_h = Σ_j p_h[j]·v_j for every head. With AVX-512 and head_dim a multiple of 64, block by block:
 * each block's values are read once, from memory, for every head, and the heads' sums go through L1
 * between blocks. Within a block, each 64 output lanes of a GQA group of up to four heads (the group
 * size a compile-time constant, so the accumulators stay in registers) take each value loaded and
 * widened once. Without AVX-512 the accumulators live in `acc` and go through L1 for every key. */
#ifdef __AVX512F__
#define PV_GROUP(T, LOAD16, G)                                                                       \
    memset(acc, 0, sizeof(float) * (size_t)n_heads * (size_t)head_dim);                             \
    for (int j0 = 0, b = 0; j0 < ctx; b++, j0 += block_size) {                                       \
        const int n = ctx - j0 < block_size ? ctx - j0 : block_size;                                 \
        const T *vb = v_cache + (int64_t)table[b] * block_size * token_stride;                       \
        PREFETCH_NEXT_BLOCK(v_cache, table, b, (ctx + block_size - 1) / block_size) \
        for (int g = 0; g < n_heads / (G); g++) {                                                    \
            const float *pg = scores + (int64_t)g * (G) * ctx + j0;                                  \
            for (int d0 = 0; d0 < head_dim; d0 += 64) {                                              \
                float *ag = acc + (int64_t)g * (G) * head_dim + d0;                                  \
                __m512 a[G][4];                                                                      \
                for (int i = 0; i < (G); i++)                                                        \
                    for (int c = 0; c < 4; c++) a[i][c] = _mm512_loadu_ps(ag + (int64_t)i * head_dim + 16 * c); \
                const T *v = vb + (int64_t)(g * (G) / group) * head_dim + d0;                        \
                for (int t = 0; t < n; t++, v += token_stride) {                                     \
                    const __m512 v0 = LOAD16(v), v1 = LOAD16(v + 16), v2 = LOAD16(v + 32), v3 = LOAD16(v + 48); \
                    for (int i = 0; i < (G); i++) {                                                  \
                        const __m512 p = _mm512_set1_ps(pg[(int64_t)i * ctx + t]);                   \
                        a[i][0] = _mm512_fmadd_ps(p, v0, a[i][0]);                                   \
                        a[i][1] = _mm512_fmadd_ps(p, v1, a[i][1]);                                   \
                        a[i][2] = _mm512_fmadd_ps(p, v2, a[i][2]);                                   \
                        a[i][3] = _mm512_fmadd_ps(p, v3, a[i][3]);                                   \
                    }                                                                                \
                }                                                                                    \
                for (int i = 0; i < (G); i++)                                                        \
                    for (int c = 0; c < 4; c++) _mm512_storeu_ps(ag + (int64_t)i * head_dim + 16 * c, a[i][c]); \
            }                                                                                        \
        }                                                                                            \
    }
#define PV_WIDE(T, LOAD16)                                                                           \
    if (head_dim % 64 == 0) {                                                                        \
        switch (group) {                                                                             \
        case 2: PV_GROUP(T, LOAD16, 2) return;                                                       \
        case 3: PV_GROUP(T, LOAD16, 3) return;                                                       \
        case 4: PV_GROUP(T, LOAD16, 4) return;                                                       \
        default: PV_GROUP(T, LOAD16, 1) return; /* one head at a time: the values' KV head from g / group */ \
        }                                                                                            \
    }
#else
#define PV_WIDE(T, LOAD16)
#endif
#define DEFINE_PV(NAME, T, LOAD, LOAD16)                                                             \
    static void NAME(const float *scores, const T *v_cache, const int32_t *table, int ctx, int n_heads, \
                     int group, int head_dim, int block_size, int64_t token_stride, float *acc) {    \
        PV_WIDE(T, LOAD16)                                                                           \
        memset(acc, 0, sizeof(float) * (size_t)n_heads * (size_t)head_dim);                         \
        for (int j = 0; j < ctx; j++) {                                                              \
            const T *v = v_cache + ((int64_t)table[j / block_size] * block_size + j % block_size) * token_stride; \
            for (int h = 0; h < n_heads; h++) {                                                      \
                const float p = scores[(int64_t)h * ctx + j];                                        \
                const T *vh = v + (int64_t)(h / group) * head_dim;                                   \
                float *ah = acc + (int64_t)h * head_dim;                                             \
                _Pragma("omp simd")                                                                  \
                for (int d = 0; d < head_dim; d++) ah[d] += p * LOAD(vh, d);                         \
            }                                                                                        \
        }                                                                                            \
    }
DEFINE_PV(pv_f32, float, load_f32, load16_f32)
DEFINE_PV(pv_bf16, uint16_t, load_bf16, load16_bf16)

/* Softmax in place, the maximum subtracted for range; with one exponential per key and head, e^x is
 * vector_math.h's (libm's scalar expf cost more than the dot products). */
static void softmax(float *s, int n) {
    float top = s[0];
    for (int j = 1; j < n; j++) top = s[j] > top ? s[j] : top;
    float total = 0.0f;
    int j = 0;
#if defined(__AVX512F__)
    const __m512 shift = _mm512_set1_ps(top);
    __m512 sum = _mm512_setzero_ps();
    for (; j < n; j += 16) {
        const __mmask16 lanes = n - j >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (n - j)) - 1);
        const __m512 e = exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(lanes, s + j), shift));
        _mm512_mask_storeu_ps(s + j, lanes, e);
        sum = _mm512_mask_add_ps(sum, lanes, sum, e);
    }
    total = _mm512_reduce_add_ps(sum);
#elif defined(__AVX2__)
    const __m256 shift = _mm256_set1_ps(top);
    __m256 sum = _mm256_setzero_ps();
    for (; j + 8 <= n; j += 8) {
        const __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(s + j), shift));
        _mm256_storeu_ps(s + j, e);
        sum = _mm256_add_ps(sum, e);
    }
    total = hsum(sum);
#endif
    for (; j < n; j++) {
        s[j] = expf(s[j] - top);
        total += s[j];
    }
    const float inverse = 1.0f / total;
    for (j = 0; j < n; j++) s[j] *= inverse;
}

/* A prefill chunk's queries, many at a time. Attending one query at a time, each query reads its
 * whole context again and every score is a head_dim-long reduction. Here the (query, head) rows of
 * consecutive queries that share a KV head go together, as in a GEMM: the tile's queries are
 * transposed once (qt: head_dim × TILE_ROWS) and each key is broadcast against TILE_ROWS / VL
 * registers of queries, so scores come out VL rows to a register;
 * softmax runs VL rows to a register too (each row's causal limit is a lane compare); probabilities
 * times values keeps four rows × NV_MOST registers of output lanes in registers for the whole context.
 * The scores stay transposed (st: keys × TILE_ROWS), so no step needs a horizontal sum. The same code
 * serves AVX-512 (VL = 16, 32 registers) and AVX2 (VL = 8, 16 registers) through the few v* names.
 * On a 2-core Zen 3 (AVX2), SmolLM2's attention over a 512-token chunk took 5-9 ms a layer tiled and
 * 12-21 ms one query at a time (SDPA on a gathered copy: 7-12 ms). */

#ifdef VL
#define TILE_ROWS (4 * VL)
#define TILED(head_dim, group) ((head_dim) % VL == 0 && (head_dim) <= MAX_TILED_HEAD_DIM && TILE_ROWS / (group) >= 2)

/* st[j][m] = keys[j]·qt[:, m] for NJ keys and MV registers of rows. */
#define DEFINE_TILE_QK(MV, NJ)                                                                       \
    static void tile_qk_##MV(const float *qt, const float *const *keys, int head_dim, float *st) {   \
        vec acc[NJ][MV];                                                                             \
        for (int j = 0; j < (NJ); j++)                                                               \
            for (int v = 0; v < (MV); v++) acc[j][v] = vzero();                                      \
        for (int d = 0; d < head_dim; d++) {                                                         \
            vec qd[MV];                                                                              \
            for (int v = 0; v < (MV); v++) qd[v] = vload(qt + (int64_t)d * TILE_ROWS + VL * v);      \
            for (int j = 0; j < (NJ); j++) {                                                         \
                const vec kj = vset1(keys[j][d]);                                                    \
                for (int v = 0; v < (MV); v++) acc[j][v] = vfma(kj, qd[v], acc[j][v]);               \
            }                                                                                        \
        }                                                                                            \
        for (int j = 0; j < (NJ); j++)                                                               \
            for (int v = 0; v < (MV); v++) vstore(st + (int64_t)j * TILE_ROWS + VL * v, acc[j][v]);  \
    }
/* keys per call: the accumulators take about three quarters of the vector registers */
#if VL == 16
DEFINE_TILE_QK(1, 16)
DEFINE_TILE_QK(2, 12)
DEFINE_TILE_QK(3, 8)
DEFINE_TILE_QK(4, 6)
static const int TILE_KEYS[5] = {0, 16, 12, 8, 6};
#else
DEFINE_TILE_QK(1, 12)
DEFINE_TILE_QK(2, 6)
DEFINE_TILE_QK(3, 4)
DEFINE_TILE_QK(4, 3)
static const int TILE_KEYS[5] = {0, 12, 6, 4, 3};
#endif

/* Each row's softmax over its own keys (row m sees limit[m]); exponentials left in st, 1/sum in inv. */
static void tile_softmax(float *st, const int32_t *limit, int mv, int ctx, float *inv) {
    for (int v = 0; v < mv; v++) {
        vec top = vset1(-INFINITY), sum = vzero();
        for (int j = 0; j < ctx; j++)
            top = vmax_where(vbelow(limit + VL * v, j), top, vload(st + (int64_t)j * TILE_ROWS + VL * v));
        for (int j = 0; j < ctx; j++) {
            float *s = st + (int64_t)j * TILE_ROWS + VL * v;
            const vec e = vkeep(vbelow(limit + VL * v, j), vexp(vsub(vload(s), top)));
            vstore(s, e);
            sum = vadd(sum, e);
        }
        vstore(inv + VL * v, vdiv(vset1(1.0f), sum));
    }
}

/* out rows m0..m0+3 (those below n_rows), NV registers of lanes from d0: Σ_j st[j][m]·v_j, times inv[m]. */
#define DEFINE_TILE_PV(NAME, T, LOAD, NV)                                                            \
    static void NAME(const float *st, const float *inv, const T *v_cache, const int32_t *table, int ctx, \
                     int block_size, int64_t token_stride, int64_t head_offset, int d0, int m0,      \
                     int n_rows, float *const *out_rows) {                                           \
        vec acc[4][NV];                                                                              \
        for (int r = 0; r < 4; r++)                                                                  \
            for (int n = 0; n < (NV); n++) acc[r][n] = vzero();                                      \
        for (int j = 0, b = 0; j < ctx; b++) {                                                       \
            const T *v = v_cache + (int64_t)table[b] * block_size * token_stride + head_offset + d0; \
            for (int t = 0; t < block_size && j < ctx; t++, j++, v += token_stride) {                \
                vec vv[NV];                                                                          \
                for (int n = 0; n < (NV); n++) vv[n] = LOAD(v + VL * n);                             \
                const float *p = st + (int64_t)j * TILE_ROWS + m0;                                   \
                for (int r = 0; r < 4; r++) {                                                        \
                    const vec pr = vset1(p[r]);                                                      \
                    for (int n = 0; n < (NV); n++) acc[r][n] = vfma(pr, vv[n], acc[r][n]);           \
                }                                                                                    \
            }                                                                                        \
        }                                                                                            \
        for (int r = 0; r < 4 && m0 + r < n_rows; r++)                                               \
            for (int n = 0; n < (NV); n++)                                                           \
                vstore(out_rows[m0 + r] + d0 + VL * n, vmul(acc[r][n], vset1(inv[m0 + r])));         \
    }
typedef uint16_t bf16;
DEFINE_TILE_PV(tile_pv_float_1, float, vload_f32, 1)
DEFINE_TILE_PV(tile_pv_float_2, float, vload_f32, 2)
DEFINE_TILE_PV(tile_pv_bf16_1, bf16, vload_bf16, 1)
DEFINE_TILE_PV(tile_pv_bf16_2, bf16, vload_bf16, 2)
#if NV_MOST == 4
DEFINE_TILE_PV(tile_pv_float_3, float, vload_f32, 3)
DEFINE_TILE_PV(tile_pv_float_4, float, vload_f32, 4)
DEFINE_TILE_PV(tile_pv_bf16_3, bf16, vload_bf16, 3)
DEFINE_TILE_PV(tile_pv_bf16_4, bf16, vload_bf16, 4)
#define TILE_PV_WIDE(T, ARGS)                                                                        \
    case 3: tile_pv_##T##_3 ARGS; break;                                                             \
    case 4: tile_pv_##T##_4 ARGS; break;
#else
#define TILE_PV_WIDE(T, ARGS)
#endif
#define TILE_PV(T, nv, ARGS)                                                                         \
    switch (nv) {                                                                                    \
    case 1: tile_pv_##T##_1 ARGS; break;                                                             \
    case 2: tile_pv_##T##_2 ARGS; break;                                                             \
    TILE_PV_WIDE(T, ARGS)                                                                            \
    }

/* The tile of nq consecutive queries from q (query i sees c0 + i keys), every KV head in turn. A bf16
 * cache's keys are widened once per call into `tile`. Returns nonzero if malloc failed. */
#define DEFINE_TILE(NAME, T, LOAD, WIDEN)                                                            \
    static int NAME(const float *q, const T *k_cache, const T *v_cache, const int32_t *table, int nq, int c0, \
                    int n_heads, int group, int head_dim, int block_size, int64_t token_stride, float scale, \
                    float *out) {                                                                    \
        const int ctx = c0 + nq - 1, n_rows = nq * group, mv = (n_rows + VL - 1) / VL, nj = TILE_KEYS[mv]; \
        const int64_t query_stride = (int64_t)n_heads * head_dim;                                    \
        float *qt = malloc(sizeof(float) * ((size_t)head_dim * TILE_ROWS + (size_t)(ctx + 16) * TILE_ROWS)); \
        if (!qt) return 1;                                                                           \
        memset(qt, 0, sizeof(float) * (size_t)head_dim * TILE_ROWS); /* rows past the tile's: zeros */ \
        float *st = qt + (int64_t)head_dim * TILE_ROWS, tile[16 * MAX_TILED_HEAD_DIM], inv[TILE_ROWS]; \
        int32_t limit[TILE_ROWS];                                                                    \
        float *out_rows[TILE_ROWS];                                                                  \
        for (int m = 0; m < TILE_ROWS; m++) limit[m] = m < n_rows ? c0 + m / group : ctx;            \
        for (int g = 0; g < n_heads / group; g++) {                                                  \
            const int64_t head_offset = (int64_t)g * head_dim;                                       \
            for (int m = 0; m < n_rows; m++) {                                                       \
                const int64_t at = (int64_t)(m / group) * query_stride + (int64_t)(g * group + m % group) * head_dim; \
                for (int d = 0; d < head_dim; d++) qt[(int64_t)d * TILE_ROWS + m] = q[at + d] * scale; \
                out_rows[m] = out + at;                                                              \
            }                                                                                        \
            for (int j0 = 0; j0 < ctx; j0 += nj) {                                                   \
                const float *keys[16];                                                               \
                for (int t = 0; t < nj; t++) {                                                       \
                    const int j = j0 + t < ctx ? j0 + t : j0; /* past the end: any key, masked later */ \
                    const T *k = k_cache + head_offset                                               \
                                 + ((int64_t)table[j / block_size] * block_size + j % block_size) * token_stride; \
                    keys[t] = (const float *)k;                                                      \
                    if (WIDEN) {                                                                     \
                        for (int d = 0; d < head_dim; d += VL) vstore(tile + t * head_dim + d, LOAD(k + d)); \
                        keys[t] = tile + t * head_dim;                                               \
                    }                                                                                \
                }                                                                                    \
                float *s = st + (int64_t)j0 * TILE_ROWS;                                             \
                switch (mv) {                                                                        \
                case 1: tile_qk_1(qt, keys, head_dim, s); break;                                     \
                case 2: tile_qk_2(qt, keys, head_dim, s); break;                                     \
                case 3: tile_qk_3(qt, keys, head_dim, s); break;                                     \
                default: tile_qk_4(qt, keys, head_dim, s); break;                                    \
                }                                                                                    \
            }                                                                                        \
            tile_softmax(st, limit, mv, ctx, inv);                                                   \
            for (int d0 = 0; d0 < head_dim; d0 += VL * NV_MOST) {                                    \
                const int nv = head_dim - d0 >= VL * NV_MOST ? NV_MOST : (head_dim - d0) / VL;       \
                for (int m0 = 0; m0 < n_rows; m0 += 4)                                               \
                    TILE_PV(T, nv, (st, inv, v_cache, table, ctx, block_size, token_stride, head_offset, d0, m0, \
                                    n_rows, out_rows))                                               \
            }                                                                                        \
        }                                                                                            \
        free(qt);                                                                                    \
        return 0;                                                                                    \
    }
DEFINE_TILE(tile_f32, float, vload_f32, 0)
DEFINE_TILE(tile_bf16, bf16, vload_bf16, 1)
#else /* no vector unit: every row goes alone, and the tiles are never called */
#define TILED(head_dim, group) 0
#define TILE_ROWS 1
#define tile_f32(...) 1
#define tile_bf16(...) 1
#endif

/* q, out: (tokens, n_heads, head_dim), fp32; row r's query is token rows[r].
 * k_cache, v_cache: one layer, (num_blocks, block_size, n_kv, head_dim).
 * Row r sees context_lens[r] keys, through the block ids at block_tables + table_starts[r].
 * Consecutive rows of one prefill chunk (consecutive tokens, one table, one more key each) go through
 * the tiled path together; decodes and everything else one row at a time.
 * Returns nonzero if scratch memory could not be allocated. */
static int one_tile(int r, int n_rows, const int32_t *rows, const int32_t *table_starts, const int32_t *context_lens,
                    int most) {
    int n = 1;
    while (n < most && r + n < n_rows && rows[r + n] == rows[r] + n && table_starts[r + n] == table_starts[r]
           && context_lens[r + n] == context_lens[r] + n)
        n++;
    return n;
}

#define DEFINE_ATTEND(NAME, T, SCORES, PV, TILE)                                                                 \
    int NAME(const float *q, const T *k_cache, const T *v_cache, const int32_t *rows,                     \
             const int32_t *block_tables, const int32_t *table_starts, const int32_t *context_lens,       \
             int n_rows, int n_heads, int n_kv, int head_dim, int block_size, float scale, float *out) {  \
        const int group = n_heads / n_kv;                                                                 \
        const int64_t token_stride = (int64_t)n_kv * head_dim;                                            \
        const int64_t query_stride = (int64_t)n_heads * head_dim;                                         \
        const int most = TILED(head_dim, group) ? TILE_ROWS / group : 1;                                  \
        int32_t *firsts = malloc(sizeof(int32_t) * 2 * (size_t)n_rows), n_tiles = 0, failed = 0;          \
        if (!firsts) return 1;                                                                            \
        int32_t *sizes = firsts + n_rows;                                                                 \
        for (int r = 0; r < n_rows; r += sizes[n_tiles++]) {                                              \
            firsts[n_tiles] = r;                                                                          \
            sizes[n_tiles] = one_tile(r, n_rows, rows, table_starts, context_lens, most);                 \
        }                                                                                                 \
        /* Fewer tiles than threads (single-stream decode): each KV head's GQA group is its own work item,  \
         * so no thread idles; a decode of SmolLM2's 3 KV heads took 2/3 the time on 2 cores. */         \
        const int split = n_tiles < omp_get_max_threads() ? n_kv : 1, heads = n_heads / split;            \
        _Pragma("omp parallel for schedule(dynamic)")                                                     \
        for (int item = 0; item < n_tiles * split; item++) {                                              \
            const int i = item / split, part = item % split, r = firsts[i], ctx = context_lens[r];        \
            const int32_t *table = block_tables + table_starts[r];                                        \
            const float *qr = q + (int64_t)rows[r] * query_stride;                                        \
            float *outr = out + (int64_t)rows[r] * query_stride;                                          \
            if (sizes[i] > 1) {                                                                           \
                if (part == 0 && TILE(qr, k_cache, v_cache, table, sizes[i], ctx, n_heads, group, head_dim, \
                                      block_size, token_stride, scale, outr))                             \
                    failed = 1;                                                                           \
                continue;                                                                                 \
            }                                                                                             \
            float *scores = malloc(sizeof(float) * (size_t)heads * (size_t)ctx); /* (heads, ctx) */       \
            if (!scores) {                                                                                \
                failed = 1;                                                                               \
                continue;                                                                                 \
            }                                                                                             \
            const int64_t first_head = (int64_t)part * heads, kv = first_head / group * head_dim;         \
            SCORES(qr + first_head * head_dim, k_cache + kv, table, ctx, heads, group, head_dim, block_size, \
                   token_stride, scale, scores);                                                          \
            for (int h = 0; h < heads; h++) softmax(scores + (int64_t)h * ctx, ctx);                        \
            PV(scores, v_cache + kv, table, ctx, heads, group, head_dim, block_size, token_stride,        \
               outr + first_head * head_dim);                                                             \
            free(scores);                                                                                 \
        }                                                                                                 \
        free(firsts);                                                                                     \
        return failed;                                                                                    \
    }

DEFINE_ATTEND(paged_decode_f32, float, scores_f32, pv_f32, tile_f32)
DEFINE_ATTEND(paged_decode_bf16, uint16_t, scores_bf16, pv_bf16, tile_bf16)
