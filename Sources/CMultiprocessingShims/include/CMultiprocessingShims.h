#ifndef C_MULTIPROCESSING_SHIMS_H
#define C_MULTIPROCESSING_SHIMS_H

#ifndef __linux__
#error "swift-multiprocessing runs on Linux only: it is built on futex, pidfd, eventfd, epoll and memfd (CONTRIBUTING.md, Porting)"
#endif
#include <stdint.h>
#include <stdbool.h>
#include <time.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <sys/epoll.h>
#include <poll.h>

// One return convention for every function that can fail: a value >= 0 on success (0, a descriptor, a
// count, a pid), minus the errno value on failure (pthread error codes likewise, negated). Swift callers
// turn a negative result into an error with `Syscall.check` (Multiprocessing) or read it as `-rc`.
// Pointers come back through out-parameters.

// ---- ThreadSanitizer annotations ----
// Swift's Synchronization.Mutex takes its contended path (FUTEX_LOCK_PI) inside the uninstrumented
// standard library, so ThreadSanitizer does not see that acquisition and reports the state the mutex
// guards as raced. TrackedMutex (Threading) tells it: acquire after locking, release before unlocking.
// The runtime's entry points are weak: in a build without -sanitize=thread they are null and these do
// nothing but test a pointer.
void __tsan_acquire(void *addr) __attribute__((weak));
void __tsan_release(void *addr) __attribute__((weak));
static inline void mp_tsan_acquire(void *addr) { if (__tsan_acquire) __tsan_acquire(addr); }
static inline void mp_tsan_release(void *addr) { if (__tsan_release) __tsan_release(addr); }

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
static inline uint64_t mp_atomic_load_u64(const uint64_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static inline void mp_atomic_store_u64(uint64_t *p, uint64_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
static inline void mp_cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

// ---- futex ----
/// Waits while `*addr == expected`, until woken or until the absolute CLOCK_MONOTONIC `deadline`
/// (NULL: forever). Returns 0 when woken (or spuriously), else -ETIMEDOUT, -EAGAIN or -EINTR.
int mp_futex_wait(uint32_t *addr, uint32_t expected, const struct timespec *deadline);
/// Wakes up to `count` waiters on `addr`; returns how many were woken.
int mp_futex_wake(uint32_t *addr, int count);

// ---- threads ----
pid_t mp_gettid(void);
uint64_t mp_pthread_self(void);
/// Starts a joinable pthread running `body(context)`; returns 0 or -errno.
int mp_thread_start(void (*body)(void *), void *context, size_t stack_size, uint64_t *out_pthread);
/// pthread_join; 0 or -errno.
int mp_thread_join(uint64_t thread);
int mp_thread_detach(uint64_t thread);
int mp_set_thread_name(const char *name);
/// The pthread id of the main thread, captured by a load-time constructor.
uint64_t mp_main_pthread(void);
long mp_cpu_count(void);


// ---- processes ----
/// Spawns `path` with `argv`/`envp` (NULL-terminated); `child_fd` becomes fd 3 in the child and every
/// other descriptor >= 3 is closed there. Signal mask emptied, SIGINT/SIGTERM/SIGPIPE reset to default.
/// Returns 0 or -errno.
/// Spawns `path` with `child_fd` as fd 3 and, when `stderr_fd` >= 0, that descriptor as fd 2.
int mp_spawn(const char *path, char *const argv[], char *const envp[], int child_fd, int stderr_fd, pid_t *out_pid);
/// waitpid(WNOHANG) that also reports the child's peak resident set (KiB) from its rusage.
int mp_wait4_nohang(pid_t pid, int *status, long *maxrss_kib);
/// Installs a one-shot (SA_RESETHAND) SIGINT handler writing to `eventfd_fd`; returns 1 and does
/// nothing if SIGINT already has a handler other than the default.
int mp_install_interrupt_handler(int eventfd_fd);
/// Installs a handler for `sig` that adds 1 to `eventfd_fd` (async-signal-safe), and unblocks `sig` in the
/// calling thread. Returns 0 or -errno.
int mp_forward_signal(int sig, int eventfd_fd);
/// A non-blocking, close-on-exec eventfd, or -errno.
int mp_eventfd(unsigned initval);
/// Resident bytes of `pid` from /proc/PID/statm.
long mp_statm_resident_bytes(pid_t pid);
/// Peak resident bytes (VmHWM) of `pid` from /proc/PID/status; -errno when it cannot be read.
long mp_peak_resident_bytes(pid_t pid);
/// Restores the default action for `sig` and raises it.
int mp_raise_default(int sig);
int mp_pidfd_open(pid_t pid);
/// Sends `sig` through a pidfd (never hits a recycled pid); 0 or -errno.
int mp_pidfd_send_signal(int pidfd, int sig);
int mp_set_child_subreaper(int on);
int mp_memfd_create(const char *name);
/// Waits until `pid` ends: its pid (with *status set), or -errno (EINTR too: SystemCall.loop retries).
int mp_waitpid_blocking(pid_t pid, int *status);
static inline int mp_wifexited(int status) { return WIFEXITED(status); }
static inline int mp_wexitstatus(int status) { return WEXITSTATUS(status); }
static inline int mp_wifsignaled(int status) { return WIFSIGNALED(status); }
static inline int mp_wtermsig(int status) { return WTERMSIG(status); }

// ---- sockets with descriptor passing ----
/// sendmsg of `len` bytes with `nfds` descriptors as SCM_RIGHTS; returns bytes sent or -errno.
long mp_send_with_fds(int sock, const void *buf, size_t len, const int *fds, int nfds, int flags);
/// recvmsg into `buf`; received descriptors (MSG_CMSG_CLOEXEC) go to `fds` (at most `maxfds`, the
/// count in `*nfds`; extra ones are closed). Returns bytes received or -errno.
long mp_recv_with_fds(int sock, void *buf, size_t len, int *fds, int maxfds, int *nfds, int flags);
int mp_set_nodelay(int fd);
/// TCP keep-alive probes after `idle_s` seconds of silence, every `interval_s`, `count` unanswered ones
/// ending the connection (ETIMEDOUT), and TCP_USER_TIMEOUT: data left unacknowledged for
/// `user_timeout_ms` ends it too. 0 or -errno.
int mp_set_keepalive(int fd, int idle_s, int interval_s, int count, unsigned user_timeout_ms);
/// Acknowledge the next segments at once (TCP_QUICKACK; the kernel clears it again by itself): a CPython
/// peer, which does not set TCP_NODELAY, otherwise waits for our delayed ACK (40 ms) before each message
/// that follows another of its own. 0 or -errno (not a TCP socket).
int mp_quick_ack(int fd);
/// 1 when the connection's peer is gone (an error such as a keep-alive time-out, a hang-up, or the peer
/// closed its side), 0 when not, without reading anything.
int mp_peer_gone(int fd);
/// Whether `needle` (`needle_len` bytes) occurs in `haystack` (glibc's memmem, which needs _GNU_SOURCE).
int mp_contains_bytes(const void *haystack, size_t haystack_len, const void *needle, size_t needle_len);
int mp_pipe_cloexec(int fds[2]);
/// Makes standard output line-buffered.
void mp_stdout_line_buffered(void);
/// accept4(SOCK_CLOEXEC | SOCK_NONBLOCK); the descriptor or -errno.
int mp_accept_nonblocking(int fd);
/// Fills `buf` from the kernel CSPRNG; 0 or -errno.
int mp_getrandom(void *buf, size_t len);
static const short MP_POLLRDHUP = 0x2000;

// ---- shared memory primitives (process-shared) ----
#include <pthread.h>
/// Initialises a process-shared, robust mutex in shared memory; 0 or -errno.
int mp_shared_mutex_init(pthread_mutex_t *m);
/// Locks it; returns 0, or 1 when the previous owner died holding it (the state was made consistent
/// again), or -errno.
int mp_shared_mutex_lock(pthread_mutex_t *m);
int mp_shared_mutex_unlock(pthread_mutex_t *m);
/// Initialises a process-shared, robust, recursive mutex (an RLock); 0 or -errno.
int mp_shared_rmutex_init(pthread_mutex_t *m);
/// Locks before the absolute CLOCK_MONOTONIC `deadline` (NULL: no limit). Returns 0, or 1 when the
/// previous owner died holding it (made consistent again), -ETIMEDOUT, or -errno (-EAGAIN: a recursive
/// lock's count is exhausted).
int mp_shared_mutex_timedlock(pthread_mutex_t *m, const struct timespec *deadline);
/// 0, 1 (previous owner died), -EBUSY, or -errno.
int mp_shared_mutex_trylock(pthread_mutex_t *m);
/// The inode number of `fd`, or -errno.
long mp_fd_inode(int fd);
static inline uint64_t mp_atomic_fetch_add_u64(uint64_t *p, uint64_t v) {
    return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST);
}
static inline bool mp_atomic_cas_u64(uint64_t *p, uint64_t expected, uint64_t desired) {
    return __atomic_compare_exchange_n(p, &expected, desired, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
}
static inline uint64_t mp_atomic_exchange_u64(uint64_t *p, uint64_t v) {
    return __atomic_exchange_n(p, v, __ATOMIC_SEQ_CST);
}
/// futex wait/wake on memory shared between processes (no FUTEX_PRIVATE_FLAG).
int mp_futex_wait_shared(uint32_t *addr, uint32_t expected, const struct timespec *deadline);
int mp_futex_wake_shared(uint32_t *addr, int count);
/// mmap(MAP_SHARED) of `fd` for reading and writing into `*out`.
int mp_map_shared(int fd, size_t size, void **out);
int mp_unmap(void *p, size_t size);
int mp_ftruncate(int fd, long size);
long mp_fd_size(int fd);

// ---- worker mode ----
/// Set by the load-time hook: 1 when this process was started as a worker whose entry is deferred to an
/// explicit bootstrap() call.
int mp_worker_deferred(void);
/// Whether the calling thread is the process's primary one: its main thread, or in a worker forked by the
/// fork server, the thread the worker runs on (it lives until the process ends). A parent-death signal set
/// from it is safe (it fires when the *thread* that started the child exits).
int mp_is_primary_thread(void);
/// The worker entry point, defined in Swift (`@_cdecl`) by the Multiprocessing module. Weak, so that
/// programs that do not link Multiprocessing are unaffected.
extern void mp_worker_entry(int fd) __attribute__((weak));

// ---- the fork server (forkserver.c) ----
/// O_PATH (Glibc's module leaves it out): a descriptor that names a directory without reading it.
#define MP_O_PATH 0x200000
#define MP_FORK_MAGIC 0x4d504652u  /* "MPFR" */
/// The child enters at bootstrap() (main.swift runs down to it) instead of at once.
#define MP_FORK_BOOTSTRAP 1u
/// The child dies with the program (its parent-death signal when the server has one, and a check).
#define MP_FORK_DIE_WITH_PARENT 2u
/// Which standard streams the request carries (after the channel and the working directory, in this
/// order); one not carried is closed in the child, as it was in the program.
#define MP_FORK_HAS_STDIN 4u
#define MP_FORK_HAS_STDOUT 8u
#define MP_FORK_HAS_STDERR 16u
/// A request to the fork server: one message, with its descriptors as SCM_RIGHTS.
typedef struct { uint32_t magic; uint32_t flags; } mp_fork_request;
/// The fork server's answer: the child's pid, or 0 and an errno. Its first message (after it started) is
/// its own pid and 0, or the errno that makes forking unsafe here (it then exits).
typedef struct { int32_t pid; int32_t error; } mp_fork_reply;
/// Serves fork requests on `ctl` until it closes (then exits). Returns only in a forked child, with the
/// request's flags.
uint32_t mp_fork_server_serve(int ctl, pid_t parent, int parent_death);
/// Defined in Swift by Multiprocessing (`@_cdecl`): work the server does once, before forking, so that
/// its workers need not (the runtime's conformance caches). Weak, as mp_worker_entry.
extern void mp_fork_server_prepare(void) __attribute__((weak));

#endif
