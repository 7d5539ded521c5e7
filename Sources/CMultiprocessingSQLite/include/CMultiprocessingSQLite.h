// Umbrella header: SQLite, loaded with dlopen.
#include "mp_sqlite3.h"
