/*
 * geo.c - IP geolocation: classify an address, look it up in MaxMind DB
 * files through libmaxminddb, and cache the answers.
 *
 * What it does. geo_open() memory-maps one file, or an IPv4 file and an IPv6
 * file, and works out which of two layouts each file uses by reading the
 * first data records of its search tree (the metadata cannot tell: the
 * @ip-location-db files say only "city ipv4"). geo_lookup() first classifies
 * the address without the database (private, loopback, link-local, reserved
 * never reach a file), then picks the file for the family, lets
 * libmaxminddb walk the tree, and copies the four fields Switchboard uses
 * into a fixed-size struct geo_result. A geo_cache is an LRU of those results
 * keyed on the address.
 *
 * Counting. struct geo_stats counts calls, not database reads: `lookups` is
 * every geo_lookup()/geo_cache_lookup() call, `cache_hits` the calls answered
 * from a cache, `not_found` and `errors` the calls whose result had that kind
 * (a cached GEO_NOT_FOUND counts again; a GEO_ERROR is never cached).
 *
 * Threads and ownership. A geo_db is written only by geo_open() and
 * geo_close(); between the two it is read-only (libmaxminddb lookups on an
 * mmap'ed file keep no state in the MMDB_s), so every thread may look up
 * through the same geo_db without a lock. The caller owns the geo_db and must
 * not close it while a thread may still use it. A geo_cache belongs to one
 * thread (the telemetry aggregator keeps one); it allocates everything in
 * geo_cache_new() and nothing afterwards. A cache remembers which geo_db
 * filled it (by a generation number, not the pointer, which malloc may hand
 * out again) and empties itself when it is used with another one, so a
 * database reload never serves old answers. stats are plain counters owned by
 * the caller.
 */
#include "geo/geo.h"

#include <arpa/inet.h>
#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <maxminddb.h>

enum geo_layout {
    GEO_LAYOUT_MAXMIND,         /* country.iso_code, city.names.en, location.* */
    GEO_LAYOUT_DBIP,            /* country_code, city, latitude, longitude */
};

struct geo_file {
    MMDB_s mmdb;
    enum geo_layout layout;
};

struct geo_db {
    struct geo_file files[2];
    size_t nfiles;
    const struct geo_file *v4;  /* NULL: IPv4 goes to v6's IPv4 subtree */
    const struct geo_file *v6;  /* NULL: an IPv4-only database */
    uint64_t generation;        /* tells caches which db filled them */
};

static atomic_uint_fast64_t geo_next_generation = 1;

/* ------------------------------------------------------------ classify */

static enum geo_kind geo_classify_v4(const uint8_t *a)
{
    uint32_t ip = (uint32_t)a[0] << 24 | (uint32_t)a[1] << 16 |
                  (uint32_t)a[2] << 8 | a[3];
    static const struct { uint32_t net, mask; enum geo_kind kind; } ranges[] = {
        { 0x00000000, 0xff000000, GEO_RESERVED },    /* 0/8 "this network" */
        { 0x0a000000, 0xff000000, GEO_PRIVATE },     /* 10/8 */
        { 0x64400000, 0xffc00000, GEO_PRIVATE },     /* 100.64/10 CGNAT */
        { 0x7f000000, 0xff000000, GEO_LOOPBACK },    /* 127/8 */
        { 0xa9fe0000, 0xffff0000, GEO_LINK_LOCAL },  /* 169.254/16 */
        { 0xac100000, 0xfff00000, GEO_PRIVATE },     /* 172.16/12 */
        { 0xc0000200, 0xffffff00, GEO_RESERVED },    /* 192.0.2/24 TEST-NET-1 */
        { 0xc0a80000, 0xffff0000, GEO_PRIVATE },     /* 192.168/16 */
        { 0xc6336400, 0xffffff00, GEO_RESERVED },    /* 198.51.100/24 TEST-NET-2 */
        { 0xcb007100, 0xffffff00, GEO_RESERVED },    /* 203.0.113/24 TEST-NET-3 */
        { 0xe0000000, 0xf0000000, GEO_RESERVED },    /* 224/4 multicast */
        { 0xf0000000, 0xf0000000, GEO_RESERVED },    /* 240/4, 255.255.255.255 */
    };
    for (size_t i = 0; i < sizeof ranges / sizeof ranges[0]; i++)
        if ((ip & ranges[i].mask) == ranges[i].net)
            return ranges[i].kind;
    return GEO_FOUND;
}

static bool geo_is_v4_mapped(const uint8_t *a)
{
    static const uint8_t prefix[12] = { 0,0,0,0, 0,0,0,0, 0,0,0xff,0xff };
    return memcmp(a, prefix, sizeof prefix) == 0;
}

enum geo_kind geo_classify(const uint8_t *addr, int family)
{
    if (!addr)
        return GEO_RESERVED;
    if (family == 4)
        return geo_classify_v4(addr);
    if (family != 6)
        return GEO_RESERVED;
    if (geo_is_v4_mapped(addr))
        return geo_classify_v4(addr + 12);

    static const uint8_t zero[15];
    if (memcmp(addr, zero, 15) == 0)
        return addr[15] == 0 ? GEO_RESERVED : addr[15] == 1 ? GEO_LOOPBACK
                                                             : GEO_FOUND;
    if ((addr[0] & 0xfe) == 0xfc)                       /* fc00::/7 ULA */
        return GEO_PRIVATE;
    if (addr[0] == 0xfe && (addr[1] & 0xc0) == 0x80)    /* fe80::/10 */
        return GEO_LINK_LOCAL;
    if (addr[0] == 0xff)                                /* ff00::/8 */
        return GEO_RESERVED;
    if (addr[0] == 0x20 && addr[1] == 0x01 && addr[2] == 0x0d && addr[3] == 0xb8)
        return GEO_RESERVED;                            /* 2001:db8::/32 */
    return GEO_FOUND;
}

const char *geo_kind_name(enum geo_kind kind)
{
    switch (kind) {
    case GEO_FOUND:      return "found";
    case GEO_NOT_FOUND:  return "not_found";
    case GEO_PRIVATE:    return "private";
    case GEO_LOOPBACK:   return "loopback";
    case GEO_LINK_LOCAL: return "link_local";
    case GEO_RESERVED:   return "reserved";
    case GEO_ERROR:      return "error";
    case GEO_DISABLED:   return "disabled";
    }
    return "unknown";
}

/* ------------------------------------------------------------ open */

static void geo_set_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void geo_set_err(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || errlen == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

static bool geo_has_value(MMDB_entry_s *entry, uint32_t type, const char *key)
{
    MMDB_entry_data_s data;
    return MMDB_get_value(entry, &data, key, NULL) == MMDB_SUCCESS &&
           data.has_data && data.type == type;
}

/* Which layout one record uses; -1 when the record does not say (a record
 * may legitimately carry none of the fields, e.g. a continent-only one). */
static int geo_layout_of_entry(MMDB_entry_s *entry)
{
    if (geo_has_value(entry, MMDB_DATA_TYPE_UTF8_STRING, "country_code"))
        return GEO_LAYOUT_DBIP;
    static const char *const maxmind_maps[] = {
        "country", "registered_country", "city", "location", "continent",
    };
    for (size_t i = 0; i < sizeof maxmind_maps / sizeof maxmind_maps[0]; i++)
        if (geo_has_value(entry, MMDB_DATA_TYPE_MAP, maxmind_maps[i]))
            return GEO_LAYOUT_MAXMIND;
    return -1;
}

/*
 * Walk the search tree depth first, left (lowest addresses) first, and ask
 * the first data records which layout they use. Empty subtrees end at once,
 * so the walk stays near the leftmost path; the node budget only guards
 * against a damaged file. The depth is bounded by the address width (an
 * IPv6 tree with aliased IPv4 subtrees is a DAG, not a cycle).
 */
static int geo_detect_layout(MMDB_s *mmdb)
{
    enum { MAX_DEPTH = 129, NODE_BUDGET = 1 << 16, RECORDS_ASKED = 16 };
    uint32_t stack[MAX_DEPTH];
    size_t depth = 0;
    uint32_t node_count = mmdb->metadata.node_count;
    size_t visited = 0, asked = 0;

    if (node_count == 0)
        return -1;
    stack[depth++] = 0;
    while (depth > 0 && visited < NODE_BUDGET && asked < RECORDS_ASKED) {
        uint32_t node_number = stack[--depth];
        MMDB_search_node_s node;
        visited++;
        if (MMDB_read_node(mmdb, node_number, &node) != MMDB_SUCCESS)
            return -1;
        const uint8_t types[2] = { node.left_record_type, node.right_record_type };
        const uint64_t records[2] = { node.left_record, node.right_record };
        MMDB_entry_s entries[2] = { node.left_record_entry, node.right_record_entry };
        for (int side = 0; side < 2; side++) {
            if (types[side] != MMDB_RECORD_TYPE_DATA)
                continue;
            asked++;
            int layout = geo_layout_of_entry(&entries[side]);
            if (layout >= 0)
                return layout;
        }
        /* Right first, so that the left child is popped next. */
        for (int side = 1; side >= 0; side--)
            if (types[side] == MMDB_RECORD_TYPE_SEARCH_NODE &&
                records[side] < node_count && depth < MAX_DEPTH)
                stack[depth++] = (uint32_t)records[side];
    }
    return -1;
}

static bool geo_open_file(struct geo_file *file, const char *path,
                          char *err, size_t errlen)
{
    int rc = MMDB_open(path, MMDB_MODE_MMAP, &file->mmdb);
    if (rc != MMDB_SUCCESS) {
        if (rc == MMDB_IO_ERROR)
            geo_set_err(err, errlen, "%s: %s: %s", path, MMDB_strerror(rc),
                        strerror(errno));
        else
            geo_set_err(err, errlen, "%s: %s", path, MMDB_strerror(rc));
        return false;
    }
    uint16_t ip_version = file->mmdb.metadata.ip_version;
    if (ip_version != 4 && ip_version != 6) {
        geo_set_err(err, errlen, "%s: unsupported ip_version %u", path,
                    (unsigned)ip_version);
        MMDB_close(&file->mmdb);
        return false;
    }
    int layout = geo_detect_layout(&file->mmdb);
    if (layout < 0) {
        const char *type = file->mmdb.metadata.database_type;
        geo_set_err(err, errlen,
                    "%s: not a city database (database_type \"%s\"): its first "
                    "records have neither country_code (DB-IP) nor "
                    "country/city/location (MaxMind)", path, type ? type : "");
        MMDB_close(&file->mmdb);
        return false;
    }
    file->layout = (enum geo_layout)layout;
    return true;
}

struct geo_db *geo_open(const char *const *paths, size_t n, char *err, size_t errlen)
{
    if (!paths || n < 1 || n > 2) {
        geo_set_err(err, errlen, "geo_open: expected 1 or 2 database files, got %zu", n);
        return NULL;
    }
    struct geo_db *db = calloc(1, sizeof *db);
    if (!db) {
        geo_set_err(err, errlen, "geo_open: out of memory");
        return NULL;
    }
    for (size_t i = 0; i < n; i++) {
        if (!paths[i] || !*paths[i]) {
            geo_set_err(err, errlen, "geo_open: database path %zu is empty", i + 1);
            geo_close(db);
            return NULL;
        }
        if (!geo_open_file(&db->files[i], paths[i], err, errlen)) {
            geo_close(db);
            return NULL;
        }
        db->nfiles = i + 1;
    }

    for (size_t i = 0; i < n; i++) {
        const struct geo_file *f = &db->files[i];
        const struct geo_file **slot = f->mmdb.metadata.ip_version == 4 ? &db->v4 : &db->v6;
        if (*slot) {
            geo_set_err(err, errlen, "%s and %s are both IPv%u databases",
                        paths[0], paths[1], (unsigned)f->mmdb.metadata.ip_version);
            geo_close(db);
            return NULL;
        }
        *slot = f;
    }
    db->generation = atomic_fetch_add(&geo_next_generation, 1);
    return db;
}

void geo_close(struct geo_db *db)
{
    if (!db)
        return;
    for (size_t i = 0; i < db->nfiles; i++)
        MMDB_close(&db->files[i].mmdb);
    free(db);
}

const char *geo_schema_name(const struct geo_db *db)
{
    static const char *const names[] = {
        [GEO_LAYOUT_MAXMIND] = "MaxMind City",
        [GEO_LAYOUT_DBIP] = "DB-IP City Lite",
    };
    if (!db || db->nfiles == 0)
        return "none";
    if (db->nfiles == 2 && db->files[0].layout != db->files[1].layout)
        return "mixed (MaxMind City and DB-IP City Lite)";
    return names[db->files[0].layout];
}

/* ------------------------------------------------------------ lookup */

/* Copy a UTF-8 string into dst, cut so that no character is split. */
static void geo_copy_utf8(char *dst, size_t dstlen, const char *src, size_t len)
{
    if (len >= dstlen) {
        len = dstlen - 1;
        /* src[len] is the first byte left out; if it continues a character,
         * that character started inside the kept part: drop its start too. */
        while (len > 0 && ((unsigned char)src[len] & 0xc0) == 0x80)
            len--;
    }
    memcpy(dst, src, len);
    dst[len] = '\0';
}

/* 0 and the data when present, 1 when the record lacks it, -1 when the file
 * is damaged. A value of an unexpected type counts as absent: that is a
 * record we do not understand, not a broken file. */
static int geo_get(MMDB_entry_s *entry, MMDB_entry_data_s *data,
                   const char *const *path)
{
    int rc = MMDB_aget_value(entry, data, path);
    if (rc == MMDB_LOOKUP_PATH_DOES_NOT_MATCH_DATA_ERROR)
        return 1;
    if (rc != MMDB_SUCCESS)
        return -1;
    return data->has_data ? 0 : 1;
}

static int geo_get_number(MMDB_entry_s *entry, const char *const *path, double *out)
{
    MMDB_entry_data_s data;
    int rc = geo_get(entry, &data, path);
    if (rc != 0)
        return rc;
    if (data.type == MMDB_DATA_TYPE_DOUBLE)
        *out = data.double_value;
    else if (data.type == MMDB_DATA_TYPE_FLOAT)
        *out = data.float_value;
    else
        return 1;
    return 0;
}

struct geo_paths {
    const char *const *country, *const *city, *const *latitude, *const *longitude;
};

static const char *const maxmind_country[] = { "country", "iso_code", NULL };
static const char *const maxmind_city[] = { "city", "names", "en", NULL };
static const char *const maxmind_latitude[] = { "location", "latitude", NULL };
static const char *const maxmind_longitude[] = { "location", "longitude", NULL };
static const char *const dbip_country[] = { "country_code", NULL };
static const char *const dbip_city[] = { "city", NULL };
static const char *const dbip_latitude[] = { "latitude", NULL };
static const char *const dbip_longitude[] = { "longitude", NULL };

static const struct geo_paths geo_layout_paths[] = {
    [GEO_LAYOUT_MAXMIND] = { maxmind_country, maxmind_city, maxmind_latitude,
                             maxmind_longitude },
    [GEO_LAYOUT_DBIP] = { dbip_country, dbip_city, dbip_latitude, dbip_longitude },
};

/* Fill out from one record; false when the file is damaged. */
static bool geo_read_entry(const struct geo_file *file, MMDB_entry_s *entry,
                           struct geo_result *out)
{
    const struct geo_paths *p = &geo_layout_paths[file->layout];
    MMDB_entry_data_s data;

    int rc = geo_get(entry, &data, p->country);
    if (rc < 0)
        return false;
    if (rc == 0 && data.type == MMDB_DATA_TYPE_UTF8_STRING && data.data_size == 2) {
        char c0 = data.utf8_string[0], c1 = data.utf8_string[1];
        /* Only a two-letter code is useful to a map; anything else is "". */
        if (((c0 >= 'A' && c0 <= 'Z') || (c0 >= 'a' && c0 <= 'z')) &&
            ((c1 >= 'A' && c1 <= 'Z') || (c1 >= 'a' && c1 <= 'z'))) {
            out->country[0] = (char)(c0 & ~0x20);
            out->country[1] = (char)(c1 & ~0x20);
            out->country[2] = '\0';
        }
    }

    rc = geo_get(entry, &data, p->city);
    if (rc < 0)
        return false;
    if (rc == 0 && data.type == MMDB_DATA_TYPE_UTF8_STRING)
        geo_copy_utf8(out->city, sizeof out->city, data.utf8_string, data.data_size);

    double lat = 0, lon = 0;
    int rc_lat = geo_get_number(entry, p->latitude, &lat);
    int rc_lon = geo_get_number(entry, p->longitude, &lon);
    if (rc_lat < 0 || rc_lon < 0)
        return false;
    if (rc_lat == 0 && rc_lon == 0 && isfinite(lat) && isfinite(lon)) {
        out->latitude = lat;
        out->longitude = lon;
        out->has_location = true;
    }
    return true;
}

static void geo_result_clear(struct geo_result *out, enum geo_kind kind)
{
    memset(out, 0, sizeof *out);
    out->kind = kind;
}

/* Count a call's outcome; every path out of a lookup goes through here. */
static void geo_count(struct geo_stats *stats, enum geo_kind kind)
{
    if (!stats)
        return;
    stats->lookups++;
    if (kind == GEO_NOT_FOUND)
        stats->not_found++;
    else if (kind == GEO_ERROR)
        stats->errors++;
}

/* The database part of a lookup; `addr` is already reduced to 4 bytes for
 * IPv4 (mapped IPv6 included) and known to be public. */
static enum geo_kind geo_db_lookup(const struct geo_db *db, const uint8_t *addr,
                                   int family, struct geo_result *out)
{
    const struct geo_file *file;
    union {
        struct sockaddr sa;
        struct sockaddr_in sin;
        struct sockaddr_in6 sin6;
    } sa;
    memset(&sa, 0, sizeof sa);
    if (family == 4) {
        /* Without an IPv4 file, libmaxminddb walks the IPv6 file's IPv4
         * subtree (::a.b.c.d) for an AF_INET address, as mmdblookup does. */
        file = db->v4 ? db->v4 : db->v6;
        sa.sin.sin_family = AF_INET;
        memcpy(&sa.sin.sin_addr, addr, 4);
    } else {
        file = db->v6;
        if (!file)
            return GEO_NOT_FOUND;       /* an IPv4-only database */
        sa.sin6.sin6_family = AF_INET6;
        memcpy(&sa.sin6.sin6_addr, addr, 16);
    }

    int mmdb_error = MMDB_SUCCESS;
    MMDB_lookup_result_s res = MMDB_lookup_sockaddr(&file->mmdb, &sa.sa, &mmdb_error);
    if (mmdb_error != MMDB_SUCCESS)
        return GEO_ERROR;
    if (!res.found_entry)
        return GEO_NOT_FOUND;
    if (!geo_read_entry(file, &res.entry, out))
        return GEO_ERROR;
    return GEO_FOUND;
}

/* Reduce an address to its lookup key: family 4 with 4 bytes for IPv4 and
 * IPv4-mapped IPv6, family 6 with 16 bytes otherwise; 0 if unusable. */
static int geo_normalize(const uint8_t *addr, int family, uint8_t key[16])
{
    memset(key, 0, 16);
    if (!addr)
        return 0;
    if (family == 4) {
        memcpy(key, addr, 4);
        return 4;
    }
    if (family != 6)
        return 0;
    if (geo_is_v4_mapped(addr)) {
        memcpy(key, addr + 12, 4);
        return 4;
    }
    memcpy(key, addr, 16);
    return 6;
}

/* Everything but the counting; `key` normalized. */
static void geo_lookup_key(const struct geo_db *db, const uint8_t *key, int family,
                           struct geo_result *out)
{
    if (family == 0) {
        geo_result_clear(out, GEO_ERROR);
        return;
    }
    enum geo_kind kind = geo_classify(key, family);
    if (kind != GEO_FOUND) {
        /* Needs no database, so it is answered even when none is loaded. */
        geo_result_clear(out, kind);
        return;
    }
    if (!db) {
        geo_result_clear(out, GEO_DISABLED);
        return;
    }
    geo_result_clear(out, GEO_FOUND);
    kind = geo_db_lookup(db, key, family, out);
    if (kind != GEO_FOUND)
        geo_result_clear(out, kind);
}

void geo_lookup(const struct geo_db *db, const uint8_t *addr, int family,
                struct geo_result *out, struct geo_stats *stats)
{
    uint8_t key[16];
    int key_family = geo_normalize(addr, family, key);
    geo_lookup_key(db, key, key_family, out);
    geo_count(stats, out->kind);
}

/* ------------------------------------------------------------ cache */

#define GEO_NIL UINT32_MAX

struct geo_cache_entry {
    uint8_t key[16];
    uint8_t family;             /* 4 or 6 */
    uint32_t hash_next;         /* next in the same bucket */
    uint32_t newer, older;      /* LRU list */
    struct geo_result result;
};

struct geo_cache {
    size_t capacity, used;
    uint32_t newest, oldest;
    uint32_t *buckets;
    size_t bucket_mask;
    uint64_t generation;        /* of the geo_db the entries came from */
    struct geo_cache_entry *entries;
};

static uint64_t geo_hash(const uint8_t *key, int family)
{
    uint64_t a, b;
    memcpy(&a, key, 8);
    memcpy(&b, key + 8, 8);
    /* splitmix64's finaliser: cheap, and every input bit moves the bucket. */
    uint64_t h = a ^ (b * 0x9e3779b97f4a7c15u) ^ (uint64_t)family;
    h ^= h >> 30;
    h *= 0xbf58476d1ce4e5b9u;
    h ^= h >> 27;
    h *= 0x94d049bb133111ebu;
    h ^= h >> 31;
    return h;
}

static void geo_cache_clear(struct geo_cache *c)
{
    for (size_t i = 0; i <= c->bucket_mask; i++)
        c->buckets[i] = GEO_NIL;
    c->used = 0;
    c->newest = c->oldest = GEO_NIL;
}

struct geo_cache *geo_cache_new(size_t capacity)
{
    /* Indices are 32-bit with GEO_NIL reserved; a bigger cache is a mistake. */
    if (capacity == 0 || capacity > (UINT32_MAX >> 2))
        return NULL;
    struct geo_cache *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    size_t nbuckets = 1;
    while (nbuckets < capacity * 2)     /* chains stay ~0.5 long when full */
        nbuckets <<= 1;
    c->capacity = capacity;
    c->bucket_mask = nbuckets - 1;
    c->buckets = malloc(nbuckets * sizeof *c->buckets);
    c->entries = calloc(capacity, sizeof *c->entries);
    if (!c->buckets || !c->entries) {
        geo_cache_free(c);
        return NULL;
    }
    geo_cache_clear(c);
    return c;
}

void geo_cache_free(struct geo_cache *cache)
{
    if (!cache)
        return;
    free(cache->buckets);
    free(cache->entries);
    free(cache);
}

static void geo_lru_unlink(struct geo_cache *c, uint32_t i)
{
    struct geo_cache_entry *e = &c->entries[i];
    if (e->newer != GEO_NIL)
        c->entries[e->newer].older = e->older;
    else
        c->newest = e->older;
    if (e->older != GEO_NIL)
        c->entries[e->older].newer = e->newer;
    else
        c->oldest = e->newer;
}

static void geo_lru_push_newest(struct geo_cache *c, uint32_t i)
{
    struct geo_cache_entry *e = &c->entries[i];
    e->newer = GEO_NIL;
    e->older = c->newest;
    if (c->newest != GEO_NIL)
        c->entries[c->newest].newer = i;
    c->newest = i;
    if (c->oldest == GEO_NIL)
        c->oldest = i;
}

static void geo_bucket_remove(struct geo_cache *c, uint32_t i)
{
    struct geo_cache_entry *e = &c->entries[i];
    uint32_t *link = &c->buckets[geo_hash(e->key, e->family) & c->bucket_mask];
    while (*link != i)
        link = &c->entries[*link].hash_next;
    *link = e->hash_next;
}

void geo_cache_lookup(struct geo_cache *cache, const struct geo_db *db,
                      const uint8_t *addr, int family, struct geo_result *out,
                      struct geo_stats *stats)
{
    uint8_t key[16];
    int key_family = geo_normalize(addr, family, key);

    /* Only public addresses with a database reach a file; caching the rest
     * would spend slots on answers that cost nothing. */
    if (!cache || !db || key_family == 0 || geo_classify(key, key_family) != GEO_FOUND) {
        geo_lookup_key(db, key, key_family, out);
        geo_count(stats, out->kind);
        return;
    }
    if (cache->generation != db->generation) {
        geo_cache_clear(cache);
        cache->generation = db->generation;
    }

    uint32_t *bucket = &cache->buckets[geo_hash(key, key_family) & cache->bucket_mask];
    for (uint32_t i = *bucket; i != GEO_NIL; i = cache->entries[i].hash_next) {
        struct geo_cache_entry *e = &cache->entries[i];
        if (e->family == key_family && memcmp(e->key, key, 16) == 0) {
            if (cache->newest != i) {
                geo_lru_unlink(cache, i);
                geo_lru_push_newest(cache, i);
            }
            /* memcpy, not assignment: padding too, so results memcmp equal. */
            memcpy(out, &e->result, sizeof *out);
            if (stats)
                stats->cache_hits++;
            geo_count(stats, out->kind);
            return;
        }
    }

    geo_lookup_key(db, key, key_family, out);
    geo_count(stats, out->kind);
    if (out->kind == GEO_ERROR)
        return;                 /* may be transient; ask the file again */

    uint32_t slot;
    if (cache->used < cache->capacity) {
        slot = (uint32_t)cache->used++;
    } else {
        slot = cache->oldest;
        geo_lru_unlink(cache, slot);
        geo_bucket_remove(cache, slot);
    }
    struct geo_cache_entry *e = &cache->entries[slot];
    memcpy(e->key, key, 16);
    e->family = (uint8_t)key_family;
    memcpy(&e->result, out, sizeof *out);
    e->hash_next = *bucket;
    *bucket = slot;
    geo_lru_push_newest(cache, slot);
}
