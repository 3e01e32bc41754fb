/*
 * auth.h - who may use the dashboard, as pure functions: no sockets and no
 * libwebsockets, so tests/unit/dashboard checks every rule directly. http.c
 * passes in the header values it read from the request.
 *
 * Rules (dashboard.auth in switchboard.conf(5)):
 *   - nothing configured: everyone on the (loopback-only) listener may in;
 *   - a token: `Authorization: Bearer TOKEN`, or the cookie sb_token=TOKEN
 *     that the dashboard sets when the page is opened as /?token=TOKEN;
 *   - users: `Authorization: Basic` with a name and a password whose crypt(3)
 *     hash is in the config.
 * Secrets are compared in constant time. A Basic check costs one crypt(3)
 * call (1 to 15 ms depending on the hash), so credentials that passed are
 * remembered as a keyed 64-bit digest, never in clear.
 *
 * The WebSocket also checks Origin (dash_origin_allowed).
 */
#ifndef SWITCHBOARD_DASHBOARD_AUTH_H
#define SWITCHBOARD_DASHBOARD_AUTH_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#include "conf/conf.h"

#define DASH_COOKIE_NAME "sb_token"

enum dash_auth_result {
    DASH_AUTH_OK,               /* a valid credential, or none is needed */
    DASH_AUTH_MISSING,          /* auth is needed and none was offered */
    DASH_AUTH_BAD,              /* a credential was offered and is wrong */
};

struct dash_auth;

/* Copies the token and users of `conf`. NULL on allocation failure. Any
 * thread; the result then belongs to one thread (it holds crypt(3) scratch
 * space and the cache). */
struct dash_auth *dash_auth_new(const struct conf_dashboard *conf);
void dash_auth_free(struct dash_auth *auth);

/* True when a token or users are configured. */
bool dash_auth_required(const struct dash_auth *auth);
/* True when Basic users are configured (401s then offer Basic). */
bool dash_auth_has_users(const struct dash_auth *auth);

/*
 * Check one request. `authorization` is the Authorization header value and
 * `cookie` the Cookie header value, each NULL when absent. An Authorization
 * header that is present decides alone (a bad one is not rescued by the
 * cookie). Thread of `auth` only.
 */
enum dash_auth_result dash_auth_check(struct dash_auth *auth,
                                      const char *authorization,
                                      const char *cookie);

/* True when `token` (NUL-terminated, as given in ?token=) is the token. */
bool dash_auth_token_ok(const struct dash_auth *auth, const char *token);

/* ---- building blocks, exposed for the tests ----------------------------- */

/* Equal lengths and bytes. The time taken depends on `alen` (the length of
 * what the client sent) only, never on where the first difference is or on
 * the secret's length. */
bool dash_ct_equal(const void *a, size_t alen, const void *secret, size_t slen);

/* Standard base64 (RFC 4648, padding optional, no white space). Returns the
 * decoded length, or -1 when `in` is not base64 or `out` (of `outmax` bytes)
 * is too small. */
ssize_t dash_b64_decode(const char *in, size_t inlen, unsigned char *out,
                        size_t outmax);

/* The value of cookie `name` in a Cookie header ("a=1; b=2"): sets *value
 * (pointing into `header`) and *len and returns true; false when absent.
 * Names are case-sensitive; surrounding double quotes are removed. */
bool dash_cookie_find(const char *header, const char *name,
                      const char **value, size_t *len);

/* Percent-encode `in` for a cookie value: everything but A-Z a-z 0-9 - . _ ~
 * becomes %XX. Returns the length written (always NUL-terminated), or -1 if
 * `out` is too small. */
ssize_t dash_cookie_encode(const char *in, char *out, size_t outmax);
/* The reverse: -1 on a malformed escape or when `out` is too small. */
ssize_t dash_cookie_decode(const char *in, size_t inlen, char *out, size_t outmax);

/*
 * May a page from `origin` open the WebSocket? `origin` is the Origin header
 * (NULL when absent: not a browser, allowed, authentication still applies),
 * `host` the Host header of the same request (the dashboard's own origin is
 * http:// or https:// followed by it), `allowed` the configured extra
 * origins. Scheme and host compare case-insensitively, a default port (:80
 * for http, :443 for https) and a trailing "/" are ignored. "null" and
 * anything unparsable are refused unless listed verbatim.
 */
bool dash_origin_allowed(const char *origin, const char *host,
                         const char *const *allowed, size_t n_allowed);

/*
 * Without auth the listener is on loopback only, but a page on another site
 * can still reach 127.0.0.1 through DNS rebinding, under its own host name.
 * So without auth the Host header must name this machine: "localhost" (or
 * *.localhost), an IPv4 or bracketed IPv6 literal, or the host of one of
 * `allowed` (origins). A missing Host (HTTP/1.0, not a browser) passes.
 */
bool dash_host_allowed(const char *host, const char *const *allowed, size_t n_allowed);

#endif
