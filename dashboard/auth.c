/*
 * auth.c - the dashboard's access rules (see auth.h): bearer token, token
 * cookie, Basic users checked with crypt_r(3), and the WebSocket Origin rule.
 *
 * Thread: a struct dash_auth is used by one thread at a time (the dashboard's
 * service thread); it owns its crypt_r scratch space (32 KiB with libxcrypt,
 * too big for a stack) and the cache of credentials that passed. The other
 * functions are pure and may run anywhere.
 *
 * The cache keeps SipHash-2-4 digests of "name:password" under a key drawn
 * at start, so a page that sends Basic credentials with each of its requests
 * costs one crypt(3) call, not one per request, and no password is kept in
 * clear. Finding a string with the digest of a cached credential without
 * the key means guessing 64 bits.
 */
#include <crypt.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <unistd.h>

#include "dashboard/auth.h"

#define BASIC_MAX     1024      /* decoded "name:password" */
#define CACHE_SLOTS   16
#define ORIGIN_MAX    512

struct dash_user {
    char *name;
    char *hash;
};

struct dash_auth {
    char *token;                        /* NULL: no token configured */
    size_t token_len;
    struct dash_user *users;
    size_t n_users;
    struct crypt_data *crypt;           /* crypt_r scratch; NULL without users */
    bool cache_on;                      /* false if no random key was had */
    uint64_t key[2];
    uint64_t cache[CACHE_SLOTS];        /* digests of credentials that passed */
    bool cache_used[CACHE_SLOTS];
    unsigned cache_next;                /* round-robin replacement */
};

/* ---- constant-time compare, base64 ------------------------------------- */

bool dash_ct_equal(const void *a, size_t alen, const void *secret, size_t slen)
{
    const unsigned char *x = a, *y = secret;
    /* Walk the client's bytes; index the secret modulo its length so that
     * neither its length nor the first mismatch shows in the timing. */
    unsigned diff = alen != slen;
    if (slen == 0)
        return alen == 0;
    for (size_t i = 0; i < alen; i++)
        diff |= (unsigned)(x[i] ^ y[i % slen]);
    return diff == 0;
}

static int b64_value(unsigned char c)
{
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
}

ssize_t dash_b64_decode(const char *in, size_t inlen, unsigned char *out,
                        size_t outmax)
{
    while (inlen > 0 && in[inlen - 1] == '=')
        inlen--;
    if (inlen % 4 == 1)
        return -1;
    size_t n = 0;
    uint32_t acc = 0;
    int bits = 0;
    for (size_t i = 0; i < inlen; i++) {
        int v = b64_value((unsigned char)in[i]);
        if (v < 0)
            return -1;
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            if (n >= outmax)
                return -1;
            out[n++] = (unsigned char)(acc >> bits);
        }
    }
    return (ssize_t)n;
}

/* ---- SipHash-2-4 (Aumasson and Bernstein), for the cache --------------- */

#define ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))
#define SIPROUND do {                                                        \
        v0 += v1; v1 = ROTL(v1, 13); v1 ^= v0; v0 = ROTL(v0, 32);            \
        v2 += v3; v3 = ROTL(v3, 16); v3 ^= v2;                               \
        v0 += v3; v3 = ROTL(v3, 21); v3 ^= v0;                               \
        v2 += v1; v1 = ROTL(v1, 17); v1 ^= v2; v2 = ROTL(v2, 32);            \
    } while (0)

static uint64_t siphash24(const uint64_t key[2], const unsigned char *in, size_t len)
{
    uint64_t v0 = 0x736f6d6570736575ULL ^ key[0];
    uint64_t v1 = 0x646f72616e646f6dULL ^ key[1];
    uint64_t v2 = 0x6c7967656e657261ULL ^ key[0];
    uint64_t v3 = 0x7465646279746573ULL ^ key[1];
    size_t full = len - len % 8;
    for (size_t i = 0; i < full; i += 8) {
        uint64_t m = 0;
        for (int k = 7; k >= 0; k--)
            m = (m << 8) | in[i + (size_t)k];
        v3 ^= m;
        SIPROUND;
        SIPROUND;
        v0 ^= m;
    }
    uint64_t b = (uint64_t)len << 56;
    for (size_t k = 0; k < len % 8; k++)
        b |= (uint64_t)in[full + k] << (8 * k);
    v3 ^= b;
    SIPROUND;
    SIPROUND;
    v0 ^= b;
    v2 ^= 0xff;
    SIPROUND;
    SIPROUND;
    SIPROUND;
    SIPROUND;
    return v0 ^ v1 ^ v2 ^ v3;
}

static bool random_key(uint64_t key[2])
{
    unsigned char buf[16];
    size_t got = 0;
    while (got < sizeof buf) {
        ssize_t n = getrandom(buf + got, sizeof buf - got, 0);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return false;
        }
        got += (size_t)n;
    }
    memcpy(key, buf, sizeof buf);
    return true;
}

/* ---- construction ------------------------------------------------------ */

struct dash_auth *dash_auth_new(const struct conf_dashboard *conf)
{
    struct dash_auth *a = calloc(1, sizeof *a);
    if (!a)
        return NULL;
    if (conf->token) {
        if (!(a->token = strdup(conf->token)))
            goto fail;
        a->token_len = strlen(a->token);
    }
    if (conf->n_users > 0) {
        if (!(a->users = calloc(conf->n_users, sizeof *a->users)))
            goto fail;
        a->n_users = conf->n_users;
        for (size_t i = 0; i < conf->n_users; i++) {
            a->users[i].name = strdup(conf->users[i].name);
            a->users[i].hash = strdup(conf->users[i].password);
            if (!a->users[i].name || !a->users[i].hash)
                goto fail;
        }
        /* Zeroed, as crypt_r wants its data on first use. */
        if (!(a->crypt = calloc(1, sizeof *a->crypt)))
            goto fail;
        a->cache_on = random_key(a->key);
    }
    return a;
fail:
    dash_auth_free(a);
    return NULL;
}

void dash_auth_free(struct dash_auth *a)
{
    if (!a)
        return;
    if (a->token) {
        explicit_bzero(a->token, a->token_len);
        free(a->token);
    }
    for (size_t i = 0; i < a->n_users; i++) {
        free(a->users[i].name);
        free(a->users[i].hash);
    }
    free(a->users);
    if (a->crypt) {
        explicit_bzero(a->crypt, sizeof *a->crypt);
        free(a->crypt);
    }
    explicit_bzero(a->key, sizeof a->key);
    free(a);
}

bool dash_auth_required(const struct dash_auth *a)
{
    return a->token != NULL || a->n_users > 0;
}

bool dash_auth_has_users(const struct dash_auth *a)
{
    return a->n_users > 0;
}

/* ---- the checks -------------------------------------------------------- */

bool dash_auth_token_ok(const struct dash_auth *a, const char *token)
{
    if (!a->token || !token)
        return false;
    return dash_ct_equal(token, strlen(token), a->token, a->token_len);
}

/* "Scheme rest": true and *rest set when `header` starts with `scheme`
 * (case-insensitive) followed by at least one space. */
static bool auth_scheme(const char *header, const char *scheme, const char **rest)
{
    size_t n = strlen(scheme);
    if (strncasecmp(header, scheme, n) != 0 || (header[n] != ' ' && header[n] != '\t'))
        return false;
    const char *p = header + n;
    while (*p == ' ' || *p == '\t')
        p++;
    *rest = p;
    return true;
}

static size_t trimmed_len(const char *s)
{
    size_t n = strlen(s);
    while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t'))
        n--;
    return n;
}

static bool cache_has(const struct dash_auth *a, uint64_t digest)
{
    bool hit = false;
    for (size_t i = 0; i < CACHE_SLOTS; i++)
        hit |= a->cache_used[i] && a->cache[i] == digest;
    return hit;
}

static void cache_add(struct dash_auth *a, uint64_t digest)
{
    a->cache[a->cache_next] = digest;
    a->cache_used[a->cache_next] = true;
    a->cache_next = (a->cache_next + 1) % CACHE_SLOTS;
}

static enum dash_auth_result check_basic(struct dash_auth *a, const char *b64)
{
    if (a->n_users == 0)
        return DASH_AUTH_BAD;
    unsigned char cred[BASIC_MAX + 1];
    ssize_t n = dash_b64_decode(b64, trimmed_len(b64), cred, BASIC_MAX);
    if (n < 0)
        return DASH_AUTH_BAD;
    cred[n] = '\0';
    unsigned char *colon = memchr(cred, ':', (size_t)n);
    if (!colon || memchr(cred, '\0', (size_t)n))
        return DASH_AUTH_BAD;
    enum dash_auth_result result = DASH_AUTH_BAD;
    uint64_t digest = 0;
    if (a->cache_on) {
        digest = siphash24(a->key, cred, (size_t)n);
        if (cache_has(a, digest)) {
            result = DASH_AUTH_OK;
            goto out;
        }
    }
    size_t name_len = (size_t)(colon - cred);
    const char *password = (const char *)colon + 1;
    /* Every name is compared, and an unknown name still costs one crypt
     * call, so the answer time does not tell which names exist. */
    const struct dash_user *user = NULL;
    for (size_t i = 0; i < a->n_users; i++) {
        bool same = dash_ct_equal(cred, name_len, a->users[i].name,
                                  strlen(a->users[i].name));
        if (same && !user)
            user = &a->users[i];
    }
    const char *hash = user ? user->hash : a->users[0].hash;
    const char *got = crypt_r(password, hash, a->crypt);
    bool match = got && got[0] != '*' &&
                 dash_ct_equal(got, strlen(got), hash, strlen(hash));
    if (user && match) {
        result = DASH_AUTH_OK;
        if (a->cache_on)
            cache_add(a, digest);
    }
out:
    explicit_bzero(cred, sizeof cred);
    return result;
}

static enum dash_auth_result check_cookie(const struct dash_auth *a, const char *cookie)
{
    const char *value;
    size_t len;
    if (!a->token || !cookie || !dash_cookie_find(cookie, DASH_COOKIE_NAME, &value, &len))
        return DASH_AUTH_MISSING;
    char token[1024];
    ssize_t n = dash_cookie_decode(value, len, token, sizeof token);
    if (n < 0)
        return DASH_AUTH_BAD;
    bool ok = dash_ct_equal(token, (size_t)n, a->token, a->token_len);
    explicit_bzero(token, sizeof token);
    return ok ? DASH_AUTH_OK : DASH_AUTH_BAD;
}

enum dash_auth_result dash_auth_check(struct dash_auth *a, const char *authorization,
                                      const char *cookie)
{
    if (!dash_auth_required(a))
        return DASH_AUTH_OK;
    if (authorization && *authorization) {
        const char *rest;
        if (auth_scheme(authorization, "Bearer", &rest)) {
            if (!a->token)
                return DASH_AUTH_BAD;
            return dash_ct_equal(rest, trimmed_len(rest), a->token, a->token_len)
                   ? DASH_AUTH_OK : DASH_AUTH_BAD;
        }
        if (auth_scheme(authorization, "Basic", &rest))
            return check_basic(a, rest);
        return DASH_AUTH_BAD;
    }
    return check_cookie(a, cookie);
}

/* ---- cookies ----------------------------------------------------------- */

bool dash_cookie_find(const char *header, const char *name, const char **value,
                      size_t *len)
{
    size_t name_len = strlen(name);
    const char *p = header;
    while (*p) {
        while (*p == ' ' || *p == '\t' || *p == ';')
            p++;
        const char *end = strchr(p, ';');
        if (!end)
            end = p + strlen(p);
        const char *eq = memchr(p, '=', (size_t)(end - p));
        if (eq) {
            const char *n_end = eq;
            while (n_end > p && (n_end[-1] == ' ' || n_end[-1] == '\t'))
                n_end--;
            if ((size_t)(n_end - p) == name_len && memcmp(p, name, name_len) == 0) {
                const char *v = eq + 1, *v_end = end;
                while (v < v_end && (*v == ' ' || *v == '\t'))
                    v++;
                while (v_end > v && (v_end[-1] == ' ' || v_end[-1] == '\t'))
                    v_end--;
                if (v_end - v >= 2 && *v == '"' && v_end[-1] == '"') {
                    v++;
                    v_end--;
                }
                *value = v;
                *len = (size_t)(v_end - v);
                return true;
            }
        }
        p = end;
    }
    return false;
}

static bool unreserved(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
           c == '-' || c == '.' || c == '_' || c == '~';
}

ssize_t dash_cookie_encode(const char *in, char *out, size_t outmax)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t n = 0;
    for (const unsigned char *p = (const unsigned char *)in; *p; p++) {
        size_t need = unreserved(*p) ? 1 : 3;
        if (n + need >= outmax)
            return -1;
        if (need == 1) {
            out[n++] = (char)*p;
        } else {
            out[n++] = '%';
            out[n++] = hex[*p >> 4];
            out[n++] = hex[*p & 15];
        }
    }
    if (n >= outmax)
        return -1;
    out[n] = '\0';
    return (ssize_t)n;
}

static int hex_value(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

ssize_t dash_cookie_decode(const char *in, size_t inlen, char *out, size_t outmax)
{
    size_t n = 0;
    for (size_t i = 0; i < inlen; i++) {
        if (n + 1 >= outmax)
            return -1;
        if (in[i] == '%') {
            if (i + 2 >= inlen)
                return -1;
            int h = hex_value(in[i + 1]), l = hex_value(in[i + 2]);
            if (h < 0 || l < 0)
                return -1;
            out[n++] = (char)(h << 4 | l);
            i += 2;
        } else {
            out[n++] = in[i];
        }
    }
    out[n] = '\0';
    return (ssize_t)n;
}

/* ---- Origin ------------------------------------------------------------ */

/* "Scheme://host[:port]" lowercased, without a default port or a trailing
 * "/", into `out`. -1 when `in` is not of that form. */
static int origin_norm(const char *in, size_t len, char *out, size_t outmax)
{
    if (len > 0 && in[len - 1] == '/')
        len--;
    const char *sep = NULL;
    for (size_t i = 0; i + 2 < len; i++) {
        if (in[i] == ':' && in[i + 1] == '/' && in[i + 2] == '/') {
            sep = in + i;
            break;
        }
    }
    if (!sep || sep == in || len + 1 > outmax)
        return -1;
    size_t scheme_len = (size_t)(sep - in);
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)in[i];
        if (c <= ' ' || c >= 0x7f)
            return -1;
        if (i >= scheme_len + 3 && (c == '/' || c == '?' || c == '#' || c == '@'))
            return -1;
        out[i] = (char)((c >= 'A' && c <= 'Z') ? c - 'A' + 'a' : c);
    }
    if (len == scheme_len + 3)
        return -1;
    out[len] = '\0';
    if (scheme_len == 4 && memcmp(out, "http", 4) == 0 && len > 10 &&
        strcmp(out + len - 3, ":80") == 0)
        out[len - 3] = '\0';
    else if (scheme_len == 5 && memcmp(out, "https", 5) == 0 && len > 12 &&
             strcmp(out + len - 4, ":443") == 0)
        out[len - 4] = '\0';
    return 0;
}

bool dash_origin_allowed(const char *origin, const char *host,
                         const char *const *allowed, size_t n_allowed)
{
    if (!origin)
        return true;
    for (size_t i = 0; i < n_allowed; i++)
        if (strcmp(origin, allowed[i]) == 0)
            return true;
    char want[ORIGIN_MAX], other[ORIGIN_MAX];
    if (origin_norm(origin, strlen(origin), want, sizeof want) < 0)
        return false;
    if (host && *host) {
        static const char *const schemes[] = { "http://", "https://" };
        for (size_t s = 0; s < 2; s++) {
            char own[ORIGIN_MAX];
            int n = snprintf(own, sizeof own, "%s%s", schemes[s], host);
            if (n > 0 && (size_t)n < sizeof own &&
                origin_norm(own, (size_t)n, other, sizeof other) == 0 &&
                strcmp(want, other) == 0)
                return true;
        }
    }
    for (size_t i = 0; i < n_allowed; i++)
        if (origin_norm(allowed[i], strlen(allowed[i]), other, sizeof other) == 0 &&
            strcmp(want, other) == 0)
            return true;
    return false;
}

bool dash_host_allowed(const char *host, const char *const *allowed, size_t n_allowed)
{
    if (!host || !*host)
        return true;
    if (host[0] == '[')
        return strchr(host, ']') != NULL;
    size_t n = strcspn(host, ":");
    if ((n == 9 && strncasecmp(host, "localhost", 9) == 0) ||
        (n > 10 && strncasecmp(host + n - 10, ".localhost", 10) == 0))
        return true;
    bool ip = true;
    for (size_t i = 0; i < n; i++)
        ip &= (host[i] >= '0' && host[i] <= '9') || host[i] == '.';
    if (ip)
        return true;
    for (size_t i = 0; i < n_allowed; i++) {
        const char *o = strstr(allowed[i], "://");
        if (o && strncasecmp(o + 3, host, n) == 0 &&
            (o[3 + n] == '\0' || o[3 + n] == ':' || o[3 + n] == '/'))
            return true;
    }
    return false;
}
