// SQLite's C API, the part swift-multiprocessing uses, loaded at run time with dlopen from the system's
// libsqlite3.so.0 (present wherever Swift or CPython is installed), so that building needs no -dev
// package. Every function is the SQLite function of the same name after `mp_`; mp_sqlite3_load must
// have returned 0 first.
#ifndef MP_SQLITE3_H
#define MP_SQLITE3_H
#include <stddef.h>
#include <stdint.h>

typedef struct mp_sqlite3 mp_sqlite3;
typedef struct mp_sqlite3_stmt mp_sqlite3_stmt;

#define MP_SQLITE_OK 0
#define MP_SQLITE_BUSY 5
#define MP_SQLITE_ROW 100
#define MP_SQLITE_DONE 101
#define MP_SQLITE_INTEGER 1
#define MP_SQLITE_FLOAT 2
#define MP_SQLITE_TEXT 3
#define MP_SQLITE_BLOB 4
#define MP_SQLITE_NULL 5
#define MP_SQLITE_OPEN_READONLY 0x00000001
#define MP_SQLITE_OPEN_READWRITE 0x00000002
#define MP_SQLITE_OPEN_CREATE 0x00000004
#define MP_SQLITE_OPEN_URI 0x00000040
#define MP_SQLITE_OPEN_NOMUTEX 0x00008000

/// Loads the library once (thread-safe). Returns 0, or -1 with a message in `error`.
int mp_sqlite3_load(char *error, size_t errorLength);

const char *mp_sqlite3_libversion(void);
int mp_sqlite3_open_v2(const char *filename, mp_sqlite3 **db, int flags, const char *vfs);
int mp_sqlite3_close_v2(mp_sqlite3 *db);
const char *mp_sqlite3_errmsg(mp_sqlite3 *db);
int mp_sqlite3_extended_errcode(mp_sqlite3 *db);
int mp_sqlite3_busy_timeout(mp_sqlite3 *db, int ms);
/// A busy handler that retries after short sleeps (50 µs doubling to 2 ms) for up to `ms` milliseconds.
/// SQLite's own sleeps 1, 2, 5, 10 … 100 ms, so a writer waiting behind short transactions of other
/// processes misses most of the moments the lock is free.
int mp_sqlite3_short_busy_timeout(mp_sqlite3 *db, int ms);
int mp_sqlite3_exec(mp_sqlite3 *db, const char *sql);
int mp_sqlite3_prepare_v2(mp_sqlite3 *db, const char *sql, int nByte, mp_sqlite3_stmt **stmt, const char **tail);
int mp_sqlite3_step(mp_sqlite3_stmt *stmt);
int mp_sqlite3_reset(mp_sqlite3_stmt *stmt);
int mp_sqlite3_clear_bindings(mp_sqlite3_stmt *stmt);
int mp_sqlite3_finalize(mp_sqlite3_stmt *stmt);
int mp_sqlite3_bind_parameter_count(mp_sqlite3_stmt *stmt);
int mp_sqlite3_bind_null(mp_sqlite3_stmt *stmt, int i);
int mp_sqlite3_bind_int64(mp_sqlite3_stmt *stmt, int i, int64_t v);
int mp_sqlite3_bind_double(mp_sqlite3_stmt *stmt, int i, double v);
/// Binds a copy of the text (SQLITE_TRANSIENT).
int mp_sqlite3_bind_text(mp_sqlite3_stmt *stmt, int i, const char *text, int length);
/// Binds the text without copying it (SQLITE_STATIC): it must stay valid until the statement is reset.
int mp_sqlite3_bind_text_static(mp_sqlite3_stmt *stmt, int i, const char *text, int length);
/// Binds a copy of the bytes (SQLITE_TRANSIENT).
int mp_sqlite3_bind_blob(mp_sqlite3_stmt *stmt, int i, const void *bytes, int length);
int mp_sqlite3_column_count(mp_sqlite3_stmt *stmt);
const char *mp_sqlite3_column_name(mp_sqlite3_stmt *stmt, int i);
const char *mp_sqlite3_column_decltype(mp_sqlite3_stmt *stmt, int i);
int mp_sqlite3_column_type(mp_sqlite3_stmt *stmt, int i);
int64_t mp_sqlite3_column_int64(mp_sqlite3_stmt *stmt, int i);
double mp_sqlite3_column_double(mp_sqlite3_stmt *stmt, int i);
const unsigned char *mp_sqlite3_column_text(mp_sqlite3_stmt *stmt, int i);
const void *mp_sqlite3_column_blob(mp_sqlite3_stmt *stmt, int i);
int mp_sqlite3_column_bytes(mp_sqlite3_stmt *stmt, int i);
int mp_sqlite3_changes(mp_sqlite3 *db);
int64_t mp_sqlite3_last_insert_rowid(mp_sqlite3 *db);
int mp_sqlite3_get_autocommit(mp_sqlite3 *db);
void mp_sqlite3_interrupt(mp_sqlite3 *db);
#endif
