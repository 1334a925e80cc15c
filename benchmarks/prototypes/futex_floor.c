/* futex_floor.c -- the machine's floor for one-way wake-up latency between two
 * processes, with no grafos in it: a ping-pong over two words of a shared
 * mapping, either spinning on them or sleeping on them with FUTEX_WAIT (what
 * a blocking grafos poll does). Processes are pinned to one CPU or to two.
 *
 *   cc -O2 -o /tmp/futex_floor benchmarks/prototypes/futex_floor.c
 *   /tmp/futex_floor [ROUND_TRIPS] [block|spin] [split|same]
 *
 * On a VM, waking a sleeper on another vCPU costs an inter-processor
 * interrupt into a halted vCPU: that, not the bus, bounds a blocking receive.
 */
#define _GNU_SOURCE
#include <linux/futex.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int64_t now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000000LL + t.tv_nsec;
}

static void pin(int cpu)
{
    cpu_set_t s;
    CPU_ZERO(&s);
    CPU_SET(cpu, &s);
    sched_setaffinity(0, sizeof s, &s);
}

/* wait until *w == want: spin, or sleep on the futex while it holds want - 1 */
static void await(_Atomic uint32_t *w, uint32_t want, int spin)
{
    while (atomic_load(w) != want)
        if (!spin)
            syscall(SYS_futex, (uint32_t *)w, FUTEX_WAIT, want - 1, NULL, NULL, 0);
}

static void post(_Atomic uint32_t *w, uint32_t v, int spin)
{
    atomic_store(w, v);
    if (!spin)
        syscall(SYS_futex, (uint32_t *)w, FUTEX_WAKE, 1, NULL, NULL, 0);
}

static int cmp(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
    int n = argc > 1 ? atoi(argv[1]) : 20000;
    int spin = argc > 2 && strcmp(argv[2], "spin") == 0;
    int split = !(argc > 3 && strcmp(argv[3], "same") == 0);
    if (n < 100)
        n = 100;
    /* ping and pong on separate cache lines */
    _Atomic uint32_t *w = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (w == MAP_FAILED)
        return 1;
    _Atomic uint32_t *ping = &w[0], *pong = &w[16];
    pid_t child = fork();
    if (child == 0) {
        pin(split ? 1 : 0);
        for (uint32_t i = 1; i <= (uint32_t)n; i++) {
            await(ping, i, spin);
            post(pong, i, spin);
        }
        _exit(0);
    }
    pin(0);
    int64_t *rt = malloc(sizeof *rt * (size_t)n);
    usleep(100000);
    for (uint32_t i = 1; i <= (uint32_t)n; i++) {
        int64_t t0 = now_ns();
        post(ping, i, spin);
        await(pong, i, spin);
        rt[i - 1] = now_ns() - t0;
    }
    waitpid(child, NULL, 0);
    qsort(rt, (size_t)n, sizeof *rt, cmp);
    printf("%s, %s: one-way p50 %.2f us, p99 %.2f us (%d round trips)\n", spin ? "spinning" : "futex",
           split ? "two CPUs" : "one CPU", rt[n / 2] / 2000.0, rt[(int64_t)n * 99 / 100] / 2000.0, n);
    return 0;
}
