/*
 * http.c - protocols[0] of the dashboard: every plain HTTP request, and the
 * gate every WebSocket upgrade passes before lws hands it to a subprotocol.
 *
 *   /                the page (/index.html from the embedded assets);
 *                    /?token=TOKEN sets the sb_token cookie and redirects to /
 *   /metrics         Prometheus text (tm_prometheus)
 *   /api/stats       the model as JSON (tm_stats_json; ?pretty=1 indents)
 *   /api/servers     pools and servers (tm_servers_json)
 *   anything else    an embedded asset, or 404
 *
 * Every answer is prepared in LWS_CALLBACK_HTTP and written from
 * LWS_CALLBACK_HTTP_WRITEABLE (a refused WebSocket upgrade excepted, see
 * refuse_upgrade()): the head first, then the body in
 * DASH_CHUNK pieces, one lws_write() per callback, so a slow reader holds at
 * most one piece in lws' buffer and never blocks the thread. Dynamic bodies
 * are built whole (they are the aggregator's output, tens of KB) and freed
 * when sent; assets are sent from the binary's read-only data.
 *
 * Every answer carries the Content-Security-Policy below (no inline script
 * or style, nothing from other origins but WebSockets), nosniff and
 * no-referrer. API answers are not stored by caches; assets are revalidated
 * by ETag.
 *
 * Thread: the dashboard's service thread only.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "dashboard/dashboard-internal.h"
#include "proxy/proxy.h"
#include "telemetry/telemetry.h"

#define CSP "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; " \
            "style-src 'self'; script-src 'self'; object-src 'none'; base-uri 'none'; " \
            "frame-ancestors 'none'"

#define HEADER_MAX   4096       /* one request header we copy out */
#define TOKEN_MAX    1024

static int add_header(struct lws *wsi, const char *name, const char *value,
                      unsigned char **p, unsigned char *end)
{
    return lws_add_http_header_by_name(wsi, (const unsigned char *)name,
                                       (const unsigned char *)value, (int)strlen(value),
                                       p, end) ? -1 : 0;
}

int dash_security_headers(struct lws *wsi, unsigned char **p, unsigned char *end)
{
    if (add_header(wsi, "content-security-policy:", CSP, p, end) < 0 ||
        add_header(wsi, "x-content-type-options:", "nosniff", p, end) < 0 ||
        add_header(wsi, "referrer-policy:", "no-referrer", p, end) < 0)
        return -1;
    return 0;
}

/* A malloc'd NUL-terminated copy of header `tok`, or NULL when absent (or
 * longer than HEADER_MAX). */
static char *header_dup(struct lws *wsi, enum lws_token_indexes tok)
{
    int n = lws_hdr_total_length(wsi, tok);
    if (n <= 0 || n > HEADER_MAX)
        return NULL;
    char *s = malloc((size_t)n + 1);
    if (s && lws_hdr_copy(wsi, s, n + 1, tok) < 0) {
        free(s);
        s = NULL;
    }
    return s;
}

static void free_secret(char *s)
{
    if (s) {
        explicit_bzero(s, strlen(s));
        free(s);
    }
}

/* The value of query argument `name` (lws has decoded it), into `out`.
 * False when absent or too long. */
static bool query_arg(struct lws *wsi, const char *name, char *out, size_t outlen)
{
    size_t nlen = strlen(name);
    char frag[TOKEN_MAX + 32];
    for (int i = 0; i < 32; i++) {
        int n = lws_hdr_copy_fragment(wsi, frag, (int)sizeof frag,
                                      WSI_TOKEN_HTTP_URI_ARGS, i);
        if (n < 0)
            break;
        if ((size_t)n > nlen && strncmp(frag, name, nlen) == 0 && frag[nlen] == '=') {
            size_t vlen = (size_t)n - nlen - 1;
            bool fits = vlen < outlen;
            if (fits)
                memcpy(out, frag + nlen + 1, vlen + 1);
            explicit_bzero(frag, sizeof frag);
            return fits;
        }
    }
    explicit_bzero(frag, sizeof frag);
    return false;
}

/* ---- preparing an answer ------------------------------------------------ */

static void session_reset(struct dash_http_session *s)
{
    free(s->owned);
    free(s->set_cookie);
    memset(s, 0, sizeof *s);
}

static void answer_static(struct dash_http_session *s, unsigned status, const char *text)
{
    s->status = status;
    s->content_type = "text/plain; charset=utf-8";
    s->body = (const unsigned char *)text;
    s->len = strlen(text);
    s->cache = DASH_NO_STORE;
}

/* Takes `body` (malloc'd, NUL-terminated); NULL means the reader ran out of
 * memory. */
static void answer_owned(struct dash_http_session *s, const char *type, char *body)
{
    if (!body) {
        answer_static(s, 500, "500 Internal Server Error: out of memory\n");
        return;
    }
    s->status = 200;
    s->content_type = type;
    s->owned = body;
    s->body = (const unsigned char *)body;
    s->len = strlen(body);
    s->cache = DASH_NO_STORE;
}

static void route(struct dashboard *d, struct dash_http_session *s, struct lws *wsi,
                  const char *path);

static void answer_unauthorized(struct dashboard *d, struct dash_http_session *s)
{
    answer_static(s, 401, "401 Unauthorized: send Authorization: Bearer TOKEN, open "
                          "/?token=TOKEN once, or log in with a dashboard user\n");
    s->www_authenticate = dash_auth_has_users(d->auth)
                          ? "Basic realm=\"switchboard\", charset=\"UTF-8\""
                          : "Bearer realm=\"switchboard\"";
}

/* /?token=TOKEN: the right token becomes an HttpOnly cookie and the browser
 * goes on to / (so the token leaves the address bar); a wrong one is a 401. */
static void answer_login(struct dashboard *d, struct dash_http_session *s, char *token,
                         const char *next)
{
    if (!dash_auth_token_ok(d->auth, token)) {
        answer_unauthorized(d, s);
        return;
    }
    char enc[3 * TOKEN_MAX + 1];
    static const char attrs[] = "; HttpOnly; SameSite=Strict; Path=/";
    ssize_t n = dash_cookie_encode(token, enc, sizeof enc);
    if (n < 0 || !(s->set_cookie = malloc(sizeof DASH_COOKIE_NAME + 1 + (size_t)n + sizeof attrs))) {
        answer_static(s, 500, "500 Internal Server Error\n");
        return;
    }
    sprintf(s->set_cookie, "%s=%s%s", DASH_COOKIE_NAME, enc, attrs);
    explicit_bzero(enc, sizeof enc);
    answer_static(s, 302, "302 Found\n");
    s->location = next;
}

static void answer_redirect(struct dash_http_session *s, const char *to)
{
    answer_static(s, 302, "302 Found\n");
    s->location = to;
}

/* The chat's pages and assets (dashboard/web/chat/): public, since end
 * users reach them through the proxy; /chat/staff/ needs the dashboard's
 * credentials like every other page. */
enum chat_path { NOT_CHAT, CHAT_PUBLIC, CHAT_STAFF };

static enum chat_path chat_path_kind(const struct dashboard *d, const char *path)
{
    if (!d->chat.enabled || strncmp(path, "/chat", 5) != 0 ||
        (path[5] != '\0' && path[5] != '/'))
        return NOT_CHAT;
    if (strncmp(path, "/chat/staff", 11) == 0 && (path[11] == '\0' || path[11] == '/'))
        return CHAT_STAFF;
    return CHAT_PUBLIC;
}

static void route_chat(struct dash_http_session *s, struct lws *wsi, const char *path)
{
    if (strcmp(path, "/chat") == 0)
        answer_redirect(s, "/chat/");
    else if (strcmp(path, "/chat/staff") == 0)
        answer_redirect(s, "/chat/staff/");
    else if (strcmp(path, "/chat/") == 0 || strcmp(path, "/chat/staff/") == 0)
        route(dash_of(wsi), s, wsi, "/chat/index.html");
    else if (strncmp(path, "/chat/staff/", 12) == 0)
        answer_static(s, 404, "404 Not Found\n");
    else
        route(dash_of(wsi), s, wsi, path);
}

static void route(struct dashboard *d, struct dash_http_session *s, struct lws *wsi,
                  const char *path)
{
    bool api = strcmp(path, "/metrics") == 0 || strncmp(path, "/api/", 5) == 0;
    if (api && !d->agg) {
        answer_static(s, 503, "503 Service Unavailable: telemetry is off\n");
        return;
    }
    if (strcmp(path, "/metrics") == 0) {
        answer_owned(s, "text/plain; version=0.0.4; charset=utf-8", tm_prometheus(d->agg));
    } else if (strcmp(path, "/api/stats") == 0) {
        char pretty[8];
        int flags = query_arg(wsi, "pretty", pretty, sizeof pretty) && strcmp(pretty, "0") != 0
                    ? TM_JSON_PRETTY : 0;
        answer_owned(s, "application/json", tm_stats_json(d->agg, flags));
    } else if (strcmp(path, "/api/servers") == 0) {
        answer_owned(s, "application/json", tm_servers_json(d->agg));
    } else if (api) {
        answer_static(s, 404, "404 Not Found\n");
    } else {
        const struct dash_asset *a = dash_asset_find(path);
        if (!a) {
            answer_static(s, 404, "404 Not Found\n");
            return;
        }
        s->status = 200;
        s->content_type = a->content_type;
        s->body = a->data;
        s->len = a->len;
        s->cache = DASH_REVALIDATE;
        s->etag = a->etag;
        char inm[256];
        if (lws_hdr_copy(wsi, inm, sizeof inm, WSI_TOKEN_HTTP_IF_NONE_MATCH) > 0 &&
            strstr(inm, a->etag)) {
            s->status = 304;
            s->head_only = true;
        }
    }
}

/* LWS_CALLBACK_HTTP: decide the answer; it is written when writable. */
static int on_request(struct lws *wsi, struct dash_http_session *s, const char *path)
{
    struct dashboard *d = dash_of(wsi);
    session_reset(s);
    s->pending = true;
    char *uri;
    int uri_len;
    int method = lws_http_get_uri_and_method(wsi, &uri, &uri_len);
    if (method != LWSHUMETH_GET && method != LWSHUMETH_HEAD) {
        /* A body may follow that we will not read: answer, then close. */
        answer_static(s, 405, "405 Method Not Allowed\n");
        s->allow = "GET, HEAD";
        s->close = true;
    } else {
        s->head_only = method == LWSHUMETH_HEAD;
        bool allowed = true;
        char token[TOKEN_MAX];
        enum chat_path chat = chat_path_kind(d, path);
        if (chat == CHAT_PUBLIC) {
            /* Public pages: no credentials, and any Host (the proxy's). */
        } else if (chat == CHAT_STAFF && !dash_auth_required(d->auth)) {
            answer_static(s, 403, "403 Forbidden: the chat's staff pages need "
                                  "dashboard.auth to be set\n");
            allowed = false;
        } else if (!dash_auth_required(d->auth)) {
            char *host = header_dup(wsi, WSI_TOKEN_HOST);
            if (!dash_host_allowed(host, (const char *const *)d->allowed_origins,
                                   d->n_allowed_origins)) {
                answer_static(s, 403, "403 Forbidden: unknown Host; open the dashboard "
                                      "as localhost or by IP address\n");
                allowed = false;
            }
            free(host);
        } else if ((strcmp(path, "/") == 0 || strcmp(path, "/chat/staff/") == 0) &&
                   query_arg(wsi, "token", token, sizeof token)) {
            answer_login(d, s, token, chat == CHAT_STAFF ? "/chat/staff/" : "/");
            explicit_bzero(token, sizeof token);
            allowed = false;
        } else {
            char *authz = header_dup(wsi, WSI_TOKEN_HTTP_AUTHORIZATION);
            char *cookie = header_dup(wsi, WSI_TOKEN_HTTP_COOKIE);
            if (dash_auth_check(d->auth, authz, cookie) != DASH_AUTH_OK) {
                answer_unauthorized(d, s);
                allowed = false;
            }
            free_secret(authz);
            free_secret(cookie);
        }
        if (allowed && chat != NOT_CHAT)
            route_chat(s, wsi, path);
        else if (allowed)
            route(d, s, wsi, path);
    }
    lws_callback_on_writable(wsi);
    return 0;
}

/* The answer is out: get ready for the next request on this connection,
 * or close it. */
static int finish(struct lws *wsi, struct dash_http_session *s)
{
    bool close = s->close;
    session_reset(s);
    if (close)
        return -1;
    return lws_http_transaction_completed(wsi) ? -1 : 0;
}

static int write_head(struct lws *wsi, struct dashboard *d, struct dash_http_session *s)
{
    unsigned char *start = d->wbuf + LWS_PRE, *p = start, *end = start + DASH_CHUNK;
    if (lws_add_http_common_headers(wsi, s->status, s->content_type, s->len, &p, end) ||
        dash_security_headers(wsi, &p, end) < 0 ||
        add_header(wsi, "cache-control:", s->cache == DASH_NO_STORE ? "no-store" : "no-cache",
                   &p, end) < 0 ||
        (s->etag && add_header(wsi, "etag:", s->etag, &p, end) < 0) ||
        (s->location && add_header(wsi, "location:", s->location, &p, end) < 0) ||
        (s->set_cookie && add_header(wsi, "set-cookie:", s->set_cookie, &p, end) < 0) ||
        (s->www_authenticate &&
         add_header(wsi, "www-authenticate:", s->www_authenticate, &p, end) < 0) ||
        (s->allow && add_header(wsi, "allow:", s->allow, &p, end) < 0) ||
        (s->close && add_header(wsi, "connection:", "close", &p, end) < 0))
        return -1;
    if (lws_finalize_write_http_header(wsi, start, &p, end))
        return -1;
    s->head_done = true;
    return 0;
}

static int on_writeable(struct lws *wsi, struct dash_http_session *s)
{
    struct dashboard *d = dash_of(wsi);
    if (!s->pending)
        return 0;
    if (!s->head_done) {
        if (write_head(wsi, d, s) < 0)
            return -1;
        if (s->head_only || s->len == 0)
            return finish(wsi, s);
        lws_callback_on_writable(wsi);
        return 0;
    }
    size_t n = s->len - s->sent;
    if (n > DASH_CHUNK)
        n = DASH_CHUNK;
    bool last = s->sent + n == s->len;
    memcpy(d->wbuf + LWS_PRE, s->body + s->sent, n);
    if (lws_write(wsi, d->wbuf + LWS_PRE, n, last ? LWS_WRITE_HTTP_FINAL : LWS_WRITE_HTTP)
        < (int)n)
        return -1;
    s->sent += n;
    if (last)
        return finish(wsi, s);
    lws_callback_on_writable(wsi);
    return 0;
}

/* ---- the WebSocket gate ---------------------------------------------------- */

/* One line per refused upgrade, at most one a second: the operator learns
 * why a page cannot connect, and a scanner cannot flood the log. */
static void log_refusal(struct dashboard *d, const char *why, const char *detail)
{
    int64_t now = dash_now_us();
    if (now - d->refusal_log_us < 1000000) {
        d->refusals_quiet++;
        return;
    }
    d->refusal_log_us = now;
    char more[48] = "";
    if (d->refusals_quiet)
        snprintf(more, sizeof more, " (and %u more refused)", d->refusals_quiet);
    d->refusals_quiet = 0;
    sb_log(SB_LOG_INFO, "dashboard: WebSocket refused: %s%s%s%s", why,
           detail ? " " : "", detail ? detail : "", more);
}

/* Does the Sec-WebSocket-Protocol list name `name`? */
static bool offers_protocol(const char *list, const char *name)
{
    if (!list)
        return false;
    const char *p = list;
    while (*p) {
        while (*p == ' ' || *p == '\t' || *p == ',')
            p++;
        const char *e = p;
        while (*e && *e != ',' && *e != ' ' && *e != '\t')
            e++;
        if ((size_t)(e - p) == strlen(name) && strncmp(p, name, (size_t)(e - p)) == 0)
            return true;
        p = e;
    }
    return false;
}

/* Does the list name one of our subprotocols? */
static bool offers_known_protocol(const char *list)
{
    for (const struct lws_protocols *pr = dash_protocols() + 1; pr->name; pr++)
        if (offers_protocol(list, pr->name))
            return true;
    return false;
}

/*
 * Answer a refused upgrade with `status` and a one-line text, then hang up.
 * The one write outside a WRITEABLE callback, by necessity: lws decides the
 * upgrade inside LWS_CALLBACK_HTTP_CONFIRM_UPGRADE, and an answer must be out
 * before it returns. The callback then returns -1, so lws closes the
 * connection instead of reusing it: no transaction is left half done. The
 * answer is a few hundred bytes on a connection that has sent nothing yet,
 * so the socket takes it whole.
 */
static void refuse_upgrade(struct lws *wsi, struct dashboard *d, unsigned status,
                           const char *text, const char *www_authenticate)
{
    unsigned char *start = d->wbuf + LWS_PRE, *p = start, *end = start + DASH_CHUNK;
    size_t len = strlen(text);
    if (lws_add_http_common_headers(wsi, status, "text/plain; charset=utf-8", len, &p, end) ||
        dash_security_headers(wsi, &p, end) < 0 ||
        add_header(wsi, "cache-control:", "no-store", &p, end) < 0 ||
        (www_authenticate && add_header(wsi, "www-authenticate:", www_authenticate,
                                        &p, end) < 0) ||
        add_header(wsi, "connection:", "close", &p, end) < 0 ||
        lws_finalize_http_header(wsi, &p, end) || (size_t)(end - p) < len)
        return;
    memcpy(p, text, len);
    p += len;
    lws_write(wsi, start, (size_t)(p - start), LWS_WRITE_HTTP_HEADERS);
}

/* LWS_CALLBACK_HTTP_CONFIRM_UPGRADE: only a WebSocket upgrade to one of our
 * subprotocols, with the credentials plain requests need, from an allowed
 * Origin, goes on to 101. The dashboard speaks HTTP/1.1, so an h2c upgrade
 * (curl --http2 on http://) is refused too. */
static int confirm_upgrade(struct lws *wsi, const char *upgrade)
{
    struct dashboard *d = dash_of(wsi);
    if (!upgrade || strcasecmp(upgrade, "websocket") != 0) {
        log_refusal(d, "not a WebSocket upgrade:", upgrade);
        refuse_upgrade(wsi, d, 400, "400 Bad Request: this server speaks HTTP/1.1 and "
                       "WebSocket only\n", NULL);
        return -1;
    }
    char *protocol = header_dup(wsi, WSI_TOKEN_PROTOCOL);
    char *origin = header_dup(wsi, WSI_TOKEN_ORIGIN);
    char *host = header_dup(wsi, WSI_TOKEN_HOST);
    char *authz = header_dup(wsi, WSI_TOKEN_HTTP_AUTHORIZATION);
    char *cookie = header_dup(wsi, WSI_TOKEN_HTTP_COOKIE);
    char path[64] = "";
    lws_hdr_copy(wsi, path, sizeof path, WSI_TOKEN_GET_URI);
    enum chat_path chat = offers_protocol(protocol, DASH_PROTOCOL_CHAT)
                          ? chat_path_kind(d, path) : NOT_CHAT;
    int rc = -1;
    if (!offers_known_protocol(protocol)) {
        log_refusal(d, "no known subprotocol offered:", protocol ? protocol : "(none)");
        refuse_upgrade(wsi, d, 400, "400 Bad Request: offer the subprotocol "
                       DASH_PROTOCOL_TELEMETRY "\n", NULL);
    } else if (chat == CHAT_PUBLIC) {
        /* The chat is public: only the Origin matters (a page of another
         * site must not talk to it in its users' name). */
        if (dash_origin_allowed(origin, host, (const char *const *)d->allowed_origins,
                                d->n_allowed_origins)) {
            rc = 0;
        } else {
            log_refusal(d, "chat: Origin not allowed:", origin);
            refuse_upgrade(wsi, d, 403, "403 Forbidden: Origin not allowed\n", NULL);
        }
    } else if (offers_protocol(protocol, DASH_PROTOCOL_CHAT) && chat == NOT_CHAT &&
               !offers_protocol(protocol, DASH_PROTOCOL_TELEMETRY)) {
        log_refusal(d, "chat WebSocket outside /chat/ or chat off:", path);
        refuse_upgrade(wsi, d, 404, "404 Not Found: the chat is at /chat/ws\n", NULL);
    } else if (chat == CHAT_STAFF && !dash_auth_required(d->auth)) {
        log_refusal(d, "chat staff without dashboard.auth", NULL);
        refuse_upgrade(wsi, d, 403, "403 Forbidden: the chat's staff pages need "
                       "dashboard.auth to be set\n", NULL);
    } else if (dash_auth_check(d->auth, authz, cookie) != DASH_AUTH_OK) {
        log_refusal(d, "not authenticated", NULL);
        refuse_upgrade(wsi, d, 401, "401 Unauthorized\n",
                       dash_auth_has_users(d->auth)
                       ? "Basic realm=\"switchboard\", charset=\"UTF-8\""
                       : "Bearer realm=\"switchboard\"");
    } else if (!dash_origin_allowed(origin, host, (const char *const *)d->allowed_origins,
                                    d->n_allowed_origins)) {
        log_refusal(d, "Origin not allowed:", origin);
        refuse_upgrade(wsi, d, 403, "403 Forbidden: Origin not allowed\n", NULL);
    } else if (!dash_auth_required(d->auth) &&
               !dash_host_allowed(host, (const char *const *)d->allowed_origins,
                                  d->n_allowed_origins)) {
        log_refusal(d, "unknown Host:", host);
        refuse_upgrade(wsi, d, 403, "403 Forbidden: unknown Host\n", NULL);
    } else {
        rc = 0;
    }
    free(protocol);
    free(origin);
    free(host);
    free_secret(authz);
    free_secret(cookie);
    return rc;
}

/* ---- the callback ----------------------------------------------------------- */

int dash_http_callback(struct lws *wsi, enum lws_callback_reasons reason, void *user,
                       void *in, size_t len)
{
    struct dash_http_session *s = user;
    switch (reason) {
    case LWS_CALLBACK_HTTP:
        return on_request(wsi, s, in ? (const char *)in : "/");
    case LWS_CALLBACK_HTTP_BODY:
    case LWS_CALLBACK_HTTP_BODY_COMPLETION:
        return 0;               /* a 405 is on its way; the body is not read */
    case LWS_CALLBACK_HTTP_WRITEABLE:
        return on_writeable(wsi, s);
    case LWS_CALLBACK_HTTP_CONFIRM_UPGRADE:
        return confirm_upgrade(wsi, (const char *)in);
    case LWS_CALLBACK_CLOSED_HTTP:
    case LWS_CALLBACK_HTTP_DROP_PROTOCOL:
        if (s)
            session_reset(s);
        return 0;
    default:
        break;
    }
    return lws_callback_http_dummy(wsi, reason, user, in, len);
}
