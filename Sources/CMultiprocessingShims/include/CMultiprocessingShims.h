#ifndef C_MULTIPROCESSING_SHIMS_H
#define C_MULTIPROCESSING_SHIMS_H

#include <stdint.h>
#include <stdbool.h>
#include <time.h>
#include <sys/types.h>

// ---- atomics on a raw 32-bit word (header-only so Swift can inline them) ----
static inline uint32_t mp_atomic_load_u32(const uint32_t *p) { return __atomic_load_n(p, __ATOMIC_SEQ_CST); }
static inline void mp_atomic_store_u32(uint32_t *p, uint32_t v) { __atomic_store_n(p, v, __ATOMIC_SEQ_CST); }
static inline uint32_t mp_atomic_exchange_u32(uint32_t *p, uint32_t v) {
    return __atomic_exchange_n(p, v, __ATOMIC_SEQ_CST);
}
static inline bool mp_atomic_cas_u32(uint32_t *p, uint32_t expected, uint32_t desired) {
    return __atomic_compare_exchange_n(p, &expected, desired, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
}
static inline bool mp_atomic_cas_acquire_u32(uint32_t *p, uint32_t expected, uint32_t desired) {
    return __atomic_compare_exchange_n(p, &expected, desired, false, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED);
}
static inline uint32_t mp_atomic_exchange_release_u32(uint32_t *p, uint32_t v) {
    return __atomic_exchange_n(p, v, __ATOMIC_RELEASE);
}
static inline uint32_t mp_atomic_fetch_add_u32(uint32_t *p, uint32_t v) {
    return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST);
}
static inline uint32_t mp_atomic_fetch_sub_u32(uint32_t *p, uint32_t v) {
    return __atomic_fetch_sub(p, v, __ATOMIC_SEQ_CST);
}
static inline void mp_cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

// ---- futex ----
/// Waits while `*addr == expected`, until woken or until the absolute CLOCK_MONOTONIC `deadline`
/// (NULL: forever). Returns 0 when woken (or spuriously), else an errno value (ETIMEDOUT, EAGAIN, EINTR).
int mp_futex_wait(uint32_t *addr, uint32_t expected, const struct timespec *deadline);
/// Wakes up to `count` waiters on `addr`; returns how many were woken.
int mp_futex_wake(uint32_t *addr, int count);

// ---- threads ----
pid_t mp_gettid(void);
uint64_t mp_pthread_self(void);
/// Starts a detached pthread running `body(context)`; returns 0 or an errno value.
int mp_thread_start(void (*body)(void *), void *context, size_t stack_size, uint64_t *out_pthread);
int mp_set_thread_name(const char *name);
/// The pthread id of the main thread, captured by a load-time constructor.
uint64_t mp_main_pthread(void);
long mp_cpu_count(void);

#endif
