import Foundation
import MultiprocessingTestSupport
import Testing

/// A stand-in for the MariaDB client library, for what no real library here does: it reports another
/// version, refuses the TLS option, or describes its columns in another layout (`FAKE_MYSQL` chooses).
/// Built with the system's C compiler into a temporary directory, loaded by `mp-test-helper
/// mariadb-connect` through `MP_MARIADB_LIBRARY` (or as `libmysqlclient.so.21` on `LD_LIBRARY_PATH`).
let fakeClientLibrary = """
    #include <stdlib.h>
    #include <string.h>
    static const char *mode(void) { const char *m = getenv("FAKE_MYSQL"); return m ? m : ""; }
    static char handle[64];
    static char field[128];
    static char *row[1] = {"1"};
    static unsigned long lengths[1] = {1};
    void *mysql_init(void *m) { return handle; }
    int mysql_options(void *m, int option, const void *value) {
        return strcmp(mode(), "refuse-tls") == 0 && option == 38 ? 1 : 0;
    }
    void *mysql_real_connect(void *m, const char *h, const char *u, const char *p, const char *d, unsigned int port,
                             const char *s, unsigned long f) { return handle; }
    void mysql_close(void *m) {}
    const char *mysql_error(void *m) { return ""; }
    unsigned int mysql_errno(void *m) { return 0; }
    int mysql_real_query(void *m, const char *q, unsigned long n) { return 0; }
    unsigned long long mysql_affected_rows(void *m) { return 0; }
    unsigned int mysql_field_count(void *m) { return 1; }
    void *mysql_use_result(void *m) { return handle; }
    unsigned int mysql_num_fields(void *r) { return 1; }
    void *mysql_fetch_field_direct(void *r, unsigned int i) {
        /* "bad-layout": MySQL 8's MYSQL_FIELD puts other things at these offsets. */
        *(const char **)field = "x";
        *(unsigned int *)(field + 72) = strcmp(mode(), "bad-layout") == 0 ? 7 : 1;
        *(unsigned int *)(field + 108) = 63;
        *(int *)(field + 112) = 3;
        return field;
    }
    char **mysql_fetch_row(void *r) { static int done; return done++ ? 0 : row; }
    unsigned long *mysql_fetch_lengths(void *r) { return lengths; }
    void mysql_free_result(void *r) {}
    int mysql_next_result(void *m) { return -1; }
    unsigned long mysql_real_escape_string(void *m, char *to, const char *from, unsigned long n) { return 0; }
    unsigned int mysql_warning_count(void *m) { return 0; }
    void mysql_set_local_infile_handler(void *m, void *a, void *b, void *c, void *d, void *e) {}
    unsigned long mysql_get_client_version(void) { return strcmp(mode(), "version-2") == 0 ? 20305 : 30320; }
    int mariadb_get_infov(void *m, int what, void *arg, ...) { return 0; }
    """

@Suite(.serialized, .timeLimit(.minutes(2)))
struct MariaDBLibraryTests {
    /// The fake library, built once per run; nil (and the reason) when no C compiler is at hand.
    static let built: (directory: String?, why: String?) = {
        let dir = NSTemporaryDirectory() + "mp-fake-mysql-\(getpid())"
        try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let source = dir + "/fake.c"
        guard FileManager.default.createFile(atPath: source, contents: Data(fakeClientLibrary.utf8)) else {
            return (nil, "cannot write the fake client library's source in \(dir)")
        }
        for name in ["libfakemariadb.so", "libmysqlclient.so.21"] {
            let cc = Foundation.Process()
            cc.executableURL = URL(fileURLWithPath: "/usr/bin/env")
            cc.arguments = ["cc", "-shared", "-fPIC", "-w", "-o", "\(dir)/\(name)", source]
            guard (try? cc.run()) != nil else { return (nil, "no C compiler (cc) to build the fake client library") }
            cc.waitUntilExit()
            guard cc.terminationStatus == 0 else { return (nil, "cc could not build the fake client library") }
        }
        return (dir, nil)
    }()

    /// Runs `mp-test-helper mariadb-connect URL` with `environment` added; returns what it printed.
    func connect(_ url: String, _ environment: [String: String]) throws -> String {
        guard let helper = testHelperExecutable() else { return "" }
        return try runToEnd(helper, ["mariadb-connect", url], environment: environment).output
    }

    @Test(.enabled(if: built.why == nil, "\(built.why ?? "")"))
    func theFakeLibraryItselfConnects() throws {
        // The control: with nothing to refuse, the stand-in is taken, so the refusals below are real.
        let dir = try #require(Self.built.directory)
        let out = try connect("mysql://u:p@127.0.0.1:1/db", ["MP_MARIADB_LIBRARY": "\(dir)/libfakemariadb.so"])
        #expect(out == "ok\n", "\(out)")
    }

    @Test(.enabled(if: built.why == nil, "\(built.why ?? "")"))
    func aLibraryOfAnotherVersionIsRefused() throws {
        let dir = try #require(Self.built.directory)
        let out = try connect(
            "mysql://u:p@127.0.0.1:1/db",
            ["MP_MARIADB_LIBRARY": "\(dir)/libfakemariadb.so", "FAKE_MYSQL": "version-2"]
        )
        #expect(out.contains("version 2.3.5") && out.contains("3.x only"), "\(out)")
    }

    @Test(.enabled(if: built.why == nil, "\(built.why ?? "")"))
    func aTLSRequirementTheLibraryRefusesFailsTheConnect() throws {
        let dir = try #require(Self.built.directory)
        let library = ["MP_MARIADB_LIBRARY": "\(dir)/libfakemariadb.so", "FAKE_MYSQL": "refuse-tls"]
        let out = try connect("mysql://u:p@127.0.0.1:1/db?ssl-mode=REQUIRED", library)
        #expect(out.contains("refused OPT_SSL_ENFORCE (requiring TLS)"), "\(out)")
        // Without TLS asked for, the same library connects: the refusal is the TLS option's.
        #expect(try connect("mysql://u:p@127.0.0.1:1/db", library) == "ok\n")
    }

    @Test(.enabled(if: built.why == nil, "\(built.why ?? "")"))
    func columnsInAnotherLayoutAreRefused() throws {
        let dir = try #require(Self.built.directory)
        let out = try connect(
            "mysql://u:p@127.0.0.1:1/db",
            ["MP_MARIADB_LIBRARY": "\(dir)/libfakemariadb.so", "FAKE_MYSQL": "bad-layout"]
        )
        #expect(out.contains("not laid out as MariaDB Connector/C 3's"), "\(out)")
    }

    @Test(.enabled(if: built.why == nil, "\(built.why ?? "")"))
    func mySQLsClientLibraryIsRefused() throws {
        let dir = try #require(Self.built.directory)
        let out = try connect(
            "mysql://u:p@127.0.0.1:1/db",
            ["MP_MARIADB_LIBRARY": "\(dir)/no-such-libmariadb.so.3", "LD_LIBRARY_PATH": dir]
        )
        #expect(out.contains("libmysqlclient) is installed but not supported"), "\(out)")
        #expect(out.contains("MP_MARIADB_LIBRARY=\(dir)/no-such-libmariadb.so.3 cannot be loaded ("), "\(out)")
    }

    /// A library named by MP_MARIADB_LIBRARY that cannot be loaded is named, with dlopen's reason (not
    /// another library's).
    @Test(.enabled(if: built.why == nil, "\(built.why ?? "")"))
    func aLibraryThatCannotBeLoadedIsNamed() throws {
        let dir = try #require(Self.built.directory)
        let out = try connect("mysql://u:p@127.0.0.1:1/db", ["MP_MARIADB_LIBRARY": "\(dir)/no-such-libmariadb.so.3"])
        #expect(out.contains("MP_MARIADB_LIBRARY=\(dir)/no-such-libmariadb.so.3 cannot be loaded ("), "\(out)")
        #expect(out.contains("no-such-libmariadb.so.3: cannot open shared object file"), "\(out)")
    }
}
