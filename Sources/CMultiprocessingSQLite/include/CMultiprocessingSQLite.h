// Umbrella header: SQLite and the MariaDB client, both loaded with dlopen.
#include "mp_sqlite3.h"
#include "mp_mariadb.h"
