/*
 * test_auth.c - dashboard/auth.c: who may use the dashboard. Bearer token,
 * token cookie (and its encoding), Basic users against a real crypt(3)
 * "$6$" hash made here with crypt_r, the cache of verified credentials,
 * constant-time comparison, base64, and the Origin and Host rules of the
 * WebSocket and of unauthenticated requests.
 */
#include "check.h"

#include <crypt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "conf/conf.h"
#include "dashboard/auth.h"

#define TOKEN "s3cret-token-0123456789"

/* A "$6$" (SHA-512 crypt) hash of `password`, made the way a config would
 * hold it. Static storage: valid until the next call. */
static const char *sha512_hash(const char *password)
{
    static struct crypt_data cd;
    static char hash[CRYPT_OUTPUT_SIZE];
    char salt[CRYPT_GENSALT_OUTPUT_SIZE];
    memset(&cd, 0, sizeof cd);
    if (!crypt_gensalt_rn("$6$", 0, NULL, 0, salt, sizeof salt))
        return NULL;
    const char *h = crypt_r(password, salt, &cd);
    if (!h || h[0] == '*')
        return NULL;
    snprintf(hash, sizeof hash, "%s", h);
    return hash;
}

static void b64(const char *in, char *out)
{
    static const char tab[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t n = strlen(in), o = 0;
    const unsigned char *p = (const unsigned char *)in;
    for (size_t i = 0; i < n; i += 3) {
        unsigned v = (unsigned)p[i] << 16;
        if (i + 1 < n) v |= (unsigned)p[i + 1] << 8;
        if (i + 2 < n) v |= p[i + 2];
        out[o++] = tab[(v >> 18) & 63];
        out[o++] = tab[(v >> 12) & 63];
        out[o++] = i + 1 < n ? tab[(v >> 6) & 63] : '=';
        out[o++] = i + 2 < n ? tab[v & 63] : '=';
    }
    out[o] = '\0';
}

static void basic_header(const char *user, const char *password, char *out)
{
    char cred[256], enc[400];
    snprintf(cred, sizeof cred, "%s:%s", user, password);
    b64(cred, enc);
    sprintf(out, "Basic %s", enc);
}

/* ---- building blocks ---------------------------------------------------- */

static void test_ct_equal(void)
{
    CHECK(dash_ct_equal("abc", 3, "abc", 3));
    CHECK(!dash_ct_equal("abd", 3, "abc", 3));
    CHECK(!dash_ct_equal("xbc", 3, "abc", 3));
    CHECK(!dash_ct_equal("ab", 2, "abc", 3));
    CHECK(!dash_ct_equal("abcd", 4, "abc", 3));
    CHECK(!dash_ct_equal("abcabc", 6, "abc", 3));   /* the modulo walk is no match */
    CHECK(dash_ct_equal("", 0, "", 0));
    CHECK(!dash_ct_equal("a", 1, "", 0));
    CHECK(!dash_ct_equal("", 0, "a", 1));
    CHECK(dash_ct_equal("a\0b", 3, "a\0b", 3));
    CHECK(!dash_ct_equal("a\0c", 3, "a\0b", 3));
}

/* The time taken does not depend on where the first difference lies: the
 * same number of byte operations either way. Timing is noisy, so only a
 * gross dependence (an early exit would be 1000x faster) is checked. */
static void test_ct_equal_timing(void)
{
    enum { LEN = 4096, REPS = 2000 };
    static char secret[LEN], early[LEN], late[LEN];
    memset(secret, 'a', LEN);
    memcpy(early, secret, LEN);
    memcpy(late, secret, LEN);
    early[0] = 'b';
    late[LEN - 1] = 'b';
    double t[2];
    const char *which[2] = { early, late };
    volatile bool sink = false;
    for (int k = 0; k < 2; k++) {
        struct timespec a, b;
        clock_gettime(CLOCK_MONOTONIC, &a);
        for (int r = 0; r < REPS; r++)
            sink ^= dash_ct_equal(which[k], LEN, secret, LEN);
        clock_gettime(CLOCK_MONOTONIC, &b);
        t[k] = (double)(b.tv_sec - a.tv_sec) + (double)(b.tv_nsec - a.tv_nsec) / 1e9;
    }
    (void)sink;
    CHECKF(t[0] > t[1] / 20 && t[1] > t[0] / 20, "early %.6f s, late %.6f s", t[0], t[1]);
}

static void test_b64_decode(void)
{
    unsigned char out[64];
    CHECK(dash_b64_decode("", 0, out, sizeof out) == 0);
    CHECK(dash_b64_decode("Zg==", 4, out, sizeof out) == 1 && out[0] == 'f');
    CHECK(dash_b64_decode("Zm8=", 4, out, sizeof out) == 2 && memcmp(out, "fo", 2) == 0);
    CHECK(dash_b64_decode("Zm9v", 4, out, sizeof out) == 3 && memcmp(out, "foo", 3) == 0);
    CHECK(dash_b64_decode("Zm9vYmFy", 8, out, sizeof out) == 6 &&
          memcmp(out, "foobar", 6) == 0);
    CHECK(dash_b64_decode("Zm9vYg", 6, out, sizeof out) == 4);        /* unpadded */
    CHECK(dash_b64_decode("Zm9v!mFy", 8, out, sizeof out) == -1);
    CHECK(dash_b64_decode("Zm9v YmFy", 9, out, sizeof out) == -1);
    CHECK(dash_b64_decode("Z", 1, out, sizeof out) == -1);
    CHECK(dash_b64_decode("Zm9vYmFy", 8, out, 5) == -1);              /* too small */
    CHECK(dash_b64_decode("/+/+", 4, out, sizeof out) == 3 && out[0] == 0xff);
}

static void test_cookie_find(void)
{
    const char *v;
    size_t n;
    CHECK(dash_cookie_find("sb_token=abc", "sb_token", &v, &n) && n == 3 &&
          memcmp(v, "abc", 3) == 0);
    CHECK(dash_cookie_find("a=1; sb_token=xyz; b=2", "sb_token", &v, &n) && n == 3 &&
          memcmp(v, "xyz", 3) == 0);
    CHECK(dash_cookie_find("a=1;sb_token = \"q q\" ;b=2", "sb_token", &v, &n) && n == 3 &&
          memcmp(v, "q q", 3) == 0);
    CHECK(dash_cookie_find("sb_token=", "sb_token", &v, &n) && n == 0);
    CHECK(!dash_cookie_find("xsb_token=abc", "sb_token", &v, &n));
    CHECK(!dash_cookie_find("sb_tokenx=abc; a=sb_token=1", "sb_token", &v, &n));
    CHECK(!dash_cookie_find("SB_TOKEN=abc", "sb_token", &v, &n));
    CHECK(!dash_cookie_find("", "sb_token", &v, &n));
    CHECK(!dash_cookie_find("sb_token", "sb_token", &v, &n));
    /* The first one wins, as browsers send the most specific first. */
    CHECK(dash_cookie_find("sb_token=1; sb_token=2", "sb_token", &v, &n) && *v == '1');
}

static void test_cookie_encoding(void)
{
    char enc[128], dec[128];
    CHECK(dash_cookie_encode("plain-Token_0.9~", enc, sizeof enc) == 16 &&
          strcmp(enc, "plain-Token_0.9~") == 0);
    CHECK(dash_cookie_encode("a b;c,\"d%", enc, sizeof enc) > 0 &&
          strcmp(enc, "a%20b%3Bc%2C%22d%25") == 0);
    ssize_t n = dash_cookie_decode(enc, strlen(enc), dec, sizeof dec);
    CHECK(n == 9 && strcmp(dec, "a b;c,\"d%") == 0);
    CHECK(dash_cookie_decode("%2", 2, dec, sizeof dec) == -1);
    CHECK(dash_cookie_decode("%zz", 3, dec, sizeof dec) == -1);
    CHECK(dash_cookie_decode("%", 1, dec, sizeof dec) == -1);
    CHECK(dash_cookie_encode("abcdef", enc, 6) == -1);   /* no room for NUL */
    CHECK(dash_cookie_decode("abcdef", 6, dec, 6) == -1);
}

/* ---- the checks -------------------------------------------------------- */

static struct conf_dashboard dash_conf(const char *token, struct conf_user *users,
                                       size_t n_users)
{
    struct conf_dashboard c;
    memset(&c, 0, sizeof c);
    c.enabled = true;
    c.push_hz = 4;
    c.token = (char *)token;
    c.users = users;
    c.n_users = n_users;
    return c;
}

static void test_no_auth(void)
{
    struct conf_dashboard c = dash_conf(NULL, NULL, 0);
    struct dash_auth *a = dash_auth_new(&c);
    CHECK(a);
    if (!a)
        return;
    CHECK(!dash_auth_required(a));
    CHECK(!dash_auth_has_users(a));
    CHECK(dash_auth_check(a, NULL, NULL) == DASH_AUTH_OK);
    CHECK(dash_auth_check(a, "Bearer whatever", "sb_token=x") == DASH_AUTH_OK);
    CHECK(!dash_auth_token_ok(a, "anything"));
    dash_auth_free(a);
}

static void test_bearer(void)
{
    struct conf_dashboard c = dash_conf(TOKEN, NULL, 0);
    struct dash_auth *a = dash_auth_new(&c);
    CHECK(a);
    if (!a)
        return;
    CHECK(dash_auth_required(a));
    CHECK(!dash_auth_has_users(a));
    CHECK(dash_auth_check(a, NULL, NULL) == DASH_AUTH_MISSING);
    CHECK(dash_auth_check(a, "", NULL) == DASH_AUTH_MISSING);
    CHECK(dash_auth_check(a, "Bearer " TOKEN, NULL) == DASH_AUTH_OK);
    CHECK(dash_auth_check(a, "bearer   " TOKEN "  ", NULL) == DASH_AUTH_OK);
    CHECK(dash_auth_check(a, "Bearer " TOKEN "x", NULL) == DASH_AUTH_BAD);
    CHECK(dash_auth_check(a, "Bearer s3cret", NULL) == DASH_AUTH_BAD);
    CHECK(dash_auth_check(a, "Bearer", NULL) == DASH_AUTH_BAD);
    CHECK(dash_auth_check(a, "Bearer ", NULL) == DASH_AUTH_BAD);
    CHECK(dash_auth_check(a, "Token " TOKEN, NULL) == DASH_AUTH_BAD);
    CHECK(dash_auth_check(a, "Bearer" TOKEN, NULL) == DASH_AUTH_BAD);
    /* A token set, but Basic offered: no users, so wrong. */
    char basic[512];
    basic_header("ops", TOKEN, basic);
    CHECK(dash_auth_check(a, basic, NULL) == DASH_AUTH_BAD);
    CHECK(dash_auth_token_ok(a, TOKEN));
    CHECK(!dash_auth_token_ok(a, TOKEN "0"));
    CHECK(!dash_auth_token_ok(a, ""));
    CHECK(!dash_auth_token_ok(a, NULL));
    dash_auth_free(a);
}

static void test_cookie(void)
{
    struct conf_dashboard c = dash_conf(TOKEN, NULL, 0);
    struct dash_auth *a = dash_auth_new(&c);
    CHECK(a);
    if (!a)
        return;
    CHECK(dash_auth_check(a, NULL, "sb_token=" TOKEN) == DASH_AUTH_OK);
    CHECK(dash_auth_check(a, NULL, "theme=dark; sb_token=" TOKEN "; x=1") == DASH_AUTH_OK);
    CHECK(dash_auth_check(a, NULL, "sb_token=" TOKEN "0") == DASH_AUTH_BAD);
    CHECK(dash_auth_check(a, NULL, "sb_token=%zz") == DASH_AUTH_BAD);
    CHECK(dash_auth_check(a, NULL, "other=" TOKEN) == DASH_AUTH_MISSING);
    /* An Authorization header decides alone. */
    CHECK(dash_auth_check(a, "Bearer nope", "sb_token=" TOKEN) == DASH_AUTH_BAD);
    CHECK(dash_auth_check(a, "Bearer " TOKEN, "sb_token=nope") == DASH_AUTH_OK);
    dash_auth_free(a);

    /* A token with characters a cookie cannot hold travels percent-encoded. */
    const char *odd = "tok en;with,odd\"chars%";
    c = dash_conf(odd, NULL, 0);
    a = dash_auth_new(&c);
    CHECK(a);
    if (!a)
        return;
    char enc[128], cookie[160];
    CHECK(dash_cookie_encode(odd, enc, sizeof enc) > 0);
    snprintf(cookie, sizeof cookie, "sb_token=%s", enc);
    CHECK(dash_auth_check(a, NULL, cookie) == DASH_AUTH_OK);
    dash_auth_free(a);
}

static void test_basic(void)
{
    char hash_ops[CRYPT_OUTPUT_SIZE], hash_dev[CRYPT_OUTPUT_SIZE];
    const char *h = sha512_hash("correct horse");
    CHECK(h && strncmp(h, "$6$", 3) == 0);
    if (!h)
        return;
    snprintf(hash_ops, sizeof hash_ops, "%s", h);
    h = sha512_hash("pa:ss");
    CHECK(h != NULL);
    if (!h)
        return;
    snprintf(hash_dev, sizeof hash_dev, "%s", h);
    struct conf_user users[2] = {
        { .name = "ops", .password = hash_ops },
        { .name = "dev", .password = hash_dev },
    };
    struct conf_dashboard c = dash_conf(NULL, users, 2);
    struct dash_auth *a = dash_auth_new(&c);
    CHECK(a);
    if (!a)
        return;
    CHECK(dash_auth_required(a));
    CHECK(dash_auth_has_users(a));
    char hdr[512];
    basic_header("ops", "correct horse", hdr);
    CHECK(dash_auth_check(a, hdr, NULL) == DASH_AUTH_OK);
    CHECK(dash_auth_check(a, hdr, NULL) == DASH_AUTH_OK);       /* from the cache */
    basic_header("ops", "correct horsf", hdr);
    CHECK(dash_auth_check(a, hdr, NULL) == DASH_AUTH_BAD);
    basic_header("ops", "", hdr);
    CHECK(dash_auth_check(a, hdr, NULL) == DASH_AUTH_BAD);
    basic_header("dev", "correct horse", hdr);                   /* other user's */
    CHECK(dash_auth_check(a, hdr, NULL) == DASH_AUTH_BAD);
    basic_header("dev", "pa:ss", hdr);                           /* first ':' splits */
    CHECK(dash_auth_check(a, hdr, NULL) == DASH_AUTH_OK);
    basic_header("nobody", "correct horse", hdr);
    CHECK(dash_auth_check(a, hdr, NULL) == DASH_AUTH_BAD);
    basic_header("OPS", "correct horse", hdr);                   /* names are exact */
    CHECK(dash_auth_check(a, hdr, NULL) == DASH_AUTH_BAD);
    CHECK(dash_auth_check(a, "Basic !!!", NULL) == DASH_AUTH_BAD);
    CHECK(dash_auth_check(a, "Basic b3Bz", NULL) == DASH_AUTH_BAD);   /* "ops", no ':' */
    CHECK(dash_auth_check(a, "Basic", NULL) == DASH_AUTH_BAD);
    CHECK(dash_auth_check(a, "Bearer " TOKEN, NULL) == DASH_AUTH_BAD); /* no token set */
    CHECK(dash_auth_check(a, NULL, "sb_token=" TOKEN) == DASH_AUTH_MISSING);
    basic_header("ops", "correct horse", hdr);
    char lower[520];
    snprintf(lower, sizeof lower, "basic  %s", hdr + 6);
    CHECK(dash_auth_check(a, lower, NULL) == DASH_AUTH_OK);
    dash_auth_free(a);
}

/* The config keeps its own strings: the auth state copies what it needs. */
static void test_auth_copies_config(void)
{
    char token[] = TOKEN;
    struct conf_dashboard c = dash_conf(token, NULL, 0);
    struct dash_auth *a = dash_auth_new(&c);
    CHECK(a);
    if (!a)
        return;
    memset(token, 'x', sizeof token - 1);
    CHECK(dash_auth_check(a, "Bearer " TOKEN, NULL) == DASH_AUTH_OK);
    dash_auth_free(a);
}

/* ---- Origin and Host ----------------------------------------------------- */

static void test_origin(void)
{
    const char *none[1] = { NULL };
    const char *allowed[] = { "https://ops.example.com", "http://Grafana.Example.com:3000/",
                              "null" };
    /* No Origin: not a browser, allowed (authentication still applies). */
    CHECK(dash_origin_allowed(NULL, "127.0.0.1:8081", none, 0));
    /* Own origin, either scheme, case-insensitive. */
    CHECK(dash_origin_allowed("http://127.0.0.1:8081", "127.0.0.1:8081", none, 0));
    CHECK(dash_origin_allowed("https://127.0.0.1:8081", "127.0.0.1:8081", none, 0));
    CHECK(dash_origin_allowed("HTTP://LocalHost:8081", "localhost:8081", none, 0));
    CHECK(dash_origin_allowed("http://[::1]:8081", "[::1]:8081", none, 0));
    CHECK(dash_origin_allowed("http://127.0.0.1:8081/", "127.0.0.1:8081", none, 0));
    /* Default ports are the same origin written two ways. */
    CHECK(dash_origin_allowed("http://dash.local", "dash.local:80", none, 0));
    CHECK(dash_origin_allowed("http://dash.local:80", "dash.local", none, 0));
    CHECK(dash_origin_allowed("https://dash.local:443", "dash.local", none, 0));
    /* Another port, host or a look-alike is another origin. */
    CHECK(!dash_origin_allowed("http://127.0.0.1:8082", "127.0.0.1:8081", none, 0));
    CHECK(!dash_origin_allowed("http://127.0.0.1", "127.0.0.1:8081", none, 0));
    CHECK(!dash_origin_allowed("http://evil.example", "127.0.0.1:8081", none, 0));
    CHECK(!dash_origin_allowed("http://127.0.0.1:8081.evil.example", "127.0.0.1:8081",
                               none, 0));
    CHECK(!dash_origin_allowed("http://user@127.0.0.1:8081", "127.0.0.1:8081", none, 0));
    CHECK(!dash_origin_allowed("http://127.0.0.1:8081/path", "127.0.0.1:8081", none, 0));
    CHECK(!dash_origin_allowed("null", "127.0.0.1:8081", none, 0));
    CHECK(!dash_origin_allowed("", "127.0.0.1:8081", none, 0));
    CHECK(!dash_origin_allowed("127.0.0.1:8081", "127.0.0.1:8081", none, 0));
    CHECK(!dash_origin_allowed("http://", "", none, 0));
    CHECK(!dash_origin_allowed("http://127.0.0.1:8081", NULL, none, 0));
    /* Listed origins. */
    CHECK(dash_origin_allowed("https://ops.example.com", "127.0.0.1:8081", allowed, 3));
    CHECK(dash_origin_allowed("https://OPS.example.com/", "127.0.0.1:8081", allowed, 3));
    CHECK(dash_origin_allowed("https://ops.example.com:443", "127.0.0.1:8081", allowed, 3));
    CHECK(dash_origin_allowed("http://grafana.example.com:3000", "x:1", allowed, 3));
    CHECK(!dash_origin_allowed("http://ops.example.com", "127.0.0.1:8081", allowed, 3));
    CHECK(!dash_origin_allowed("https://ops.example.com.evil", "127.0.0.1:8081",
                               allowed, 3));
    CHECK(dash_origin_allowed("null", "127.0.0.1:8081", allowed, 3));
}

static void test_host(void)
{
    const char *none[1] = { NULL };
    const char *allowed[] = { "https://dash.example.com" };
    CHECK(dash_host_allowed(NULL, none, 0));
    CHECK(dash_host_allowed("", none, 0));
    CHECK(dash_host_allowed("127.0.0.1:8081", none, 0));
    CHECK(dash_host_allowed("127.0.0.1", none, 0));
    CHECK(dash_host_allowed("10.1.2.3:8081", none, 0));
    CHECK(dash_host_allowed("[::1]:8081", none, 0));
    CHECK(dash_host_allowed("localhost:8081", none, 0));
    CHECK(dash_host_allowed("LOCALHOST", none, 0));
    CHECK(dash_host_allowed("dash.localhost:8081", none, 0));
    CHECK(!dash_host_allowed("evil.example:8081", none, 0));
    CHECK(!dash_host_allowed("localhost.evil.example", none, 0));
    CHECK(!dash_host_allowed("127.0.0.1.nip.io:8081", none, 0));
    CHECK(!dash_host_allowed("[::1", none, 0));
    CHECK(dash_host_allowed("dash.example.com:8081", allowed, 1));
    CHECK(dash_host_allowed("DASH.example.com", allowed, 1));
    CHECK(!dash_host_allowed("dash.example.co", allowed, 1));
    CHECK(!dash_host_allowed("ash.example.com", allowed, 1));
}

int main(void)
{
    RUN(test_ct_equal);
    RUN(test_ct_equal_timing);
    RUN(test_b64_decode);
    RUN(test_cookie_find);
    RUN(test_cookie_encoding);
    RUN(test_no_auth);
    RUN(test_bearer);
    RUN(test_cookie);
    RUN(test_basic);
    RUN(test_auth_copies_config);
    RUN(test_origin);
    RUN(test_host);
    return check_done();
}
