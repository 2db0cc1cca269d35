/* y = x·Wᵀ for a few rows of x against 4-bit weights, with AVX-512 BF16 dot products.
 *
 * Weights are asymmetric 4-bit groups of 32 along K (w = q·scale + low, q in 0..15; quant.int4_grid),
 * x and y bf16: what PyTorch's int4 kernel takes and gives, so both compute the same sum. PyTorch's
 * kernel widens every weight to fp32 and multiplies floats: SmolLM2's 120 matmuls of one decode row
 * took it 2.0 ms with the weights in cache and 2.65 ms streamed from memory, against 1.1 and 1.96 ms
 * here (2-core Zen 5 EPYC, calls from Python included). Here a weight becomes a bf16 in two bitwise operations: 0x4300 | q is the bf16 of 128 + q, exactly.
 * dpbf16 then multiplies 32 bf16 pairs per instruction, exactly, into fp32 sums, and per group
 *   Σ w·x = scale·Σ(128 + q)·x + (low − 128·scale)·Σx,
 * Σx taken from the same bf16 x. The 128·Σx that cancels costs about 1e-5 of Σ|x| in fp32 rounding,
 * far below x's own bf16 rounding.
 *
 * Layout, built by quant.pack_int4_bf16: row tiles of 16 outputs; within a tile, for each 4 values of
 * K, 32 bytes where byte 2i+j holds q[i][4c+j] (low nibble) and q[i][4c+2+j] (high nibble). Widened to
 * 16 bits, each nibble half is one dpbf16 operand whose fp32 lane i sums output i's pair of products,
 * so the 16 lanes are the tile's 16 outputs and no reduction across lanes is needed. Scales and
 * lows are fp16, (tiles, K/32, 16): finer than PyTorch's bf16 scales, so this is the nearer of the two
 * to the exact sum. Row tiles are spread over threads with OpenMP. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "vector_math.h"

#define GROUP 32
/* Bytes of a tile's weights asked for ahead of use. A matmul here reads 0.3-1.3 MB once, too briefly for
 * the hardware prefetcher to reach full speed: 30 layers' matmuls at one row took 2.5 ms without, 2.4
 * with 512 bytes ahead, 2.1 with 1 KB, 1.96 with 4 KB, and no less further ahead (Zen 5 EPYC). */
#define PREFETCH_AHEAD 4096
#define MOST_ROWS 4 /* rows of x that share each weight load */

#if defined(__AVX512BF16__) && defined(__AVX512BW__)
int int4_matmul_available(void) { return 1; }

/* Two accumulators per row, so consecutive dpbf16s do not wait on each other. */
#define DEFINE_TILE(R)                                                                                    \
    static void tile_##R(const uint16_t *x, const float *xsum, int k, const uint8_t *w,                   \
                         const uint16_t *scales, const uint16_t *lows, __m512 *out) {            \
        const __m512i nibble = _mm512_set1_epi16(0x000F), bias = _mm512_set1_epi16(0x4300);               \
        for (int r = 0; r < (R); r++) out[r] = _mm512_setzero_ps();                                      \
        for (int g = 0; g < k / GROUP; g++) {                                                             \
            __m512 acc[R][2];                                                                             \
            for (int r = 0; r < (R); r++) acc[r][0] = acc[r][1] = _mm512_setzero_ps();                   \
            for (int p = 0; p < 256; p += 64) _mm_prefetch((const char *)w + PREFETCH_AHEAD + p, _MM_HINT_T0); \
            for (int c = 0; c < GROUP / 4; c++, w += 32) {                                                \
                const __m512i bytes = _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i *)w));       \
                /* (a & b) | c in one ternary-logic op: imm 0xEA */                                       \
                const __m512bh lo = (__m512bh)_mm512_ternarylogic_epi32(bytes, nibble, bias, 0xEA);        \
                const __m512bh hi =                                                                       \
                    (__m512bh)_mm512_ternarylogic_epi32(_mm512_srli_epi16(bytes, 4), nibble, bias, 0xEA);  \
                for (int r = 0; r < (R); r++) {                                                           \
                    const uint16_t *xk = x + (int64_t)r * k + g * GROUP + 4 * c;                         \
                    int32_t first, second;                                                                \
                    memcpy(&first, xk, 4);                                                                \
                    memcpy(&second, xk + 2, 4);                                                           \
                    acc[r][0] = _mm512_dpbf16_ps(acc[r][0], lo, (__m512bh)_mm512_set1_epi32(first));     \
                    acc[r][1] = _mm512_dpbf16_ps(acc[r][1], hi, (__m512bh)_mm512_set1_epi32(second));    \
                }                                                                                         \
            }                                                                                             \
            const __m512 scale = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(scales + g * 16))); \
            const __m512 low = _mm512_fnmadd_ps(_mm512_set1_ps(128.0f), scale,                           \
                                                _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(lows + g * 16)))); \
            for (int r = 0; r < (R); r++) {                                                               \
                out[r] = _mm512_fmadd_ps(_mm512_add_ps(acc[r][0], acc[r][1]), scale, out[r]);             \
                out[r] = _mm512_fmadd_ps(low, _mm512_set1_ps(xsum[(int64_t)r * (k / GROUP) + g]), out[r]); \
            }                                                                                             \
        }                                                                                                 \
    }
DEFINE_TILE(1)
DEFINE_TILE(2)
DEFINE_TILE(3)
DEFINE_TILE(4)

/* x (m, k) bf16; packed, scales and lows as above for n outputs (n a multiple of 16, k of 32); y (m, n)
 * bf16. Returns nonzero where memory ran out. */
int int4_matmul(const uint16_t *x, int m, int k, const uint8_t *packed, const uint16_t *scales,
                const uint16_t *lows, int n, uint16_t *y) {
    const int groups = k / GROUP;
    float *xsum = malloc(sizeof(float) * (size_t)m * (size_t)groups);
    if (!xsum) return 1;
    for (int r = 0; r < m; r++)
        for (int g = 0; g < groups; g++) {
            float total = 0.0f;
            for (int j = 0; j < GROUP; j++) total += load_bf16(x + (int64_t)r * k, g * GROUP + j);
            xsum[(int64_t)r * groups + g] = total;
        }
#pragma omp parallel for schedule(static)
    for (int t = 0; t < n / 16; t++) {
        const uint8_t *w = packed + (int64_t)t * (k / 4) * 32;
        const uint16_t *scale = scales + (int64_t)t * groups * 16, *low = lows + (int64_t)t * groups * 16;
        for (int r0 = 0; r0 < m; r0 += MOST_ROWS) {
            const int rows = m - r0 < MOST_ROWS ? m - r0 : MOST_ROWS;
            const uint16_t *xr = x + (int64_t)r0 * k;
            const float *sr = xsum + (int64_t)r0 * groups;
            __m512 out[MOST_ROWS];
            switch (rows) {
            case 1: tile_1(xr, sr, k, w, scale, low, out); break;
            case 2: tile_2(xr, sr, k, w, scale, low, out); break;
            case 3: tile_3(xr, sr, k, w, scale, low, out); break;
            default: tile_4(xr, sr, k, w, scale, low, out); break;
            }
            for (int r = 0; r < rows; r++) {
                float values[16];
                _mm512_storeu_ps(values, out[r]);
                store_bf16(y + (int64_t)(r0 + r) * n + t * 16, values, 16);
            }
        }
    }
    free(xsum);
    return 0;
}
#else
int int4_matmul_available(void) { return 0; }

int int4_matmul(const uint16_t *x, int m, int k, const uint8_t *packed, const uint16_t *scales,
                const uint16_t *lows, int n, uint16_t *y) {
    (void)x, (void)m, (void)k, (void)packed, (void)scales, (void)lows, (void)n, (void)y;
    return 2; /* not built for this CPU: int4_matmul_available() says so first */
}
#endif
