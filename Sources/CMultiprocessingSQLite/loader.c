#include "mp_sqlite3.h"
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <stdint.h>

// Function pointers, filled once by mp_sqlite3_load.
#define MP_SQLITE_FUNCTIONS(X) \
    X(const char *, sqlite3_libversion, (void)) \
    X(int, sqlite3_open_v2, (const char *, mp_sqlite3 **, int, const char *)) \
    X(int, sqlite3_close_v2, (mp_sqlite3 *)) \
    X(const char *, sqlite3_errmsg, (mp_sqlite3 *)) \
    X(int, sqlite3_extended_errcode, (mp_sqlite3 *)) \
    X(int, sqlite3_extended_result_codes, (mp_sqlite3 *, int)) \
    X(int, sqlite3_busy_timeout, (mp_sqlite3 *, int)) \
    X(int, sqlite3_busy_handler, (mp_sqlite3 *, int (*)(void *, int), void *)) \
    X(int, sqlite3_exec, (mp_sqlite3 *, const char *, void *, void *, char **)) \
    X(int, sqlite3_prepare_v2, (mp_sqlite3 *, const char *, int, mp_sqlite3_stmt **, const char **)) \
    X(int, sqlite3_step, (mp_sqlite3_stmt *)) \
    X(int, sqlite3_reset, (mp_sqlite3_stmt *)) \
    X(int, sqlite3_clear_bindings, (mp_sqlite3_stmt *)) \
    X(int, sqlite3_finalize, (mp_sqlite3_stmt *)) \
    X(int, sqlite3_bind_parameter_count, (mp_sqlite3_stmt *)) \
    X(int, sqlite3_bind_null, (mp_sqlite3_stmt *, int)) \
    X(int, sqlite3_bind_int64, (mp_sqlite3_stmt *, int, int64_t)) \
    X(int, sqlite3_bind_double, (mp_sqlite3_stmt *, int, double)) \
    X(int, sqlite3_bind_text, (mp_sqlite3_stmt *, int, const char *, int, void (*)(void *))) \
    X(int, sqlite3_bind_blob, (mp_sqlite3_stmt *, int, const void *, int, void (*)(void *))) \
    X(int, sqlite3_column_count, (mp_sqlite3_stmt *)) \
    X(const char *, sqlite3_column_name, (mp_sqlite3_stmt *, int)) \
    X(const char *, sqlite3_column_decltype, (mp_sqlite3_stmt *, int)) \
    X(int, sqlite3_column_type, (mp_sqlite3_stmt *, int)) \
    X(int64_t, sqlite3_column_int64, (mp_sqlite3_stmt *, int)) \
    X(double, sqlite3_column_double, (mp_sqlite3_stmt *, int)) \
    X(const unsigned char *, sqlite3_column_text, (mp_sqlite3_stmt *, int)) \
    X(const void *, sqlite3_column_blob, (mp_sqlite3_stmt *, int)) \
    X(int, sqlite3_column_bytes, (mp_sqlite3_stmt *, int)) \
    X(int, sqlite3_changes, (mp_sqlite3 *)) \
    X(int64_t, sqlite3_last_insert_rowid, (mp_sqlite3 *)) \
    X(int, sqlite3_get_autocommit, (mp_sqlite3 *)) \
    X(void, sqlite3_interrupt, (mp_sqlite3 *))

#define DECLARE(ret, name, args) static ret(*p_##name) args;
MP_SQLITE_FUNCTIONS(DECLARE)

static pthread_once_t once = PTHREAD_ONCE_INIT;
static char loadError[512];

static void load(void) {
    const char *names[] = {"libsqlite3.so.0", "libsqlite3.so", "libsqlite3.0.dylib", "libsqlite3.dylib"};
    void *h = NULL;
    for (size_t i = 0; i < sizeof names / sizeof names[0] && h == NULL; i++) h = dlopen(names[i], RTLD_NOW | RTLD_LOCAL);
    if (h == NULL) {
        snprintf(loadError, sizeof loadError, "SQLite is not installed: %s (Debian: apt-get install libsqlite3-0)", dlerror());
        return;
    }
#define LOAD(ret, name, args) \
    p_##name = (ret(*) args)dlsym(h, #name); \
    if (p_##name == NULL) { snprintf(loadError, sizeof loadError, "libsqlite3 lacks %s", #name); return; }
    MP_SQLITE_FUNCTIONS(LOAD)
}

int mp_sqlite3_load(char *error, size_t errorLength) {
    pthread_once(&once, load);
    if (loadError[0] != 0) {
        if (error != NULL && errorLength > 0) snprintf(error, errorLength, "%s", loadError);
        return -1;
    }
    return 0;
}

#define MP_TRANSIENT ((void (*)(void *))-1)

const char *mp_sqlite3_libversion(void) { return p_sqlite3_libversion(); }
int mp_sqlite3_open_v2(const char *f, mp_sqlite3 **db, int flags, const char *vfs) {
    int rc = p_sqlite3_open_v2(f, db, flags, vfs);
    if (*db != NULL) p_sqlite3_extended_result_codes(*db, 1);
    return rc;
}
int mp_sqlite3_close_v2(mp_sqlite3 *db) { return p_sqlite3_close_v2(db); }
const char *mp_sqlite3_errmsg(mp_sqlite3 *db) { return p_sqlite3_errmsg(db); }
int mp_sqlite3_extended_errcode(mp_sqlite3 *db) { return p_sqlite3_extended_errcode(db); }
int mp_sqlite3_busy_timeout(mp_sqlite3 *db, int ms) { return p_sqlite3_busy_timeout(db, ms); }
static int64_t nowNanoseconds(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

// The handler's argument is the time limit in ms, in the pointer itself; the first call's time is kept
// per thread (a connection is used by one thread at a time, and a wait is one call's).
static __thread int64_t busySince;
static int shortBusy(void *limit, int count) {
    int64_t now = nowNanoseconds();
    if (count == 0) busySince = now;
    if (now - busySince >= (int64_t)(intptr_t)limit * 1000000) return 0;
    int64_t sleep = 50000;
    for (int i = 0; i < count && sleep < 2000000; i++) sleep *= 2;
    if (sleep > 2000000) sleep = 2000000;
    struct timespec t = {0, (long)sleep};
    nanosleep(&t, NULL);
    return 1;
}

int mp_sqlite3_short_busy_timeout(mp_sqlite3 *db, int ms) {
    return p_sqlite3_busy_handler(db, ms > 0 ? shortBusy : NULL, (void *)(intptr_t)ms);
}
int mp_sqlite3_exec(mp_sqlite3 *db, const char *sql) { return p_sqlite3_exec(db, sql, NULL, NULL, NULL); }
int mp_sqlite3_prepare_v2(mp_sqlite3 *db, const char *sql, int n, mp_sqlite3_stmt **s, const char **tail) {
    return p_sqlite3_prepare_v2(db, sql, n, s, tail);
}
int mp_sqlite3_step(mp_sqlite3_stmt *s) { return p_sqlite3_step(s); }
int mp_sqlite3_reset(mp_sqlite3_stmt *s) { return p_sqlite3_reset(s); }
int mp_sqlite3_clear_bindings(mp_sqlite3_stmt *s) { return p_sqlite3_clear_bindings(s); }
int mp_sqlite3_finalize(mp_sqlite3_stmt *s) { return p_sqlite3_finalize(s); }
int mp_sqlite3_bind_parameter_count(mp_sqlite3_stmt *s) { return p_sqlite3_bind_parameter_count(s); }
int mp_sqlite3_bind_null(mp_sqlite3_stmt *s, int i) { return p_sqlite3_bind_null(s, i); }
int mp_sqlite3_bind_int64(mp_sqlite3_stmt *s, int i, int64_t v) { return p_sqlite3_bind_int64(s, i, v); }
int mp_sqlite3_bind_double(mp_sqlite3_stmt *s, int i, double v) { return p_sqlite3_bind_double(s, i, v); }
int mp_sqlite3_bind_text(mp_sqlite3_stmt *s, int i, const char *t, int n) { return p_sqlite3_bind_text(s, i, t, n, MP_TRANSIENT); }
int mp_sqlite3_bind_blob(mp_sqlite3_stmt *s, int i, const void *b, int n) { return p_sqlite3_bind_blob(s, i, b, n, MP_TRANSIENT); }
int mp_sqlite3_bind_text_static(mp_sqlite3_stmt *s, int i, const char *t, int n) { return p_sqlite3_bind_text(s, i, t, n, NULL); }
int mp_sqlite3_column_count(mp_sqlite3_stmt *s) { return p_sqlite3_column_count(s); }
const char *mp_sqlite3_column_name(mp_sqlite3_stmt *s, int i) { return p_sqlite3_column_name(s, i); }
const char *mp_sqlite3_column_decltype(mp_sqlite3_stmt *s, int i) { return p_sqlite3_column_decltype(s, i); }
int mp_sqlite3_column_type(mp_sqlite3_stmt *s, int i) { return p_sqlite3_column_type(s, i); }
int64_t mp_sqlite3_column_int64(mp_sqlite3_stmt *s, int i) { return p_sqlite3_column_int64(s, i); }
double mp_sqlite3_column_double(mp_sqlite3_stmt *s, int i) { return p_sqlite3_column_double(s, i); }
const unsigned char *mp_sqlite3_column_text(mp_sqlite3_stmt *s, int i) { return p_sqlite3_column_text(s, i); }
const void *mp_sqlite3_column_blob(mp_sqlite3_stmt *s, int i) { return p_sqlite3_column_blob(s, i); }
int mp_sqlite3_column_bytes(mp_sqlite3_stmt *s, int i) { return p_sqlite3_column_bytes(s, i); }
int mp_sqlite3_changes(mp_sqlite3 *db) { return p_sqlite3_changes(db); }
int64_t mp_sqlite3_last_insert_rowid(mp_sqlite3 *db) { return p_sqlite3_last_insert_rowid(db); }
int mp_sqlite3_get_autocommit(mp_sqlite3 *db) { return p_sqlite3_get_autocommit(db); }
void mp_sqlite3_interrupt(mp_sqlite3 *db) { p_sqlite3_interrupt(db); }
