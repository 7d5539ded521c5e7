#include "mp_mariadb.h"
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// Only MariaDB Connector/C 3 (libmariadb.so.3) is loaded: the option numbers and MYSQL_FIELD's layout
// below are its own (mysql.h, mariadb_com.h). MySQL's libmysqlclient numbers its options differently
// (no MYSQL_OPT_SSL_ENFORCE, 38) and is refused. Connector/C speaks to MySQL servers as well.
// MYSQL_FIELD (LP64): name at 0, name_length at 72, charsetnr at 108, type at 112.
#define FIELD_NAME 0
#define FIELD_NAME_LENGTH 72
#define FIELD_CHARSET 108
#define FIELD_TYPE 112

// enum mysql_option (Connector/C 3).
#define OPT_CONNECT_TIMEOUT 0
#define OPT_SET_CHARSET_NAME 7
#define OPT_LOCAL_INFILE 8
#define OPT_READ_TIMEOUT 11
#define OPT_WRITE_TIMEOUT 12
#define OPT_SSL_VERIFY_SERVER_CERT 21
#define OPT_SSL_CA 27
#define OPT_SSL_ENFORCE 38

#define MP_MYSQL_FUNCTIONS(X) \
    X(void *, mysql_init, (void *)) \
    X(int, mysql_options, (void *, int, const void *)) \
    X(void *, mysql_real_connect, (void *, const char *, const char *, const char *, const char *, unsigned int, const char *, unsigned long)) \
    X(void, mysql_close, (void *)) \
    X(const char *, mysql_error, (void *)) \
    X(unsigned int, mysql_errno, (void *)) \
    X(int, mysql_real_query, (void *, const char *, unsigned long)) \
    X(uint64_t, mysql_affected_rows, (void *)) \
    X(unsigned int, mysql_field_count, (void *)) \
    X(void *, mysql_use_result, (void *)) \
    X(unsigned int, mysql_num_fields, (void *)) \
    X(void *, mysql_fetch_field_direct, (void *, unsigned int)) \
    X(char **, mysql_fetch_row, (void *)) \
    X(unsigned long *, mysql_fetch_lengths, (void *)) \
    X(void, mysql_free_result, (void *)) \
    X(int, mysql_next_result, (void *)) \
    X(unsigned long, mysql_real_escape_string, (void *, char *, const char *, unsigned long)) \
    X(unsigned int, mysql_warning_count, (void *)) \
    X(void, mysql_set_local_infile_handler, (void *, int (*)(void **, const char *, void *), \
                                              int (*)(void *, char *, unsigned int), void (*)(void *), \
                                              int (*)(void *, char *, unsigned int), void *)) \
    X(unsigned long, mysql_get_client_version, (void)) \
    X(int, mariadb_get_infov, (void *, int, void *, ...))

#define DECLARE(ret, name, args) static ret(*q_##name) args;
MP_MYSQL_FUNCTIONS(DECLARE)

static pthread_once_t once = PTHREAD_ONCE_INIT;
static char loadError[1024];

static void load(void) {
    // MP_MARIADB_LIBRARY: a Connector/C installed elsewhere (a path, or a name dlopen finds).
    const char *chosen = getenv("MP_MARIADB_LIBRARY");
    const char *names[] = {chosen != NULL && chosen[0] != 0 ? chosen : "libmariadb.so.3", "libmariadb.so.3", "libmariadb.so"};
    void *h = NULL;
    const char *name = NULL;
    for (size_t i = 0; i < sizeof names / sizeof names[0] && h == NULL; i++) {
        name = names[i];
        h = dlopen(name, RTLD_NOW | RTLD_LOCAL);
        if (chosen != NULL && chosen[0] != 0) break;  // only the one asked for
    }
    if (h == NULL) {
        // The reason the library asked for failed, kept before another dlopen replaces it.
        char why[256];
        const char *e = dlerror();
        snprintf(why, sizeof why, "%s", e != NULL ? e : "not found");
        char asked[400] = "";
        if (chosen != NULL && chosen[0] != 0) {
            snprintf(asked, sizeof asked, "MP_MARIADB_LIBRARY=%s cannot be loaded (%s). ", chosen, why);
        }
        void *mysql = dlopen("libmysqlclient.so.21", RTLD_LAZY | RTLD_LOCAL);
        if (mysql != NULL) {
            dlclose(mysql);
            snprintf(loadError, sizeof loadError,
                     "%sMySQL's client library (libmysqlclient) is installed but not supported: its option numbers "
                     "and result layout differ from MariaDB Connector/C's. Install libmariadb3 (Debian: apt-get "
                     "install libmariadb3), which also speaks to MySQL servers", asked);
        } else if (asked[0] != 0) {
            snprintf(loadError, sizeof loadError, "%s", asked);
        } else {
            snprintf(loadError, sizeof loadError,
                     "the MariaDB client library is not installed (Debian: apt-get install libmariadb3): %s", why);
        }
        return;
    }
#define LOAD(ret, name_, args) \
    q_##name_ = (ret(*) args)dlsym(h, #name_); \
    if (q_##name_ == NULL) { \
        snprintf(loadError, sizeof loadError, "%s is not MariaDB Connector/C 3: it lacks %s", name, #name_); \
        return; \
    }
    MP_MYSQL_FUNCTIONS(LOAD)
    // The field layout and option numbers used here are Connector/C 3's (mariadb_get_infov exists only in
    // Connector/C). Its mysql_get_client_version is the package's (30320 for 3.3.20) since CONC-509;
    // releases before it (3.0, early 3.1 and 3.2) answered the server-style 10x.y.z (100306).
    unsigned long version = q_mysql_get_client_version();
    if ((version < 30000 || version >= 40000) && (version < 100000 || version >= 200000)) {
        snprintf(loadError, sizeof loadError,
                 "%s is MariaDB Connector/C version %lu.%lu.%lu; this client reads 3.x only (its option numbers "
                 "and field layout)", name, version / 10000, version / 100 % 100, version % 100);
        return;
    }
}

int mp_mysql_load(char *error, size_t errorLength) {
    pthread_once(&once, load);
    if (loadError[0] != 0) {
        if (error != NULL && errorLength > 0) snprintf(error, errorLength, "%s", loadError);
        return -1;
    }
    return 0;
}

// LOAD DATA LOCAL INFILE served from memory: the handler hands out the bytes of the one statement that
// asked (mp_mysql_load_data) and refuses every other request, so a server can never read a client file.
typedef struct {
    const char *data;
    size_t length;
    size_t offset;
    int active;
} mp_infile;

static mp_infile refuse = {NULL, 0, 0, 0};

static int infile_init(void **state, const char *name, void *userdata) {
    (void)name;
    mp_infile *f = (mp_infile *)userdata;
    *state = f;
    return f->active ? 0 : 1;
}

static int infile_read(void *state, char *buffer, unsigned int length) {
    mp_infile *f = (mp_infile *)state;
    size_t n = f->length - f->offset;
    if (n > length) n = length;
    memcpy(buffer, f->data + f->offset, n);
    f->offset += n;
    return (int)n;
}

static void infile_end(void *state) { (void)state; }

static int infile_error(void *state, char *message, unsigned int length) {
    (void)state;
    snprintf(message, length, "this client serves LOAD DATA LOCAL only from memory, for its own statements");
    return 2000; /* CR_UNKNOWN_ERROR */
}

int mp_mysql_load_data(mp_mysql *m, const char *sql, unsigned long sqlLength, const char *data, size_t length) {
    mp_infile f = {data, length, 0, 1};
    q_mysql_set_local_infile_handler(m, infile_init, infile_read, infile_end, infile_error, &f);
    int rc = q_mysql_real_query(m, sql, sqlLength);
    q_mysql_set_local_infile_handler(m, infile_init, infile_read, infile_end, infile_error, &refuse);
    return rc;
}

unsigned int mp_mysql_warning_count(mp_mysql *m) { return q_mysql_warning_count(m); }

mp_mysql *mp_mysql_connect(const char *host, const char *user, const char *password, const char *db,
                           unsigned int port, unsigned int timeoutSeconds, int tls, const char *ca, char *error,
                           size_t errorLength, unsigned int *errorNumber) {
    void *m = q_mysql_init(NULL);
    if (m == NULL) {
        snprintf(error, errorLength, "out of memory");
        return NULL;
    }
    // Every option is checked: one the library refuses (a TLS requirement above all) fails the connect.
#define SET(option, value, what) \
    if (q_mysql_options(m, option, value) != 0) { \
        snprintf(error, errorLength, "the client library refused %s (%s): not connecting without it", #option, what); \
        if (errorNumber != NULL) *errorNumber = 0; \
        q_mysql_close(m); \
        return NULL; \
    }
    SET(OPT_CONNECT_TIMEOUT, &timeoutSeconds, "the connect timeout")
    SET(OPT_READ_TIMEOUT, &timeoutSeconds, "the read timeout")
    SET(OPT_WRITE_TIMEOUT, &timeoutSeconds, "the write timeout")
    SET(OPT_SET_CHARSET_NAME, "utf8mb4", "the character set")
    unsigned int on = 1;
    SET(OPT_LOCAL_INFILE, &on, "LOAD DATA LOCAL from memory")
    if (tls > 0) {
        char enforce = 1, verify = tls > 1 ? 1 : 0; /* my_bool */
        SET(OPT_SSL_ENFORCE, &enforce, "requiring TLS")
        SET(OPT_SSL_VERIFY_SERVER_CERT, &verify, "verifying the server's certificate")
        if (ca != NULL) SET(OPT_SSL_CA, ca, "the certificate authority")
    }
#undef SET
    if (q_mysql_real_connect(m, host, user, password, db, port, NULL, 65536 /* CLIENT_MULTI_STATEMENTS */) == NULL) {
        snprintf(error, errorLength, "%s", q_mysql_error(m));
        if (errorNumber != NULL) *errorNumber = q_mysql_errno(m);
        q_mysql_close(m);
        return NULL;
    }
    // Until a statement of ours asks, the server's LOCAL INFILE requests are refused.
    q_mysql_set_local_infile_handler(m, infile_init, infile_read, infile_end, infile_error, &refuse);
    return (mp_mysql *)m;
}

void mp_mysql_close(mp_mysql *m) { q_mysql_close(m); }
const char *mp_mysql_error(mp_mysql *m) { return q_mysql_error(m); }
unsigned int mp_mysql_errno(mp_mysql *m) { return q_mysql_errno(m); }
int mp_mysql_real_query(mp_mysql *m, const char *sql, unsigned long n) { return q_mysql_real_query(m, sql, n); }
uint64_t mp_mysql_affected_rows(mp_mysql *m) { return q_mysql_affected_rows(m); }
unsigned int mp_mysql_field_count(mp_mysql *m) { return q_mysql_field_count(m); }
mp_mysql_res *mp_mysql_use_result(mp_mysql *m) { return (mp_mysql_res *)q_mysql_use_result(m); }
unsigned int mp_mysql_num_fields(mp_mysql_res *r) { return q_mysql_num_fields(r); }
const char *mp_mysql_field_name(mp_mysql_res *r, unsigned int i) {
    char *f = (char *)q_mysql_fetch_field_direct(r, i);
    return *(const char **)(f + FIELD_NAME);
}
int mp_mysql_check_fields(mp_mysql_res *r, char *error, size_t errorLength) {
    unsigned int n = q_mysql_num_fields(r);
    for (unsigned int i = 0; i < n; i++) {
        char *f = (char *)q_mysql_fetch_field_direct(r, i);
        const char *name = f == NULL ? NULL : *(const char **)(f + FIELD_NAME);
        int type = f == NULL ? -1 : *(int *)(f + FIELD_TYPE);
        int knownType = (type >= 0 && type <= 17) || (type >= 245 && type <= 255);
        if (name == NULL || strlen(name) != *(unsigned int *)(f + FIELD_NAME_LENGTH) || !knownType ||
            *(unsigned int *)(f + FIELD_CHARSET) > 65535) {
            snprintf(error, errorLength,
                     "the client library's column descriptions (MYSQL_FIELD) are not laid out as MariaDB "
                     "Connector/C 3's (column %u): refusing to read values at the wrong offsets", i);
            return -1;
        }
    }
    return 0;
}

int mp_mysql_field_type(mp_mysql_res *r, unsigned int i) {
    char *f = (char *)q_mysql_fetch_field_direct(r, i);
    return *(int *)(f + FIELD_TYPE);
}
unsigned int mp_mysql_field_charset(mp_mysql_res *r, unsigned int i) {
    char *f = (char *)q_mysql_fetch_field_direct(r, i);
    return *(unsigned int *)(f + FIELD_CHARSET);
}
char **mp_mysql_fetch_row(mp_mysql_res *r) { return q_mysql_fetch_row(r); }
unsigned long *mp_mysql_fetch_lengths(mp_mysql_res *r) { return q_mysql_fetch_lengths(r); }
void mp_mysql_free_result(mp_mysql_res *r) { q_mysql_free_result(r); }
int mp_mysql_next_result(mp_mysql *m) { return q_mysql_next_result(m); }
unsigned long mp_mysql_real_escape_string(mp_mysql *m, char *to, const char *from, unsigned long n) {
    return q_mysql_real_escape_string(m, to, from, n);
}
