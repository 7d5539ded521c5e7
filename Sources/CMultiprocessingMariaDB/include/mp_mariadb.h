// MariaDB's C client API (Connector/C 3, which serves MySQL servers too), the part swift-multiprocessing
// uses, loaded at run time with dlopen from libmariadb.so.3 (Debian: libmariadb3, installed with
// mariadb-client or -server; MP_MARIADB_LIBRARY names another copy), so that building needs no -dev
// package and programs that never open a MySQL URL never load it. MySQL's libmysqlclient is refused.
#ifndef MP_MARIADB_H
#define MP_MARIADB_H
#include <stddef.h>
#include <stdint.h>

typedef struct mp_mysql mp_mysql;
typedef struct mp_mysql_res mp_mysql_res;

/// Loads the library once (thread-safe). Returns 0, or -1 with a message in `error`.
int mp_mysql_load(char *error, size_t errorLength);

/// mysql_init + options (connect/read/write timeouts in seconds, utf8mb4, multi-statements, TLS) +
/// mysql_real_connect. `tls`: 0 none, 1 required (certificate not checked), 2 required and verified
/// (against `ca`, a PEM file, when not NULL; the host name too). Returns NULL with a message in `error`.
mp_mysql *mp_mysql_connect(const char *host, const char *user, const char *password, const char *db,
                           unsigned int port, unsigned int timeoutSeconds, int tls, const char *ca, char *error,
                           size_t errorLength, unsigned int *errorNumber);
void mp_mysql_close(mp_mysql *m);
const char *mp_mysql_error(mp_mysql *m);
unsigned int mp_mysql_errno(mp_mysql *m);
int mp_mysql_real_query(mp_mysql *m, const char *sql, unsigned long length);
/// Rows affected by the last statement.
uint64_t mp_mysql_affected_rows(mp_mysql *m);
unsigned int mp_mysql_field_count(mp_mysql *m);
/// The result of the last statement, streamed row by row (mysql_use_result).
mp_mysql_res *mp_mysql_use_result(mp_mysql *m);
unsigned int mp_mysql_num_fields(mp_mysql_res *r);
/// 0 when every column description reads as Connector/C 3's MYSQL_FIELD (a name whose length matches its
/// name_length, a known type, a plausible character set); -1 with a message in `error` otherwise.
int mp_mysql_check_fields(mp_mysql_res *r, char *error, size_t errorLength);
/// Column `i`'s name, type (enum_field_types) and character set number (63: binary).
const char *mp_mysql_field_name(mp_mysql_res *r, unsigned int i);
int mp_mysql_field_type(mp_mysql_res *r, unsigned int i);
unsigned int mp_mysql_field_charset(mp_mysql_res *r, unsigned int i);
/// The next row's values (NULL pointers for SQL NULL) and lengths; NULL at the end or on error.
char **mp_mysql_fetch_row(mp_mysql_res *r);
unsigned long *mp_mysql_fetch_lengths(mp_mysql_res *r);
void mp_mysql_free_result(mp_mysql_res *r);
/// 0: another result follows; -1: no more; > 0: error.
int mp_mysql_next_result(mp_mysql *m);
unsigned long mp_mysql_real_escape_string(mp_mysql *m, char *to, const char *from, unsigned long length);
/// Runs `sql` (a LOAD DATA LOCAL INFILE) serving `data` as its file; any other file request is refused.
int mp_mysql_load_data(mp_mysql *m, const char *sql, unsigned long sqlLength, const char *data, size_t length);
/// Warnings of the last statement.
unsigned int mp_mysql_warning_count(mp_mysql *m);
#endif
