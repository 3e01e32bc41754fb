/*
 * conf.c - read switchboard.yaml into a struct conf.
 *
 * What it does. libyaml's document API turns the file into a node tree; this
 * file then walks that tree against tables of keys. A table row (struct
 * conf_key) says everything about one key: its name, its type, where the
 * value lands (offsetof into the section's struct), its default written in
 * config syntax, and its bounds. A section (struct section) is a table plus
 * the size of the struct it fills. Sections nest: the top level, `timeouts`,
 * `limits`, `access_log`, each pool, each server and each route are sections.
 * Defaults are stored as text and go through the very parser a value from the
 * file goes through, so a default is valid by construction and lives in one
 * place only. Releasing a struct conf walks the same tables, so a new string
 * or list key cannot be forgotten by conf_free().
 *
 * Order. The keys of a section are processed in table order, not file order:
 * `pools` is filled before `routes`, so a route can name a pool defined below
 * it. Unknown and duplicate keys are rejected first, in file order, because a
 * misspelt key is usually the real cause of any later complaint.
 *
 * Errors. The first error wins and stops the load; there is no recovery, no
 * warning channel and no partial result. Every message is
 * "FILE:LINE:COL: KEY: message", LINE and COL 1-based from the libyaml mark of
 * the offending node, KEY the dotted path ("pools.web.servers[1].weight").
 *
 * Threads and ownership. Called from the main thread only (start-up, SIGHUP
 * reload, `switchboard -t`). There is no global mutable state: everything a
 * load needs is in a struct loader on the caller's stack, so two loads could
 * run at once. conf_load() returns a struct conf that the caller owns; every
 * pointer inside it is owned by it and freed by conf_free(). Host names are
 * resolved here, once, with getaddrinfo(), which may block: that is why this
 * never runs on a worker thread.
 */
#include "conf/conf.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <netdb.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <yaml.h>

/* Unsigned keys store through `uint32_t *` into both uint32_t and unsigned
 * fields, and enum keys through `int *`: both are only sound if the sizes
 * agree. */
_Static_assert(sizeof(unsigned) == sizeof(uint32_t), "unsigned is 32 bits");
_Static_assert(sizeof(enum conf_balance) == sizeof(int), "enums are ints");
_Static_assert(sizeof(enum conf_log_format) == sizeof(int), "enums are ints");

/* Longest pool name; with it, no key path outgrows struct loader's buffer. */
#define CONF_NAME_MAX 64

/* ---- the tables' vocabulary -------------------------------------------- */

enum key_type {
    KT_DURATION,        /* uint32_t ms; "500ms", "30s", bare number = seconds */
    KT_UINT,            /* uint32_t / unsigned, min..max */
    KT_BYTES,           /* like KT_UINT, with k/K and m/M suffixes */
    KT_AUTO_UINT,       /* "auto" (online cores, clamped) or KT_UINT */
    KT_BOOL,            /* bool */
    KT_DOUBLE,          /* double, dmin..dmax */
    KT_STRING,          /* char *, non-empty, owned */
    KT_ENUM,            /* int index into `names` */
    KT_ADDR,            /* struct conf_addr */
    KT_ADDR_LIST,       /* struct conf_addr * + size_t count */
    KT_CIDR_LIST,       /* struct conf_cidr * + size_t count */
    KT_SECTION,         /* a struct embedded in the parent, filled by `sub` */
    KT_SECTION_LIST,    /* array of `sub` structs + size_t count */
    KT_SECTION_MAP,     /* like KT_SECTION_LIST, from a map name -> section */
    KT_CUSTOM,          /* `parse` does it all; `release` frees what it made */
};

#define KEY_REQUIRED 0x1u

struct loader;
struct conf_key;

/* Hooks get the key's own row, the value node (NULL when the key is absent
 * and has no default) and the base of the struct the row's offsets refer to.
 * They return 0, or -1 after calling fail(). */
typedef int key_hook(struct loader *L, const struct conf_key *k,
                     yaml_node_t *value, void *base);

struct conf_key {
    const char     *name;
    enum key_type   type;
    size_t          off;        /* the field, in the section's struct */
    size_t          count_off;  /* lists: the size_t element count */
    const char     *def;        /* default in config syntax; NULL: none */
    uint32_t        min, max;   /* numbers: bounds; lists: min items */
    double          dmin, dmax; /* KT_DOUBLE: bounds */
    unsigned        flags;
    const char *const *names;   /* KT_ENUM: value names in enum order */
    const struct section *sub;  /* KT_SECTION*: the element layout */
    const char     *noun;       /* lists: what one item is, for messages */
    key_hook       *parse;      /* KT_CUSTOM */
    key_hook       *check;      /* after a successful store: cross-checks */
    void          (*release)(void *base);   /* KT_CUSTOM */
};

struct section {
    const struct conf_key *keys;    /* ends with a row whose name is NULL */
    size_t size;                    /* of one element, for lists */
    /* When set, a scalar stands for a mapping with this one key:
     * `- 127.0.0.1:9001` is `- { address: 127.0.0.1:9001 }`. */
    const char *scalar_key;
    bool   named;                   /* KT_SECTION_MAP elements: */
    size_t name_off;                /* char * that receives the map key */
    size_t line_off, col_off;       /* int fields for the declaring mark */
    /* Checks that need several keys of the section; `node` may be NULL. */
    int (*finish)(struct loader *L, yaml_node_t *node, void *base);
};

/* Everything one load needs; lives on conf_load's stack. */
struct loader {
    const char      *file;
    yaml_document_t *doc;
    struct conf     *conf;
    char            *err;
    size_t           errlen;
    bool             failed;
    char             path[256];    /* dotted key path of the current node */
    size_t           path_len;
};

/* ---- errors and key paths ---------------------------------------------- */

/* Record the load's error, unless one is already recorded, and return -1 so
 * callers can `return fail(...)`. `mark` is libyaml's (0-based). */
__attribute__((format(printf, 3, 4)))
static int fail(struct loader *L, const yaml_mark_t *mark, const char *fmt, ...)
{
    if (L->failed || !L->err || L->errlen == 0)
        goto out;
    int n = snprintf(L->err, L->errlen, "%s:%zu:%zu: ", L->file,
                     mark->line + 1, mark->column + 1);
    if (n >= 0 && (size_t)n < L->errlen && L->path_len)
        n += snprintf(L->err + n, L->errlen - (size_t)n, "%s: ", L->path);
    if (n >= 0 && (size_t)n < L->errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(L->err + n, L->errlen - (size_t)n, fmt, ap);
        va_end(ap);
    }
out:
    L->failed = true;
    return -1;
}

/* Append ".key" (or "key" at the top) to the path; returns what path_pop()
 * needs to undo it. A path longer than the buffer is cut, not refused: it
 * only feeds messages. */
static size_t path_push(struct loader *L, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static size_t path_push(struct loader *L, const char *fmt, ...)
{
    size_t saved = L->path_len;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(L->path + saved, sizeof L->path - saved, fmt, ap);
    va_end(ap);
    if (n > 0)
        L->path_len = saved + (size_t)n < sizeof L->path
                      ? saved + (size_t)n : sizeof L->path - 1;
    return saved;
}

static size_t path_push_key(struct loader *L, const char *key)
{
    return path_push(L, "%s%s", L->path_len ? "." : "", key);
}

static size_t path_push_index(struct loader *L, size_t i)
{
    return path_push(L, "[%zu]", i);
}

static void path_pop(struct loader *L, size_t saved)
{
    L->path_len = saved;
    L->path[saved] = '\0';
}

/* ---- nodes ------------------------------------------------------------- */

static yaml_node_t *node_at(struct loader *L, int index)
{
    return yaml_document_get_node(L->doc, index);
}

static const char *scalar_of(const yaml_node_t *n)
{
    return (const char *)n->data.scalar.value;
}

/* YAML's null: an empty value, `~` or `null`, unquoted. A section or list
 * given as null is empty, which lets a sample file keep a header with every
 * key under it commented out. */
static bool is_null(const yaml_node_t *n)
{
    if (!n)
        return true;
    if (n->type != YAML_SCALAR_NODE || n->data.scalar.style != YAML_PLAIN_SCALAR_STYLE)
        return false;
    const char *s = scalar_of(n);
    return !*s || !strcmp(s, "~") || !strcmp(s, "null") || !strcmp(s, "Null")
           || !strcmp(s, "NULL");
}

/* What the user wrote, for "got ..." in messages: a quoted, cut scalar or
 * the kind of node. */
static const char *describe(const yaml_node_t *n, char *buf, size_t size)
{
    if (is_null(n))
        return "nothing";
    if (n->type == YAML_SEQUENCE_NODE)
        return "a list";
    if (n->type == YAML_MAPPING_NODE)
        return "a mapping";

    const unsigned char *s = n->data.scalar.value;
    size_t len = n->data.scalar.length, o = 0;
    buf[o++] = '"';
    for (size_t i = 0; i < len && o + 6 < size; i++) {
        if (i == 48) {
            memcpy(buf + o, "...", 3);
            o += 3;
            break;
        }
        buf[o++] = (s[i] < 0x20 || s[i] == 0x7f || s[i] == '"') ? '?' : (char)s[i];
    }
    buf[o++] = '"';
    buf[o] = '\0';
    return buf;
}

/* The value of `key` in mapping `map`, or NULL. Duplicates were rejected by
 * check_keys() before anyone asks. */
static yaml_node_t *map_get(struct loader *L, yaml_node_t *map, const char *key)
{
    for (yaml_node_pair_t *p = map->data.mapping.pairs.start;
         p < map->data.mapping.pairs.top; p++) {
        yaml_node_t *k = node_at(L, p->key);
        if (k->type == YAML_SCALAR_NODE && !strcmp(scalar_of(k), key))
            return node_at(L, p->value);
    }
    return NULL;
}

static const struct conf_key *key_find(const struct section *s, const char *name)
{
    for (const struct conf_key *k = s->keys; k->name; k++)
        if (!strcmp(k->name, name))
            return k;
    return NULL;
}

/* Every key of `map` must be a scalar, appear once and, when `s` is given, be
 * in its table. */
static int check_keys(struct loader *L, yaml_node_t *map, const struct section *s)
{
    yaml_node_pair_t *start = map->data.mapping.pairs.start;
    char got[64];

    for (yaml_node_pair_t *p = start; p < map->data.mapping.pairs.top; p++) {
        yaml_node_t *k = node_at(L, p->key);
        if (k->type != YAML_SCALAR_NODE || is_null(k))
            return fail(L, &k->start_mark, "expected a key name, got %s",
                        describe(k, got, sizeof got));
        const char *name = scalar_of(k);
        for (yaml_node_pair_t *q = start; q < p; q++) {
            yaml_node_t *prev = node_at(L, q->key);
            if (prev->type == YAML_SCALAR_NODE && !strcmp(scalar_of(prev), name)) {
                path_push_key(L, name);
                return fail(L, &k->start_mark, "duplicate key (first at line %zu)",
                            prev->start_mark.line + 1);
            }
        }
        if (s && !key_find(s, name)) {
            path_push_key(L, name);
            return fail(L, &k->start_mark, "unknown key");
        }
    }
    return 0;
}

/* ---- value parsers ----------------------------------------------------- */

/* Strict unsigned decimal: digits only, no sign, no spaces. Too many
 * digits saturate at UINT64_MAX, which every caller's bound then refuses:
 * "99999999999999999999s" is a number too large, not garbage. */
static int parse_u64(const char *s, const char **end, uint64_t *out)
{
    uint64_t v = 0;
    const char *p = s;
    if (!isdigit((unsigned char)*p))
        return -1;
    for (; isdigit((unsigned char)*p); p++)
        v = v > (UINT64_MAX - 9) / 10 ? UINT64_MAX : v * 10 + (uint64_t)(*p - '0');
    *end = p;
    *out = v;
    return 0;
}

static void set_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || !errlen)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

#define DURATION_EXPECTED "expected a duration such as 500ms, 30s, 5m, 1h or 2d"

int conf_parse_duration(const char *text, uint32_t *ms, char *err, size_t errlen)
{
    static const struct { const char *unit; uint64_t ms; } units[] = {
        { "ms", 1 }, { "s", 1000 }, { "m", 60000 }, { "h", 3600000 },
        { "d", 86400000 }, { "", 1000 },  /* a bare number is seconds */
    };
    const char *end;
    uint64_t n;

    if (parse_u64(text, &end, &n) == 0) {
        for (size_t i = 0; i < sizeof units / sizeof units[0]; i++) {
            if (strcmp(end, units[i].unit))
                continue;
            if (n > UINT32_MAX / units[i].ms) {
                set_err(err, errlen, "duration too long: at most 4294967295ms "
                        "(about 49 days)");
                return -1;
            }
            *ms = (uint32_t)(n * units[i].ms);
            return 0;
        }
    }
    set_err(err, errlen, DURATION_EXPECTED);
    return -1;
}

/* A DNS name as getaddrinfo() would look it up: letters, digits, '-', '_'
 * and dots, nothing that looks like a mangled IPv4 literal ("1.2" would be
 * read by inet_aton as 1.0.0.2). */
static bool host_name_ok(const char *h)
{
    size_t len = strlen(h);
    if (len == 0 || len > 253 || h[0] == '.' || h[0] == '-')
        return false;
    if (strspn(h, "0123456789.") == len)
        return false;
    return strspn(h, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                     "0123456789-_.") == len && !strstr(h, "..");
}

#define ADDR_EXPECTED "expected HOST:PORT, [IPV6]:PORT or *:PORT"

int conf_parse_addr(const char *text, struct conf_addr *out, char *err, size_t errlen)
{
    char host[256], port_text[8], shown[NI_MAXHOST];
    const char *port;
    uint64_t port_n;
    bool v6;

    memset(out, 0, sizeof *out);
    if (text[0] == '[') {
        const char *close = strchr(text, ']');
        if (!close || close[1] != ':') {
            set_err(err, errlen, ADDR_EXPECTED);
            return -1;
        }
        if ((size_t)(close - text - 1) >= sizeof host) {
            set_err(err, errlen, "IPv6 address too long");
            return -1;
        }
        memcpy(host, text + 1, (size_t)(close - text - 1));
        host[close - text - 1] = '\0';
        port = close + 2;
        v6 = true;
    } else {
        const char *colon = strrchr(text, ':');
        if (!colon) {
            set_err(err, errlen, "missing port: " ADDR_EXPECTED);
            return -1;
        }
        if (memchr(text, ':', (size_t)(colon - text))) {
            set_err(err, errlen, "IPv6 addresses need brackets, as in [::1]:8080");
            return -1;
        }
        if ((size_t)(colon - text) >= sizeof host) {
            set_err(err, errlen, "host name too long");
            return -1;
        }
        memcpy(host, text, (size_t)(colon - text));
        host[colon - text] = '\0';
        port = colon + 1;
        v6 = false;
    }

    const char *end;
    if (parse_u64(port, &end, &port_n) < 0 || *end || port_n < 1 || port_n > 65535) {
        set_err(err, errlen, "port must be a number from 1 to 65535");
        return -1;
    }
    if (!host[0]) {
        set_err(err, errlen, "missing host: " ADDR_EXPECTED);
        return -1;
    }

    if (!v6 && !strcmp(host, "*")) {
        out->u.sin.sin_family = AF_INET;
        out->u.sin.sin_addr.s_addr = htonl(INADDR_ANY);
        out->len = sizeof out->u.sin;
    } else if (!v6 && inet_pton(AF_INET, host, &out->u.sin.sin_addr) == 1) {
        out->u.sin.sin_family = AF_INET;
        out->len = sizeof out->u.sin;
    } else {
        /* IPv6 literals go through getaddrinfo too, for "%eth0" zones. */
        struct addrinfo hints = { .ai_socktype = SOCK_STREAM }, *res = NULL;
        hints.ai_family = v6 ? AF_INET6 : AF_UNSPEC;
        hints.ai_flags = v6 ? AI_NUMERICHOST : 0;
        if (!v6 && !host_name_ok(host)) {
            set_err(err, errlen, "bad host name \"%s\"", host);
            return -1;
        }
        int rc = getaddrinfo(host, NULL, &hints, &res);
        if (rc != 0) {
            if (v6)
                goto bad_v6;
            set_err(err, errlen, "cannot resolve \"%s\": %s", host, gai_strerror(rc));
            return -1;
        }
        if (res->ai_addrlen > sizeof out->u
            || (res->ai_family != AF_INET && res->ai_family != AF_INET6)) {
            freeaddrinfo(res);
            set_err(err, errlen, "\"%s\" resolves to an unusable address", host);
            return -1;
        }
        memcpy(&out->u, res->ai_addr, res->ai_addrlen);
        out->len = res->ai_addrlen;
        freeaddrinfo(res);
    }

    if (out->u.sa.sa_family == AF_INET)
        out->u.sin.sin_port = htons((uint16_t)port_n);
    else
        out->u.sin6.sin6_port = htons((uint16_t)port_n);

    if (getnameinfo(&out->u.sa, out->len, shown, sizeof shown, port_text,
                    sizeof port_text, NI_NUMERICHOST | NI_NUMERICSERV) != 0) {
        set_err(err, errlen, "cannot print address \"%s\"", text);
        return -1;
    }
    snprintf(out->text, sizeof out->text,
             out->u.sa.sa_family == AF_INET6 ? "[%s]:%s" : "%s:%s", shown, port_text);
    return 0;

bad_v6:
    set_err(err, errlen, "bad IPv6 address \"%s\"", host);
    return -1;
}

int conf_parse_cidr(const char *text, struct conf_cidr *out, char *err, size_t errlen)
{
    char buf[INET6_ADDRSTRLEN];
    const char *slash = strchr(text, '/');
    size_t alen = slash ? (size_t)(slash - text) : strlen(text);
    unsigned max;

    memset(out, 0, sizeof *out);
    if (alen >= sizeof buf)
        goto bad_addr;
    memcpy(buf, text, alen);
    buf[alen] = '\0';
    if (inet_pton(AF_INET, buf, out->addr) == 1) {
        out->family = AF_INET;
        max = 32;
    } else if (inet_pton(AF_INET6, buf, out->addr) == 1) {
        out->family = AF_INET6;
        max = 128;
    } else {
        goto bad_addr;
    }

    out->prefix_len = (uint8_t)max;
    if (slash) {
        const char *end;
        uint64_t n;
        if (parse_u64(slash + 1, &end, &n) < 0 || *end || n > max) {
            set_err(err, errlen, "prefix length must be a number from 0 to %u for %s",
                    max, max == 32 ? "IPv4" : "IPv6");
            return -1;
        }
        out->prefix_len = (uint8_t)n;
    }

    /* Host bits are cleared, not refused: "10.1.2.3/8" means 10.0.0.0/8,
     * as in HAProxy. Matching then compares whole bytes. */
    unsigned bytes = max / 8;
    for (unsigned i = 0; i < bytes; i++) {
        unsigned bit = i * 8;
        if (bit >= out->prefix_len)
            out->addr[i] = 0;
        else if (bit + 8 > out->prefix_len)
            out->addr[i] &= (uint8_t)(0xff << (8 - (out->prefix_len - bit)));
    }
    return 0;

bad_addr:
    set_err(err, errlen, "expected an IPv4 or IPv6 address, optionally with /PREFIX");
    return -1;
}

bool conf_cidr_match(const struct conf_cidr *cidr, const struct sockaddr *addr)
{
    static const uint8_t v4mapped[12] = { 0,0,0,0, 0,0,0,0, 0,0,0xff,0xff };
    uint8_t a[16];
    int family;

    if (addr->sa_family == AF_INET) {
        const struct sockaddr_in *sin = (const struct sockaddr_in *)addr;
        family = AF_INET;
        memcpy(a, &sin->sin_addr, 4);
    } else if (addr->sa_family == AF_INET6) {
        const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)addr;
        family = AF_INET6;
        memcpy(a, &sin6->sin6_addr, 16);
    } else {
        return false;
    }

    /* A dual-stack socket reports IPv4 clients as ::ffff:a.b.c.d; compare
     * in the range's family so either spelling matches either range. */
    if (family == AF_INET6 && cidr->family == AF_INET) {
        if (memcmp(a, v4mapped, 12))
            return false;
        memmove(a, a + 12, 4);
        family = AF_INET;
    } else if (family == AF_INET && cidr->family == AF_INET6) {
        memmove(a + 12, a, 4);
        memcpy(a, v4mapped, 12);
        family = AF_INET6;
    }
    if (family != cidr->family)
        return false;

    unsigned full = cidr->prefix_len / 8, rest = cidr->prefix_len % 8;
    if (memcmp(a, cidr->addr, full))
        return false;
    if (rest) {
        uint8_t mask = (uint8_t)(0xff << (8 - rest));
        if ((a[full] & mask) != cidr->addr[full])
            return false;
    }
    return true;
}

static const char *const balance_names[] = {
    [CONF_BALANCE_ROUND_ROBIN] = "round_robin",
    [CONF_BALANCE_LEAST_CONN]  = "least_conn",
    [CONF_BALANCE_RANDOM2]     = "random2",
    [CONF_BALANCE_HASH]        = "hash",
    NULL,
};

static const char *const server_state_names[] = {
    "active", "draining", "disabled", NULL,
};

static const char *const log_format_names[] = {
    [CONF_LOG_COMBINED] = "combined",
    [CONF_LOG_JSON]     = "json",
    NULL,
};

const char *conf_balance_name(enum conf_balance b)
{
    if ((unsigned)b < sizeof balance_names / sizeof balance_names[0] - 1)
        return balance_names[b];
    return "unknown";
}

/* ---- storing one key --------------------------------------------------- */

/* "expected ..." for a row, shared by every type error of that row. */
static const char *expected(const struct conf_key *k, char *buf, size_t size)
{
    switch (k->type) {
    case KT_DURATION:
        return "a duration such as 500ms, 30s, 5m, 1h or 2d";
    case KT_UINT:
        snprintf(buf, size, "an integer from %u to %u", k->min, k->max);
        return buf;
    case KT_BYTES:
        snprintf(buf, size, "a size from %u to %u bytes (suffix k or m allowed)",
                 k->min, k->max);
        return buf;
    case KT_AUTO_UINT:
        snprintf(buf, size, "\"auto\" or an integer from %u to %u", k->min, k->max);
        return buf;
    case KT_BOOL:
        return "true or false";
    case KT_DOUBLE:
        snprintf(buf, size, "a number from %g to %g", k->dmin, k->dmax);
        return buf;
    case KT_STRING:
        return "a non-empty string";
    case KT_ENUM: {
        size_t o = 0;
        o += (size_t)snprintf(buf + o, size - o, "one of ");
        for (size_t i = 0; k->names[i] && o < size; i++)
            o += (size_t)snprintf(buf + o, size - o, "%s%s",
                                  i == 0 ? "" : k->names[i + 1] ? ", " : " or ",
                                  k->names[i]);
        return buf;
    }
    case KT_ADDR:
        return "an address HOST:PORT";
    case KT_ADDR_LIST:
    case KT_CIDR_LIST:
    case KT_SECTION_LIST:
        return "a list";
    case KT_SECTION:
    case KT_SECTION_MAP:
        return "a mapping";
    case KT_CUSTOM:
        break;
    }
    return k->noun ? k->noun : "a value";
}

static int fail_type(struct loader *L, const struct conf_key *k, const yaml_node_t *v)
{
    char want[160], got[64];
    return fail(L, &v->start_mark, "expected %s, got %s",
                expected(k, want, sizeof want), describe(v, got, sizeof got));
}

/* The text of a scalar value, or NULL after a type error. */
static const char *scalar_text(struct loader *L, const struct conf_key *k,
                               const yaml_node_t *v)
{
    if (v->type != YAML_SCALAR_NODE || is_null(v)) {
        fail_type(L, k, v);
        return NULL;
    }
    return scalar_of(v);
}

static int store_uint(struct loader *L, const struct conf_key *k,
                      const yaml_node_t *v, const char *s, void *field)
{
    const char *end;
    uint64_t n;
    if (parse_u64(s, &end, &n) < 0)
        return fail_type(L, k, v);
    if (k->type == KT_BYTES && *end) {
        uint64_t mult = (!strcmp(end, "k") || !strcmp(end, "K")) ? 1024
                      : (!strcmp(end, "m") || !strcmp(end, "M")) ? 1024 * 1024 : 0;
        if (!mult || n > UINT64_MAX / mult)
            return fail_type(L, k, v);
        n *= mult;
        end += 1;
    }
    if (*end || n < k->min || n > k->max)
        return fail_type(L, k, v);
    *(uint32_t *)field = (uint32_t)n;
    return 0;
}

static int store_list(struct loader *L, const struct conf_key *k,
                      yaml_node_t *v, void *base);
static int store_section_map(struct loader *L, const struct conf_key *k,
                             yaml_node_t *v, void *base);
static int section_parse(struct loader *L, const struct section *s,
                         yaml_node_t *node, const yaml_mark_t *where, void *base);

/* Parse `v` into the field row `k` describes. `v` is never NULL here. */
static int store(struct loader *L, const struct conf_key *k, yaml_node_t *v,
                 const yaml_mark_t *where, void *base)
{
    void *field = (char *)base + k->off;
    char reason[160], got[64];
    const char *s;

    switch (k->type) {
    case KT_DURATION: {
        uint32_t ms;
        if (!(s = scalar_text(L, k, v)))
            return -1;
        if (conf_parse_duration(s, &ms, reason, sizeof reason) < 0)
            return fail(L, &v->start_mark, "%s, got %s", reason,
                        describe(v, got, sizeof got));
        if (ms < k->min || ms > k->max)
            return fail(L, &v->start_mark,
                        "expected a duration from %ums to %ums, got %s",
                        k->min, k->max, describe(v, got, sizeof got));
        *(uint32_t *)field = ms;
        return 0;
    }
    case KT_AUTO_UINT:
        if (!(s = scalar_text(L, k, v)))
            return -1;
        if (!strcmp(s, "auto")) {
            long n = sysconf(_SC_NPROCESSORS_ONLN);
            *(uint32_t *)field = n < (long)k->min ? k->min
                               : n > (long)k->max ? k->max : (uint32_t)n;
            return 0;
        }
        return store_uint(L, k, v, s, field);
    case KT_UINT:
    case KT_BYTES:
        if (!(s = scalar_text(L, k, v)))
            return -1;
        return store_uint(L, k, v, s, field);
    case KT_BOOL:
        if (!(s = scalar_text(L, k, v)))
            return -1;
        if (!strcasecmp(s, "true") || !strcasecmp(s, "yes") || !strcasecmp(s, "on"))
            *(bool *)field = true;
        else if (!strcasecmp(s, "false") || !strcasecmp(s, "no") || !strcasecmp(s, "off"))
            *(bool *)field = false;
        else
            return fail_type(L, k, v);
        return 0;
    case KT_DOUBLE: {
        char *end;
        if (!(s = scalar_text(L, k, v)))
            return -1;
        errno = 0;
        double d = strtod(s, &end);
        if (!*s || *end || errno || d < k->dmin || d > k->dmax)
            return fail(L, &v->start_mark, "expected a number from %g to %g, got %s",
                        k->dmin, k->dmax, describe(v, got, sizeof got));
        *(double *)field = d;
        return 0;
    }
    case KT_STRING: {
        char *copy;
        if (!(s = scalar_text(L, k, v)))
            return -1;
        if (!*s)
            return fail_type(L, k, v);
        if (!(copy = strdup(s)))
            return fail(L, &v->start_mark, "out of memory");
        free(*(char **)field);
        *(char **)field = copy;
        return 0;
    }
    case KT_ENUM:
        if (!(s = scalar_text(L, k, v)))
            return -1;
        for (int i = 0; k->names[i]; i++) {
            if (!strcmp(s, k->names[i])) {
                *(int *)field = i;
                return 0;
            }
        }
        return fail_type(L, k, v);
    case KT_ADDR:
        if (!(s = scalar_text(L, k, v)))
            return -1;
        if (conf_parse_addr(s, field, reason, sizeof reason) < 0)
            return fail(L, &v->start_mark, "%s, got %s", reason,
                        describe(v, got, sizeof got));
        return 0;
    case KT_ADDR_LIST:
    case KT_CIDR_LIST:
    case KT_SECTION_LIST:
        return store_list(L, k, v, base);
    case KT_SECTION_MAP:
        return store_section_map(L, k, v, base);
    case KT_SECTION:
        return section_parse(L, k->sub, v, where, field);
    case KT_CUSTOM:
        return k->parse(L, k, v, base);
    }
    return fail(L, &v->start_mark, "internal error: unknown key type");
}

/* Lists are allocated at full length and their count set before any element
 * is parsed, so a failure half-way leaves a struct conf_free() can walk. */
static int store_list(struct loader *L, const struct conf_key *k,
                      yaml_node_t *v, void *base)
{
    void **arrp = (void **)((char *)base + k->off);
    size_t *countp = (size_t *)((char *)base + k->count_off);
    size_t size = k->type == KT_ADDR_LIST ? sizeof(struct conf_addr)
                : k->type == KT_CIDR_LIST ? sizeof(struct conf_cidr)
                : k->sub->size;
    size_t n = 0;
    char reason[160], got[64];

    if (!is_null(v) && v->type != YAML_SEQUENCE_NODE)
        return fail_type(L, k, v);
    if (!is_null(v))
        n = (size_t)(v->data.sequence.items.top - v->data.sequence.items.start);
    if (n < k->min)     /* min is 0 or 1 */
        return fail(L, &v->start_mark, "expected at least one %s, got %s",
                    k->noun, is_null(v) ? "nothing" : "an empty list");
    if (n == 0)
        return 0;
    if (!(*arrp = calloc(n, size)))
        return fail(L, &v->start_mark, "out of memory");
    *countp = n;

    for (size_t i = 0; i < n; i++) {
        yaml_node_t *item = node_at(L, v->data.sequence.items.start[i]);
        char *elem = (char *)*arrp + i * size;
        size_t saved = path_push_index(L, i);
        int rc = 0;

        if (k->type == KT_SECTION_LIST) {
            rc = section_parse(L, k->sub, item, &item->start_mark, elem);
            *(int *)(elem + k->sub->line_off) = (int)item->start_mark.line + 1;
            *(int *)(elem + k->sub->col_off) = (int)item->start_mark.column + 1;
        } else if (item->type != YAML_SCALAR_NODE || is_null(item)) {
            rc = fail(L, &item->start_mark, "expected %s, got %s",
                      k->type == KT_ADDR_LIST ? "an address HOST:PORT"
                                              : "an address or ADDRESS/PREFIX",
                      describe(item, got, sizeof got));
        } else if ((k->type == KT_ADDR_LIST
                    ? conf_parse_addr(scalar_of(item), (void *)elem, reason, sizeof reason)
                    : conf_parse_cidr(scalar_of(item), (void *)elem, reason, sizeof reason)) < 0) {
            rc = fail(L, &item->start_mark, "%s, got %s", reason,
                      describe(item, got, sizeof got));
        }
        path_pop(L, saved);
        if (rc < 0)
            return -1;
    }
    return 0;
}

/* A map whose keys are names and whose values are sections: `pools`. The
 * name lands in each element at sub->name_off; the key's mark is where the
 * element was declared. */
static int store_section_map(struct loader *L, const struct conf_key *k,
                             yaml_node_t *v, void *base)
{
    const struct section *sub = k->sub;
    void **arrp = (void **)((char *)base + k->off);
    size_t *countp = (size_t *)((char *)base + k->count_off);
    size_t n = 0;

    if (!is_null(v) && v->type != YAML_MAPPING_NODE)
        return fail_type(L, k, v);
    if (!is_null(v)) {
        if (check_keys(L, v, NULL) < 0)
            return -1;
        n = (size_t)(v->data.mapping.pairs.top - v->data.mapping.pairs.start);
    }
    if (n < k->min)
        return fail(L, &v->start_mark, "expected at least one %s, got %s",
                    k->noun, is_null(v) ? "nothing" : "an empty mapping");
    if (n == 0)
        return 0;
    if (!(*arrp = calloc(n, sub->size)))
        return fail(L, &v->start_mark, "out of memory");
    *countp = n;

    for (size_t i = 0; i < n; i++) {
        yaml_node_pair_t *p = &v->data.mapping.pairs.start[i];
        yaml_node_t *key = node_at(L, p->key), *val = node_at(L, p->value);
        const char *name = scalar_of(key);
        char *elem = (char *)*arrp + i * sub->size;

        /* Names show up in logs, metrics and key paths: keep them short
         * and free of anything that needs quoting. */
        size_t len = strlen(name);
        if (strspn(name, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                         "0123456789_.-") != len || !len || len > CONF_NAME_MAX) {
            char got[64];
            return fail(L, &key->start_mark, "bad %s name %s: use up to %d letters, "
                        "digits, '_', '.' and '-'", k->noun,
                        describe(key, got, sizeof got), CONF_NAME_MAX);
        }
        if (!(*(char **)(elem + sub->name_off) = strdup(name)))
            return fail(L, &key->start_mark, "out of memory");
        *(int *)(elem + sub->line_off) = (int)key->start_mark.line + 1;
        *(int *)(elem + sub->col_off) = (int)key->start_mark.column + 1;

        size_t saved = path_push_key(L, name);
        int rc = section_parse(L, sub, val, &key->start_mark, elem);
        path_pop(L, saved);
        if (rc < 0)
            return -1;
    }
    return 0;
}

/* Fill `base` from the mapping `node` as section `s` says: defaults for
 * absent keys, an error for a missing required key (blamed on `where`, the
 * place the section starts or should have started). `node` NULL or null
 * means an empty mapping; a scalar is accepted if s->scalar_key is set. */
static int section_parse(struct loader *L, const struct section *s,
                         yaml_node_t *node, const yaml_mark_t *where, void *base)
{
    bool shorthand = false;
    char got[64];

    if (is_null(node))
        node = NULL;
    else if (node->type == YAML_SCALAR_NODE && s->scalar_key)
        shorthand = true;
    else if (node->type != YAML_MAPPING_NODE)
        return fail(L, &node->start_mark, "expected %s, got %s",
                    s->scalar_key ? "a mapping or a string" : "a mapping",
                    describe(node, got, sizeof got));
    if (node && !shorthand && check_keys(L, node, s) < 0)
        return -1;
    if (node)
        where = &node->start_mark;

    for (const struct conf_key *k = s->keys; k->name; k++) {
        yaml_node_t *v, fake;
        size_t saved = L->path_len;

        if (shorthand) {
            /* The scalar is the value itself: blame "access_log", not
             * "access_log.path", as that is what the user wrote. */
            v = strcmp(k->name, s->scalar_key) ? NULL : node;
        } else {
            v = node ? map_get(L, node, k->name) : NULL;
            path_push_key(L, k->name);
        }

        int rc = 0;
        if (!v && (k->flags & KEY_REQUIRED)) {
            rc = fail(L, where, "missing required key");
        } else if (!v && k->def) {
            /* Defaults take the same road as values from the file. */
            memset(&fake, 0, sizeof fake);
            fake.type = YAML_SCALAR_NODE;
            fake.data.scalar.value = (yaml_char_t *)(uintptr_t)k->def;
            fake.data.scalar.length = strlen(k->def);
            fake.data.scalar.style = YAML_PLAIN_SCALAR_STYLE;
            fake.start_mark = fake.end_mark = *where;
            v = &fake;
        }
        if (rc == 0 && (v || k->type == KT_SECTION))
            rc = v ? store(L, k, v, where, base)
                   : section_parse(L, k->sub, NULL, where, (char *)base + k->off);
        if (rc == 0 && v && k->check)
            rc = k->check(L, k, v, base);
        path_pop(L, saved);
        if (rc < 0)
            return -1;
    }
    return s->finish ? s->finish(L, node, base) : 0;
}

/* Free what `s` allocated in `base`; safe on a half-filled struct. */
static void section_release(const struct section *s, void *base)
{
    for (const struct conf_key *k = s->keys; k->name; k++) {
        void *field = (char *)base + k->off;
        switch (k->type) {
        case KT_STRING:
        case KT_ADDR_LIST:
        case KT_CIDR_LIST:
            free(*(void **)field);
            break;
        case KT_SECTION:
            section_release(k->sub, field);
            break;
        case KT_SECTION_LIST:
        case KT_SECTION_MAP: {
            char *arr = *(char **)field;
            size_t n = *(size_t *)((char *)base + k->count_off);
            for (size_t i = 0; arr && i < n; i++)
                section_release(k->sub, arr + i * k->sub->size);
            free(arr);
            break;
        }
        case KT_CUSTOM:
            if (k->release)
                k->release(base);
            break;
        default:
            break;
        }
    }
    if (s->named)
        free(*(char **)((char *)base + s->name_off));
}

/* ---- checks and custom keys -------------------------------------------- */

static bool addr_equal(const struct conf_addr *a, const struct conf_addr *b)
{
    if (a->u.sa.sa_family != b->u.sa.sa_family)
        return false;
    if (a->u.sa.sa_family == AF_INET)
        return a->u.sin.sin_port == b->u.sin.sin_port
               && a->u.sin.sin_addr.s_addr == b->u.sin.sin_addr.s_addr;
    return a->u.sin6.sin6_port == b->u.sin6.sin6_port
           && a->u.sin6.sin6_scope_id == b->u.sin6.sin6_scope_id
           && !memcmp(&a->u.sin6.sin6_addr, &b->u.sin6.sin6_addr, 16);
}

/* The node a list item's address came from: the item, or its `address`. */
static yaml_node_t *addr_node(struct loader *L, yaml_node_t *item, bool *nested)
{
    yaml_node_t *a = item->type == YAML_MAPPING_NODE ? map_get(L, item, "address") : NULL;
    *nested = a != NULL;
    return a ? a : item;
}

/* Items `stride` bytes apart, each starting with a struct conf_addr at
 * `addr_off`, must differ; the second of a pair is blamed. */
static int check_unique_addrs(struct loader *L, yaml_node_t *seq, const char *arr,
                              size_t n, size_t stride, size_t addr_off,
                              const char *what)
{
    for (size_t i = 1; i < n; i++) {
        const struct conf_addr *a = (const void *)(arr + i * stride + addr_off);
        for (size_t j = 0; j < i; j++) {
            const struct conf_addr *b = (const void *)(arr + j * stride + addr_off);
            if (!addr_equal(a, b))
                continue;
            bool nested;
            yaml_node_t *prev = addr_node(L, node_at(L, seq->data.sequence.items.start[j]), &nested);
            yaml_node_t *cur = addr_node(L, node_at(L, seq->data.sequence.items.start[i]), &nested);
            path_push_index(L, i);
            if (nested)
                path_push_key(L, "address");
            return fail(L, &cur->start_mark, "duplicate %s %s (first at line %zu)",
                        what, a->text, prev->start_mark.line + 1);
        }
    }
    return 0;
}

static int check_listen(struct loader *L, const struct conf_key *k,
                        yaml_node_t *v, void *base)
{
    const struct conf *c = base;
    return check_unique_addrs(L, v, (const char *)c->listen, c->n_listen,
                              sizeof *c->listen, 0, "listen address");
}

static int check_servers(struct loader *L, const struct conf_key *k,
                         yaml_node_t *v, void *base)
{
    const struct conf_pool *p = base;
    return check_unique_addrs(L, v, (const char *)p->servers, p->n_servers,
                              sizeof *p->servers, offsetof(struct conf_server, addr),
                              "server");
}

/* RFC 9110 token characters: what a header or cookie name may hold. */
static bool is_token(const char *s)
{
    return *s && strspn(s, "!#$%&'*+-.^_`|~0123456789"
                           "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
                 == strlen(s);
}

#define HASH_KEY_EXPECTED "source, uri, header:NAME or cookie:NAME"

static int parse_hash_key(struct loader *L, const struct conf_key *k,
                          yaml_node_t *v, void *base)
{
    struct conf_pool *p = base;
    char got[64];
    const char *s, *name = NULL;

    if (v->type != YAML_SCALAR_NODE || is_null(v))
        goto bad;
    s = scalar_of(v);
    if (!strcmp(s, "source")) {
        p->hash_key = CONF_HASH_SOURCE;
    } else if (!strcmp(s, "uri")) {
        p->hash_key = CONF_HASH_URI;
    } else if (!strncmp(s, "header:", 7)) {
        p->hash_key = CONF_HASH_HEADER;
        name = s + 7;
    } else if (!strncmp(s, "cookie:", 7)) {
        p->hash_key = CONF_HASH_COOKIE;
        name = s + 7;
    } else {
        goto bad;
    }
    if (name && !is_token(name))
        return fail(L, &v->start_mark, "expected a header or cookie name after "
                    "\"%.6s:\", got %s", s, describe(v, got, sizeof got));
    free(p->hash_name);
    p->hash_name = NULL;
    if (name && !(p->hash_name = strdup(name)))
        return fail(L, &v->start_mark, "out of memory");
    return 0;
bad:
    return fail(L, &v->start_mark, "expected " HASH_KEY_EXPECTED ", got %s",
                describe(v, got, sizeof got));
}

static void release_hash_name(void *base)
{
    free(((struct conf_pool *)base)->hash_name);
}

static int pool_finish(struct loader *L, yaml_node_t *node, void *base)
{
    const struct conf_pool *p = base;
    yaml_node_t *hk = node ? map_get(L, node, "hash_key") : NULL;
    if (hk && p->balance != CONF_BALANCE_HASH) {
        path_push_key(L, "hash_key");
        return fail(L, &hk->start_mark, "only valid with balance: hash "
                    "(this pool uses %s)", conf_balance_name(p->balance));
    }
    return 0;
}

/* Host names are kept in lower case so that matching is a plain compare. */
static int check_route_host(struct loader *L, const struct conf_key *k,
                            yaml_node_t *v, void *base)
{
    struct conf_route *r = base;
    char got[64];
    if (!r->host)
        return 0;

    char *h = r->host;
    for (char *c = h; *c; c++)
        *c = (char)tolower((unsigned char)*c);

    bool ok;
    if (h[0] == '[') {
        char buf[INET6_ADDRSTRLEN];
        struct in6_addr a6;
        size_t len = strlen(h);
        ok = len > 2 && len - 2 < sizeof buf && h[len - 1] == ']';
        if (ok) {
            memcpy(buf, h + 1, len - 2);
            buf[len - 2] = '\0';
            ok = inet_pton(AF_INET6, buf, &a6) == 1;
        }
    } else {
        const char *name = (h[0] == '*' && h[1] == '.') ? h + 2 : h;
        struct in_addr a4;
        ok = host_name_ok(name) || inet_pton(AF_INET, name, &a4) == 1;
        ok = ok && name[strlen(name) - 1] != '.';
    }
    if (!ok)
        return fail(L, &v->start_mark, "expected a host name such as example.com "
                    "or *.example.com, without a port, got %s",
                    describe(v, got, sizeof got));
    return 0;
}

static int check_route_path(struct loader *L, const struct conf_key *k,
                            yaml_node_t *v, void *base)
{
    const struct conf_route *r = base;
    char got[64];
    if (!r->path_prefix)
        return 0;
    const char *p = r->path_prefix;
    bool ok = p[0] == '/';
    for (; ok && *p; p++)
        ok = (unsigned char)*p > 0x20 && *p != 0x7f && *p != '?' && *p != '#';
    if (!ok)
        return fail(L, &v->start_mark, "expected a path starting with \"/\", "
                    "without spaces, '?' or '#', got %s", describe(v, got, sizeof got));
    return 0;
}

/* Routes are parsed after pools (table order), so the name can be looked up
 * now and stored as an index. */
static int parse_route_pool(struct loader *L, const struct conf_key *k,
                            yaml_node_t *v, void *base)
{
    struct conf_route *r = base;
    const struct conf *c = L->conf;
    char got[64], known[200];
    const char *s;

    if (!(s = scalar_text(L, k, v)))
        return -1;
    for (size_t i = 0; i < c->n_pools; i++) {
        if (!strcmp(c->pools[i].name, s)) {
            r->pool = i;
            return 0;
        }
    }
    size_t o = 0;
    known[0] = '\0';
    for (size_t i = 0; i < c->n_pools && o < sizeof known; i++)
        o += (size_t)snprintf(known + o, sizeof known - o, "%s%s",
                              i ? ", " : "", c->pools[i].name);
    return fail(L, &v->start_mark, "undefined pool %s (pools are: %s)",
                describe(v, got, sizeof got), known);
}

/* True when every request route `b` matches is matched by `a` too. Path
 * prefixes are compared so that this holds whether the proxy compares bytes
 * or path segments: "/api" covers "/api/v2" but not "/apiv2". */
static bool route_covers(const struct conf_route *a, const struct conf_route *b)
{
    if (a->host) {
        if (!b->host)
            return false;
        if (a->host[0] == '*') {
            const char *suffix = a->host + 1;       /* ".example.com" */
            const char *bh = b->host[0] == '*' ? b->host + 1 : b->host;
            size_t sl = strlen(suffix), bl = strlen(bh);
            if (bl < sl || (bl == sl && b->host[0] != '*')
                || strcmp(bh + bl - sl, suffix))
                return false;
        } else if (strcmp(a->host, b->host)) {
            return false;
        }
    }
    if (a->path_prefix) {
        size_t al = strlen(a->path_prefix);
        if (!b->path_prefix || strncmp(b->path_prefix, a->path_prefix, al))
            return false;
        if (b->path_prefix[al] && a->path_prefix[al - 1] != '/'
            && b->path_prefix[al] != '/')
            return false;
    }
    return true;
}

/* A route no request can reach is a mistake in the file: most often one put
 * after the default route. */
static int check_routes(struct loader *L, const struct conf_key *k,
                        yaml_node_t *v, void *base)
{
    const struct conf *c = base;
    for (size_t i = 1; i < c->n_routes; i++) {
        for (size_t j = 0; j < i; j++) {
            const struct conf_route *a = &c->routes[j];
            if (!route_covers(a, &c->routes[i]))
                continue;
            yaml_node_t *item = node_at(L, v->data.sequence.items.start[i]);
            path_push_index(L, i);
            if (!a->host && !a->path_prefix)
                return fail(L, &item->start_mark, "unreachable: it comes after "
                            "the default route at line %d", a->line);
            return fail(L, &item->start_mark, "unreachable: routes[%zu] at line "
                        "%d matches every request this route matches", j, a->line);
        }
    }
    return 0;
}

static int check_access_log_path(struct loader *L, const struct conf_key *k,
                                 yaml_node_t *v, void *base)
{
    struct conf_access_log *log = base;
    if (log->path && !strcmp(log->path, "off")) {
        free(log->path);
        log->path = NULL;
    }
    return 0;
}

/* Without `routes`, a lone pool takes every request; with several pools
 * there is no way to guess. */
/* Passwords are stored hashed, never in clear: crypt(3) "$id$…" strings,
 * e.g. from `openssl passwd -6` or `mkpasswd -m yescrypt`. */
static int check_password_hash(struct loader *L, const struct conf_key *k,
                               yaml_node_t *v, void *base)
{
    const char *h = ((struct conf_user *)base)->password;
    if (h[0] != '$' || !strchr(h + 1, '$') || strlen(h) < 20)
        return fail(L, &v->start_mark, "expected a crypt(3) password hash "
                    "such as \"$6$...\" (make one with: openssl passwd -6), "
                    "not a password in clear");
    return 0;
}

static bool addr_is_loopback(const struct conf_addr *a)
{
    if (a->u.sa.sa_family == AF_INET)
        return (ntohl(a->u.sin.sin_addr.s_addr) >> 24) == 127;
    const struct in6_addr *v6 = &a->u.sin6.sin6_addr;
    if (IN6_IS_ADDR_V4MAPPED(v6))
        return v6->s6_addr[12] == 127;
    return IN6_IS_ADDR_LOOPBACK(v6);
}

/* Read a token file: one line, surrounding white space ignored. */
static int read_token_file(struct loader *L, const yaml_mark_t *mark,
                           const char *path, char **out)
{
    char buf[512];
    FILE *f = fopen(path, "r");
    if (!f)
        return fail(L, mark, "cannot read %s: %s", path, strerror(errno));
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    char *start = buf;
    while (*start && isspace((unsigned char)*start))
        start++;
    char *end = start + strlen(start);
    while (end > start && isspace((unsigned char)end[-1]))
        *--end = '\0';
    if (!*start)
        return fail(L, mark, "%s is empty", path);
    if (!(*out = strdup(start)))
        return fail(L, mark, "out of memory");
    return 0;
}

/* Staff only: without any credential the dashboard may listen on loopback
 * only. A token file is read now so that conf->dashboard.token is the one
 * token to check. */
static int dashboard_finish(struct loader *L, yaml_node_t *node, void *base)
{
    struct conf_dashboard *d = base;
    yaml_mark_t zero = { 0, 0, 0 };
    const yaml_mark_t *mark = node ? &node->start_mark : &zero;
    if (d->token && d->token_file)
        return fail(L, mark, "auth.token and auth.token_file exclude each other");
    if (d->token_file && read_token_file(L, mark, d->token_file, &d->token) < 0)
        return -1;
    if (d->token && strlen(d->token) < 16)
        return fail(L, mark, "auth token too short: use at least 16 characters");
    bool has_auth = d->token || d->n_users > 0;
    if (d->enabled && !has_auth && !addr_is_loopback(&d->listen))
        return fail(L, mark, "listen %s is not a loopback address: set auth "
                    "(a token or users) first", d->listen.text);
    return 0;
}

static int top_finish(struct loader *L, yaml_node_t *node, void *base)
{
    struct conf *c = base;
    if (c->chat.enabled && !c->dashboard.enabled) {
        yaml_mark_t m = { 0, 0, 0 };
        m.line = c->chat.line > 0 ? (size_t)c->chat.line - 1 : 0;
        m.column = c->chat.column > 0 ? (size_t)c->chat.column - 1 : 0;
        path_push_key(L, "chat.enabled");
        return fail(L, &m, "the chat is served by the dashboard server: "
                    "set dashboard.enabled too");
    }
    if (c->n_routes)
        return 0;
    static const yaml_mark_t start;
    const yaml_mark_t *where = node ? &node->start_mark : &start;
    if (c->n_pools != 1) {
        path_push_key(L, "routes");
        return fail(L, where, "missing required key (there is more than one pool)");
    }
    if (!(c->routes = calloc(1, sizeof *c->routes)))
        return fail(L, where, "out of memory");
    c->n_routes = 1;
    c->routes[0].pool = 0;
    c->routes[0].line = c->pools[0].line;
    c->routes[0].column = c->pools[0].column;
    return 0;
}

/* ---- the tables -------------------------------------------------------- */

static const struct conf_key server_keys[] = {
    { .name = "address", .type = KT_ADDR, .flags = KEY_REQUIRED,
      .off = offsetof(struct conf_server, addr) },
    { .name = "weight", .type = KT_UINT, .def = "1", .min = 1, .max = 256,
      .off = offsetof(struct conf_server, weight) },
    { .name = "backup", .type = KT_BOOL, .def = "false",
      .off = offsetof(struct conf_server, backup) },
    { .name = "max_conns", .type = KT_UINT, .def = "0", .min = 0, .max = 1000000,
      .off = offsetof(struct conf_server, max_conns) },
    { .name = "state", .type = KT_ENUM, .def = "active", .names = server_state_names,
      .off = offsetof(struct conf_server, state) },
    { .name = NULL },
};

static const struct section server_section = {
    .keys = server_keys, .size = sizeof(struct conf_server),
    .scalar_key = "address",
    .line_off = offsetof(struct conf_server, line),
    .col_off = offsetof(struct conf_server, column),
};

static int check_health_path(struct loader *L, const struct conf_key *k,
                             yaml_node_t *v, void *base)
{
    const char *p = ((struct conf_health_check *)base)->path;
    if (p[0] != '/')
        return fail(L, &v->start_mark, "expected a path starting with \"/\"");
    for (const char *c = p; *c; c++)
        if ((unsigned char)*c <= ' ' || *c == 0x7f)
            return fail(L, &v->start_mark, "the path may not hold spaces or "
                        "control characters");
    return 0;
}

static const struct conf_key health_keys[] = {
    { .name = "path", .type = KT_STRING, .flags = KEY_REQUIRED,
      .check = check_health_path, .off = offsetof(struct conf_health_check, path) },
    { .name = "interval", .type = KT_DURATION, .def = "2s", .min = 100,
      .max = 3600000, .off = offsetof(struct conf_health_check, interval) },
    { .name = "timeout", .type = KT_DURATION, .def = "1s", .min = 10,
      .max = 3600000, .off = offsetof(struct conf_health_check, timeout) },
    { .name = "rise", .type = KT_UINT, .def = "2", .min = 1, .max = 100,
      .off = offsetof(struct conf_health_check, rise) },
    { .name = "fall", .type = KT_UINT, .def = "3", .min = 1, .max = 100,
      .off = offsetof(struct conf_health_check, fall) },
    { .name = "expect_status", .type = KT_UINT, .def = "0", .min = 0, .max = 599,
      .off = offsetof(struct conf_health_check, expect_status) },
    { .name = NULL },
};

static const struct section health_section = {
    .keys = health_keys,
};

/* Optional section: absent means no active check, so its defaults (and its
 * required `path`) apply only when it is written. */
static int health_parse(struct loader *L, const struct conf_key *k,
                        yaml_node_t *v, void *base)
{
    struct conf_health_check *hc =
        (struct conf_health_check *)((char *)base + k->off);
    if (!v || is_null(v))
        return 0;
    if (v->type != YAML_MAPPING_NODE)
        return fail(L, &v->start_mark, "expected a mapping with at least path");
    if (section_parse(L, &health_section, v, &v->start_mark, hc) < 0)
        return -1;
    if (hc->expect_status && hc->expect_status < 100)
        return fail(L, &v->start_mark, "expect_status: expected 0 (any 2xx or "
                    "3xx) or a status from 100 to 599");
    if (hc->timeout > hc->interval)
        return fail(L, &v->start_mark, "timeout (%ums) must not exceed interval (%ums)",
                    hc->timeout, hc->interval);
    return 0;
}

static void health_release(void *base)
{
    free(((struct conf_pool *)base)->health_check.path);
}

static const struct conf_key outlier_keys[] = {
    { .name = "consecutive_failures", .type = KT_UINT, .def = "5", .min = 0,
      .max = 1000, .off = offsetof(struct conf_outlier, consecutive_failures) },
    { .name = "base_ejection_time", .type = KT_DURATION, .def = "10s", .min = 100,
      .max = 86400000, .off = offsetof(struct conf_outlier, base_ejection_time) },
    { .name = "max_ejection_time", .type = KT_DURATION, .def = "5m", .min = 100,
      .max = 86400000, .off = offsetof(struct conf_outlier, max_ejection_time) },
    { .name = NULL },
};

static const struct section outlier_section = {
    .keys = outlier_keys,
};

static const struct conf_key queue_keys[] = {
    { .name = "size", .type = KT_UINT, .def = "1024", .min = 0, .max = 1000000,
      .off = offsetof(struct conf_queue, size) },
    { .name = "timeout", .type = KT_DURATION, .def = "5s", .min = 1,
      .max = UINT32_MAX, .off = offsetof(struct conf_queue, timeout) },
    { .name = NULL },
};

static const struct section queue_section = {
    .keys = queue_keys,
};

static const struct conf_key pool_keys[] = {
    { .name = "balance", .type = KT_ENUM, .def = "round_robin",
      .names = balance_names, .off = offsetof(struct conf_pool, balance) },
    { .name = "hash_key", .type = KT_CUSTOM, .def = "source",
      .parse = parse_hash_key, .release = release_hash_name,
      .off = offsetof(struct conf_pool, hash_key) },
    { .name = "outlier_detection", .type = KT_SECTION, .sub = &outlier_section,
      .off = offsetof(struct conf_pool, outlier) },
    { .name = "queue", .type = KT_SECTION, .sub = &queue_section,
      .off = offsetof(struct conf_pool, queue) },
    { .name = "retry_budget", .type = KT_UINT, .def = "20", .min = 0, .max = 100,
      .off = offsetof(struct conf_pool, retry_budget) },
    { .name = "slow_start", .type = KT_DURATION, .def = "0s", .min = 0,
      .max = 86400000, .off = offsetof(struct conf_pool, slow_start) },
    { .name = "retries", .type = KT_UINT, .def = "2", .min = 0, .max = 10,
      .off = offsetof(struct conf_pool, retries) },
    { .name = "health_check", .type = KT_CUSTOM, .parse = health_parse,
      .release = health_release, .off = offsetof(struct conf_pool, health_check) },
    { .name = "servers", .type = KT_SECTION_LIST, .flags = KEY_REQUIRED,
      .sub = &server_section, .min = 1, .noun = "server", .check = check_servers,
      .off = offsetof(struct conf_pool, servers),
      .count_off = offsetof(struct conf_pool, n_servers) },
    { .name = NULL },
};

static const struct section pool_section = {
    .keys = pool_keys, .size = sizeof(struct conf_pool),
    .named = true, .name_off = offsetof(struct conf_pool, name),
    .line_off = offsetof(struct conf_pool, line),
    .col_off = offsetof(struct conf_pool, column),
    .finish = pool_finish,
};

static const struct conf_key route_keys[] = {
    { .name = "host", .type = KT_STRING, .check = check_route_host,
      .off = offsetof(struct conf_route, host) },
    { .name = "path_prefix", .type = KT_STRING, .check = check_route_path,
      .off = offsetof(struct conf_route, path_prefix) },
    { .name = "pool", .type = KT_CUSTOM, .flags = KEY_REQUIRED,
      .noun = "a pool name", .parse = parse_route_pool, .off = offsetof(struct conf_route, pool) },
    { .name = NULL },
};

static const struct section route_section = {
    .keys = route_keys, .size = sizeof(struct conf_route),
    .line_off = offsetof(struct conf_route, line),
    .col_off = offsetof(struct conf_route, column),
};

/* Zero is refused for every timeout: each of them bounds a wait that must
 * end, and "no timeout" is not something Switchboard offers. */
static const struct conf_key timeout_keys[] = {
    { .name = "connect", .type = KT_DURATION, .def = "5s", .min = 1,
      .max = UINT32_MAX, .off = offsetof(struct conf_timeouts, connect) },
    { .name = "client_header", .type = KT_DURATION, .def = "10s", .min = 1,
      .max = UINT32_MAX, .off = offsetof(struct conf_timeouts, client_header) },
    { .name = "client_idle", .type = KT_DURATION, .def = "60s", .min = 1,
      .max = UINT32_MAX, .off = offsetof(struct conf_timeouts, client_idle) },
    { .name = "server", .type = KT_DURATION, .def = "60s", .min = 1,
      .max = UINT32_MAX, .off = offsetof(struct conf_timeouts, server) },
    { .name = "tunnel", .type = KT_DURATION, .def = "1h", .min = 1,
      .max = UINT32_MAX, .off = offsetof(struct conf_timeouts, tunnel) },
    { .name = "shutdown", .type = KT_DURATION, .def = "30s", .min = 1,
      .max = UINT32_MAX, .off = offsetof(struct conf_timeouts, shutdown) },
    { .name = NULL },
};

static const struct section timeouts_section = {
    .keys = timeout_keys,
};

/* 0 turns splicing off; a pipe smaller than a page cannot exist, and Linux
 * lets unprivileged processes have pipes up to 1 MiB (pipe-max-size). */
static int check_pipe_size(struct loader *L, const struct conf_key *k,
                           yaml_node_t *v, void *base)
{
    uint32_t size = ((struct conf_limits *)base)->pipe_size;
    if (size != 0 && (size < 4096 || size > 1048576)) {
        char got[64];
        return fail(L, &v->start_mark, "expected 0 (no splicing) or a size from 4k "
                    "to 1m, got %s", describe(v, got, sizeof got));
    }
    return 0;
}

static const struct conf_key limit_keys[] = {
    { .name = "max_header_bytes", .type = KT_BYTES, .def = "32768",
      .min = 1024, .max = 1048576,
      .off = offsetof(struct conf_limits, max_header_bytes) },
    { .name = "max_connections", .type = KT_UINT, .def = "10000",
      .min = 1, .max = 1000000,
      .off = offsetof(struct conf_limits, max_connections) },
    { .name = "pipe_size", .type = KT_BYTES, .def = "32768", .min = 0, .max = UINT32_MAX,
      .check = check_pipe_size, .off = offsetof(struct conf_limits, pipe_size) },
    { .name = NULL },
};

static const struct section limits_section = {
    .keys = limit_keys,
};

static const struct conf_key access_log_keys[] = {
    { .name = "path", .type = KT_STRING, .def = "stderr",
      .check = check_access_log_path,
      .off = offsetof(struct conf_access_log, path) },
    { .name = "format", .type = KT_ENUM, .def = "combined",
      .names = log_format_names, .off = offsetof(struct conf_access_log, format) },
    { .name = NULL },
};

static const struct section access_log_section = {
    .keys = access_log_keys, .scalar_key = "path",
};

static int check_password_hash(struct loader *L, const struct conf_key *k,
                               yaml_node_t *v, void *base);
static int dashboard_finish(struct loader *L, yaml_node_t *node, void *base);

static const struct conf_key string_keys[] = {
    { .name = "value", .type = KT_STRING, .flags = KEY_REQUIRED,
      .off = offsetof(struct conf_string, value) },
    { .name = NULL },
};

/* A list of plain strings: each scalar item stands for { value: ... }. */
static const struct section string_section = {
    .keys = string_keys, .size = sizeof(struct conf_string),
    .scalar_key = "value",
    .line_off = offsetof(struct conf_string, line),
    .col_off = offsetof(struct conf_string, column),
};

static const struct conf_key location_keys[] = {
    { .name = "latitude", .type = KT_DOUBLE, .flags = KEY_REQUIRED,
      .dmin = -90, .dmax = 90, .off = offsetof(struct conf_telemetry, latitude) },
    { .name = "longitude", .type = KT_DOUBLE, .flags = KEY_REQUIRED,
      .dmin = -180, .dmax = 180, .off = offsetof(struct conf_telemetry, longitude) },
    { .name = NULL },
};

static int location_parse(struct loader *L, const struct conf_key *k,
                          yaml_node_t *v, void *base)
{
    struct conf_telemetry *t = base;
    if (!v || is_null(v))
        return 0;
    static const struct section location_section = { .keys = location_keys };
    if (section_parse(L, &location_section, v, &v->start_mark, base) < 0)
        return -1;
    t->has_location = true;
    return 0;
}

static const char *const tm_priority_names[] = {
    [CONF_TM_PRIORITY_IDLE]   = "idle",
    [CONF_TM_PRIORITY_LOW]    = "low",
    [CONF_TM_PRIORITY_NORMAL] = "normal",
    NULL,
};

static const struct conf_key telemetry_keys[] = {
    { .name = "enabled", .type = KT_BOOL, .def = "true",
      .off = offsetof(struct conf_telemetry, enabled) },
    { .name = "ring_size", .type = KT_UINT, .def = "16384", .min = 64,
      .max = 1048576, .off = offsetof(struct conf_telemetry, ring_size) },
    { .name = "priority", .type = KT_ENUM, .def = "idle", .names = tm_priority_names,
      .off = offsetof(struct conf_telemetry, priority) },
    { .name = "geoip", .type = KT_SECTION_LIST, .min = 0, .sub = &string_section,
      .noun = "database path", .off = offsetof(struct conf_telemetry, geoip),
      .count_off = offsetof(struct conf_telemetry, n_geoip) },
    { .name = "location", .type = KT_CUSTOM, .parse = location_parse,
      .off = offsetof(struct conf_telemetry, latitude) },
    { .name = NULL },
};

static const struct section telemetry_section = {
    .keys = telemetry_keys,
};

static const struct conf_key user_keys[] = {
    { .name = "name", .type = KT_STRING, .flags = KEY_REQUIRED,
      .off = offsetof(struct conf_user, name) },
    { .name = "password", .type = KT_STRING, .flags = KEY_REQUIRED,
      .check = check_password_hash, .off = offsetof(struct conf_user, password) },
    { .name = NULL },
};

static const struct section user_section = {
    .keys = user_keys, .size = sizeof(struct conf_user),
    .line_off = offsetof(struct conf_user, line),
    .col_off = offsetof(struct conf_user, column),
};

static const struct conf_key auth_keys[] = {
    { .name = "token", .type = KT_STRING, .off = offsetof(struct conf_dashboard, token) },
    { .name = "token_file", .type = KT_STRING,
      .off = offsetof(struct conf_dashboard, token_file) },
    { .name = "users", .type = KT_SECTION_LIST, .min = 0, .sub = &user_section,
      .noun = "user", .off = offsetof(struct conf_dashboard, users),
      .count_off = offsetof(struct conf_dashboard, n_users) },
    { .name = NULL },
};

/* `auth` is a sub-map whose fields live in struct conf_dashboard itself. */
static int auth_parse(struct loader *L, const struct conf_key *k,
                      yaml_node_t *v, void *base)
{
    static const struct section auth_section = { .keys = auth_keys };
    if (!v || is_null(v))
        return 0;
    return section_parse(L, &auth_section, v, &v->start_mark, base);
}

static void auth_release(void *base)
{
    static const struct section auth_section = { .keys = auth_keys };
    section_release(&auth_section, base);
}

static const struct conf_key dashboard_keys[] = {
    { .name = "enabled", .type = KT_BOOL, .def = "true",
      .off = offsetof(struct conf_dashboard, enabled) },
    { .name = "listen", .type = KT_ADDR, .def = "127.0.0.1:8081",
      .off = offsetof(struct conf_dashboard, listen) },
    { .name = "push_hz", .type = KT_UINT, .def = "4", .min = 1, .max = 20,
      .off = offsetof(struct conf_dashboard, push_hz) },
    { .name = "auth", .type = KT_CUSTOM, .parse = auth_parse,
      .release = auth_release, .off = offsetof(struct conf_dashboard, token) },
    { .name = "allowed_origins", .type = KT_SECTION_LIST, .min = 0,
      .sub = &string_section, .noun = "origin",
      .off = offsetof(struct conf_dashboard, allowed_origins),
      .count_off = offsetof(struct conf_dashboard, n_allowed_origins) },
    { .name = NULL },
};

static const struct section dashboard_section = {
    .keys = dashboard_keys, .finish = dashboard_finish,
};

/* ---- chat ---------------------------------------------------------------- */

static const char *const chat_mode_names[] = {
    [CONF_CHAT_ROOMS]   = "rooms",
    [CONF_CHAT_SUPPORT] = "support",
    [CONF_CHAT_RANDOM]  = "random",
    NULL,
};

const char *conf_chat_mode_name(enum conf_chat_mode m)
{
    return (unsigned)m < CONF_CHAT_MODES ? chat_mode_names[m] : "unknown";
}

static const char *const default_chat_rooms[] = {
    "Lobby", "Library", "Dining", "Casino", "Gym", "Nightclub",
};

/* Longest room name, in bytes of UTF-8 (the chat applies the same bound to
 * rooms users create). */
#define CHAT_ROOM_NAME_MAX 40

static const yaml_mark_t *mark_of_string(const struct conf_string *s, yaml_mark_t *m)
{
    memset(m, 0, sizeof *m);
    m->line = s->line > 0 ? (size_t)s->line - 1 : 0;
    m->column = s->column > 0 ? (size_t)s->column - 1 : 0;
    return m;
}

static int chat_finish(struct loader *L, yaml_node_t *node, void *base)
{
    struct conf_chat *c = base;
    yaml_mark_t m;
    if (node) {
        c->line = (int)node->start_mark.line + 1;
        c->column = (int)node->start_mark.column + 1;
    }

    /* modes: names become bits; absent means every mode. */
    bool modes_given = node && map_get(L, node, "modes");
    c->modes = modes_given ? 0 : (1u << CONF_CHAT_MODES) - 1;
    for (size_t i = 0; i < c->n_mode_list; i++) {
        const struct conf_string *s = &c->mode_list[i];
        int found = -1;
        for (int j = 0; j < CONF_CHAT_MODES; j++)
            if (strcmp(s->value, chat_mode_names[j]) == 0)
                found = j;
        size_t saved = path_push(L, "%smodes[%zu]", L->path_len ? "." : "", i);
        if (found < 0)
            return fail(L, mark_of_string(s, &m), "unknown mode \"%s\" "
                        "(expected rooms, support or random)", s->value);
        if (c->modes & (1u << found))
            return fail(L, mark_of_string(s, &m), "mode \"%s\" is listed twice", s->value);
        path_pop(L, saved);
        c->modes |= 1u << found;
    }
    if (c->modes == 0) {
        size_t saved = path_push_key(L, "modes");
        int rc = fail(L, node ? &node->start_mark : &m, "expected at least one mode");
        path_pop(L, saved);
        return rc;
    }
    if (!(c->modes & (1u << c->default_mode))) {
        yaml_node_t *v = node ? map_get(L, node, "default") : NULL;
        path_push_key(L, "default");
        return fail(L, v ? &v->start_mark : node ? &node->start_mark : &m,
                    "\"%s\" is not one of the enabled modes",
                    chat_mode_names[c->default_mode]);
    }

    /* rooms: absent means the classic six; an empty list is allowed when
     * users may add rooms. */
    bool rooms_given = node && map_get(L, node, "rooms");
    if (!rooms_given) {
        size_t n = sizeof default_chat_rooms / sizeof default_chat_rooms[0];
        if (!(c->rooms = calloc(n, sizeof *c->rooms)))
            return fail(L, node ? &node->start_mark : &m, "out of memory");
        c->n_rooms = n;
        for (size_t i = 0; i < n; i++)
            if (!(c->rooms[i].value = strdup(default_chat_rooms[i])))
                return fail(L, node ? &node->start_mark : &m, "out of memory");
    }
    for (size_t i = 0; i < c->n_rooms; i++) {
        const struct conf_string *s = &c->rooms[i];
        size_t saved = path_push(L, "%srooms[%zu]", L->path_len ? "." : "", i);
        size_t len = strlen(s->value);
        if (len > CHAT_ROOM_NAME_MAX)
            return fail(L, mark_of_string(s, &m), "a room name has at most %d bytes",
                        CHAT_ROOM_NAME_MAX);
        for (size_t j = 0; j < len; j++)
            if ((unsigned char)s->value[j] < 0x20 || s->value[j] == 0x7f)
                return fail(L, mark_of_string(s, &m), "control characters are not "
                            "allowed in a room name");
        for (size_t j = 0; j < i; j++)
            if (strcasecmp(c->rooms[j].value, s->value) == 0)
                return fail(L, mark_of_string(s, &m), "room \"%s\" is listed twice",
                            s->value);
        path_pop(L, saved);
    }
    if ((c->modes & (1u << CONF_CHAT_ROOMS)) && c->n_rooms == 0 && !c->addable_rooms) {
        path_push_key(L, "rooms");
        return fail(L, node ? &node->start_mark : &m, "no rooms, and addable_rooms is "
                    "off: the rooms mode would have nothing to offer");
    }
    if (c->burst < c->rate) {
        yaml_node_t *v = node ? map_get(L, node, "burst") : NULL;
        path_push_key(L, "burst");
        return fail(L, v ? &v->start_mark : node ? &node->start_mark : &m,
                    "must be at least rate (%u)", c->rate);
    }
    return 0;
}

static const struct conf_key chat_keys[] = {
    { .name = "enabled", .type = KT_BOOL, .def = "false",
      .off = offsetof(struct conf_chat, enabled) },
    { .name = "modes", .type = KT_SECTION_LIST, .min = 0, .sub = &string_section,
      .noun = "mode", .off = offsetof(struct conf_chat, mode_list),
      .count_off = offsetof(struct conf_chat, n_mode_list) },
    { .name = "default", .type = KT_ENUM, .def = "rooms", .names = chat_mode_names,
      .off = offsetof(struct conf_chat, default_mode) },
    { .name = "rooms", .type = KT_SECTION_LIST, .min = 0, .sub = &string_section,
      .noun = "room name", .off = offsetof(struct conf_chat, rooms),
      .count_off = offsetof(struct conf_chat, n_rooms) },
    { .name = "addable_rooms", .type = KT_BOOL, .def = "true",
      .off = offsetof(struct conf_chat, addable_rooms) },
    { .name = "addable_rooms_visible", .type = KT_BOOL, .def = "true",
      .off = offsetof(struct conf_chat, addable_rooms_visible) },
    { .name = "max_name_length", .type = KT_UINT, .def = "30", .min = 1, .max = 100,
      .off = offsetof(struct conf_chat, max_name_length) },
    { .name = "history", .type = KT_UINT, .def = "50", .min = 0, .max = 1000,
      .off = offsetof(struct conf_chat, history) },
    { .name = "max_message_bytes", .type = KT_BYTES, .def = "2000", .min = 1,
      .max = 65536, .off = offsetof(struct conf_chat, max_message_bytes) },
    { .name = "rate", .type = KT_UINT, .def = "5", .min = 1, .max = 1000,
      .off = offsetof(struct conf_chat, rate) },
    { .name = "burst", .type = KT_UINT, .def = "10", .min = 1, .max = 10000,
      .off = offsetof(struct conf_chat, burst) },
    { .name = "max_rooms_per_user", .type = KT_UINT, .def = "3", .min = 0, .max = 1000,
      .off = offsetof(struct conf_chat, max_rooms_per_user) },
    { .name = "max_connections", .type = KT_UINT, .def = "10000", .min = 1,
      .max = 1000000, .off = offsetof(struct conf_chat, max_connections) },
    { .name = "reconnect_grace", .type = KT_DURATION, .def = "30s", .min = 0,
      .max = 3600000, .off = offsetof(struct conf_chat, reconnect_grace_ms) },
    { .name = "no_show_timeout", .type = KT_DURATION, .def = "30s", .min = 1000,
      .max = 3600000, .off = offsetof(struct conf_chat, no_show_timeout_ms) },
    { .name = "log", .type = KT_BOOL, .def = "off",
      .off = offsetof(struct conf_chat, log) },
    { .name = NULL },
};

static const struct section chat_section = {
    .keys = chat_keys, .finish = chat_finish,
};

/* Order matters: `pools` before `routes`, which look pools up by name. */
static const struct conf_key top_keys[] = {
    { .name = "listen", .type = KT_ADDR_LIST, .flags = KEY_REQUIRED, .min = 1,
      .noun = "listen address", .check = check_listen,
      .off = offsetof(struct conf, listen),
      .count_off = offsetof(struct conf, n_listen) },
    { .name = "defer_accept", .type = KT_BOOL, .def = "true",
      .off = offsetof(struct conf, defer_accept) },
    { .name = "workers", .type = KT_AUTO_UINT, .def = "auto", .min = 1, .max = 256,
      .off = offsetof(struct conf, workers) },
    { .name = "pools", .type = KT_SECTION_MAP, .flags = KEY_REQUIRED, .min = 1,
      .sub = &pool_section, .noun = "pool",
      .off = offsetof(struct conf, pools),
      .count_off = offsetof(struct conf, n_pools) },
    { .name = "routes", .type = KT_SECTION_LIST, .min = 1, .sub = &route_section,
      .noun = "route", .check = check_routes,
      .off = offsetof(struct conf, routes),
      .count_off = offsetof(struct conf, n_routes) },
    { .name = "trusted_proxies", .type = KT_CIDR_LIST, .min = 0,
      .noun = "address range", .off = offsetof(struct conf, trusted_proxies),
      .count_off = offsetof(struct conf, n_trusted_proxies) },
    { .name = "timeouts", .type = KT_SECTION, .sub = &timeouts_section,
      .off = offsetof(struct conf, timeouts) },
    { .name = "limits", .type = KT_SECTION, .sub = &limits_section,
      .off = offsetof(struct conf, limits) },
    { .name = "access_log", .type = KT_SECTION, .sub = &access_log_section,
      .off = offsetof(struct conf, access_log) },
    { .name = "telemetry", .type = KT_SECTION, .sub = &telemetry_section,
      .off = offsetof(struct conf, telemetry) },
    { .name = "dashboard", .type = KT_SECTION, .sub = &dashboard_section,
      .off = offsetof(struct conf, dashboard) },
    { .name = "chat", .type = KT_SECTION, .sub = &chat_section,
      .off = offsetof(struct conf, chat) },
    { .name = NULL },
};

static const struct section top_section = {
    .keys = top_keys, .size = sizeof(struct conf),
    .finish = top_finish,
};

/* ---- entry points ------------------------------------------------------ */

/* Turn a libyaml parser error into our message. Reader errors (bad UTF-8)
 * carry a byte offset, not a mark, so the mark is rebuilt from the text. */
static void yaml_error(struct loader *L, const yaml_parser_t *p,
                       const unsigned char *text, size_t len)
{
    yaml_mark_t m = p->problem_mark;
    const char *problem = p->problem ? p->problem : "cannot parse";

    if (p->error == YAML_MEMORY_ERROR) {
        fail(L, &m, "out of memory");
        return;
    }
    if (p->error == YAML_READER_ERROR) {
        memset(&m, 0, sizeof m);
        for (size_t i = 0; i < p->problem_offset && i < len; i++) {
            if (text[i] == '\n') {
                m.line++;
                m.column = 0;
            } else {
                m.column++;
            }
        }
    }
    if (p->context)
        fail(L, &m, "syntax error: %s (%s at line %zu, column %zu)", problem,
             p->context, p->context_mark.line + 1, p->context_mark.column + 1);
    else
        fail(L, &m, "syntax error: %s", problem);
}

/* YAML allows "\0" in a quoted scalar; every scalar here becomes a C
 * string, which would silently end at it. Refuse it once, for all nodes,
 * before anything reads a scalar with strcmp() or strlen(). */
static int check_no_nul(struct loader *L)
{
    for (yaml_node_t *n = L->doc->nodes.start; n < L->doc->nodes.top; n++)
        if (n->type == YAML_SCALAR_NODE
            && strlen(scalar_of(n)) != n->data.scalar.length)
            return fail(L, &n->start_mark, "a NUL character is not allowed here");
    return 0;
}

/* The one place that owns a parser, documents and a half-built conf; a single
 * unwind path releases whichever of them exist. */
static struct conf *load(const char *name, const unsigned char *text, size_t len,
                         char *err, size_t errlen)
{
    yaml_parser_t parser;
    yaml_document_t doc, extra;
    bool have_parser = false, have_doc = false, have_extra = false;
    struct loader L = { .file = name, .err = err, .errlen = errlen, .doc = &doc };
    static const yaml_mark_t start;

    if (err && errlen)
        err[0] = '\0';
    if (!(L.conf = calloc(1, sizeof *L.conf))) {
        fail(&L, &start, "out of memory");
        goto fail;
    }
    if (!(L.conf->file = strdup(name))) {
        fail(&L, &start, "out of memory");
        goto fail;
    }
    if (!yaml_parser_initialize(&parser)) {
        fail(&L, &start, "out of memory");
        goto fail;
    }
    have_parser = true;
    yaml_parser_set_input_string(&parser, text, len);

    if (!yaml_parser_load(&parser, &doc)) {
        yaml_error(&L, &parser, text, len);
        goto fail;
    }
    have_doc = true;

    /* A second document would be silently ignored; say so instead. */
    if (yaml_document_get_root_node(&doc)) {
        if (!yaml_parser_load(&parser, &extra)) {
            yaml_error(&L, &parser, text, len);
            goto fail;
        }
        have_extra = true;
        if (yaml_document_get_root_node(&extra)) {
            fail(&L, &extra.start_mark, "only one YAML document is allowed");
            goto fail;
        }
    }

    if (check_no_nul(&L) < 0
        || section_parse(&L, &top_section, yaml_document_get_root_node(&doc),
                         &doc.start_mark, L.conf) < 0)
        goto fail;

    if (have_extra)
        yaml_document_delete(&extra);
    yaml_document_delete(&doc);
    yaml_parser_delete(&parser);
    return L.conf;

fail:
    if (have_extra)
        yaml_document_delete(&extra);
    if (have_doc)
        yaml_document_delete(&doc);
    if (have_parser)
        yaml_parser_delete(&parser);
    conf_free(L.conf);
    return NULL;
}

struct conf *conf_load_string(const char *name, const char *yaml,
                              char *err, size_t errlen)
{
    return load(name, (const unsigned char *)yaml, strlen(yaml), err, errlen);
}

struct conf *conf_load(const char *path, char *err, size_t errlen)
{
    FILE *f = NULL;
    unsigned char *text = NULL;
    size_t len = 0, cap = 0;
    struct conf *conf = NULL;

    if (!(f = fopen(path, "rb")))
        goto io_error;
    /* Read to EOF rather than trust st_size: the file may be a pipe. */
    for (;;) {
        if (len == cap) {
            size_t ncap = cap ? cap * 2 : 16384;
            unsigned char *n = realloc(text, ncap);
            if (!n) {
                errno = ENOMEM;
                goto io_error;
            }
            text = n;
            cap = ncap;
        }
        size_t got = fread(text + len, 1, cap - len, f);
        len += got;
        if (got == 0) {
            if (ferror(f))
                goto io_error;
            break;
        }
    }
    conf = load(path, text, len, err, errlen);
    goto out;

io_error:
    set_err(err, errlen, "%s: %s", path, strerror(errno));
out:
    if (f)
        fclose(f);
    free(text);
    return conf;
}

void conf_free(struct conf *conf)
{
    if (!conf)
        return;
    section_release(&top_section, conf);
    free(conf->file);
    free(conf);
}
