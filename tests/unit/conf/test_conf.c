/*
 * test_conf.c - the config module: every key lands where it should, every
 * default is applied, every error names the right file:line:col and key.
 *
 * YAML below is written one line per C string so that line numbers in the
 * expected messages can be counted by eye.
 */
#include "conf/conf.h"
#include "check.h"

#include <arpa/inet.h>
#include <stdlib.h>
#include <unistd.h>

static char err[CONF_ERROR_MAX];

static struct conf *load(const char *yaml)
{
    err[0] = '\0';
    return conf_load_string("t.yaml", yaml, err, sizeof err);
}

/* Loading `yaml` must fail with exactly `want`. A function, not a macro,
 * so that CHECK's stringified condition stays short; `line` says which
 * call failed. */
static void expect_error(int line, const char *yaml, const char *want)
{
    struct conf *c = load(yaml);
    CHECKF(c == NULL, "line %d: loaded, expected: %.180s", line, want);
    CHECKF(strcmp(err, want) == 0, "line %d: got: %.180s | want: %.180s",
           line, err, want);
    conf_free(c);
}

#define EXPECT_ERROR(yaml, want) expect_error(__LINE__, (yaml), (want))

/* A valid file to build error cases on; line 1 is `listen:`. */
#define BASE_LISTEN  "listen:\n  - 127.0.0.1:8080\n"
#define BASE_POOL    "pools:\n  web:\n    servers:\n      - 127.0.0.1:9001\n"

static struct sockaddr_storage sa_of(const char *ip)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    struct sockaddr_in *sin = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&ss;
    if (inet_pton(AF_INET, ip, &sin->sin_addr) == 1)
        sin->sin_family = AF_INET;
    else if (inet_pton(AF_INET6, ip, &sin6->sin6_addr) == 1)
        sin6->sin6_family = AF_INET6;
    return ss;
}

static bool match(const char *cidr, const char *ip)
{
    struct conf_cidr c;
    char e[128];
    if (conf_parse_cidr(cidr, &c, e, sizeof e) < 0)
        return false;
    struct sockaddr_storage ss = sa_of(ip);
    return conf_cidr_match(&c, (struct sockaddr *)&ss);
}

/* ---- whole files ------------------------------------------------------- */

static const char full_yaml[] =
    "listen:\n"                                 /* 1 */
    "  - 127.0.0.1:8080\n"
    "  - \"[::1]:8081\"\n"
    "  - \"*:8082\"\n"
    "workers: 3\n"                              /* 5 */
    "pools:\n"
    "  web:\n"
    "    balance: round_robin\n"
    "    servers:\n"
    "      - 127.0.0.1:9001\n"                  /* 10 */
    "      - address: 127.0.0.1:9002\n"
    "        weight: 5\n"
    "        backup: true\n"
    "  api.v2:\n"
    "    balance: hash\n"                       /* 15 */
    "    hash_key: header:X-User\n"
    "    servers: [\"[::1]:9004\", 127.0.0.1:9005]\n"
    "  lc:\n"
    "    balance: least_conn\n"
    "    servers:\n"                            /* 20 */
    "      - 127.0.0.1:9006\n"
    "  r2:\n"
    "    balance: random2\n"
    "    servers:\n"
    "      - 127.0.0.1:9007\n"                  /* 25 */
    "  ck:\n"
    "    balance: hash\n"
    "    hash_key: cookie:sid\n"
    "    servers: [127.0.0.1:9008]\n"
    "  ur:\n"                                   /* 30 */
    "    balance: hash\n"
    "    hash_key: uri\n"
    "    servers: [127.0.0.1:9009]\n"
    "routes:\n"
    "  - host: API.Example.com\n"               /* 35 */
    "    path_prefix: /v2/\n"
    "    pool: api.v2\n"
    "  - host: \"*.example.com\"\n"
    "    pool: lc\n"
    "  - path_prefix: /static\n"                /* 40 */
    "    pool: r2\n"
    "  - pool: web\n"
    "trusted_proxies:\n"
    "  - 10.0.0.0/8\n"
    "  - ::1\n"                                 /* 45 */
    "  - 192.168.1.7\n"
    "timeouts:\n"
    "  connect: 1500ms\n"
    "  client_header: 7\n"
    "  client_idle: 2m\n"                       /* 50 */
    "  server: 90s\n"
    "  tunnel: 2h\n"
    "  shutdown: 1d\n"
    "limits:\n"
    "  max_header_bytes: 64k\n"                 /* 55 */
    "  max_connections: 500\n"
    "access_log:\n"
    "  path: /var/log/sb.log\n"
    "  format: json\n";

static void conf_full_file(void)
{
    struct conf *c = load(full_yaml);
    CHECKF(c != NULL, "%.400s", err);
    if (!c)
        return;

    CHECK(strcmp(c->file, "t.yaml") == 0);
    CHECK(c->n_listen == 3);
    CHECK(strcmp(c->listen[0].text, "127.0.0.1:8080") == 0);
    CHECK(c->listen[0].u.sa.sa_family == AF_INET);
    CHECK(c->listen[0].len == sizeof(struct sockaddr_in));
    CHECK(ntohs(c->listen[0].u.sin.sin_port) == 8080);
    CHECK(strcmp(c->listen[1].text, "[::1]:8081") == 0);
    CHECK(c->listen[1].u.sa.sa_family == AF_INET6);
    CHECK(c->listen[1].len == sizeof(struct sockaddr_in6));
    CHECK(ntohs(c->listen[1].u.sin6.sin6_port) == 8081);
    CHECK(strcmp(c->listen[2].text, "0.0.0.0:8082") == 0);
    CHECK(c->listen[2].u.sin.sin_addr.s_addr == htonl(INADDR_ANY));

    CHECK(c->workers == 3);

    CHECK(c->n_pools == 6);
    const struct conf_pool *web = &c->pools[0], *api = &c->pools[1];
    CHECK(strcmp(web->name, "web") == 0);
    CHECK(web->line == 7 && web->column == 3);
    CHECK(web->balance == CONF_BALANCE_ROUND_ROBIN);
    CHECK(web->hash_key == CONF_HASH_SOURCE && web->hash_name == NULL);
    CHECK(web->n_servers == 2);
    CHECK(strcmp(web->servers[0].addr.text, "127.0.0.1:9001") == 0);
    CHECK(web->servers[0].weight == 1 && !web->servers[0].backup);
    CHECK(web->servers[0].line == 10 && web->servers[0].column == 9);
    CHECK(strcmp(web->servers[1].addr.text, "127.0.0.1:9002") == 0);
    CHECK(web->servers[1].weight == 5 && web->servers[1].backup);
    CHECK(web->servers[1].line == 11 && web->servers[1].column == 9);

    CHECK(strcmp(api->name, "api.v2") == 0);
    CHECK(api->balance == CONF_BALANCE_HASH);
    CHECK(api->hash_key == CONF_HASH_HEADER);
    CHECK(api->hash_name && strcmp(api->hash_name, "X-User") == 0);
    CHECK(api->n_servers == 2);
    CHECK(strcmp(api->servers[0].addr.text, "[::1]:9004") == 0);
    CHECK(api->servers[1].line == 17 && api->servers[1].column == 29);

    CHECK(c->pools[2].balance == CONF_BALANCE_LEAST_CONN);
    CHECK(c->pools[3].balance == CONF_BALANCE_RANDOM2);
    CHECK(c->pools[4].hash_key == CONF_HASH_COOKIE);
    CHECK(c->pools[4].hash_name && strcmp(c->pools[4].hash_name, "sid") == 0);
    CHECK(c->pools[5].hash_key == CONF_HASH_URI && c->pools[5].hash_name == NULL);

    CHECK(c->n_routes == 4);
    CHECK(c->routes[0].host && strcmp(c->routes[0].host, "api.example.com") == 0);
    CHECK(c->routes[0].path_prefix && strcmp(c->routes[0].path_prefix, "/v2/") == 0);
    CHECK(c->routes[0].pool == 1);
    CHECK(c->routes[0].line == 35 && c->routes[0].column == 5);
    CHECK(strcmp(c->routes[1].host, "*.example.com") == 0);
    CHECK(c->routes[1].path_prefix == NULL && c->routes[1].pool == 2);
    CHECK(c->routes[2].host == NULL && strcmp(c->routes[2].path_prefix, "/static") == 0);
    CHECK(c->routes[2].pool == 3);
    CHECK(c->routes[3].host == NULL && c->routes[3].path_prefix == NULL);
    CHECK(c->routes[3].pool == 0 && c->routes[3].line == 42);

    CHECK(c->n_trusted_proxies == 3);
    CHECK(c->trusted_proxies[0].family == AF_INET && c->trusted_proxies[0].prefix_len == 8);
    CHECK(c->trusted_proxies[1].family == AF_INET6 && c->trusted_proxies[1].prefix_len == 128);
    CHECK(c->trusted_proxies[2].family == AF_INET && c->trusted_proxies[2].prefix_len == 32);

    CHECK(c->timeouts.connect == 1500);
    CHECK(c->timeouts.client_header == 7000);
    CHECK(c->timeouts.client_idle == 120000);
    CHECK(c->timeouts.server == 90000);
    CHECK(c->timeouts.tunnel == 7200000);
    CHECK(c->timeouts.shutdown == 86400000);

    CHECK(c->limits.max_header_bytes == 65536);
    CHECK(c->limits.max_connections == 500);

    CHECK(c->access_log.path && strcmp(c->access_log.path, "/var/log/sb.log") == 0);
    CHECK(c->access_log.format == CONF_LOG_JSON);
    conf_free(c);
}

static void conf_defaults(void)
{
    struct conf *c = load(BASE_LISTEN BASE_POOL);
    CHECKF(c != NULL, "%.400s", err);
    if (!c)
        return;
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    CHECK(c->workers == (unsigned)(cores < 1 ? 1 : cores > 256 ? 256 : cores));
    CHECK(c->pools[0].balance == CONF_BALANCE_ROUND_ROBIN);
    CHECK(c->pools[0].hash_key == CONF_HASH_SOURCE);
    CHECK(c->pools[0].servers[0].weight == 1 && !c->pools[0].servers[0].backup);
    /* One pool and no routes: the pool is the default route. */
    CHECK(c->n_routes == 1);
    CHECK(c->routes[0].pool == 0 && !c->routes[0].host && !c->routes[0].path_prefix);
    CHECK(c->routes[0].line == 4 && c->routes[0].column == 3);
    CHECK(c->n_trusted_proxies == 0 && c->trusted_proxies == NULL);
    CHECK(c->timeouts.connect == 5000);
    CHECK(c->timeouts.client_header == 10000);
    CHECK(c->timeouts.client_idle == 60000);
    CHECK(c->timeouts.server == 60000);
    CHECK(c->timeouts.tunnel == 3600000);
    CHECK(c->timeouts.shutdown == 30000);
    CHECK(c->limits.max_header_bytes == 32768);
    CHECK(c->limits.max_connections == 10000);
    CHECK(c->limits.pipe_size == 32768);
    CHECK(c->access_log.path && strcmp(c->access_log.path, "stderr") == 0);
    CHECK(c->access_log.format == CONF_LOG_COMBINED);
    conf_free(c);

    /* A section present but empty, or only partly filled, keeps the rest. */
    c = load(BASE_LISTEN BASE_POOL "timeouts:\nlimits:\n  max_header_bytes: 1m\n"
             "access_log: {format: json}\n");
    CHECKF(c != NULL, "%.400s", err);
    if (!c)
        return;
    CHECK(c->timeouts.connect == 5000 && c->timeouts.tunnel == 3600000);
    CHECK(c->limits.max_header_bytes == 1048576 && c->limits.max_connections == 10000);
    CHECK(strcmp(c->access_log.path, "stderr") == 0);
    CHECK(c->access_log.format == CONF_LOG_JSON);
    conf_free(c);
}

static void conf_access_log_forms(void)
{
    struct conf *c = load(BASE_LISTEN BASE_POOL "access_log: off\n");
    CHECKF(c != NULL, "%.400s", err);
    if (c) {
        CHECK(c->access_log.path == NULL);
        CHECK(c->access_log.format == CONF_LOG_COMBINED);
    }
    conf_free(c);

    c = load(BASE_LISTEN BASE_POOL "access_log: /tmp/a.log\n");
    CHECKF(c != NULL, "%.400s", err);
    if (c)
        CHECK(strcmp(c->access_log.path, "/tmp/a.log") == 0);
    conf_free(c);

    c = load(BASE_LISTEN BASE_POOL "access_log:\n  path: off\n  format: json\n");
    CHECKF(c != NULL, "%.400s", err);
    if (c)
        CHECK(c->access_log.path == NULL && c->access_log.format == CONF_LOG_JSON);
    conf_free(c);

    EXPECT_ERROR(BASE_LISTEN BASE_POOL "access_log:\n  format: xml\n",
                 "t.yaml:8:11: access_log.format: expected one of combined or json, got \"xml\"");
    EXPECT_ERROR(BASE_LISTEN BASE_POOL "access_log: [a]\n",
                 "t.yaml:7:13: access_log: expected a mapping or a string, got a list");
}

static void conf_workers(void)
{
    struct conf *c = load(BASE_LISTEN BASE_POOL "workers: auto\n");
    CHECKF(c != NULL, "%.400s", err);
    if (c)
        CHECK(c->workers >= 1 && c->workers <= 256);
    conf_free(c);
    c = load(BASE_LISTEN BASE_POOL "workers: 256\n");
    CHECKF(c && c->workers == 256, "%.400s", err);
    conf_free(c);
    EXPECT_ERROR(BASE_LISTEN BASE_POOL "workers: 0\n",
                 "t.yaml:7:10: workers: expected \"auto\" or an integer from 1 to 256, got \"0\"");
    EXPECT_ERROR(BASE_LISTEN BASE_POOL "workers: many\n",
                 "t.yaml:7:10: workers: expected \"auto\" or an integer from 1 to 256, got \"many\"");
}

static void conf_limits(void)
{
    struct conf *c = load(BASE_LISTEN BASE_POOL
                          "limits:\n  max_header_bytes: 1024\n  max_connections: 1000000\n");
    CHECKF(c != NULL, "%.400s", err);
    if (c) {
        CHECK(c->limits.max_header_bytes == 1024);
        CHECK(c->limits.max_connections == 1000000);
    }
    conf_free(c);
    c = load(BASE_LISTEN BASE_POOL "limits:\n  max_header_bytes: 1M\n");
    CHECKF(c && c->limits.max_header_bytes == 1048576, "%.400s", err);
    conf_free(c);
    c = load(BASE_LISTEN BASE_POOL "limits:\n  max_header_bytes: 8K\n");
    CHECKF(c && c->limits.max_header_bytes == 8192, "%.400s", err);
    conf_free(c);

    EXPECT_ERROR(BASE_LISTEN BASE_POOL "limits:\n  max_header_bytes: 2m\n",
                 "t.yaml:8:21: limits.max_header_bytes: expected a size from 1024 to "
                 "1048576 bytes (suffix k or m allowed), got \"2m\"");
    EXPECT_ERROR(BASE_LISTEN BASE_POOL "limits:\n  max_header_bytes: 32kb\n",
                 "t.yaml:8:21: limits.max_header_bytes: expected a size from 1024 to "
                 "1048576 bytes (suffix k or m allowed), got \"32kb\"");
    static const struct { const char *value; uint32_t bytes; } pipe_sizes[] = {
        { "64k", 65536 }, { "4096", 4096 }, { "1m", 1048576 }, { "0", 0 },
    };
    for (size_t i = 0; i < sizeof pipe_sizes / sizeof pipe_sizes[0]; i++) {
        char yaml[256];
        snprintf(yaml, sizeof yaml, BASE_LISTEN BASE_POOL "limits:\n  pipe_size: %s\n",
                 pipe_sizes[i].value);
        c = load(yaml);
        CHECKF(c && c->limits.pipe_size == pipe_sizes[i].bytes, "%s: %.400s",
               pipe_sizes[i].value, err);
        conf_free(c);
    }
    EXPECT_ERROR(BASE_LISTEN BASE_POOL "limits:\n  pipe_size: 1000\n",
                 "t.yaml:8:14: limits.pipe_size: expected 0 (no splicing) or a size from 4k "
                 "to 1m, got \"1000\"");
    EXPECT_ERROR(BASE_LISTEN BASE_POOL "limits:\n  pipe_size: 2m\n",
                 "t.yaml:8:14: limits.pipe_size: expected 0 (no splicing) or a size from 4k "
                 "to 1m, got \"2m\"");
    EXPECT_ERROR(BASE_LISTEN BASE_POOL "limits:\n  max_connections: 32k\n",
                 "t.yaml:8:20: limits.max_connections: expected an integer from 1 to "
                 "1000000, got \"32k\"");
    EXPECT_ERROR(BASE_LISTEN BASE_POOL "limits:\n  max_connections: -1\n",
                 "t.yaml:8:20: limits.max_connections: expected an integer from 1 to "
                 "1000000, got \"-1\"");
    EXPECT_ERROR(BASE_LISTEN BASE_POOL "limits:\n  max_connections: 99999999999999999999999\n",
                 "t.yaml:8:20: limits.max_connections: expected an integer from 1 to "
                 "1000000, got \"99999999999999999999999\"");
}

static void conf_bools(void)
{
    static const char *yes[] = { "true", "True", "yes", "on" };
    static const char *no[] = { "false", "FALSE", "no", "off" };
    char yaml[256];
    for (size_t i = 0; i < 4; i++) {
        snprintf(yaml, sizeof yaml, BASE_LISTEN "pools:\n  p:\n    servers:\n"
                 "      - {address: 127.0.0.1:1, backup: %s}\n"
                 "      - {address: 127.0.0.1:2, backup: %s}\n", yes[i], no[i]);
        struct conf *c = load(yaml);
        CHECKF(c != NULL, "%.400s", err);
        if (c)
            CHECK(c->pools[0].servers[0].backup && !c->pools[0].servers[1].backup);
        conf_free(c);
    }
    EXPECT_ERROR(BASE_LISTEN "pools:\n  p:\n    servers:\n"
                 "      - {address: 127.0.0.1:1, backup: maybe}\n",
                 "t.yaml:6:40: pools.p.servers[0].backup: expected true or false, got \"maybe\"");
}

static void conf_defer_accept(void)
{
    struct conf *c = load(BASE_LISTEN BASE_POOL);
    CHECKF(c != NULL, "%.400s", err);
    if (c)
        CHECK(c->defer_accept);         /* the default */
    conf_free(c);
    c = load(BASE_LISTEN "defer_accept: off\n" BASE_POOL);
    CHECKF(c != NULL, "%.400s", err);
    if (c)
        CHECK(!c->defer_accept);
    conf_free(c);
    EXPECT_ERROR(BASE_LISTEN "defer_accept: 2\n" BASE_POOL,
                 "t.yaml:3:15: defer_accept: expected true or false, got \"2\"");
}

static void conf_sample_file(void)
{
    struct conf *c = conf_load("conf/switchboard.yaml", err, sizeof err);
    CHECKF(c != NULL, "%.400s", err);
    if (!c)
        return;
    CHECK(c->n_listen == 2);
    CHECK(strcmp(c->listen[0].text, "127.0.0.1:8080") == 0);
    CHECK(strcmp(c->listen[1].text, "[::1]:8080") == 0);
    CHECK(c->n_pools == 3);
    const struct conf_pool *web = &c->pools[0], *api = &c->pools[1], *chat = &c->pools[2];
    CHECK(strcmp(web->name, "web") == 0 && web->balance == CONF_BALANCE_ROUND_ROBIN);
    CHECK(web->n_servers == 3);
    CHECK(strcmp(web->servers[0].addr.text, "127.0.0.1:9001") == 0);
    CHECK(strcmp(web->servers[1].addr.text, "127.0.0.1:9002") == 0);
    CHECK(strcmp(web->servers[2].addr.text, "127.0.0.1:9003") == 0);
    CHECK(web->servers[0].weight == 1 && web->servers[1].weight == 1
          && web->servers[2].weight == 2);
    CHECK(!web->servers[0].backup && !web->servers[1].backup && !web->servers[2].backup);
    CHECK(strcmp(api->name, "api") == 0 && api->balance == CONF_BALANCE_LEAST_CONN);
    CHECK(api->n_servers == 2);
    CHECK(strcmp(api->servers[0].addr.text, "127.0.0.1:9004") == 0 && !api->servers[0].backup);
    CHECK(strcmp(api->servers[1].addr.text, "127.0.0.1:9005") == 0 && api->servers[1].backup);
    /* The chat demo: a pool on the dashboard's own address, routed first. */
    CHECK(strcmp(chat->name, "chat") == 0 && chat->n_servers == 1);
    CHECK(strcmp(chat->servers[0].addr.text, c->dashboard.listen.text) == 0);
    CHECK(c->chat.enabled && c->chat.modes == 7 && c->chat.n_rooms == 6);
    CHECK(c->n_routes == 3);
    CHECK(strcmp(c->routes[0].path_prefix, "/chat") == 0 && c->routes[0].pool == 2);
    CHECK(strcmp(c->routes[1].path_prefix, "/api") == 0 && c->routes[1].pool == 1);
    CHECK(!c->routes[2].host && !c->routes[2].path_prefix && c->routes[2].pool == 0);
    CHECK(c->n_trusted_proxies == 2);
    CHECK(match("127.0.0.0/8", "127.0.0.1"));
    struct sockaddr_storage lo4 = sa_of("127.0.0.1"), lo6 = sa_of("::1");
    CHECK(conf_cidr_match(&c->trusted_proxies[0], (struct sockaddr *)&lo4));
    CHECK(conf_cidr_match(&c->trusted_proxies[1], (struct sockaddr *)&lo6));
    CHECK(c->access_log.path && strcmp(c->access_log.path, "stderr") == 0);
    CHECK(c->access_log.format == CONF_LOG_COMBINED);
    /* Commented-out sections: the defaults. */
    CHECK(c->timeouts.connect == 5000 && c->limits.max_header_bytes == 32768);
    conf_free(c);
}

static void conf_load_missing_file(void)
{
    struct conf *c = conf_load("/nonexistent/sb.yaml", err, sizeof err);
    CHECK(c == NULL);
    CHECKF(strcmp(err, "/nonexistent/sb.yaml: No such file or directory") == 0, "%.400s", err);
}

/* ---- errors ------------------------------------------------------------ */

static void conf_err_unknown_key(void)
{
    EXPECT_ERROR(BASE_LISTEN "lisen: x\n" BASE_POOL,
                 "t.yaml:3:1: lisen: unknown key");
    EXPECT_ERROR(BASE_LISTEN "pools:\n  web:\n    servers:\n"
                 "      - address: 127.0.0.1:9001\n"
                 "        wieght: 2\n",
                 "t.yaml:7:9: pools.web.servers[0].wieght: unknown key");
    EXPECT_ERROR(BASE_LISTEN BASE_POOL "timeouts:\n  conect: 5s\n",
                 "t.yaml:8:3: timeouts.conect: unknown key");
    EXPECT_ERROR(BASE_LISTEN BASE_POOL "routes:\n  - pool: web\n    hots: a.com\n",
                 "t.yaml:9:5: routes[0].hots: unknown key");
}

static void conf_err_duplicate_key(void)
{
    EXPECT_ERROR(BASE_LISTEN BASE_POOL "workers: 2\nworkers: 3\n",
                 "t.yaml:8:1: workers: duplicate key (first at line 7)");
    EXPECT_ERROR(BASE_LISTEN BASE_POOL "  web:\n    servers: [127.0.0.1:1]\n",
                 "t.yaml:7:3: pools.web: duplicate key (first at line 4)");
}

static void conf_err_wrong_type(void)
{
    EXPECT_ERROR("listen: 127.0.0.1:8080\n" BASE_POOL,
                 "t.yaml:1:9: listen: expected a list, got \"127.0.0.1:8080\"");
    EXPECT_ERROR(BASE_LISTEN BASE_POOL "timeouts: [1s]\n",
                 "t.yaml:7:11: timeouts: expected a mapping, got a list");
    EXPECT_ERROR(BASE_LISTEN BASE_POOL "timeouts:\n  connect: {a: 1}\n",
                 "t.yaml:8:12: timeouts.connect: expected a duration such as 500ms, "
                 "30s, 5m, 1h or 2d, got a mapping");
    EXPECT_ERROR(BASE_LISTEN "pools: [web]\n",
                 "t.yaml:3:8: pools: expected a mapping, got a list");
    EXPECT_ERROR("- a\n- b\n",
                 "t.yaml:1:1: expected a mapping, got a list");
    EXPECT_ERROR(BASE_LISTEN "pools:\n  web:\n    servers:\n      - [127.0.0.1:1]\n",
                 "t.yaml:6:9: pools.web.servers[0]: expected a mapping or a string, got a list");
    EXPECT_ERROR(BASE_LISTEN BASE_POOL "routes:\n  - pool: [web]\n",
                 "t.yaml:8:11: routes[0].pool: expected a pool name, got a list");
    EXPECT_ERROR(BASE_LISTEN BASE_POOL "routes:\n  - pool: web\n    host: \"\"\n",
                 "t.yaml:9:11: routes[0].host: expected a non-empty string, got \"\"");
    EXPECT_ERROR(BASE_LISTEN BASE_POOL "trusted_proxies:\n  - {a: 1}\n",
                 "t.yaml:8:5: trusted_proxies[0]: expected an address or ADDRESS/PREFIX, "
                 "got a mapping");
    EXPECT_ERROR(BASE_LISTEN BASE_POOL "workers:\n",
                 "t.yaml:7:9: workers: expected \"auto\" or an integer from 1 to 256, got nothing");
}

static void conf_err_bad_weight(void)
{
    EXPECT_ERROR(BASE_LISTEN "pools:\n  web:\n    servers:\n"
                 "      - 127.0.0.1:9001\n"
                 "      - address: 127.0.0.1:9002\n"
                 "        weight: heavy\n",
                 "t.yaml:8:17: pools.web.servers[1].weight: expected an integer from 1 "
                 "to 256, got \"heavy\"");
    EXPECT_ERROR(BASE_LISTEN "pools:\n  web:\n    servers:\n"
                 "      - {address: 127.0.0.1:9002, weight: 0}\n",
                 "t.yaml:6:43: pools.web.servers[0].weight: expected an integer from 1 "
                 "to 256, got \"0\"");
    EXPECT_ERROR(BASE_LISTEN "pools:\n  web:\n    servers:\n"
                 "      - {address: 127.0.0.1:9002, weight: 257}\n",
                 "t.yaml:6:43: pools.web.servers[0].weight: expected an integer from 1 "
                 "to 256, got \"257\"");
}

static void conf_err_bad_duration(void)
{
    EXPECT_ERROR(BASE_LISTEN BASE_POOL "timeouts:\n  server: 5x\n",
                 "t.yaml:8:11: timeouts.server: expected a duration such as 500ms, 30s, "
                 "5m, 1h or 2d, got \"5x\"");
    EXPECT_ERROR(BASE_LISTEN BASE_POOL "timeouts:\n  connect: 0\n",
                 "t.yaml:8:12: timeouts.connect: expected a duration from 1ms to "
                 "4294967295ms, got \"0\"");
    EXPECT_ERROR(BASE_LISTEN BASE_POOL "timeouts:\n  tunnel: 50d\n",
                 "t.yaml:8:11: timeouts.tunnel: duration too long: at most 4294967295ms "
                 "(about 49 days), got \"50d\"");
}

static void conf_err_bad_address(void)
{
    EXPECT_ERROR("listen:\n  - 127.0.0.1:0\n" BASE_POOL,
                 "t.yaml:2:5: listen[0]: port must be a number from 1 to 65535, got \"127.0.0.1:0\"");
    EXPECT_ERROR("listen:\n  - 127.0.0.1:8080\n  - 127.0.0.1\n" BASE_POOL,
                 "t.yaml:3:5: listen[1]: missing port: expected HOST:PORT, [IPV6]:PORT "
                 "or *:PORT, got \"127.0.0.1\"");
    EXPECT_ERROR(BASE_LISTEN "pools:\n  web:\n    servers:\n      - address: ::1:80\n",
                 "t.yaml:6:18: pools.web.servers[0].address: IPv6 addresses need brackets, "
                 "as in [::1]:8080, got \"::1:80\"");
    EXPECT_ERROR(BASE_LISTEN "pools:\n  web:\n    servers:\n      - 127.0.0.1:99999\n",
                 "t.yaml:6:9: pools.web.servers[0]: port must be a number from 1 to 65535, "
                 "got \"127.0.0.1:99999\"");
    EXPECT_ERROR(BASE_LISTEN "pools:\n  web:\n    servers:\n      - {weight: 2}\n",
                 "t.yaml:6:9: pools.web.servers[0].address: missing required key");
    EXPECT_ERROR(BASE_LISTEN BASE_POOL "trusted_proxies:\n  - 10.0.0.0/33\n",
                 "t.yaml:8:5: trusted_proxies[0]: prefix length must be a number from 0 "
                 "to 32 for IPv4, got \"10.0.0.0/33\"");
}

static void conf_err_pools(void)
{
    EXPECT_ERROR(BASE_LISTEN "pools:\n  web:\n    balance: round_robin\n",
                 "t.yaml:5:5: pools.web.servers: missing required key");
    EXPECT_ERROR(BASE_LISTEN "pools:\n  web:\n    servers: []\n",
                 "t.yaml:5:14: pools.web.servers: expected at least one server, got an "
                 "empty list");
    EXPECT_ERROR(BASE_LISTEN "pools:\n  web:\n",
                 "t.yaml:4:3: pools.web.servers: missing required key");
    EXPECT_ERROR(BASE_LISTEN "pools: {}\n",
                 "t.yaml:3:8: pools: expected at least one pool, got an empty mapping");
    EXPECT_ERROR(BASE_LISTEN,
                 "t.yaml:1:1: pools: missing required key");
    EXPECT_ERROR(BASE_LISTEN "pools:\n  we b:\n    servers: [127.0.0.1:1]\n",
                 "t.yaml:4:3: pools: bad pool name \"we b\": use up to 64 letters, "
                 "digits, '_', '.' and '-'");
    EXPECT_ERROR(BASE_LISTEN "pools:\n  \"\":\n    servers: [127.0.0.1:1]\n",
                 "t.yaml:4:3: pools: bad pool name \"\": use up to 64 letters, "
                 "digits, '_', '.' and '-'");
    char yaml[512];
    snprintf(yaml, sizeof yaml, BASE_LISTEN "pools:\n  %065d:\n    servers: [127.0.0.1:1]\n", 0);
    EXPECT_ERROR(yaml, "t.yaml:4:3: pools: bad pool name \"000000000000000000000000000000"
                 "000000000000000000...\": use up to 64 letters, digits, '_', '.' and '-'");
    snprintf(yaml, sizeof yaml, BASE_LISTEN "pools:\n  %064d:\n    servers: [127.0.0.1:1]\n", 0);
    struct conf *c = load(yaml);
    CHECKF(c != NULL, "%.400s", err);
    conf_free(c);
    EXPECT_ERROR(BASE_LISTEN "pools:\n  web:\n    balance: fastest\n    servers: [127.0.0.1:1]\n",
                 "t.yaml:5:14: pools.web.balance: expected one of round_robin, "
                 "least_conn, random2 or hash, got \"fastest\"");
}

static void conf_err_duplicate_server(void)
{
    EXPECT_ERROR(BASE_LISTEN "pools:\n  web:\n    servers:\n"
                 "      - 127.0.0.1:9001\n"
                 "      - 127.0.0.1:9002\n"
                 "      - address: 127.0.0.1:9001\n",
                 "t.yaml:8:18: pools.web.servers[2].address: duplicate server "
                 "127.0.0.1:9001 (first at line 6)");
}

static void conf_err_hash_key(void)
{
    EXPECT_ERROR(BASE_LISTEN "pools:\n  web:\n    hash_key: uri\n    servers: [127.0.0.1:1]\n",
                 "t.yaml:5:15: pools.web.hash_key: only valid with balance: hash (this "
                 "pool uses round_robin)");
    EXPECT_ERROR(BASE_LISTEN "pools:\n  web:\n    balance: least_conn\n    hash_key: source\n"
                 "    servers: [127.0.0.1:1]\n",
                 "t.yaml:6:15: pools.web.hash_key: only valid with balance: hash (this "
                 "pool uses least_conn)");
    EXPECT_ERROR(BASE_LISTEN "pools:\n  web:\n    balance: hash\n    hash_key: body\n"
                 "    servers: [127.0.0.1:1]\n",
                 "t.yaml:6:15: pools.web.hash_key: expected source, uri, header:NAME or "
                 "cookie:NAME, got \"body\"");
    EXPECT_ERROR(BASE_LISTEN "pools:\n  web:\n    balance: hash\n    hash_key: \"header:\"\n"
                 "    servers: [127.0.0.1:1]\n",
                 "t.yaml:6:15: pools.web.hash_key: expected a header or cookie name after "
                 "\"header:\", got \"header:\"");
    EXPECT_ERROR(BASE_LISTEN "pools:\n  web:\n    balance: hash\n    hash_key: \"cookie:a b\"\n"
                 "    servers: [127.0.0.1:1]\n",
                 "t.yaml:6:15: pools.web.hash_key: expected a header or cookie name after "
                 "\"cookie:\", got \"cookie:a b\"");
}

static void conf_err_routes(void)
{
    EXPECT_ERROR(BASE_LISTEN BASE_POOL "routes:\n  - pool: wbe\n",
                 "t.yaml:8:11: routes[0].pool: undefined pool \"wbe\" (pools are: web)");
    EXPECT_ERROR(BASE_LISTEN BASE_POOL "routes:\n  - host: a.com\n",
                 "t.yaml:8:5: routes[0].pool: missing required key");
    EXPECT_ERROR(BASE_LISTEN BASE_POOL "routes:\n  - path_prefix: api\n    pool: web\n",
                 "t.yaml:8:18: routes[0].path_prefix: expected a path starting with \"/\", "
                 "without spaces, '?' or '#', got \"api\"");
    EXPECT_ERROR(BASE_LISTEN BASE_POOL "routes:\n  - host: a.com:80\n    pool: web\n",
                 "t.yaml:8:11: routes[0].host: expected a host name such as example.com "
                 "or *.example.com, without a port, got \"a.com:80\"");
    EXPECT_ERROR(BASE_LISTEN BASE_POOL "routes: []\n",
                 "t.yaml:7:9: routes: expected at least one route, got an empty list");
    /* Unreachable: after the default route, and behind a broader route. */
    EXPECT_ERROR(BASE_LISTEN BASE_POOL
                 "routes:\n"
                 "  - pool: web\n"
                 "  - path_prefix: /api\n"
                 "    pool: web\n",
                 "t.yaml:9:5: routes[1]: unreachable: it comes after the default route at line 8");
    EXPECT_ERROR(BASE_LISTEN BASE_POOL
                 "routes:\n"
                 "  - path_prefix: /api\n"
                 "    pool: web\n"
                 "  - host: \"*.example.com\"\n"
                 "    pool: web\n"
                 "  - host: www.Example.com\n"
                 "    path_prefix: /api/v2\n"
                 "    pool: web\n",
                 "t.yaml:12:5: routes[2]: unreachable: routes[0] at line 8 matches every "
                 "request this route matches");
    EXPECT_ERROR(BASE_LISTEN BASE_POOL
                 "routes:\n"
                 "  - host: \"*.example.com\"\n"
                 "    pool: web\n"
                 "  - host: a.b.example.com\n"
                 "    pool: web\n",
                 "t.yaml:10:5: routes[1]: unreachable: routes[0] at line 8 matches every "
                 "request this route matches");

    /* Not shadowed: "/api" does not cover "/apiv2"; "*.example.com" does not
     * cover "example.com"; routes for other hosts are independent. */
    struct conf *c = load(BASE_LISTEN BASE_POOL
                          "routes:\n"
                          "  - path_prefix: /api\n    pool: web\n"
                          "  - path_prefix: /apiv2\n    pool: web\n"
                          "  - host: \"*.example.com\"\n    pool: web\n"
                          "  - host: example.com\n    pool: web\n"
                          "  - host: \"[::1]\"\n    pool: web\n"
                          "  - pool: web\n");
    CHECKF(c != NULL, "%.400s", err);
    if (c)
        CHECK(c->n_routes == 6);
    conf_free(c);

    /* Several pools and no routes: nothing to guess from. */
    EXPECT_ERROR(BASE_LISTEN BASE_POOL "  api:\n    servers: [127.0.0.1:2]\n",
                 "t.yaml:1:1: routes: missing required key (there is more than one pool)");
}

static void conf_err_duplicate_listen(void)
{
    EXPECT_ERROR("listen:\n  - 127.0.0.1:8080\n  - \"[::1]:8080\"\n  - 127.0.0.1:8080\n"
                 BASE_POOL,
                 "t.yaml:4:5: listen[2]: duplicate listen address 127.0.0.1:8080 (first at line 2)");
    EXPECT_ERROR("listen:\n  - \"*:80\"\n  - 0.0.0.0:80\n" BASE_POOL,
                 "t.yaml:3:5: listen[1]: duplicate listen address 0.0.0.0:80 (first at line 2)");
}

static void conf_err_missing_listen(void)
{
    EXPECT_ERROR(BASE_POOL, "t.yaml:1:1: listen: missing required key");
    EXPECT_ERROR("", "t.yaml:1:1: listen: missing required key");
    EXPECT_ERROR("# only a comment\n", "t.yaml:1:1: listen: missing required key");
    EXPECT_ERROR("listen: []\n" BASE_POOL,
                 "t.yaml:1:9: listen: expected at least one listen address, got an empty list");
}

static void conf_err_yaml_syntax(void)
{
    EXPECT_ERROR(BASE_LISTEN "pools:\n  web:\n    servers: [127.0.0.1:1\n",
                 "t.yaml:6:1: syntax error: did not find expected ',' or ']' (while "
                 "parsing a flow sequence at line 5, column 14)");
    EXPECT_ERROR("listen:\n  - a\n b: c\n",
                 "t.yaml:3:2: syntax error: did not find expected key (while parsing a "
                 "block mapping at line 1, column 1)");
    EXPECT_ERROR("listen:\n\t- a\n",
                 "t.yaml:2:1: syntax error: found character that cannot start any token "
                 "(while scanning for the next token at line 2, column 1)");
    EXPECT_ERROR("listen: \"\xff\"\n",
                 "t.yaml:1:10: syntax error: invalid leading UTF-8 octet");
    EXPECT_ERROR(BASE_LISTEN BASE_POOL "---\nlisten: []\n",
                 "t.yaml:7:1: only one YAML document is allowed");
    /* "\0" in YAML would silently cut a C string. */
    EXPECT_ERROR("listen: [\"127.0.0.1:80\\0junk\"]\n" BASE_POOL,
                 "t.yaml:1:10: a NUL character is not allowed here");
}

/* ---- value parsers ----------------------------------------------------- */

static void conf_duration_parse(void)
{
    static const struct { const char *text; uint32_t ms; } ok[] = {
        { "0", 0 }, { "1", 1000 }, { "30", 30000 }, { "250ms", 250 },
        { "1s", 1000 }, { "5m", 300000 }, { "2h", 7200000 }, { "1d", 86400000 },
        { "4294967295ms", 4294967295u }, { "4294967s", 4294967000u },
        { "49d", 4233600000u }, { "007s", 7000 },
    };
    static const char *bad[] = {
        "", "s", "ms", "-1s", "+1s", "1.5s", "1 s", " 1s", "1s ", "1sec",
        "1S", "1w", "5x", "1h30m", "0x10", "fast",
    };
    static const char *too_long[] = {
        "4294967296ms", "4294968s", "71583m", "1194h", "50d",
        "18446744073709551616", "99999999999999999999999999ms",
    };
    char e[128];
    uint32_t ms;

    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
        ms = 12345;
        CHECKF(conf_parse_duration(ok[i].text, &ms, e, sizeof e) == 0,
               "%.40s: %.100s", ok[i].text, e);
        CHECKF(ms == ok[i].ms, "%s gave %u", ok[i].text, ms);
    }
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        CHECKF(conf_parse_duration(bad[i], &ms, e, sizeof e) == -1, "\"%s\" accepted", bad[i]);
        CHECKF(strstr(e, "expected a duration") != NULL, "%s: %s", bad[i], e);
    }
    for (size_t i = 0; i < sizeof too_long / sizeof too_long[0]; i++) {
        CHECKF(conf_parse_duration(too_long[i], &ms, e, sizeof e) == -1,
               "\"%s\" accepted", too_long[i]);
        CHECKF(strstr(e, "too long") != NULL, "%s: %s", too_long[i], e);
    }
}

static void conf_addr_parse(void)
{
    struct conf_addr a;
    char e[128];

    CHECK(conf_parse_addr("127.0.0.1:8080", &a, e, sizeof e) == 0);
    CHECK(a.u.sa.sa_family == AF_INET && a.len == sizeof(struct sockaddr_in));
    CHECK(ntohs(a.u.sin.sin_port) == 8080);
    CHECK(a.u.sin.sin_addr.s_addr == htonl(0x7f000001));
    CHECK(strcmp(a.text, "127.0.0.1:8080") == 0);

    CHECK(conf_parse_addr("[::1]:443", &a, e, sizeof e) == 0);
    CHECK(a.u.sa.sa_family == AF_INET6 && a.len == sizeof(struct sockaddr_in6));
    CHECK(ntohs(a.u.sin6.sin6_port) == 443);
    CHECK(IN6_IS_ADDR_LOOPBACK(&a.u.sin6.sin6_addr));
    CHECK(strcmp(a.text, "[::1]:443") == 0);

    CHECK(conf_parse_addr("[::]:80", &a, e, sizeof e) == 0);
    CHECK(a.u.sa.sa_family == AF_INET6 && IN6_IS_ADDR_UNSPECIFIED(&a.u.sin6.sin6_addr));
    CHECK(strcmp(a.text, "[::]:80") == 0);

    CHECK(conf_parse_addr("[2001:DB8::0001]:65535", &a, e, sizeof e) == 0);
    CHECK(strcmp(a.text, "[2001:db8::1]:65535") == 0);

    CHECK(conf_parse_addr("*:1", &a, e, sizeof e) == 0);
    CHECK(a.u.sa.sa_family == AF_INET && a.u.sin.sin_addr.s_addr == htonl(INADDR_ANY));
    CHECK(ntohs(a.u.sin.sin_port) == 1);
    CHECK(strcmp(a.text, "0.0.0.0:1") == 0);

    /* A name is resolved; /etc/hosts has localhost on any sane system. */
    CHECKF(conf_parse_addr("localhost:8080", &a, e, sizeof e) == 0, "%s", e);
    CHECK(a.u.sa.sa_family == AF_INET || a.u.sa.sa_family == AF_INET6);
    CHECK(strcmp(a.text, "127.0.0.1:8080") == 0 || strcmp(a.text, "[::1]:8080") == 0);

    static const struct { const char *text, *reason; } bad[] = {
        { "127.0.0.1", "missing port" },
        { "127.0.0.1:", "port must be" },
        { "127.0.0.1:0", "port must be" },
        { "127.0.0.1:65536", "port must be" },
        { "127.0.0.1:-1", "port must be" },
        { "127.0.0.1:http", "port must be" },
        { "127.0.0.1:80 ", "port must be" },
        { ":80", "missing host" },
        { "::1:80", "need brackets" },
        { "[::1]80", "expected HOST:PORT" },
        { "[::1", "expected HOST:PORT" },
        { "[nothex]:80", "bad IPv6 address" },
        { "[127.0.0.1]:80", "bad IPv6 address" },
        { "1.2:80", "bad host name" },
        { "256.1.1.1:80", "bad host name" },
        { "bad host:80", "bad host name" },
        { "**:80", "bad host name" },
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        e[0] = '\0';
        CHECKF(conf_parse_addr(bad[i].text, &a, e, sizeof e) == -1, "\"%s\" accepted", bad[i].text);
        CHECKF(strstr(e, bad[i].reason) != NULL, "%s: %s", bad[i].text, e);
    }
}

static void conf_cidr_parse(void)
{
    struct conf_cidr c;
    char e[128];

    CHECK(conf_parse_cidr("10.0.0.0/8", &c, e, sizeof e) == 0);
    CHECK(c.family == AF_INET && c.prefix_len == 8 && c.addr[0] == 10 && c.addr[1] == 0);
    CHECK(conf_parse_cidr("192.168.1.7", &c, e, sizeof e) == 0);
    CHECK(c.family == AF_INET && c.prefix_len == 32 && c.addr[3] == 7);
    CHECK(conf_parse_cidr("::1", &c, e, sizeof e) == 0);
    CHECK(c.family == AF_INET6 && c.prefix_len == 128 && c.addr[15] == 1);
    CHECK(conf_parse_cidr("0.0.0.0/0", &c, e, sizeof e) == 0 && c.prefix_len == 0);
    CHECK(conf_parse_cidr("::/0", &c, e, sizeof e) == 0 && c.prefix_len == 0);

    /* Host bits are masked off, not refused. */
    CHECK(conf_parse_cidr("10.1.2.3/8", &c, e, sizeof e) == 0);
    CHECK(c.addr[0] == 10 && c.addr[1] == 0 && c.addr[2] == 0 && c.addr[3] == 0);
    CHECK(conf_parse_cidr("10.255.2.3/12", &c, e, sizeof e) == 0);
    CHECK(c.addr[0] == 10 && c.addr[1] == 0xf0 && c.addr[2] == 0);
    CHECK(conf_parse_cidr("2001:db8:ffff::1/33", &c, e, sizeof e) == 0);
    CHECK(c.addr[4] == 0x80 && c.addr[5] == 0 && c.addr[15] == 0);

    static const char *bad[] = {
        "10.0.0.0/33", "::/129", "10.0.0.0/", "10.0.0.0/-1", "10.0.0.0/8x",
        "10.0.0.0/1000", "10.0.0/8", "example.com/8", "", "/8", "1.2.3.4/8/8",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        CHECKF(conf_parse_cidr(bad[i], &c, e, sizeof e) == -1, "\"%s\" accepted", bad[i]);
    CHECK(conf_parse_cidr("10.0.0.0/33", &c, e, sizeof e) == -1
          && strcmp(e, "prefix length must be a number from 0 to 32 for IPv4") == 0);
    CHECK(conf_parse_cidr("::/129", &c, e, sizeof e) == -1
          && strcmp(e, "prefix length must be a number from 0 to 128 for IPv6") == 0);
}

static void conf_cidr_matching(void)
{
    /* IPv4 */
    CHECK(match("10.0.0.0/8", "10.1.2.3"));
    CHECK(match("10.0.0.0/8", "10.255.255.255"));
    CHECK(!match("10.0.0.0/8", "11.0.0.0"));
    CHECK(!match("10.0.0.0/8", "9.255.255.255"));
    CHECK(match("10.16.0.0/12", "10.31.0.1"));
    CHECK(!match("10.16.0.0/12", "10.32.0.1"));
    CHECK(match("192.168.1.7/32", "192.168.1.7"));
    CHECK(!match("192.168.1.7/32", "192.168.1.6"));
    CHECK(match("192.168.1.7", "192.168.1.7"));
    CHECK(match("0.0.0.0/0", "203.0.113.9"));
    CHECK(match("10.1.2.3/8", "10.9.9.9"));         /* masked network */

    /* IPv6 */
    CHECK(match("::1/128", "::1"));
    CHECK(!match("::1/128", "::2"));
    CHECK(match("2001:db8::/32", "2001:db8:1234::5"));
    CHECK(!match("2001:db8::/32", "2001:db9::5"));
    CHECK(match("2001:db8::/33", "2001:db8:7fff::1"));
    CHECK(!match("2001:db8::/33", "2001:db8:8000::1"));
    CHECK(match("::/0", "fe80::1"));

    /* Families meet only through IPv4-mapped IPv6 (::ffff:a.b.c.d), which
     * is what a dual-stack socket reports for an IPv4 client. */
    CHECK(match("::/0", "10.0.0.1"));
    CHECK(!match("10.0.0.0/8", "::1"));
    CHECK(!match("::1/128", "127.0.0.1"));
    CHECK(!match("0.0.0.0/0", "2001:db8::1"));
    CHECK(match("127.0.0.0/8", "::ffff:127.0.0.1"));
    CHECK(match("0.0.0.0/0", "::ffff:8.8.8.8"));
    CHECK(!match("10.0.0.0/8", "::ffff:11.0.0.1"));
    CHECK(match("::ffff:10.0.0.0/104", "10.1.1.1"));
    CHECK(!match("::ffff:10.0.0.0/104", "11.1.1.1"));
    CHECK(!match("10.0.0.0/8", "::10.1.1.1"));       /* compatible, not mapped */

    struct conf_cidr c;
    char e[64];
    struct sockaddr sa = { .sa_family = AF_UNIX };
    CHECK(conf_parse_cidr("0.0.0.0/0", &c, e, sizeof e) == 0);
    CHECK(!conf_cidr_match(&c, &sa));
}

static void conf_balance_names(void)
{
    CHECK(strcmp(conf_balance_name(CONF_BALANCE_ROUND_ROBIN), "round_robin") == 0);
    CHECK(strcmp(conf_balance_name(CONF_BALANCE_LEAST_CONN), "least_conn") == 0);
    CHECK(strcmp(conf_balance_name(CONF_BALANCE_RANDOM2), "random2") == 0);
    CHECK(strcmp(conf_balance_name(CONF_BALANCE_HASH), "hash") == 0);
    CHECK(strcmp(conf_balance_name((enum conf_balance)42), "unknown") == 0);
}

/* A failure deep inside a list must leave nothing behind (run under ASan). */
static void conf_error_frees_everything(void)
{
    char yaml[sizeof full_yaml + 16];
    snprintf(yaml, sizeof yaml, "%sbogus: 1\n", full_yaml);
    EXPECT_ERROR(yaml, "t.yaml:60:1: bogus: unknown key");
    EXPECT_ERROR(BASE_LISTEN "pools:\n"
                 "  a:\n    balance: hash\n    hash_key: header:X\n    servers: [127.0.0.1:1]\n"
                 "  b:\n    servers: [127.0.0.1:1, 127.0.0.1:x]\n",
                 "t.yaml:9:28: pools.b.servers[1]: port must be a number from 1 to 65535, "
                 "got \"127.0.0.1:x\"");
    EXPECT_ERROR(BASE_LISTEN BASE_POOL "routes:\n  - host: a.com\n    path_prefix: /x\n"
                 "    pool: nope\n",
                 "t.yaml:10:11: routes[0].pool: undefined pool \"nope\" (pools are: web)");
    conf_free(NULL);

    /* A small error buffer truncates, never overflows. */
    char small[16];
    struct conf *c = conf_load_string("t.yaml", "lisen: 1\n", small, sizeof small);
    CHECK(c == NULL && strlen(small) == sizeof small - 1);
    c = conf_load_string("t.yaml", "lisen: 1\n", NULL, 0);
    CHECK(c == NULL);
}

/* telemetry: defaults, geoip list, location bounds. */
static void conf_telemetry_keys(void)
{
    struct conf *c = load(BASE_LISTEN BASE_POOL);
    CHECK(c && c->telemetry.enabled && c->telemetry.ring_size == 16384);
    CHECK(c && c->telemetry.n_geoip == 0 && !c->telemetry.has_location);
    CHECK(c && c->telemetry.priority == CONF_TM_PRIORITY_IDLE);
    conf_free(c);

    c = load(BASE_LISTEN BASE_POOL
             "telemetry:\n"
             "  enabled: false\n"
             "  ring_size: 1024\n"
             "  priority: low\n"
             "  geoip: [a.mmdb, b.mmdb]\n"
             "  location: {latitude: -33.87, longitude: 151.21}\n");
    CHECKF(c != NULL, "%.200s", err);
    if (c) {
        CHECK(!c->telemetry.enabled && c->telemetry.ring_size == 1024);
        CHECK(c->telemetry.n_geoip == 2);
        CHECK(c->telemetry.n_geoip == 2 &&
              strcmp(c->telemetry.geoip[1].value, "b.mmdb") == 0 &&
              c->telemetry.geoip[1].line == 11);
        CHECK(c->telemetry.priority == CONF_TM_PRIORITY_LOW);
        CHECK(c->telemetry.has_location && c->telemetry.latitude < -33.8 &&
              c->telemetry.longitude > 151.2);
    }
    conf_free(c);

    EXPECT_ERROR(BASE_LISTEN BASE_POOL "telemetry:\n  location: {latitude: 91, longitude: 0}\n",
                 "t.yaml:8:24: telemetry.location.latitude: expected a number "
                 "from -90 to 90, got \"91\"");
    EXPECT_ERROR(BASE_LISTEN BASE_POOL "telemetry:\n  location: {latitude: 1}\n",
                 "t.yaml:8:13: telemetry.location.longitude: missing required key");
    EXPECT_ERROR(BASE_LISTEN BASE_POOL "telemetry:\n  ring_size: 1\n",
                 "t.yaml:8:14: telemetry.ring_size: expected an integer from 64 "
                 "to 1048576, got \"1\"");
    EXPECT_ERROR(BASE_LISTEN BASE_POOL "telemetry:\n  priority: high\n",
                 "t.yaml:8:13: telemetry.priority: expected one of idle, low or normal, "
                 "got \"high\"");
}

/* chat: off by default with the classic rooms; modes, default and rooms
 * checked with file:line:col; needs the dashboard. */
static void conf_chat_keys(void)
{
    struct conf *c = load(BASE_LISTEN BASE_POOL);
    CHECK(c && !c->chat.enabled && c->chat.modes == 7 && c->chat.default_mode == CONF_CHAT_ROOMS);
    CHECK(c && c->chat.n_rooms == 6 && strcmp(c->chat.rooms[0].value, "Lobby") == 0 &&
          strcmp(c->chat.rooms[5].value, "Nightclub") == 0);
    CHECK(c && c->chat.max_name_length == 30 && c->chat.history == 50 &&
          c->chat.max_message_bytes == 2000 && c->chat.rate == 5 && c->chat.burst == 10 &&
          !c->chat.log && c->chat.addable_rooms && c->chat.addable_rooms_visible);
    conf_free(c);

    c = load(BASE_LISTEN BASE_POOL
             "chat:\n"
             "  enabled: true\n"
             "  modes: [support, random]\n"
             "  default: support\n"
             "  rooms: []\n"
             "  addable_rooms_visible: false\n"
             "  max_message_bytes: 1k\n"
             "  reconnect_grace: 0s\n"
             "  log: on\n");
    CHECKF(c != NULL, "%.400s", err);
    if (c) {
        CHECK(c->chat.enabled && c->chat.modes == ((1u << CONF_CHAT_SUPPORT) | (1u << CONF_CHAT_RANDOM)));
        CHECK(c->chat.default_mode == CONF_CHAT_SUPPORT && c->chat.n_rooms == 0);
        CHECK(!c->chat.addable_rooms_visible && c->chat.max_message_bytes == 1024);
        CHECK(c->chat.reconnect_grace_ms == 0 && c->chat.log);
    }
    conf_free(c);

    EXPECT_ERROR(BASE_LISTEN BASE_POOL
                 "chat:\n"
                 "  modes: [rooms, chess]\n",
                 "t.yaml:8:18: chat.modes[1]: unknown mode \"chess\" (expected rooms, "
                 "support or random)");
    EXPECT_ERROR(BASE_LISTEN BASE_POOL
                 "chat:\n"
                 "  modes: [random]\n",
                 "t.yaml:8:3: chat.default: \"rooms\" is not one of the enabled modes");
    EXPECT_ERROR(BASE_LISTEN BASE_POOL
                 "chat:\n"
                 "  default: lobby\n",
                 "t.yaml:8:12: chat.default: expected one of rooms, support or random, "
                 "got \"lobby\"");
    EXPECT_ERROR(BASE_LISTEN BASE_POOL
                 "chat:\n"
                 "  rooms:\n"
                 "    - Lobby\n"
                 "    - lobby\n",
                 "t.yaml:10:7: chat.rooms[1]: room \"lobby\" is listed twice");
    EXPECT_ERROR(BASE_LISTEN BASE_POOL
                 "chat:\n"
                 "  rooms: []\n"
                 "  addable_rooms: false\n",
                 "t.yaml:8:3: chat.rooms: no rooms, and addable_rooms is off: the rooms "
                 "mode would have nothing to offer");
    EXPECT_ERROR(BASE_LISTEN BASE_POOL
                 "chat:\n"
                 "  rate: 20\n",
                 "t.yaml:8:3: chat.burst: must be at least rate (20)");
    EXPECT_ERROR(BASE_LISTEN BASE_POOL
                 "chat:\n"
                 "  max_name_length: 0\n",
                 "t.yaml:8:20: chat.max_name_length: expected an integer from 1 to 100, "
                 "got \"0\"");
    EXPECT_ERROR(BASE_LISTEN BASE_POOL
                 "dashboard:\n"
                 "  enabled: false\n"
                 "chat:\n"
                 "  enabled: true\n",
                 "t.yaml:10:3: chat.enabled: the chat is served by the dashboard server: "
                 "set dashboard.enabled too");
}

/* dashboard: defaults, auth rules, loopback-only without auth. */
static void conf_dashboard_keys(void)
{
    struct conf *c = load(BASE_LISTEN BASE_POOL);
    CHECK(c && c->dashboard.enabled && c->dashboard.push_hz == 4);
    CHECK(c && strcmp(c->dashboard.listen.text, "127.0.0.1:8081") == 0);
    CHECK(c && c->dashboard.token == NULL && c->dashboard.n_users == 0);
    conf_free(c);

    c = load(BASE_LISTEN BASE_POOL
             "dashboard:\n"
             "  listen: \"[::]:9000\"\n"
             "  push_hz: 10\n"
             "  auth:\n"
             "    token: 0123456789abcdef0123\n"
             "    users:\n"
             "      - {name: ops, password: \"$6$saltsalt$0123456789abcdefghij\"}\n"
             "  allowed_origins: [\"https://ops.example.com\"]\n");
    CHECKF(c != NULL, "%.200s", err);
    if (c) {
        CHECK(c->dashboard.push_hz == 10);
        CHECK(strcmp(c->dashboard.token, "0123456789abcdef0123") == 0);
        CHECK(c->dashboard.n_users == 1 && strcmp(c->dashboard.users[0].name, "ops") == 0);
        CHECK(c->dashboard.n_allowed_origins == 1);
    }
    conf_free(c);

    char path[] = "/tmp/sb-token-XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0);
    if (fd >= 0) {
        CHECK(write(fd, "  tok-from-file-0123456789\n", 27) == 27);
        close(fd);
        char yaml[512];
        snprintf(yaml, sizeof yaml, BASE_LISTEN BASE_POOL
                 "dashboard:\n  auth:\n    token_file: %s\n", path);
        c = load(yaml);
        CHECKF(c && strcmp(c->dashboard.token, "tok-from-file-0123456789") == 0,
               "%.200s", err);
        conf_free(c);
        unlink(path);
    }

    EXPECT_ERROR(BASE_LISTEN BASE_POOL "dashboard:\n  listen: 0.0.0.0:8081\n",
                 "t.yaml:8:3: dashboard: listen 0.0.0.0:8081 is not a loopback "
                 "address: set auth (a token or users) first");
    EXPECT_ERROR(BASE_LISTEN BASE_POOL "dashboard:\n  auth: {token: short}\n",
                 "t.yaml:8:3: dashboard: auth token too short: use at least 16 characters");
    EXPECT_ERROR(BASE_LISTEN BASE_POOL
                 "dashboard:\n  auth:\n    users: [{name: a, password: hunter2}]\n",
                 "t.yaml:9:33: dashboard.auth.users[0].password: expected a crypt(3) "
                 "password hash such as \"$6$...\" (make one with: openssl passwd -6), "
                 "not a password in clear");
    EXPECT_ERROR(BASE_LISTEN BASE_POOL "dashboard:\n  push_hz: 0\n",
                 "t.yaml:8:12: dashboard.push_hz: expected an integer from 1 to 20, "
                 "got \"0\"");
}

/* pools.*.health_check: absent = off; defaults; bounds and cross-checks. */
static void conf_health_check_keys(void)
{
    struct conf *c = load(BASE_LISTEN BASE_POOL);
    CHECK(c && c->pools[0].health_check.path == NULL);
    conf_free(c);

    c = load(BASE_LISTEN "pools:\n  web:\n    health_check: {path: /healthz}\n"
             "    servers: [127.0.0.1:9001]\n");
    CHECKF(c != NULL, "%.200s", err);
    if (c) {
        const struct conf_health_check *hc = &c->pools[0].health_check;
        CHECK(strcmp(hc->path, "/healthz") == 0);
        CHECK(hc->interval == 2000 && hc->timeout == 1000);
        CHECK(hc->rise == 2 && hc->fall == 3 && hc->expect_status == 0);
    }
    conf_free(c);

    EXPECT_ERROR(BASE_LISTEN "pools:\n  web:\n    health_check: {interval: 1s}\n"
                 "    servers: [127.0.0.1:9001]\n",
                 "t.yaml:5:19: pools.web.health_check.path: missing required key");
    EXPECT_ERROR(BASE_LISTEN "pools:\n  web:\n    health_check: {path: healthz}\n"
                 "    servers: [127.0.0.1:9001]\n",
                 "t.yaml:5:26: pools.web.health_check.path: expected a path "
                 "starting with \"/\"");
    EXPECT_ERROR(BASE_LISTEN "pools:\n  web:\n    health_check: {path: /h, "
                 "interval: 1s, timeout: 2s}\n    servers: [127.0.0.1:9001]\n",
                 "t.yaml:5:19: pools.web.health_check: timeout (2000ms) must not "
                 "exceed interval (1000ms)");
    EXPECT_ERROR(BASE_LISTEN "pools:\n  web:\n    health_check: {path: /h, fall: 0}\n"
                 "    servers: [127.0.0.1:9001]\n",
                 "t.yaml:5:36: pools.web.health_check.fall: expected an integer "
                 "from 1 to 100, got \"0\"");
}

/* max_conns per server, queue per pool. */
static void conf_queue_keys(void)
{
    struct conf *c = load(BASE_LISTEN BASE_POOL);
    CHECK(c && c->pools[0].servers[0].max_conns == 0);
    CHECK(c && c->pools[0].queue.size == 1024 && c->pools[0].queue.timeout == 5000);
    conf_free(c);
    c = load(BASE_LISTEN "pools:\n  web:\n    queue: {size: 0, timeout: 250ms}\n"
             "    servers:\n      - {address: 127.0.0.1:9001, max_conns: 7}\n");
    CHECKF(c && c->pools[0].servers[0].max_conns == 7 && c->pools[0].queue.size == 0 &&
           c->pools[0].queue.timeout == 250, "%.200s", err);
    conf_free(c);
    EXPECT_ERROR(BASE_LISTEN "pools:\n  web:\n    queue: {siz: 3}\n"
                 "    servers: [127.0.0.1:9001]\n",
                 "t.yaml:5:13: pools.web.queue.siz: unknown key");
}

int main(void)
{
    RUN(conf_full_file);
    RUN(conf_defaults);
    RUN(conf_access_log_forms);
    RUN(conf_workers);
    RUN(conf_limits);
    RUN(conf_bools);
    RUN(conf_defer_accept);
    RUN(conf_sample_file);
    RUN(conf_load_missing_file);
    RUN(conf_err_unknown_key);
    RUN(conf_err_duplicate_key);
    RUN(conf_err_wrong_type);
    RUN(conf_err_bad_weight);
    RUN(conf_err_bad_duration);
    RUN(conf_err_bad_address);
    RUN(conf_err_pools);
    RUN(conf_err_duplicate_server);
    RUN(conf_err_hash_key);
    RUN(conf_err_routes);
    RUN(conf_err_duplicate_listen);
    RUN(conf_err_missing_listen);
    RUN(conf_err_yaml_syntax);
    RUN(conf_duration_parse);
    RUN(conf_addr_parse);
    RUN(conf_cidr_parse);
    RUN(conf_cidr_matching);
    RUN(conf_balance_names);
    RUN(conf_error_frees_everything);
    RUN(conf_telemetry_keys);
    RUN(conf_dashboard_keys);
    RUN(conf_chat_keys);
    RUN(conf_health_check_keys);
    RUN(conf_queue_keys);
    return check_done();
}
