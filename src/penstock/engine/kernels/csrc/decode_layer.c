/* The steps of a transformer layer between its four weight-only int4 matmuls, one call each, for the
 * few-row steps that take the int4 kernels (single-stream and small-batch decode).
 *
 * In PyTorch these steps are about 25 small ops a layer (norms, RoPE, the KV writes, SiLU, dtype
 * casts, views), each a microsecond or more of dispatch over a few hundred numbers: with 30 layers,
 * about half of a single-stream decode's time. Here a layer is four int4 matmuls and three calls:
 *   add_rms_norm  x += the last matmul's output; the norm of x, in bf16 for the next matmul
 *   rope_attend   RoPE on the new queries and keys, keys and values into the paged cache, attention
 *   silu_mul      silu(gate) · up, in bf16 for the down projection
 * The int4 kernel reads and writes bf16, so every value crossing a matmul is rounded to bf16 exactly
 * as the PyTorch path rounds it; the residual stream, the norms, RoPE and attention stay fp32.
 * Single-threaded: a few rows of a few thousand numbers take microseconds, less than waking a pool. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "vector_math.h"

#define MAX_HEAD_DIM 512

int paged_decode_f32(const float *q, const float *k_cache, const float *v_cache, const int32_t *rows,
                     const int32_t *block_tables, const int32_t *table_starts, const int32_t *context_lens,
                     int n_rows, int n_heads, int n_kv, int head_dim, int block_size, float scale, float *out);
int paged_decode_bf16(const float *q, const uint16_t *k_cache, const uint16_t *v_cache, const int32_t *rows,
                      const int32_t *block_tables, const int32_t *table_starts, const int32_t *context_lens,
                      int n_rows, int n_heads, int n_kv, int head_dim, int block_size, float scale, float *out);

static void store_f32(float *dst, const float *src, int n) { memcpy(dst, src, sizeof(float) * (size_t)n); }

/* For each row: x += delta (bf16; none for the first layer), then out = x / rms(x) · weight, in bf16
 * (out_bf16) or fp32. Sixteen partial sums of squares, so the compiler can keep them in one vector. */
void add_rms_norm(float *x, const uint16_t *delta, const float *weight, int rows, int dim, float eps, void *out,
                  int out_bf16) {
    float y[dim];
    for (int r = 0; r < rows; r++) {
        float *xr = x + (int64_t)r * dim;
        if (delta)
            for (int d = 0; d < dim; d++) xr[d] += load_bf16(delta + (int64_t)r * dim, d);
        float partial[16] = {0};
        for (int d = 0; d < dim; d++) partial[d % 16] += xr[d] * xr[d];
        float squares = 0.0f;
        for (int i = 0; i < 16; i++) squares += partial[i];
        const float inv = 1.0f / sqrtf(squares / (float)dim + eps);
        for (int d = 0; d < dim; d++) y[d] = xr[d] * inv * weight[d];
        if (out_bf16)
            store_bf16((uint16_t *)out + (int64_t)r * dim, y, dim);
        else
            store_f32((float *)out + (int64_t)r * dim, y, dim);
    }
}

/* Rotate-half RoPE of one head (bf16 in, fp32 out): the first half pairs with the second. */
static void rope(const uint16_t *x, const float *cos, const float *sin, int head_dim, float *out) {
    const int half = head_dim / 2;
    for (int i = 0; i < half; i++) {
        const float a = load_bf16(x, i), b = load_bf16(x, i + half);
        out[i] = a * cos[i] - b * sin[i];
        out[i + half] = b * cos[i + half] + a * sin[i + half];
    }
}

/* qkv (rows, (n_heads + 2·n_kv)·head_dim) bf16, as the fused projection gives it; cos and sin (rows,
 * head_dim). Each row's keys and values go to its cache slot first, so a prefill chunk's queries see
 * the chunk's own keys; then every query attends (paged_attention.c) and out gets (rows, n_heads ·
 * head_dim) in bf16, ready for the output projection. Returns nonzero where memory ran out. */
#define DEFINE_ROPE_ATTEND(NAME, T, STORE, ATTEND)                                                        \
    int NAME(const uint16_t *qkv, const float *cos, const float *sin, const int64_t *slots, T *k_cache,     \
             T *v_cache, const int32_t *rows, const int32_t *block_tables, const int32_t *table_starts,      \
             const int32_t *context_lens, int n_rows, int n_heads, int n_kv, int head_dim, int block_size,  \
             float scale, uint16_t *out) {                                                                 \
        if (head_dim > MAX_HEAD_DIM) return 1;                                                             \
        const int64_t width = (int64_t)(n_heads + 2 * n_kv) * head_dim, q_size = (int64_t)n_heads * head_dim; \
        float *q = malloc(sizeof(float) * 2 * (size_t)(n_rows * q_size)), row[MAX_HEAD_DIM];              \
        if (!q) return 1;                                                                                  \
        float *o = q + n_rows * q_size;                                                                    \
        for (int t = 0; t < n_rows; t++) {                                                                 \
            const uint16_t *src = qkv + t * width;                                                         \
            const float *c = cos + (int64_t)t * head_dim, *s = sin + (int64_t)t * head_dim;                \
            for (int h = 0; h < n_heads; h++) rope(src + h * head_dim, c, s, head_dim, q + t * q_size + h * head_dim); \
            for (int h = 0; h < n_kv; h++) {                                                               \
                const int64_t slot = (slots[t] * n_kv + h) * head_dim;                                     \
                rope(src + (int64_t)(n_heads + h) * head_dim, c, s, head_dim, row);                        \
                STORE(k_cache + slot, row, head_dim);                                                      \
                for (int d = 0; d < head_dim; d++) row[d] = load_bf16(src + (int64_t)(n_heads + n_kv + h) * head_dim, d); \
                STORE(v_cache + slot, row, head_dim);                                                      \
            }                                                                                              \
        }                                                                                                  \
        const int failed = ATTEND(q, k_cache, v_cache, rows, block_tables, table_starts, context_lens, n_rows, \
                                  n_heads, n_kv, head_dim, block_size, scale, o);                          \
        store_bf16(out, o, (int)(n_rows * q_size));                                                        \
        free(q);                                                                                           \
        return failed;                                                                                     \
    }
DEFINE_ROPE_ATTEND(rope_attend_f32, float, store_f32, paged_decode_f32)
DEFINE_ROPE_ATTEND(rope_attend_bf16, uint16_t, store_bf16, paged_decode_bf16)

/* gate_up (rows, 2·hidden) bf16, gate first; out (rows, hidden) bf16 = silu(gate) · up, where
 * silu(g) = g / (1 + e^-g). e^-g is clamped at e^88, still finite, where g / (1 + e^-g) is 0 anyway. */
void silu_mul(const uint16_t *gate_up, int rows, int hidden, uint16_t *out) {
    float y[hidden];
    for (int r = 0; r < rows; r++) {
        const uint16_t *g = gate_up + (int64_t)r * 2 * hidden, *u = g + hidden;
        int i = 0;
#if defined(__AVX512F__)
        for (; i + 16 <= hidden; i += 16) {
            const __m512 gi = load16_bf16(g + i);
            const __m512 e = exp16(_mm512_min_ps(_mm512_sub_ps(_mm512_setzero_ps(), gi), _mm512_set1_ps(88.0f)));
            const __m512 silu = _mm512_div_ps(gi, _mm512_add_ps(_mm512_set1_ps(1.0f), e));
            _mm512_storeu_ps(y + i, _mm512_mul_ps(silu, load16_bf16(u + i)));
        }
#elif defined(__AVX2__)
        for (; i + 8 <= hidden; i += 8) {
            const __m256 gi = load8_bf16(g + i);
            const __m256 e = exp8(_mm256_min_ps(_mm256_sub_ps(_mm256_setzero_ps(), gi), _mm256_set1_ps(88.0f)));
            const __m256 silu = _mm256_div_ps(gi, _mm256_add_ps(_mm256_set1_ps(1.0f), e));
            _mm256_storeu_ps(y + i, _mm256_mul_ps(silu, load8_bf16(u + i)));
        }
#endif
        for (; i < hidden; i++) {
            const float gi = load_bf16(g, i);
            y[i] = gi / (1.0f + expf(fminf(-gi, 88.0f))) * load_bf16(u, i);
        }
        store_bf16(out + (int64_t)r * hidden, y, hidden);
    }
}

int int4_matmul(const uint16_t *x, int m, int k, const uint8_t *packed, const uint16_t *scales,
                const uint16_t *lows, int n, uint16_t *y);

/* Every layer of a few-row step in one call, where the int4 matmuls are int4_matmul.c's too: the same
 * steps as fused_decode.py's loop, less about 240 calls from Python a step (about 4 µs each).
 * weights holds 14 pointers per layer: its two norms' weights, then the packed weights, scales and lows
 * of wqkv, wo, w13 and w2 (quant.pack_int4_bf16). The caches are every layer's, layer_stride elements
 * apart. out (rows, dim) fp32 gets the final norm of the residual stream x, which is updated in place. */
#define DEFINE_DECODE_LAYERS(NAME, T, ROPE_ATTEND)                                                        \
    int NAME(float *x, int rows, int n_layers, const void *const *weights, const float *final_norm,        \
             T *k_cache, T *v_cache, int64_t layer_stride, const float *cos, const float *sin,             \
             const int64_t *slots, const int32_t *query_rows, const int32_t *block_tables,                 \
             const int32_t *table_starts, const int32_t *context_lens, int dim, int hidden, int n_heads,   \
             int n_kv, int head_dim, int block_size, float eps, float *out) {                              \
        const int width = (n_heads + 2 * n_kv) * head_dim, attended = n_heads * head_dim;                 \
        const size_t sizes[6] = {dim, width, attended, dim, 2 * (size_t)hidden, hidden};                   \
        size_t total = 0;                                                                                  \
        for (int i = 0; i < 6; i++) total += sizes[i];                                                     \
        uint16_t *scratch = malloc(sizeof(uint16_t) * total * (size_t)rows), *buffers[6];                 \
        if (!scratch) return 1;                                                                            \
        buffers[0] = scratch;                                                                              \
        for (int i = 1; i < 6; i++) buffers[i] = buffers[i - 1] + sizes[i - 1] * (size_t)rows;             \
        uint16_t *normed = buffers[0], *qkv = buffers[1], *att = buffers[2], *delta = buffers[3];          \
        uint16_t *gate_up = buffers[4], *act = buffers[5];                                                 \
        int failed = 0;                                                                                    \
        for (int l = 0; l < n_layers && !failed; l++) {                                                    \
            const void *const *w = weights + 14 * (int64_t)l;                                              \
            const uint8_t *const *packed = (const uint8_t *const *)(w + 2);                                \
            const uint16_t *const *scales = (const uint16_t *const *)(w + 6);                              \
            const uint16_t *const *lows = (const uint16_t *const *)(w + 10);                               \
            add_rms_norm(x, l ? delta : NULL, (const float *)w[0], rows, dim, eps, normed, 1);             \
            failed |= int4_matmul(normed, rows, dim, packed[0], scales[0], lows[0], width, qkv);          \
            failed |= ROPE_ATTEND(qkv, cos, sin, slots, k_cache + l * layer_stride, v_cache + l * layer_stride, \
                                  query_rows, block_tables, table_starts, context_lens, rows, n_heads, n_kv,  \
                                  head_dim, block_size, 1.0f / sqrtf((float)head_dim), att);              \
            failed |= int4_matmul(att, rows, attended, packed[1], scales[1], lows[1], dim, delta);         \
            add_rms_norm(x, delta, (const float *)w[1], rows, dim, eps, normed, 1);                        \
            failed |= int4_matmul(normed, rows, dim, packed[2], scales[2], lows[2], 2 * hidden, gate_up);  \
            silu_mul(gate_up, rows, hidden, act);                                                          \
            failed |= int4_matmul(act, rows, hidden, packed[3], scales[3], lows[3], dim, delta);           \
        }                                                                                                  \
        if (!failed) add_rms_norm(x, delta, final_norm, rows, dim, eps, out, 0);                           \
        free(scratch);                                                                                     \
        return failed;                                                                                     \
    }
DEFINE_DECODE_LAYERS(decode_layers_f32, float, rope_attend_f32)
DEFINE_DECODE_LAYERS(decode_layers_bf16, uint16_t, rope_attend_bf16)
