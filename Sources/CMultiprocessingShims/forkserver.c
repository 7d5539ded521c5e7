// The fork server: this executable started once in worker mode 'f', before `main`, still single-threaded,
// forking workers on request. See StartMethods.md ("The fork server") for what makes this safe.
//
// It is C on purpose and runs inside the load-time constructor: no Swift code, no thread, no runtime
// state that fork() could break exists in it. The C library's own fork() is not used because its child
// would be the server's child; workers must be children of the program that asked for them (it reaps
// them, reads their rusage and gets SIGCHLD), so the server clones with CLONE_PARENT and repeats in the
// child what glibc's fork() does for a single-threaded process: the thread id in the thread descriptor
// (CLONE_CHILD_SETTID at the address the kernel was given by set_tid_address, read back with
// PR_GET_TID_ADDRESS) and the robust-mutex list (set_robust_list with the head get_robust_list reports).
// glibc's other child steps reset locks other threads could have held, which a single-threaded process
// has none of; pthread_atfork child handlers are not run (those of libdispatch and Foundation do nothing
// when the process had no other thread).
//
// System calls here retry EINTR themselves: this runs before any Swift code could (SystemCall.loop is the
// rule everywhere else).
#define _GNU_SOURCE
#include "CMultiprocessingShims.h"
#include <errno.h>
#include <fcntl.h>
#include <linux/futex.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <pthread.h>
#include <unistd.h>

/// The threads this process has (field 20 of /proc/self/stat), or -1 if it cannot be read.
static int mp_thread_count(void) {
    int fd;
    do { fd = open("/proc/self/stat", O_RDONLY | O_CLOEXEC); } while (fd < 0 && errno == EINTR);
    if (fd < 0) return -1;
    char buf[1024];
    ssize_t n;
    do { n = read(fd, buf, sizeof buf - 1); } while (n < 0 && errno == EINTR);
    close(fd);
    if (n <= 0) return -1;
    buf[n] = 0;
    // The command name (field 2) is in parentheses and may contain spaces: count from the last ')'.
    char *p = strrchr(buf, ')');
    if (!p) return -1;
    int field = 2;
    for (; *p && field < 20; p++) if (*p == ' ') field++;
    return *p ? atoi(p) : -1;
}

/// fork() as glibc does it for a single-threaded process (CLONE_CHILD_SETTID/CLEARTID at the thread
/// descriptor's tid), with the child made the caller's sibling when `sibling` is set. -1 and ENOSYS where
/// the clone system call's argument order is not known here.
static long mp_clone(int *tid_address, int sibling) {
    unsigned long flags = CLONE_CHILD_SETTID | CLONE_CHILD_CLEARTID | SIGCHLD | (sibling ? CLONE_PARENT : 0);
#if defined(__x86_64__)
    return syscall(SYS_clone, flags, 0, NULL, tid_address, 0);
#elif defined(__i386__) || defined(__aarch64__) || defined(__arm__) || defined(__powerpc__) \
    || defined(__powerpc64__)
    // CONFIG_CLONE_BACKWARDS: the thread-pointer argument comes before the child's tid address. (The
    // server checks the order once, below, before it serves.)
    return syscall(SYS_clone, flags, 0, NULL, 0, tid_address);
#else
    (void)tid_address;
    (void)flags;
    errno = ENOSYS;
    return -1;
#endif
}

/// Whether a child cloned as the workers will be finds its own thread id where glibc keeps it: a child
/// of the server that checks and exits at once. 0, or the errno that makes the server decline.
static int mp_clone_self_test(int *tid_address) {
    long pid = mp_clone(tid_address, 0);
    if (pid < 0) return errno;  // ENOSYS here; EAGAIN or ENOMEM (a limit) the program may retry
    if (pid == 0) _exit(*tid_address == (int)syscall(SYS_gettid) ? 0 : 1);
    int status = 0;
    long r;
    do { r = waitpid((pid_t)pid, &status, 0); } while (r < 0 && errno == EINTR);
    if (r == pid && WIFEXITED(status) && WEXITSTATUS(status) == 1) return ENOSYS;  // the order is wrong
    return r == pid && WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : EAGAIN;  // killed: try later
}

static void *mp_fork_server_prepare_thread(void *unused) {
    (void)unused;
    mp_fork_server_prepare();
    return NULL;
}

/// The warm-up (Swift, `forkServerPrepare`) on a thread of its own, joined before the server forks: what
/// it leaves is in caches the whole process shares, while the main thread, whose copy becomes every
/// worker's main thread, never runs Swift code (thread-local caches of the thread id, in the runtime's
/// and the Synchronization module's locks, would otherwise hold the server's id in every worker).
static int mp_run_warm_up(void) {
    if (!mp_fork_server_prepare) return 0;
    pthread_t t;
    if (pthread_create(&t, NULL, mp_fork_server_prepare_thread, NULL) != 0) return 0;  // only slower
    pthread_join(t, NULL);
    return 0;
}

static int mp_send_reply(int ctl, int32_t pid, int32_t error) {
    mp_fork_reply reply = { .pid = pid, .error = error };
    ssize_t n;
    do { n = send(ctl, &reply, sizeof reply, MSG_NOSIGNAL); } while (n < 0 && errno == EINTR);
    return n == (ssize_t)sizeof reply ? 0 : -1;
}

/// In the child: the request's descriptors in place (fd 3 the worker's channel, 0–2 the parent's standard
/// streams at the time of the request), its working directory, its parent-death signal. Returns the
/// request's flags; exits if the child cannot be set up or its parent is already gone.
static uint32_t mp_fork_server_child(const mp_fork_request *req, const int *fds, int nfds, void *robust_head,
                                     size_t robust_len, pid_t parent, int parent_death) {
    syscall(SYS_set_robust_list, robust_head, robust_len);
    signal(SIGINT, SIG_DFL);  // as a spawned worker starts (the server ignores it, see below)
    // fds: channel, working directory, then the standard streams the request says it sent (all >= 4, as
    // 0-3 are always open in the server; dup2 leaves the copies without close-on-exec).
    int next = 2;
    int ok = dup2(fds[0], 3) == 3 && fchdir(fds[1]) == 0;
    for (int s = 0; ok && s < 3; s++) {
        if (req->flags & (MP_FORK_HAS_STDIN << s)) ok = next < nfds && dup2(fds[next++], s) == s;
        else close(s);
    }
    for (int i = 0; i < nfds; i++) close(fds[i]);
    if (!ok) _exit(70);
    if (req->flags & MP_FORK_DIE_WITH_PARENT) {
        if (parent_death) prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent) _exit(70);
    }
    return req->flags;
}

uint32_t mp_fork_server_serve(int ctl, pid_t parent, int parent_death) {
    // The server holds none of the program's standard streams (a reader of the program's output must see
    // its end when the program closes it); each worker gets the program's own with its request. This also
    // keeps 0-2 taken, so that received descriptors are never placed there.
    int null = open("/dev/null", O_RDWR | O_CLOEXEC);
    for (int s = 0; s < 3 && null >= 0; s++) dup2(null, s);
    if (null > 2) close(null);
    int *tid_address = NULL;
    void *robust_head = NULL;
    size_t robust_len = 0;
    int32_t error = 0;
    int threads = mp_thread_count();
    if (prctl(PR_GET_TID_ADDRESS, &tid_address, 0, 0, 0) != 0) error = errno;
    else if (!tid_address || *tid_address != (int)syscall(SYS_gettid)) error = ENOTSUP;  // not glibc's layout
    else if (syscall(SYS_get_robust_list, 0, &robust_head, &robust_len) != 0) error = errno;
    else if (threads < 0) error = ENOENT;  // no /proc: whether fork is safe cannot be told
    else if (threads != 1) error = EDEADLK;  // a library started a thread: fork would be unsafe
    else error = mp_clone_self_test(tid_address);
    if (!error) {
        mp_run_warm_up();
        // The joined thread leaves the kernel's count a moment after pthread_join returns (its id is
        // cleared as it exits, before it is released): wait for that, a second at most.
        int single = 0;
        for (int i = 0; i < 1000 && !(single = mp_thread_count() == 1); i++) {
            struct timespec ms = { 0, 1000000 };
            nanosleep(&ms, NULL);
        }
        if (!single) error = EBUSY;  // the warm-up's thread must be gone, and no other may exist
    }
    if (mp_send_reply(ctl, getpid(), error) != 0 || error) _exit(0);
    // A Ctrl-C in the terminal reaches the whole process group: the program decides what its workers do,
    // and the server it would otherwise kill is not for it to stop.
    signal(SIGINT, SIG_IGN);
    for (;;) {
        mp_fork_request req;
        int fds[8];
        int nfds = 0;
        long n;
        do { n = mp_recv_with_fds(ctl, &req, sizeof req, fds, 8, &nfds, 0); } while (n == -EINTR);
        if (n <= 0) _exit(0);  // the program closed its end, or is gone
        int32_t pid = 0;
        error = 0;
        if (n != (long)sizeof req || req.magic != MP_FORK_MAGIC || nfds < 2) {
            error = EPROTO;
        } else {
            long r = mp_clone(tid_address, 1);
            if (r == 0) return mp_fork_server_child(&req, fds, nfds, robust_head, robust_len, parent, parent_death);
            if (r < 0) error = errno; else pid = (int32_t)r;
        }
        for (int i = 0; i < nfds; i++) close(fds[i]);
        if (mp_send_reply(ctl, pid, error) != 0) _exit(0);
    }
}
