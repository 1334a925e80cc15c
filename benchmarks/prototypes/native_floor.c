/* native_floor.c -- the C core's own per-message cost, no Python involved.
 *
 *   native_floor append|poll STRIDE VALUE_LEN BATCH ROUNDS
 *   native_floor crc
 *
 * append/poll: one in-process fabric, one ring (65536 slots, or 4096 when the
 * stride is above 1 KiB), filled once so no round faults pages in; then ROUNDS
 * calls of gf_ring_append_batch / gf_poller_poll of BATCH messages (16-byte keys).
 * Prints the best and the median round in ns per message and payload GB/s.
 * crc: gf_crc32c over 4096 bytes next to three independent crc32 chains over
 * the same bytes (what a 3-way interleaved CRC32C could reach; the combine step
 * is not included) and memcpy of 4096 bytes.
 *
 * Built and run against copies of csrc/ by c_variants.sh.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "grafos.h"

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

#if defined(__x86_64__)
__attribute__((target("sse4.2"), noinline))
static uint32_t crc_3chains(uint32_t c, const uint8_t *p, size_t n)
{
    size_t third = (n / 24) * 8;
    uint64_t a = c, b = 0, d = 0;
    for (size_t i = 0; i < third; i += 8) {
        uint64_t x, y, z;
        memcpy(&x, p + i, 8);
        memcpy(&y, p + third + i, 8);
        memcpy(&z, p + 2 * third + i, 8);
        a = __builtin_ia32_crc32di(a, x);
        b = __builtin_ia32_crc32di(b, y);
        d = __builtin_ia32_crc32di(d, z);
    }
    return (uint32_t)(a ^ b ^ d);
}
#endif

static int crc_mode(void)
{
    enum { N = 4096, REPS = 200000 };
    static uint8_t a[N], b[N];
    memset(a, 1, N);
    volatile uint32_t sink = 0;
    double t0 = now();
    for (int i = 0; i < REPS; i++)
        sink += gf_crc32c(~0u, a, N);
    double t1 = now();
    printf("gf_crc32c 4096 B         %7.1f ns  %6.2f GB/s\n", (t1 - t0) / REPS * 1e9, (double)N * REPS / (t1 - t0) / 1e9);
#if defined(__x86_64__)
    t0 = now();
    for (int i = 0; i < REPS; i++)
        sink += crc_3chains(~0u, a, N);
    t1 = now();
    printf("3 crc32 chains 4096 B    %7.1f ns  %6.2f GB/s  (no combine)\n", (t1 - t0) / REPS * 1e9, (double)N * REPS / (t1 - t0) / 1e9);
#endif
    t0 = now();
    for (int i = 0; i < REPS; i++)
        gf_memcpy_bench(b, a, N, 1);
    t1 = now();
    printf("memcpy 4096 B (L1)       %7.1f ns  %6.2f GB/s\n", (t1 - t0) / REPS * 1e9, (double)N * REPS / (t1 - t0) / 1e9);
    t0 = now();
    for (int i = 0; i < REPS; i++)
        sink += gf_crc32c(~0u, a, 152);
    t1 = now();
    printf("gf_crc32c 152 B          %7.1f ns  (the bytes of one 100 B message + 16 B key + header)\n", (t1 - t0) / REPS * 1e9);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 2 && !strcmp(argv[1], "crc"))
        return crc_mode();
    if (argc != 6) {
        fprintf(stderr, "usage: %s append|poll STRIDE VALUE_LEN BATCH ROUNDS | crc\n", argv[0]);
        return 2;
    }
    const char *mode = argv[1];
    uint32_t stride = (uint32_t)atoi(argv[2]), vlen = (uint32_t)atoi(argv[3]), B = (uint32_t)atoi(argv[4]);
    int rounds = atoi(argv[5]);
    uint32_t cap = stride > 1024 ? 4096 : 65536;
    int err;
    gf_fabric *f = gf_fabric_open(NULL, 1ull << 30, 0600, GF_OPEN_CREATE, 0, 0, &err);
    if (!f) { fprintf(stderr, "fabric: %s\n", gf_last_error()); return 1; }
    gf_lease_info li;
    int64_t t = gf_now_ns();
    gf_lock(f, 1000000000);
    if (gf_lease_acquire(f, gf_ring_region_size(cap, stride), t + 3600000000000LL, 0, t, &li) < 0 ||
        gf_ring_init(f, li.index, li.id, cap, stride, t, 1) < 0) {
        fprintf(stderr, "ring: %s\n", gf_last_error());
        return 1;
    }
    gf_unlock(f);
    gf_ring *r = gf_ring_open(f, li.index, li.id, &err);
    uint8_t *keys = malloc(16 * (size_t)B), *vals = malloc((size_t)vlen * B);
    uint32_t *kl = malloc(4 * (size_t)B), *vl = malloc(4 * (size_t)B);
    uint64_t *offs = malloc(8 * (size_t)B);
    for (uint32_t i = 0; i < B; i++) {
        kl[i] = 16;
        vl[i] = vlen;
        memset(keys + 16 * (size_t)i, 'k' + (int)(i % 16), 16);
        memset(vals + (size_t)vlen * i, (int)i, vlen);
    }
    for (uint32_t i = 0; i < cap / B + 2; i++)
        gf_ring_append_batch(r, B, keys, kl, vals, vl, 0, offs);
    gf_cursor cur;
    memset(&cur, 0, sizeof cur);
    gf_msg_meta *meta = malloc(sizeof(gf_msg_meta) * B);
    uint64_t bs = (uint64_t)B * stride;
    uint8_t *buf = malloc(bs);
    gf_ring_state st;
    gf_ring_state_get(r, 0, &st);
    uint64_t pos = st.tail - cap;
    double *dt = malloc(sizeof(double) * (size_t)rounds);
    for (int i = 0; i < rounds; i++) {
        double t0 = now();
        if (mode[0] == 'a') {
            if (gf_ring_append_batch(r, B, keys, kl, vals, vl, 0, offs) < 0) { fprintf(stderr, "%s\n", gf_last_error()); return 1; }
        } else {
            memset(&cur, 0, sizeof cur);
            cur.pos = pos;
            gf_poller p = {.f = f, .rings = &r, .cursors = &cur, .meta = meta, .buf = buf, .buf_size = bs, .n = 1, .max_batch = B};
            if (gf_poller_poll(&p, B, 0, 0, 0) != (int64_t)B) { fprintf(stderr, "short poll\n"); return 1; }
            pos += B;
            if (pos + B > st.tail)
                pos = st.tail - cap;
        }
        dt[i] = now() - t0;
    }
    qsort(dt, (size_t)rounds, sizeof *dt, cmp);
    double best = dt[0], med = dt[rounds / 2];
    printf("%-6s %4u B values: best %6.1f ns/msg (%5.1f M/s, %5.2f GB/s)  median %6.1f ns/msg (%5.1f M/s, %5.2f GB/s)\n",
           mode, vlen, best / B * 1e9, B / best / 1e6, B * (double)(vlen + 16) / best / 1e9,
           med / B * 1e9, B / med / 1e6, B * (double)(vlen + 16) / med / 1e9);
    return 0;
}
