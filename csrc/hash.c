/* hash.c -- Kafka's murmur2 (keyed partitioning) and CRC32C (slot checksums). */
#include <stdlib.h>
#include <string.h>
#include "core.h"

/* Kafka's org.apache.kafka.common.utils.Utils.murmur2: MurmurHash2, seed
 * 0x9747b28c, little-endian 4-byte blocks. Java's int arithmetic wraps the
 * same way uint32_t does, and its >>> is our unsigned >>. */
uint32_t gf_murmur2(const uint8_t *data, uint32_t len)
{
    const uint32_t m = 0x5bd1e995u;
    const int r = 24;
    uint32_t h = 0x9747b28cu ^ len;
    uint32_t n4 = len / 4;
    for (uint32_t i = 0; i < n4; i++) {
        uint32_t k;
        memcpy(&k, data + 4 * i, 4);   /* little-endian hosts only (x86-64, aarch64) */
        k *= m;
        k ^= k >> r;
        k *= m;
        h *= m;
        h ^= k;
    }
    const uint8_t *t = data + (len & ~3u);
    switch (len & 3) {
    case 3: h ^= (uint32_t)t[2] << 16; /* fall through */
    case 2: h ^= (uint32_t)t[1] << 8;  /* fall through */
    case 1: h ^= (uint32_t)t[0]; h *= m;
    }
    h ^= h >> 13;
    h *= m;
    h ^= h >> 15;
    return h;
}

int32_t gf_kafka_partition(const uint8_t *key, uint32_t len, uint32_t num_partitions)
{
    if (num_partitions == 0)
        return GF_E_INVAL;
    return (int32_t)((gf_murmur2(key, len) & 0x7fffffffu) % num_partitions);
}

/* ---- CRC32C (Castagnoli) ---------------------------------------------------
 * SSE4.2's crc32 instruction where the CPU has it, a table otherwise. */
static uint32_t crc_table[8][256];
static int crc_hw = -1;
static int crc_fold = 0;    /* AVX-512 carry-less multiply folding for long runs (below) */
static int copy_wide = 0;   /* gf_copy's loop: 2 AVX-512, 1 AVX2, 0 memcpy */
#define FOLD_MIN 1024       /* shorter runs stay with the crc32 instruction: the final folds cost ~40 ns */

/* Three independent crc32 streams hide the instruction's 3-cycle latency;
 * their registers are combined by "appending n zero bytes" operators, as in
 * Mark Adler's crc32c.c: shift(crc) = crc * x^(8n) mod P, a linear map
 * tabulated by bytes at start-up. */
#define CRC_LONG  2048
#define CRC_SHORT 256
static uint32_t crc_long[4][256], crc_short[4][256];

static uint32_t gf2_times(const uint32_t *mat, uint32_t vec)
{
    uint32_t sum = 0;
    for (; vec; vec >>= 1, mat++)
        if (vec & 1)
            sum ^= *mat;
    return sum;
}

static void gf2_square(uint32_t *sq, const uint32_t *mat)
{
    for (int n = 0; n < 32; n++)
        sq[n] = gf2_times(mat, mat[n]);
}

/* the operator that appends `len` zero bytes (len a power of two) */
static void zeros_table(uint32_t tab[4][256], size_t len)
{
    uint32_t even[32], odd[32], *op;
    odd[0] = 0x82f63b78u;
    for (int n = 1; n < 32; n++)
        odd[n] = 1u << (n - 1);
    gf2_square(even, odd);   /* 2 zero bits */
    gf2_square(odd, even);   /* 4 zero bits */
    op = odd;
    do {                     /* 8 zero bits = 1 byte, then doubling */
        gf2_square(even, odd);
        op = even;
        len >>= 1;
        if (!len)
            break;
        gf2_square(odd, even);
        op = odd;
        len >>= 1;
    } while (len);
    for (uint32_t n = 0; n < 256; n++) {
        tab[0][n] = gf2_times(op, n);
        tab[1][n] = gf2_times(op, n << 8);
        tab[2][n] = gf2_times(op, n << 16);
        tab[3][n] = gf2_times(op, n << 24);
    }
}

static inline uint32_t shift(uint32_t tab[4][256], uint32_t c)
{
    return tab[0][c & 0xff] ^ tab[1][(c >> 8) & 0xff] ^ tab[2][(c >> 16) & 0xff] ^ tab[3][c >> 24];
}


static void crc_init(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = (c & 1) ? (c >> 1) ^ 0x82f63b78u : c >> 1;
        crc_table[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; i++)
        for (int t = 1; t < 8; t++)
            crc_table[t][i] = (crc_table[t - 1][i] >> 8) ^ crc_table[0][crc_table[t - 1][i] & 0xff];
    zeros_table(crc_long, CRC_LONG);
    zeros_table(crc_short, CRC_SHORT);
#if defined(__x86_64__)
    __builtin_cpu_init();
    crc_hw = __builtin_cpu_supports("sse4.2");
    crc_fold = crc_hw && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("vpclmulqdq") && __builtin_cpu_supports("pclmul") && !getenv("GRAFOS_NO_FOLD");
    /* GRAFOS_WIDE_COPY=avx2 or =0 narrows gf_copy's choice (tests reach each loop) */
    const char *wide = getenv("GRAFOS_WIDE_COPY");
    int avx2 = __builtin_cpu_supports("avx2"), avx512 = __builtin_cpu_supports("avx512f") &&
                                                         __builtin_cpu_supports("avx512bw");
    copy_wide = wide && !strcmp(wide, "0") ? 0 : wide && !strcmp(wide, "avx2") ? avx2 : avx512 ? 2 : avx2;
#else
    crc_hw = 0;
#endif
}

static uint32_t crc_sw(uint32_t c, const uint8_t *p, uint64_t n)
{
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        w ^= c;
        c = crc_table[7][w & 0xff] ^ crc_table[6][(w >> 8) & 0xff] ^
            crc_table[5][(w >> 16) & 0xff] ^ crc_table[4][(w >> 24) & 0xff] ^
            crc_table[3][(w >> 32) & 0xff] ^ crc_table[2][(w >> 40) & 0xff] ^
            crc_table[1][(w >> 48) & 0xff] ^ crc_table[0][w >> 56];
        p += 8;
        n -= 8;
    }
    while (n--)
        c = (c >> 8) ^ crc_table[0][(c ^ *p++) & 0xff];
    return c;
}

#if defined(__x86_64__)
__attribute__((target("sse4.2,crc32")))
static uint32_t crc_hw_run(uint32_t c, const uint8_t *p, uint64_t n)
{
    uint64_t c0 = c;
    while (n >= 3 * CRC_LONG || n >= 3 * CRC_SHORT) {
        const uint64_t blk = n >= 3 * CRC_LONG ? CRC_LONG : CRC_SHORT;
        uint64_t c1 = 0, c2 = 0, a, b, d;
        for (const uint8_t *end = p + blk; p < end; p += 8) {
            memcpy(&a, p, 8);
            memcpy(&b, p + blk, 8);
            memcpy(&d, p + 2 * blk, 8);
            c0 = __builtin_ia32_crc32di(c0, a);
            c1 = __builtin_ia32_crc32di(c1, b);
            c2 = __builtin_ia32_crc32di(c2, d);
        }
        uint32_t (*tab)[256] = blk == CRC_LONG ? crc_long : crc_short;
        c0 = shift(tab, (uint32_t)c0) ^ (uint32_t)c1;
        c0 = shift(tab, (uint32_t)c0) ^ (uint32_t)c2;
        p += 2 * blk;
        n -= 3 * blk;
    }
    while (n >= 8) {
        uint64_t a;
        memcpy(&a, p, 8);
        c0 = __builtin_ia32_crc32di(c0, a);
        p += 8;
        n -= 8;
    }
    c = (uint32_t)c0;
    if (n >= 4) {
        uint32_t a;
        memcpy(&a, p, 4);
        c = __builtin_ia32_crc32si(c, a);
        p += 4;
        n -= 4;
    }
    while (n--)
        c = __builtin_ia32_crc32qi(c, *p++);
    return c;
}
#endif

/* The raw (not inverted) crc of a slot's offset and 28 header bytes: the value
 * the payload's gf_copy_crc calls chain from; gf_slot_crc = chain ^ ~0. */
#if defined(__x86_64__)
__attribute__((target("sse4.2,crc32")))
static uint32_t slot_crc_seed_hw(uint64_t n, const uint8_t *hdr28)
{
    uint64_t a, b, d;
    uint32_t e;
    memcpy(&a, hdr28, 8);
    memcpy(&b, hdr28 + 8, 8);
    memcpy(&d, hdr28 + 16, 8);
    memcpy(&e, hdr28 + 24, 4);
    uint64_t c = __builtin_ia32_crc32di(0xffffffffu, n);
    c = __builtin_ia32_crc32di(c, a);
    c = __builtin_ia32_crc32di(c, b);
    c = __builtin_ia32_crc32di(c, d);
    return __builtin_ia32_crc32si((uint32_t)c, e);
}
#endif

/* A slot's checksum: crc32c over the offset, the 28 header bytes after seq, and
 * the payload (layout.h), in one call. The same value as chaining gf_crc32c
 * over the three pieces; the 36-byte prefix is five straight crc32
 * instructions instead of three calls with their loops and byte tails, which is
 * most of the cost for small messages. */
#if defined(__x86_64__)
static uint32_t crc_fold_run(uint32_t c, const uint8_t *p, uint64_t n);

__attribute__((target("sse4.2,crc32")))
static uint32_t slot_crc_hw(uint64_t n, const uint8_t *hdr28, const uint8_t *payload, uint64_t len)
{
    uint64_t a, c = slot_crc_seed_hw(n, hdr28);
    uint32_t e;
    if (len > 256)
        return (crc_fold && len >= FOLD_MIN ? crc_fold_run((uint32_t)c, payload, len)
                                            : crc_hw_run((uint32_t)c, payload, len)) ^ ~0u;
    while (len >= 8) {
        memcpy(&a, payload, 8);
        c = __builtin_ia32_crc32di(c, a);
        payload += 8;
        len -= 8;
    }
    uint32_t c32 = (uint32_t)c;
    if (len >= 4) {
        memcpy(&e, payload, 4);
        c32 = __builtin_ia32_crc32si(c32, e);
        payload += 4;
        len -= 4;
    }
    while (len--)
        c32 = __builtin_ia32_crc32qi(c32, *payload++);
    return c32 ^ ~0u;
}
#endif

/* The copy fused with the checksum: each 8-byte word is loaded once, stored and
 * fed to crc32, three streams at a time as in crc_hw_run. A message larger than
 * the caches is read from memory once instead of twice. */
#if defined(__x86_64__)
__attribute__((target("sse4.2,crc32")))
static uint32_t copy_crc_hw(uint8_t *dst, const uint8_t *p, uint64_t n, uint32_t c)
{
    uint64_t c0 = c;
    while (n >= 3 * CRC_SHORT) {
        const uint64_t blk = n >= 3 * CRC_LONG ? CRC_LONG : CRC_SHORT;
        uint64_t c1 = 0, c2 = 0, a, b, d;
        for (const uint8_t *end = p + blk; p < end; p += 8, dst += 8) {
            memcpy(&a, p, 8);
            memcpy(&b, p + blk, 8);
            memcpy(&d, p + 2 * blk, 8);
            memcpy(dst, &a, 8);
            memcpy(dst + blk, &b, 8);
            memcpy(dst + 2 * blk, &d, 8);
            c0 = __builtin_ia32_crc32di(c0, a);
            c1 = __builtin_ia32_crc32di(c1, b);
            c2 = __builtin_ia32_crc32di(c2, d);
        }
        uint32_t (*tab)[256] = blk == CRC_LONG ? crc_long : crc_short;
        c0 = shift(tab, (uint32_t)c0) ^ (uint32_t)c1;
        c0 = shift(tab, (uint32_t)c0) ^ (uint32_t)c2;
        p += 2 * blk;
        dst += 2 * blk;
        n -= 3 * blk;
    }
    while (n >= 8) {
        uint64_t a;
        memcpy(&a, p, 8);
        memcpy(dst, &a, 8);
        c0 = __builtin_ia32_crc32di(c0, a);
        p += 8;
        dst += 8;
        n -= 8;
    }
    c = (uint32_t)c0;
    while (n--) {
        *dst++ = *p;
        c = __builtin_ia32_crc32qi(c, *p++);
    }
    return c;
}
#endif

/* Where the CPU has AVX-512 carry-less multiplies (VPCLMULQDQ), long runs are
 * folded instead: 256 bytes per step in four zmm registers (sixteen 128-bit
 * lanes), each lane multiplied forward by x^2048 mod P and xored onto the data
 * 2048 bits later (the Intel "fast CRC with PCLMULQDQ" scheme, reflected). The
 * loads that feed the fold also feed the copy. The folded 128 bits are then an
 * ordinary message whose crc32 (two instructions from a zero register) is the
 * running CRC. Constants: K(e) = [(x^e mod P) << 32]' << 1 (' reflects 64 bits),
 * the pair K(D+32), K(D-32) folds forward by D bits. */

#if defined(__x86_64__)
#include <immintrin.h>
#define FOLD_TARGET __attribute__((target("avx512f,avx512bw,vpclmulqdq,pclmul,sse4.2,crc32"), always_inline)) inline

static FOLD_TARGET __m512i fold512(__m512i x, __m512i k, __m512i data)
{
    __m512i lo = _mm512_clmulepi64_epi128(x, k, 0x00), hi = _mm512_clmulepi64_epi128(x, k, 0x11);
    return _mm512_ternarylogic_epi64(lo, hi, data, 0x96);   /* lo ^ hi ^ data */
}

static FOLD_TARGET __m128i fold128(__m128i x, uint64_t klo, uint64_t khi, __m128i data)
{
    __m128i k = _mm_set_epi64x((long long)khi, (long long)klo);
    return _mm_xor_si128(_mm_xor_si128(_mm_clmulepi64_si128(x, k, 0x00), _mm_clmulepi64_si128(x, k, 0x11)), data);
}

/* One 64-byte store of a copy: streamed (dst 64-aligned) or cached. */
static __attribute__((target("avx512f,avx512bw"), always_inline)) inline void store64(uint8_t *dst, __m512i x,
                                                                                      int stream)
{
    if (stream)
        _mm512_stream_si512((void *)dst, x);
    else
        _mm512_storeu_si512(dst, x);
}

/* Fold whole 256-byte blocks of p (copying them to dst when dst is set, with
 * streaming stores when `stream`: dst is then 64-aligned); returns the raw CRC
 * register after them. n >= 256, a multiple of 256. */
static FOLD_TARGET uint32_t fold_run(uint8_t *dst, const uint8_t *p, uint64_t n, uint32_t c, int stream)
{
    const __m512i k2048 = _mm512_set_epi64(0xb9e02b86, 0xdcb17aa4, 0xb9e02b86, 0xdcb17aa4,
                                           0xb9e02b86, 0xdcb17aa4, 0xb9e02b86, 0xdcb17aa4);
    const __m512i k512 = _mm512_set_epi64(0x9e4addf8, 0x740eef02, 0x9e4addf8, 0x740eef02,
                                          0x9e4addf8, 0x740eef02, 0x9e4addf8, 0x740eef02);
    __m512i x0 = _mm512_loadu_si512(p), x1 = _mm512_loadu_si512(p + 64);
    __m512i x2 = _mm512_loadu_si512(p + 128), x3 = _mm512_loadu_si512(p + 192);
    if (dst) {
        store64(dst, x0, stream);
        store64(dst + 64, x1, stream);
        store64(dst + 128, x2, stream);
        store64(dst + 192, x3, stream);
        dst += 256;
    }
    x0 = _mm512_xor_si512(x0, _mm512_zextsi128_si512(_mm_cvtsi32_si128((int)c)));   /* the register joins the first bytes */
    p += 256;
    n -= 256;
    for (; n >= 256; n -= 256, p += 256) {
        __m512i y0 = _mm512_loadu_si512(p), y1 = _mm512_loadu_si512(p + 64);
        __m512i y2 = _mm512_loadu_si512(p + 128), y3 = _mm512_loadu_si512(p + 192);
        if (dst) {
            store64(dst, y0, stream);
            store64(dst + 64, y1, stream);
            store64(dst + 128, y2, stream);
            store64(dst + 192, y3, stream);
            dst += 256;
        }
        x0 = fold512(x0, k2048, y0);
        x1 = fold512(x1, k2048, y1);
        x2 = fold512(x2, k2048, y2);
        x3 = fold512(x3, k2048, y3);
    }
    /* four registers into one (each 512 bits behind the next), then its four lanes into one */
    x1 = fold512(x0, k512, x1);
    x2 = fold512(x1, k512, x2);
    x3 = fold512(x2, k512, x3);
    __m128i l0 = _mm512_extracti32x4_epi32(x3, 0), l1 = _mm512_extracti32x4_epi32(x3, 1);
    __m128i l2 = _mm512_extracti32x4_epi32(x3, 2), l3 = _mm512_extracti32x4_epi32(x3, 3);
    __m128i f = fold128(l0, 0x1c291d04, 0x1d82c63da, l3);          /* by 384 bits */
    f = fold128(l1, 0x1384aa63a, 0xba4fc28e, f);                    /* by 256 */
    f = fold128(l2, 0xf20c0dfe, 0x14cd00bd6, f);                    /* by 128 */
    uint64_t r = __builtin_ia32_crc32di(0, (uint64_t)_mm_cvtsi128_si64(f));
    return (uint32_t)__builtin_ia32_crc32di(r, (uint64_t)_mm_extract_epi64(f, 1));
}

__attribute__((target("avx512f,avx512bw,vpclmulqdq,pclmul,sse4.2,crc32")))
static uint32_t crc_fold_run(uint32_t c, const uint8_t *p, uint64_t n)
{
    uint64_t whole = n & ~(uint64_t)255;
    c = fold_run(NULL, p, whole, c, 0);
    return crc_hw_run(c, p + whole, n - whole);
}

/* The copy with the CRC folded in, its stores streamed or cached (stream is a
 * constant in each caller below). Streamed, the bytes before dst's first cache
 * line boundary go through copy_crc_hw, so that the folded blocks land aligned,
 * and the stores are fenced before it returns. */
static __attribute__((target("avx512f,avx512bw,vpclmulqdq,pclmul,sse4.2,crc32"), always_inline)) inline uint32_t
copy_crc_folded(uint8_t *dst, const uint8_t *p, uint64_t n, uint32_t c, int stream)
{
    if (stream) {
        uint64_t head = (0 - (uintptr_t)dst) & 63;
        c = copy_crc_hw(dst, p, head, c);
        dst += head, p += head, n -= head;
    }
    uint64_t whole = n & ~(uint64_t)255;       /* >= 256: callers copy FOLD_MIN bytes or more */
    c = fold_run(dst, p, whole, c, stream);
    c = copy_crc_hw(dst + whole, p + whole, n - whole, c);
    if (stream)
        _mm_sfence();   /* streaming stores are weakly ordered: done before the slot is published */
    return c;
}

__attribute__((target("avx512f,avx512bw,vpclmulqdq,pclmul,sse4.2,crc32")))
static uint32_t copy_crc_fold(uint8_t *dst, const uint8_t *p, uint64_t n, uint32_t c)
{
    return copy_crc_folded(dst, p, n, c, 0);
}

__attribute__((target("avx512f,avx512bw,vpclmulqdq,pclmul,sse4.2,crc32")))
static uint32_t copy_crc_fold_stream(uint8_t *dst, const uint8_t *p, uint64_t n, uint32_t c)
{
    return copy_crc_folded(dst, p, n, c, 1);
}
#endif

/* A plain copy for payloads. glibc's memcpy moves runs above ~2 KiB with `rep
 * movsb`, which on AMD Zen 3/4 runs 15-25x slower (2-3 GB/s instead of 40-50)
 * when the destination lies 1-15 bytes past the source modulo 4096: a slot
 * payload and a caller's buffer land there by chance, so a message's speed
 * depended on where malloc put its bytes. A vector loop has no such case. The
 * AVX-512 loop, its stores aligned to the cache line, also beats memcpy into a
 * slot (whose payload starts 40 bytes in) by ~25 % in the L2 and matches it
 * beyond, so it takes every payload copy; the AVX2 loop takes only the slow
 * distances (elsewhere `rep movsb` is faster than it by ~15 % past the L1). */
#if defined(__x86_64__)
#define COPY_MIN 256

/* The AVX-512 copy, its stores streamed or cached (stream is a constant in each
 * caller below); streaming stores are fenced before it returns. */
static __attribute__((target("avx512f,avx512bw"), always_inline)) inline void copy512(uint8_t *d, const uint8_t *s,
                                                                                      uint64_t n, int stream)
{
    /* stores aligned to the cache line: a slot's payload starts 40 bytes into it,
     * and unaligned 64-byte stores each touch two lines (~25 % slower into L2) */
    uint64_t head = (0 - (uintptr_t)d) & 63;
    if (head) {
        __mmask64 m = (__mmask64)((1ULL << head) - 1);
        _mm512_mask_storeu_epi8(d, m, _mm512_maskz_loadu_epi8(m, s));
        d += head, s += head, n -= head;
    }
    for (; n >= 256; n -= 256, s += 256, d += 256) {
        __m512i a = _mm512_loadu_si512(s), b = _mm512_loadu_si512(s + 64);
        __m512i c = _mm512_loadu_si512(s + 128), e = _mm512_loadu_si512(s + 192);
        store64(d, a, stream);
        store64(d + 64, b, stream);
        store64(d + 128, c, stream);
        store64(d + 192, e, stream);
    }
    for (; n >= 64; n -= 64, s += 64, d += 64)
        store64(d, _mm512_loadu_si512(s), stream);
    if (n) {
        __mmask64 m = (__mmask64)((1ULL << n) - 1);
        _mm512_mask_storeu_epi8(d, m, _mm512_maskz_loadu_epi8(m, s));
    }
    if (stream)
        _mm_sfence();   /* streaming stores are weakly ordered: done before the slot is published */
}

__attribute__((target("avx512f,avx512bw")))
static void copy_avx512(uint8_t *d, const uint8_t *s, uint64_t n) { copy512(d, s, n, 0); }

/* copy_avx512 with streaming stores for the cache lines dst covers whole */
__attribute__((target("avx512f,avx512bw")))
static void copy_avx512_stream(uint8_t *d, const uint8_t *s, uint64_t n) { copy512(d, s, n, 1); }

__attribute__((target("avx2")))
static void copy_avx2(uint8_t *d, const uint8_t *s, uint64_t n)
{
    for (; n >= 128; n -= 128, s += 128, d += 128) {
        __m256i a = _mm256_loadu_si256((const __m256i *)s), b = _mm256_loadu_si256((const __m256i *)(s + 32));
        __m256i c = _mm256_loadu_si256((const __m256i *)(s + 64)), e = _mm256_loadu_si256((const __m256i *)(s + 96));
        _mm256_storeu_si256((__m256i *)d, a);
        _mm256_storeu_si256((__m256i *)(d + 32), b);
        _mm256_storeu_si256((__m256i *)(d + 64), c);
        _mm256_storeu_si256((__m256i *)(d + 96), e);
    }
    memcpy(d, s, n);   /* under 128 bytes: glibc's vector moves, no `rep movsb` */
}
#endif

void gf_copy(uint8_t *dst, const uint8_t *src, uint64_t len)
{
#if defined(__x86_64__)
    if (len >= COPY_MIN && copy_wide == 2)
        return copy_avx512(dst, src, len);
    uint64_t near_page = ((uintptr_t)dst - (uintptr_t)src + 64) & 4095;
    if (len >= COPY_MIN && copy_wide == 1 && near_page < 128)
        return copy_avx2(dst, src, len);
#endif
    memcpy(dst, src, len);
}

/* Streaming stores write whole cache lines to memory without reading them
 * first and without keeping them in the cache. Into a ring larger than the
 * caches, whose slots were last touched a lap ago, that halves what a write
 * moves through memory (no read for ownership) and leaves the cache to what is
 * read next. Into a ring the caches hold, it is slower: each line is evicted. So
 * only rings of GF_STREAM_RING_BYTES or more use it, for runs of STREAM_MIN
 * bytes or more (a partial line gains nothing), and only with AVX-512. */
#define STREAM_MIN 4096

void gf_copy_stream(uint8_t *dst, const uint8_t *src, uint64_t len)
{
#if defined(__x86_64__)
    if (len >= STREAM_MIN && copy_wide == 2)
        return copy_avx512_stream(dst, src, len);
#endif
    gf_copy(dst, src, len);
}

uint32_t gf_copy_crc_stream(uint8_t *dst, const uint8_t *src, uint64_t len, uint32_t crc)
{
#if defined(__x86_64__)
    if (crc_fold && copy_wide == 2 && len >= STREAM_MIN)
        return copy_crc_fold_stream(dst, src, len, crc);
#endif
    return gf_copy_crc(dst, src, len, crc);
}

/* Raw update like gf_crc32c, copying src to dst on the way. */
uint32_t gf_copy_crc(uint8_t *dst, const uint8_t *src, uint64_t len, uint32_t crc)
{
#if defined(__x86_64__)
    if (crc_fold && len >= FOLD_MIN)
        return copy_crc_fold(dst, src, len, crc);
    if (__builtin_expect(crc_hw > 0, 1))
        return copy_crc_hw(dst, src, len, crc);
#endif
    gf_copy(dst, src, len);
    return gf_crc32c(crc, dst, len);
}


uint32_t gf_slot_crc_seed(uint64_t n, const uint8_t *hdr28)
{
#if defined(__x86_64__)
    if (__builtin_expect(crc_hw > 0, 1))
        return slot_crc_seed_hw(n, hdr28);
#endif
    uint32_t c = gf_crc32c(~0u, (const uint8_t *)&n, 8);
    return gf_crc32c(c, hdr28, 28);
}

uint32_t gf_slot_crc(uint64_t n, const uint8_t *hdr28, const uint8_t *payload, uint64_t len)
{
#if defined(__x86_64__)
    if (__builtin_expect(crc_hw > 0, 1))
        return slot_crc_hw(n, hdr28, payload, len);
#endif
    uint32_t c = gf_crc32c(~0u, (const uint8_t *)&n, 8);
    c = gf_crc32c(c, hdr28, 28);
    return gf_crc32c(c, payload, len) ^ ~0u;
}

/* Raw update: no pre/post inversion, so calls chain. gf_crc32c(~0, ...) ^ ~0 is
 * the standard CRC32C of a buffer. */
uint32_t gf_crc32c(uint32_t crc, const uint8_t *data, uint64_t len)
{
    if (__builtin_expect(crc_hw < 0, 0))
        crc_init();
#if defined(__x86_64__)
    if (crc_fold && len >= FOLD_MIN)
        return crc_fold_run(crc, data, len);
    if (crc_hw)
        return crc_hw_run(crc, data, len);
#endif
    return crc_sw(crc, data, len);
}

__attribute__((constructor)) static void gf_hash_ctor(void) { crc_init(); }

/* The physical limit the benchmarks compare against. */
void gf_memcpy_bench(uint8_t *dst, const uint8_t *src, uint64_t len, uint32_t reps)
{
    for (uint32_t i = 0; i < reps; i++) {
        memcpy(dst, src, len);
        __asm__ __volatile__("" : : "r"(dst) : "memory");
    }
}
