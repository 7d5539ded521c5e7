#define _GNU_SOURCE
#include "CMultiprocessingShims.h"
#include <errno.h>
#include <linux/futex.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <sched.h>

int mp_futex_wait(uint32_t *addr, uint32_t expected, const struct timespec *deadline) {
    // FUTEX_WAIT_BITSET takes an absolute CLOCK_MONOTONIC deadline, so retries need no recomputation.
    long r = syscall(SYS_futex, addr, FUTEX_WAIT_BITSET | FUTEX_PRIVATE_FLAG, expected, deadline, NULL,
                     FUTEX_BITSET_MATCH_ANY);
    return r == 0 ? 0 : errno;
}

int mp_futex_wake(uint32_t *addr, int count) {
    long r = syscall(SYS_futex, addr, FUTEX_WAKE | FUTEX_PRIVATE_FLAG, count, NULL, NULL, 0);
    return r < 0 ? 0 : (int)r;
}

pid_t mp_gettid(void) { return (pid_t)syscall(SYS_gettid); }

uint64_t mp_pthread_self(void) { return (uint64_t)pthread_self(); }

struct mp_thread_start_args { void (*body)(void *); void *context; };

static void *mp_thread_trampoline(void *raw) {
    struct mp_thread_start_args args = *(struct mp_thread_start_args *)raw;
    free(raw);
    args.body(args.context);
    return NULL;
}

int mp_thread_start(void (*body)(void *), void *context, size_t stack_size, uint64_t *out_pthread) {
    struct mp_thread_start_args *args = malloc(sizeof *args);
    if (!args) return ENOMEM;
    args->body = body;
    args->context = context;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    if (stack_size) pthread_attr_setstacksize(&attr, stack_size);
    pthread_t t;
    int rc = pthread_create(&t, &attr, mp_thread_trampoline, args);
    pthread_attr_destroy(&attr);
    if (rc != 0) { free(args); return rc; }
    if (out_pthread) *out_pthread = (uint64_t)t;
    return 0;
}

int mp_set_thread_name(const char *name) {
    char buf[16];
    strncpy(buf, name, 15);
    buf[15] = 0;
    return pthread_setname_np(pthread_self(), buf);
}

static uint64_t mp_main_pthread_id;
__attribute__((constructor)) static void mp_capture_main_thread(void) { mp_main_pthread_id = (uint64_t)pthread_self(); }
uint64_t mp_main_pthread(void) { return mp_main_pthread_id; }

long mp_cpu_count(void) {
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0) return CPU_COUNT(&set);
    return sysconf(_SC_NPROCESSORS_ONLN);
}
