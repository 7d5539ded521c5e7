// Umbrella header: the MariaDB client (Connector/C 3), loaded with dlopen.
#include "mp_mariadb.h"
