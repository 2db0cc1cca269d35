/* Decode attention read straight from the paged KV cache: one query token per sequence.
 *
 * The PyTorch path gathers each sequence's blocks into a contiguous copy and calls SDPA once per
 * sequence and layer: for a batch of decodes that is dozens of small ops per sequence and a copy of
 * every key and value. This reads each key and value once, in place, through the block table.
 * A block holds block_size tokens × n_kv heads × head_dim contiguously, so a sequence's keys are
 * read as a few long runs, which the CPU's prefetcher streams; every query head is served from
 * that one read (GQA included). It is bound by memory bandwidth, as decode attention must be.
 *
 * Sequences are spread over threads with OpenMP; the library links the libgomp that PyTorch
 * loaded, so both share one thread pool and torch.set_num_threads governs both.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static inline float load_f32(const float *p, int i) { return p[i]; }
static inline float load_bf16(const uint16_t *p, int i) {
    uint32_t bits = (uint32_t)p[i] << 16;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

/* q·k over head_dim. With AVX2 the sum stays in a vector register until one final reduction; the
 * compiler's own vectorization spills it to the stack for every key, which costs more than the
 * multiplications. head_dim is a multiple of 8 in every Llama-family model; others take the loop. */
#ifdef __AVX2__
#include <immintrin.h>
static inline float hsum(__m256 v) {
    __m128 x = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    x = _mm_add_ps(x, _mm_movehl_ps(x, x));
    return _mm_cvtss_f32(_mm_add_ss(x, _mm_movehdup_ps(x)));
}
static inline __m256 load8_f32(const float *p) { return _mm256_loadu_ps(p); }
static inline __m256 load8_bf16(const uint16_t *p) {
    __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16));
}
#define DEFINE_DOT(NAME, T, LOAD, LOAD8)                                             \
    static inline float NAME(const float *q, const T *k, int n) {                    \
        if (n % 8) {                                                                 \
            float s = 0.0f;                                                          \
            for (int d = 0; d < n; d++) s += q[d] * LOAD(k, d);                      \
            return s;                                                                \
        }                                                                            \
        __m256 acc = _mm256_setzero_ps();                                            \
        for (int d = 0; d < n; d += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(q + d), LOAD8(k + d), acc); \
        return hsum(acc);                                                            \
    }
#else
#define DEFINE_DOT(NAME, T, LOAD, LOAD8)                                             \
    static inline float NAME(const float *q, const T *k, int n) {                    \
        float s = 0.0f;                                                              \
        _Pragma("omp simd reduction(+ : s)")                                         \
        for (int d = 0; d < n; d++) s += q[d] * LOAD(k, d);                          \
        return s;                                                                    \
    }
#endif
DEFINE_DOT(dot_f32, float, load_f32, load8_f32)
DEFINE_DOT(dot_bf16, uint16_t, load_bf16, load8_bf16)

/* q, out: (tokens, n_heads, head_dim), fp32; row r's query is token rows[r].
 * k_cache, v_cache: one layer, (num_blocks, block_size, n_kv, head_dim).
 * Row r sees context_lens[r] keys, through the block ids at block_tables + table_starts[r].
 * Returns nonzero if scratch memory could not be allocated. */
#define DEFINE_DECODE(NAME, T, LOAD, DOT)                                                                     \
    int NAME(const float *q, const T *k_cache, const T *v_cache, const int32_t *rows,                     \
             const int32_t *block_tables, const int32_t *table_starts, const int32_t *context_lens,       \
             int n_rows, int n_heads, int n_kv, int head_dim, int block_size, float scale, float *out) {  \
        const int group = n_heads / n_kv;                                                                 \
        const int64_t token_stride = (int64_t)n_kv * head_dim;                                            \
        int failed = 0;                                                                                   \
        _Pragma("omp parallel for schedule(dynamic)")                                                     \
        for (int r = 0; r < n_rows; r++) {                                                                \
            const int ctx = context_lens[r];                                                              \
            const int32_t *table = block_tables + table_starts[r];                                        \
            const float *qr = q + (int64_t)rows[r] * n_heads * head_dim;                                  \
            float *acc = out + (int64_t)rows[r] * n_heads * head_dim;                                     \
            float *scores = malloc(sizeof(float) * (size_t)n_heads * (size_t)ctx); /* (n_heads, ctx) */  \
            if (!scores) {                                                                                \
                failed = 1;                                                                               \
                continue;                                                                                 \
            }                                                                                             \
            for (int j = 0; j < ctx; j++) {                                                               \
                const T *k = k_cache + ((int64_t)table[j / block_size] * block_size + j % block_size)     \
                                           * token_stride;                                                \
                for (int h = 0; h < n_heads; h++) {                                                       \
                    const float *qh = qr + (int64_t)h * head_dim;                                         \
                    const T *kh = k + (int64_t)(h / group) * head_dim;                                    \
                    scores[(int64_t)h * ctx + j] = DOT(qh, kh, head_dim) * scale;                         \
                }                                                                                         \
            }                                                                                             \
            for (int h = 0; h < n_heads; h++) { /* softmax, max subtracted for range */                   \
                float *sh = scores + (int64_t)h * ctx;                                                    \
                float top = sh[0];                                                                        \
                for (int j = 1; j < ctx; j++) top = sh[j] > top ? sh[j] : top;                            \
                float total = 0.0f;                                                                       \
                for (int j = 0; j < ctx; j++) {                                                           \
                    sh[j] = expf(sh[j] - top);                                                            \
                    total += sh[j];                                                                       \
                }                                                                                         \
                const float inverse = 1.0f / total;                                                       \
                for (int j = 0; j < ctx; j++) sh[j] *= inverse;                                           \
            }                                                                                             \
            memset(acc, 0, sizeof(float) * (size_t)n_heads * (size_t)head_dim);                           \
            for (int j = 0; j < ctx; j++) {                                                               \
                const T *v = v_cache + ((int64_t)table[j / block_size] * block_size + j % block_size)     \
                                           * token_stride;                                                \
                for (int h = 0; h < n_heads; h++) {                                                       \
                    const float p = scores[(int64_t)h * ctx + j];                                         \
                    const T *vh = v + (int64_t)(h / group) * head_dim;                                    \
                    float *ah = acc + (int64_t)h * head_dim;                                              \
                    _Pragma("omp simd")                                                                   \
                    for (int d = 0; d < head_dim; d++) ah[d] += p * LOAD(vh, d);                          \
                }                                                                                         \
            }                                                                                             \
            free(scores);                                                                                 \
        }                                                                                                 \
        return failed;                                                                                    \
    }

DEFINE_DECODE(paged_decode_f32, float, load_f32, dot_f32)
DEFINE_DECODE(paged_decode_bf16, uint16_t, load_bf16, dot_bf16)
