#define _GNU_SOURCE
#include "CMultiprocessingShims.h"
#include <errno.h>
#include <poll.h>
#include <linux/futex.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <sched.h>
#include <dlfcn.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <sys/random.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/stat.h>

int mp_futex_wait(uint32_t *addr, uint32_t expected, const struct timespec *deadline) {
    // FUTEX_WAIT_BITSET takes an absolute CLOCK_MONOTONIC deadline, so retries need no recomputation.
    long r = syscall(SYS_futex, addr, FUTEX_WAIT_BITSET | FUTEX_PRIVATE_FLAG, expected, deadline, NULL,
                     FUTEX_BITSET_MATCH_ANY);
    return r == 0 ? 0 : -errno;
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
    if (!args) return -ENOMEM;
    args->body = body;
    args->context = context;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    if (stack_size) pthread_attr_setstacksize(&attr, stack_size);
    pthread_t t;
    int rc = pthread_create(&t, &attr, mp_thread_trampoline, args);
    pthread_attr_destroy(&attr);
    if (rc != 0) { free(args); return -rc; }
    if (out_pthread) *out_pthread = (uint64_t)t;
    return 0;
}

int mp_set_thread_name(const char *name) {
    char buf[16];
    strncpy(buf, name, 15);
    buf[15] = 0;
    return -pthread_setname_np(pthread_self(), buf);
}

static uint64_t mp_main_pthread_id;
__attribute__((constructor)) static void mp_capture_main_thread(void) { mp_main_pthread_id = (uint64_t)pthread_self(); }
uint64_t mp_main_pthread(void) { return mp_main_pthread_id; }

long mp_cpu_count(void) {
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0) return CPU_COUNT(&set);
    return sysconf(_SC_NPROCESSORS_ONLN);
}

int mp_spawn(const char *path, char *const argv[], char *const envp[], int child_fd, int stderr_fd, pid_t *out_pid) {
    int fd = child_fd;
    int tmp = -1;
    if (fd == 3) {  // dup2(3, 3) would keep FD_CLOEXEC: move it first
        tmp = fcntl(fd, F_DUPFD_CLOEXEC, 4);
        if (tmp < 0) return -errno;
        fd = tmp;
    }
    posix_spawn_file_actions_t fa;
    posix_spawnattr_t attr;
    posix_spawn_file_actions_init(&fa);
    posix_spawnattr_init(&attr);
    posix_spawn_file_actions_adddup2(&fa, fd, 3);
    if (stderr_fd >= 0) posix_spawn_file_actions_adddup2(&fa, stderr_fd, 2);
    posix_spawn_file_actions_addclosefrom_np(&fa, 4);
    sigset_t empty, defaults;
    sigemptyset(&empty);
    sigemptyset(&defaults);
    sigaddset(&defaults, SIGINT);
    sigaddset(&defaults, SIGTERM);
    sigaddset(&defaults, SIGPIPE);
    sigaddset(&defaults, SIGCHLD);
    posix_spawnattr_setsigmask(&attr, &empty);
    posix_spawnattr_setsigdefault(&attr, &defaults);
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
    pid_t pid;
    int rc = posix_spawn(&pid, path, &fa, &attr, argv, envp);
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&attr);
    if (tmp >= 0) close(tmp);
    if (rc == 0 && out_pid) *out_pid = pid;
    return -rc;
}

int mp_pidfd_open(pid_t pid) {
    long r = syscall(SYS_pidfd_open, pid, 0);
    return r < 0 ? -errno : (int)r;
}

int mp_memfd_create(const char *name) {
    int fd = memfd_create(name, MFD_CLOEXEC);
    return fd < 0 ? -errno : fd;
}

int mp_wait4_nohang(pid_t pid, int *status, long *maxrss_kib) {
    struct rusage ru;
    memset(&ru, 0, sizeof ru);
    pid_t r = wait4(pid, status, WNOHANG, &ru);
    if (r > 0 && maxrss_kib) *maxrss_kib = ru.ru_maxrss;
    return r >= 0 ? (int)r : -errno;  /* EINTR: SystemCall.loop retries */
}

static int mp_interrupt_fd = -1;

static void mp_interrupt_handler(int sig) {
    (void)sig;
    int saved = errno;
    uint64_t one = 1;
    if (mp_interrupt_fd >= 0) { ssize_t n = write(mp_interrupt_fd, &one, sizeof one); (void)n; }
    errno = saved;
}

int mp_install_interrupt_handler(int eventfd_fd) {
    struct sigaction old;
    if (sigaction(SIGINT, NULL, &old) != 0) return -errno;
    if (old.sa_handler != SIG_DFL || (old.sa_flags & SA_SIGINFO)) return 1;  // someone else's: leave it
    mp_interrupt_fd = eventfd_fd;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = mp_interrupt_handler;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESETHAND | SA_RESTART;  // one-shot: a second Ctrl-C kills at once
    return sigaction(SIGINT, &sa, NULL) == 0 ? 0 : -errno;
}

/// Signals forwarded to eventfds (mp_forward_signal): the descriptor plus one per signal number, 0 for none.
static volatile sig_atomic_t mp_forward_fds[65];

static void mp_forward_handler(int sig) {
    int saved = errno;
    int fd = (sig > 0 && sig < 65) ? (int)mp_forward_fds[sig] - 1 : -1;
    if (fd >= 0) { uint64_t one = 1; ssize_t n = write(fd, &one, sizeof one); (void)n; }
    errno = saved;
}

int mp_forward_signal(int sig, int eventfd_fd) {
    if (sig <= 0 || sig >= 65 || eventfd_fd < 0) return -EINVAL;
    mp_forward_fds[sig] = eventfd_fd + 1;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = mp_forward_handler;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    if (sigaction(sig, &sa, NULL) != 0) return -errno;
    // A program started by another may inherit a mask that blocks it (Foundation's Process passes its
    // thread's mask on): unblock it in this thread, and so in the threads started from here on.
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, sig);
    return pthread_sigmask(SIG_UNBLOCK, &set, NULL) == 0 ? 0 : -EINVAL;
}

int mp_eventfd(unsigned initval) {
    int fd = eventfd(initval, EFD_CLOEXEC | EFD_NONBLOCK);
    return fd < 0 ? -errno : fd;
}

long mp_statm_resident_bytes(pid_t pid) {
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/statm", (int)pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -errno;
    char buf[128];
    ssize_t n = read(fd, buf, sizeof buf - 1);
    int e = errno;
    close(fd);
    if (n < 0) return -e;
    if (n == 0) return -EIO;
    buf[n] = 0;
    long size = 0, resident = 0;
    if (sscanf(buf, "%ld %ld", &size, &resident) != 2) return -EINVAL;
    return resident * sysconf(_SC_PAGESIZE);
}

long mp_peak_resident_bytes(pid_t pid) {
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "re");
    if (f == NULL) return -errno;
    /* Line by line: the Groups line before VmHWM can be long (many supplementary groups). */
    char *line = NULL;
    size_t cap = 0;
    long result = -ENOENT;  /* a zombie, or a kernel thread: no memory figures */
    while (getline(&line, &cap, f) > 0) {
        if (strncmp(line, "VmHWM:", 6) == 0) {
            long kib = 0;
            result = sscanf(line + 6, "%ld", &kib) == 1 ? kib * 1024 : -EINVAL;
            break;
        }
    }
    free(line);
    fclose(f);
    return result;
}

int mp_raise_default(int sig) {
    signal(sig, SIG_DFL);
    return raise(sig) == 0 ? 0 : -errno;
}

int mp_waitpid_blocking(pid_t pid, int *status) {
    pid_t r = waitpid(pid, status, 0);
    return r >= 0 ? (int)r : -errno;  /* EINTR: SystemCall.loop retries */
}

long mp_send_with_fds(int sock, const void *buf, size_t len, const int *fds, int nfds, int flags) {
    struct iovec iov = { .iov_base = (void *)buf, .iov_len = len };
    struct msghdr msg = { 0 };
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    char control[CMSG_SPACE(sizeof(int) * 64)];
    if (nfds > 64) return -EINVAL;
    if (nfds > 0) {
        memset(control, 0, sizeof control);
        msg.msg_control = control;
        msg.msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
        struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
        memcpy(CMSG_DATA(c), fds, sizeof(int) * nfds);
    }
    ssize_t r = sendmsg(sock, &msg, flags | MSG_NOSIGNAL);
    return r >= 0 ? r : -errno;  /* EINTR: SystemCall.loop retries */
}

long mp_recv_with_fds(int sock, void *buf, size_t len, int *fds, int maxfds, int *nfds, int flags) {
    struct iovec iov = { .iov_base = buf, .iov_len = len };
    struct msghdr msg = { 0 };
    char control[CMSG_SPACE(sizeof(int) * 64)];
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    msg.msg_controllen = sizeof control;
    *nfds = 0;
    ssize_t r = recvmsg(sock, &msg, flags | MSG_CMSG_CLOEXEC);
    if (r < 0) return -errno;  /* EINTR: SystemCall.loop retries */
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
        int n = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
        int *in = (int *)CMSG_DATA(c);
        for (int i = 0; i < n; i++) {
            if (*nfds < maxfds) fds[(*nfds)++] = in[i];
            else close(in[i]);
        }
    }
    return r;
}

int mp_set_nodelay(int fd) {
    int one = 1;
    return setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) == 0 ? 0 : -errno;
}

int mp_set_keepalive(int fd, int idle_s, int interval_s, int count, unsigned user_timeout_ms) {
    int one = 1;
    if (setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one) != 0) return -errno;
    if (setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle_s, sizeof idle_s) != 0) return -errno;
    if (setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &interval_s, sizeof interval_s) != 0) return -errno;
    if (setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &count, sizeof count) != 0) return -errno;
    if (setsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &user_timeout_ms, sizeof user_timeout_ms) != 0) return -errno;
    return 0;
}

int mp_contains_bytes(const void *haystack, size_t haystack_len, const void *needle, size_t needle_len) {
    return memmem(haystack, haystack_len, needle, needle_len) != NULL;
}

int mp_peer_gone(int fd) {
    struct pollfd p = {.fd = fd, .events = POLLRDHUP};
    int n = poll(&p, 1, 0);
    return n > 0 && (p.revents & (POLLERR | POLLHUP | POLLRDHUP | POLLNVAL)) ? 1 : 0;
}

int mp_quick_ack(int fd) {
    int one = 1;
    return setsockopt(fd, IPPROTO_TCP, TCP_QUICKACK, &one, sizeof one) == 0 ? 0 : -errno;
}

// ---- worker mode: entered before main ----
// With --static-swift-stdlib, libdispatch is linked into the executable and initialised by a constructor
// that runs *after* ours (static archives come later on the link line), so a worker entered from our
// constructor would find Swift concurrency's global executor dead. In that case only, initialise it
// first. A shared libdispatch was initialised before any constructor of the executable ran.
extern void _libdispatch_init(void) __attribute__((weak));

static void mp_init_static_dispatch(void) {
    if (!_libdispatch_init) return;
    Dl_info lib, self;
    if (dladdr((void *)_libdispatch_init, &lib) && dladdr((void *)mp_init_static_dispatch, &self)
        && lib.dli_fbase == self.dli_fbase) {
        _libdispatch_init();
    }
}

static pid_t mp_worker_tid;

int mp_is_primary_thread(void) {
    pid_t me = (pid_t)syscall(SYS_gettid);
    return me == getpid() || (mp_worker_tid != 0 && me == mp_worker_tid);
}

static void *mp_worker_thread(void *unused) {
    (void)unused;
    mp_worker_tid = (pid_t)syscall(SYS_gettid);
    mp_worker_entry(3);
    _exit(0);
}

/// A forked worker's main thread is a copy of the fork server's, and caches of the thread id that no fork
/// hook resets (the Swift runtime's once-lock, libdispatch's thread data) may hold the server's id there:
/// a lock taken by that thread and contended would then be unlocked as another thread's (a priority-
/// inheritance futex answers EPERM, and the runtime's unlock retries for ever). The worker runs on a new
/// thread instead, whose thread-local data starts empty; the main thread only waits (the worker ends the
/// process). Its stack is as large as the main thread's could grow (RLIMIT_STACK, else 8 MiB).
static void mp_run_worker_on_fresh_thread(void) {
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    struct rlimit rl;
    size_t stack = 8u << 20;
    if (getrlimit(RLIMIT_STACK, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur >= (64u << 10))
        stack = (size_t)rl.rlim_cur;
    pthread_attr_setstacksize(&attr, stack);
    pthread_t t;
    int rc = pthread_create(&t, &attr, mp_worker_thread, NULL);
    pthread_attr_destroy(&attr);
    if (rc != 0) rc = pthread_create(&t, NULL, mp_worker_thread, NULL);  // a smaller stack, then
    if (rc != 0) return;  // no thread at all: the worker runs on this one (the caller goes on)
    pthread_join(t, NULL);
    _exit(0);
}

static int mp_deferred;
int mp_worker_deferred(void) { return mp_deferred; }

__attribute__((constructor)) static void mp_worker_hook(void) {
    const char *mode = getenv("SWIFT_MP_WORKER");
    if (!mode) return;
    // Grandchildren start clean: the marker is for this process only.
    char parent_buf[32] = {0};
    const char *parent = getenv("SWIFT_MP_PARENT");
    if (parent) strncpy(parent_buf, parent, sizeof parent_buf - 1);
    unsetenv("SWIFT_MP_WORKER");
    unsetenv("SWIFT_MP_PARENT");
    // Die with the parent: parent-death signal (set only when the parent's spawning thread is its main
    // thread, see the Swift side), then a check that closes the race with a parent that already died.
    long ppid = 0;
    int parent_death = 0;
    if (parent_buf[0]) {
        ppid = strtol(parent_buf, NULL, 10);
        parent_death = strchr(parent_buf, 'd') != NULL;
        if (parent_death) prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (ppid > 0 && getppid() != (pid_t)ppid) _exit(70);
    }
    char entry = mode[0];
    int forked = 0;
    if (entry == 'f') {  // the fork server: returns only in a worker it forked
        uint32_t flags = mp_fork_server_serve(3, (pid_t)ppid, parent_death);
        entry = (flags & MP_FORK_BOOTSTRAP) ? 'b' : 'c';
        forked = 1;
    }
    if (entry == 'b') { mp_deferred = 1; return; }
    if (!mp_worker_entry) {
        static const char msg[] = "swift-multiprocessing: started as a worker, but the Multiprocessing module is not linked\n";
        (void)!write(2, msg, sizeof msg - 1);
        _exit(70);
    }
    mp_init_static_dispatch();
    if (forked) mp_run_worker_on_fresh_thread();
    mp_worker_entry(3);
    _exit(0);
}

int mp_pipe_cloexec(int fds[2]) { return pipe2(fds, O_CLOEXEC) == 0 ? 0 : -errno; }

int mp_pidfd_send_signal(int pidfd, int sig) {
    long r = syscall(SYS_pidfd_send_signal, pidfd, sig, NULL, 0);
    return r == 0 ? 0 : -errno;
}

int mp_set_child_subreaper(int on) { return prctl(PR_SET_CHILD_SUBREAPER, on) == 0 ? 0 : -errno; }


int mp_accept_nonblocking(int fd) {
    int s = accept4(fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
    return s >= 0 ? s : -errno;
}

int mp_getrandom(void *buf, size_t len) {
    size_t done = 0;
    while (done < len) {
        ssize_t n = getrandom((char *)buf + done, len - done, 0);
        if (n < 0) { if (errno == EINTR) continue; return -errno; }
        done += (size_t)n;
    }
    return 0;
}

int mp_shared_mutex_init(pthread_mutex_t *m) {
    pthread_mutexattr_t a;
    pthread_mutexattr_init(&a);
    pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
    pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
    int rc = pthread_mutex_init(m, &a);
    pthread_mutexattr_destroy(&a);
    return -rc;
}

int mp_shared_mutex_lock(pthread_mutex_t *m) {
    int rc = pthread_mutex_lock(m);
    if (rc == EOWNERDEAD) {
        pthread_mutex_consistent(m);
        return 1;
    }
    return -rc;
}

int mp_shared_mutex_unlock(pthread_mutex_t *m) { return -pthread_mutex_unlock(m); }

int mp_shared_rmutex_init(pthread_mutex_t *m) {
    pthread_mutexattr_t a;
    pthread_mutexattr_init(&a);
    pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
    pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
    pthread_mutexattr_settype(&a, PTHREAD_MUTEX_RECURSIVE);
    int rc = pthread_mutex_init(m, &a);
    pthread_mutexattr_destroy(&a);
    return -rc;
}

int mp_shared_mutex_timedlock(pthread_mutex_t *m, const struct timespec *deadline) {
    int rc = deadline ? pthread_mutex_clocklock(m, CLOCK_MONOTONIC, deadline) : pthread_mutex_lock(m);
    if (rc == EOWNERDEAD) {
        pthread_mutex_consistent(m);
        return 1;
    }
    return -rc;
}

int mp_shared_mutex_trylock(pthread_mutex_t *m) {
    int rc = pthread_mutex_trylock(m);
    if (rc == EOWNERDEAD) {
        pthread_mutex_consistent(m);
        return 1;
    }
    return -rc;
}

long mp_fd_inode(int fd) {
    struct stat st;
    return fstat(fd, &st) == 0 ? (long)st.st_ino : -errno;
}

int mp_futex_wait_shared(uint32_t *addr, uint32_t expected, const struct timespec *deadline) {
    long r = syscall(SYS_futex, addr, FUTEX_WAIT_BITSET, expected, deadline, NULL, FUTEX_BITSET_MATCH_ANY);
    return r == 0 ? 0 : -errno;
}

int mp_futex_wake_shared(uint32_t *addr, int count) {
    long r = syscall(SYS_futex, addr, FUTEX_WAKE, count, NULL, NULL, 0);
    return r < 0 ? 0 : (int)r;
}

int mp_map_shared(int fd, size_t size, void **out) {
    void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) return -errno;
    *out = p;
    return 0;
}

int mp_unmap(void *p, size_t size) { return munmap(p, size) == 0 ? 0 : -errno; }

int mp_ftruncate(int fd, long size) { return ftruncate(fd, size) == 0 ? 0 : -errno; }

long mp_fd_size(int fd) {
    struct stat st;
    return fstat(fd, &st) == 0 ? (long)st.st_size : -errno;
}

void mp_stdout_line_buffered(void) { setvbuf(stdout, NULL, _IOLBF, 0); }

int mp_thread_join(uint64_t thread) { return -pthread_join((pthread_t)thread, NULL); }

int mp_thread_detach(uint64_t thread) { return -pthread_detach((pthread_t)thread); }
