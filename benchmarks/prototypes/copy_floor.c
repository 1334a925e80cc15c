/* copy_floor.c -- the machine's floor for moving large messages between two
 * CPUs, with no grafos in it: one thread copies MSG-byte messages into a ring
 * of RING bytes, another copies them out (two copies, as a send and a poll
 * make), with a counter each way and nothing else. Threads are pinned to CPUs
 * 0 and 1. Each repeat prints its rate, so the spread shows as well.
 *
 *   cc -O2 -pthread -o /tmp/copy_floor benchmarks/prototypes/copy_floor.c
 *   /tmp/copy_floor [MSG_BYTES=65536] [RING_BYTES=2097152] [REPEATS=8] [THREADS=2] [STREAM=0]
 *
 * STREAM=1: the copies into the ring use streaming stores (x86-64), as grafos'
 * writes into a ring of 64 MiB or more do: the floor for a ring past the caches.
 *
 * THREADS=1: one thread does both copies, half a ring in, then half a ring
 * out (what one Python thread doing send_batch then poll_batch can reach):
 * the reference for a producer thread beside a consumer thread.
 *
 * A 64 KiB message through a 2 MiB ring is what bench_payloads.py's 64 KiB
 * rows do, 1 MiB through 4 MiB its 1 MiB rows: grafos cannot move them faster
 * than this, and on a shared VM this floor itself moves several-fold between
 * repeats.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static uint8_t *ring, *src, *dst;
static int stream;
static size_t msg, slots;
static long total;
static _Atomic long head, done;

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static void pin(int cpu)
{
    cpu_set_t s;
    CPU_ZERO(&s);
    CPU_SET(cpu, &s);
    pthread_setaffinity_np(pthread_self(), sizeof s, &s);
}

#if defined(__x86_64__)
#include <immintrin.h>
/* streaming stores write whole lines to memory without reading them first (d 16-aligned) */
static void copy_stream(uint8_t *d, const uint8_t *s, size_t n)
{
    for (; n >= 64; n -= 64, s += 64, d += 64) {
        __m128i a = _mm_loadu_si128((const __m128i *)s), b = _mm_loadu_si128((const __m128i *)(s + 16));
        __m128i c = _mm_loadu_si128((const __m128i *)(s + 32)), e = _mm_loadu_si128((const __m128i *)(s + 48));
        _mm_stream_si128((__m128i *)d, a);
        _mm_stream_si128((__m128i *)(d + 16), b);
        _mm_stream_si128((__m128i *)(d + 32), c);
        _mm_stream_si128((__m128i *)(d + 48), e);
    }
    memcpy(d, s, n);
    _mm_sfence();       /* before the counter says the slot is written */
}
#else
static void copy_stream(uint8_t *d, const uint8_t *s, size_t n) { memcpy(d, s, n); }
#endif

static void put(uint8_t *d, const uint8_t *s, size_t n)
{
    if (stream)
        copy_stream(d, s, n);
    else
        memcpy(d, s, n);
}

static void *producer(void *arg)
{
    (void)arg;
    pin(0);
    for (long i = 0; i < total; i++) {
        while (i - atomic_load(&done) >= (long)slots - 1)   /* one slot stays with the reader */
            ;
        put(ring + (i % slots) * msg, src, msg);
        atomic_store(&head, i + 1);
    }
    return NULL;
}

int main(int argc, char **argv)
{
    msg = argc > 1 ? strtoul(argv[1], NULL, 0) : 65536;
    size_t ring_bytes = argc > 2 ? strtoul(argv[2], NULL, 0) : 2u << 20;
    int reps = argc > 3 ? atoi(argv[3]) : 8;
    int threads = argc > 4 ? atoi(argv[4]) : 2;
    stream = argc > 5 ? atoi(argv[5]) : 0;
    slots = ring_bytes / msg;
    if (msg == 0 || slots < 2) {
        fprintf(stderr, "the ring must hold at least two messages\n");
        return 2;
    }
    /* page-aligned: glibc's memcpy has slow distances on some CPUs (see gf_copy) */
    ring = aligned_alloc(4096, slots * msg);
    src = aligned_alloc(4096, msg);
    dst = aligned_alloc(4096, msg);
    memset(ring, 0, slots * msg);
    memset(src, 0x5a, msg);
    memset(dst, 0, msg);
    total = (long)((4ull << 30) / msg);
    for (int r = 0; r < reps; r++) {
        atomic_store(&head, 0);
        atomic_store(&done, 0);
        pthread_t t;
        double t0 = now();
        if (threads == 1) {
            long half = (long)(slots / 2 > 0 ? slots / 2 : 1);
            for (long i = 0; i < total; i += half) {
                for (long j = i; j < i + half && j < total; j++)
                    put(ring + (j % slots) * msg, src, msg);
                for (long j = i; j < i + half && j < total; j++)
                    memcpy(dst, ring + (j % slots) * msg, msg);
            }
            double dt = now() - t0;
            printf("%zu B messages, %zu-slot ring, one thread: %8.1f k/s %6.2f GB/s\n", msg, slots,
                   total / dt / 1e3, total * (double)msg / dt / 1e9);
            continue;
        }
        pthread_create(&t, NULL, producer, NULL);
        pin(1);
        for (long i = 0; i < total; i++) {
            while (atomic_load(&head) <= i)
                ;
            memcpy(dst, ring + (i % slots) * msg, msg);
            atomic_store(&done, i + 1);
        }
        pthread_join(t, NULL);
        double dt = now() - t0;
        printf("%zu B messages, %zu-slot ring: %8.1f k/s %6.2f GB/s\n", msg, slots, total / dt / 1e3,
               total * (double)msg / dt / 1e9);
    }
    return 0;
}
