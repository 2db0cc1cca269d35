/* y = x·Wᵀ for a few rows of fp32 x against per-output-channel int8 weights (w = q·scale), with
 * AVX-512: the output head's few-row path (quant.HybridHead).
 *
 * PyTorch's int8 kernel takes x in bf16 and gives y in bf16; for SmolLM2's 49,152 × 576 head at one row
 * it took about 1.0 ms, reading 28 MB at 28 GB/s. Here x stays fp32 and so does y (no logit rounded to
 * bf16's 0.125 steps at 20), and the weights stream at up to the two cores' bandwidth: each 16 bytes,
 * one weight per output of a 16-output tile, widen to 16 floats in two instructions and take one
 * fused multiply-add with x[k] broadcast, so the 16 lanes are the tile's outputs and no reduction
 * across lanes is needed.
 *
 * Layout, built by quant.pack_int8_tiles: (n/16, k, 16) int8; scales fp32 (n). Row tiles are spread
 * over threads with OpenMP. */
#include <stdint.h>
#include <string.h>

#include "vector_math.h"

#define TILE 16
#define MOST_ROWS 4 /* rows of x that share each weight load */
#define PREFETCH_AHEAD 2048 /* bytes of a tile's weights asked for ahead of use, as in int4_matmul.c */

#ifdef __AVX512F__
int int8_matmul_available(void) { return 1; }

/* Four accumulators per row, k modulo 4, so consecutive fused multiply-adds do not wait on each other. */
#define DEFINE_TILE(R)                                                                                    \
    static void tile_##R(const float *x, int k, const int8_t *w, __m512 *out) {                           \
        __m512 acc[R][4];                                                                                 \
        for (int r = 0; r < (R); r++)                                                                     \
            for (int a = 0; a < 4; a++) acc[r][a] = _mm512_setzero_ps();                                 \
        for (int j = 0; j < k; j += 4, w += 4 * TILE) {                                                   \
            _mm_prefetch((const char *)w + PREFETCH_AHEAD, _MM_HINT_T0);                                 \
            for (int a = 0; a < 4; a++) {                                                                 \
                const __m512 wj = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(w + a * TILE)))); \
                for (int r = 0; r < (R); r++)                                                             \
                    acc[r][a] = _mm512_fmadd_ps(wj, _mm512_set1_ps(x[(int64_t)r * k + j + a]), acc[r][a]); \
            }                                                                                             \
        }                                                                                                 \
        for (int r = 0; r < (R); r++)                                                                     \
            out[r] = _mm512_add_ps(_mm512_add_ps(acc[r][0], acc[r][1]), _mm512_add_ps(acc[r][2], acc[r][3])); \
    }
DEFINE_TILE(1)
DEFINE_TILE(2)
DEFINE_TILE(3)
DEFINE_TILE(4)

/* x (m, k) fp32, k a multiple of 4; weights and scales as above for n outputs (a multiple of 16); y (m, n)
 * fp32. */
void int8_matmul(const float *x, int m, int k, const int8_t *weights, const float *scales, int n, float *y) {
#pragma omp parallel for schedule(static)
    for (int t = 0; t < n / TILE; t++) {
        const int8_t *w = weights + (int64_t)t * k * TILE;
        const __m512 scale = _mm512_loadu_ps(scales + (int64_t)t * TILE);
        for (int r0 = 0; r0 < m; r0 += MOST_ROWS) {
            const int rows = m - r0 < MOST_ROWS ? m - r0 : MOST_ROWS;
            const float *xr = x + (int64_t)r0 * k;
            __m512 out[MOST_ROWS];
            switch (rows) {
            case 1: tile_1(xr, k, w, out); break;
            case 2: tile_2(xr, k, w, out); break;
            case 3: tile_3(xr, k, w, out); break;
            default: tile_4(xr, k, w, out); break;
            }
            for (int r = 0; r < rows; r++)
                _mm512_storeu_ps(y + (int64_t)(r0 + r) * n + (int64_t)t * TILE, _mm512_mul_ps(out[r], scale));
        }
    }
}
#else
int int8_matmul_available(void) { return 0; }

void int8_matmul(const float *x, int m, int k, const int8_t *weights, const float *scales, int n, float *y) {
    (void)x, (void)m, (void)k, (void)weights, (void)scales, (void)n, (void)y; /* int8_matmul_available() says 0 */
}
#endif
