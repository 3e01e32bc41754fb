/*
 * server.c - the dashboard server: one libwebsockets context serving
 * dashboard.listen, run by a thread of its own with lws' own service loop
 * (Debian's libwebsockets has no libevent support, and the proxy's workers
 * never touch libwebsockets).
 *
 * Threads:
 *   - main thread: dashboard_start() creates the context (so that a listen
 *     error is a start-up error) and starts the service thread;
 *     dashboard_stop() asks it to end and joins it.
 *   - service thread: lws_service() until stopped, then destroys the
 *     context. Every lws callback, timer and write happens here.
 *   - any thread (in practice the telemetry aggregator, after each drain
 *     that changed the model): dashboard_wake(), which only calls
 *     lws_cancel_service(). The service thread then sees
 *     LWS_CALLBACK_EVENT_WAIT_CANCELLED and reads the aggregator through its
 *     thread-safe readers. Nothing else crosses.
 *
 * Ownership: the dashboard owns its context, its copy of the config (auth
 * secrets, allowed origins) and every per-connection state; the aggregator
 * is borrowed and must outlive it.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "dashboard/dashboard-internal.h"
#include "proxy/proxy.h"

/*
 * The protocols, in the order lws needs: protocols[0] serves plain HTTP (and
 * gates every upgrade, see http.c); each WebSocket subprotocol is one more
 * row. A browser picks one with new WebSocket(url, "switchboard.telemetry").
 */
static const struct lws_protocols protocols[] = {
    { DASH_PROTOCOL_HTTP, dash_http_callback, sizeof(struct dash_http_session), 0,
      0, NULL, 0 },
    { DASH_PROTOCOL_TELEMETRY, dash_telemetry_callback, sizeof(struct dash_tel_client),
      1024, 1, NULL, 0 },
    /* Chat frames are small and ws_chat.c gathers fragments itself: a 1 KiB
     * receive buffer saves 3 KiB a connection over 4 KiB (5,000 users). */
    { DASH_PROTOCOL_CHAT, dash_chat_callback, sizeof(struct dash_chat_client),
      1024, 2, NULL, 0 },
    { NULL, NULL, 0, 0, 0, NULL, 0 },
};

/* Idle WebSockets are pinged after 30 s and dropped after 70 s without an
 * answer, so a vanished browser does not keep its queue forever. */
static const lws_retry_bo_t idle_policy = {
    .secs_since_valid_ping = 30,
    .secs_since_valid_hangup = 70,
};

const struct lws_protocols *dash_protocols(void)
{
    return protocols;
}

struct dashboard *dash_of(struct lws *wsi)
{
    return lws_context_user(lws_get_context(wsi));
}

int64_t dash_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* ---- messages ---------------------------------------------------------- */

struct dash_msg *dash_msg_wrap(const char *prefix, const char *text, size_t text_len,
                               const char *suffix)
{
    size_t a = strlen(prefix), c = strlen(suffix);
    size_t len = a + text_len + c;
    struct dash_msg *m = malloc(sizeof *m + LWS_PRE + len + 1);
    if (!m)
        return NULL;
    m->refs = 1;
    m->len = len;
    unsigned char *p = m->data + LWS_PRE;
    memcpy(p, prefix, a);
    memcpy(p + a, text, text_len);
    memcpy(p + a + text_len, suffix, c);
    p[len] = '\0';
    return m;
}

struct dash_msg *dash_msg_new(const char *text, size_t len)
{
    return dash_msg_wrap("", text, len, "");
}

void dash_msg_unref(struct dash_msg *m)
{
    if (m && --m->refs == 0)
        free(m);
}

/* ---- lws log ----------------------------------------------------------- */

/* lws' errors and warnings go to the process log, one line each. */
static void lws_log_line(int level, const char *line)
{
    size_t n = strlen(line);
    while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
        n--;
    sb_log(level == LLL_ERR ? SB_LOG_ERROR : SB_LOG_WARN, "dashboard: libwebsockets: %.*s",
           (int)n, line);
}

/* ---- the service thread ------------------------------------------------ */

static void *service_main(void *arg)
{
    struct dashboard *d = arg;
    dash_chat_arm(d);
    for (;;) {
        pthread_mutex_lock(&d->wake_lock);
        bool stop = d->stopping;
        pthread_mutex_unlock(&d->wake_lock);
        if (stop)
            break;
        if (lws_service(d->ctx, 0) < 0) {
            sb_log(SB_LOG_ERROR, "dashboard: the service loop failed; the dashboard "
                   "on %s is stopped", d->listen);
            break;
        }
    }
    /* From here on dashboard_wake() leaves the context alone. */
    pthread_mutex_lock(&d->wake_lock);
    d->stopping = true;
    pthread_mutex_unlock(&d->wake_lock);
    lws_context_destroy(d->ctx);
    d->ctx = NULL;
    return NULL;
}

/* ---- start, wake, stop ---------------------------------------------------- */

/* Can `a` be bound (as lws will, with SO_REUSEADDR)? 0, or -1 with the
 * reason in `out`. lws only logs that binding failed, and its failure path
 * leaks a little, so the common case (address in use) is found here first.
 * Main thread. */
static int bind_probe(const struct conf_addr *a, char *out, size_t outlen)
{
    int fd = socket(a->u.sa.sa_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        snprintf(out, outlen, "%s", strerror(errno));
        return -1;
    }
    int one = 1, rc = 0;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fd, &a->u.sa, a->len) < 0) {
        snprintf(out, outlen, "%s", strerror(errno));
        rc = -1;
    }
    close(fd);
    return rc;
}

static void dash_free(struct dashboard *d)
{
    for (size_t i = 0; i < d->n_allowed_origins; i++)
        free(d->allowed_origins[i]);
    free(d->allowed_origins);
    dash_auth_free(d->auth);
    dash_chat_stop(d);          /* after the context: closing calls into it */
    free(d->wbuf);
    pthread_mutex_destroy(&d->wake_lock);
    free(d);
}

struct dashboard *dashboard_start(const struct conf_dashboard *conf,
                                  const struct conf_chat *chat,
                                  struct tm_aggregator *agg, char *err, size_t errlen)
{
    struct dashboard *d = calloc(1, sizeof *d);
    if (!d) {
        snprintf(err, errlen, "dashboard: out of memory");
        return NULL;
    }
    pthread_mutex_init(&d->wake_lock, NULL);
    d->agg = agg;
    d->push_hz = conf->push_hz ? conf->push_hz : 4;
    snprintf(d->listen, sizeof d->listen, "%s", conf->listen.text);
    d->auth = dash_auth_new(conf);
    d->wbuf = malloc(LWS_PRE + DASH_CHUNK);
    if (conf->n_allowed_origins)
        d->allowed_origins = calloc(conf->n_allowed_origins, sizeof *d->allowed_origins);
    bool ok = d->auth && d->wbuf && (!conf->n_allowed_origins || d->allowed_origins);
    for (size_t i = 0; ok && i < conf->n_allowed_origins; i++) {
        ok = (d->allowed_origins[i] = strdup(conf->allowed_origins[i].value)) != NULL;
        d->n_allowed_origins = i + 1;
    }
    if (ok && chat && chat->enabled)
        ok = dash_chat_start(d, chat) == 0;
    if (!ok) {
        snprintf(err, errlen, "dashboard: out of memory");
        dash_free(d);
        return NULL;
    }

    /* lws wants the interface as text; a wildcard address is "any". */
    char host[INET6_ADDRSTRLEN] = "";
    const struct conf_addr *a = &conf->listen;
    bool v4 = a->u.sa.sa_family == AF_INET;
    bool any = v4 ? a->u.sin.sin_addr.s_addr == htonl(INADDR_ANY)
                  : IN6_IS_ADDR_UNSPECIFIED(&a->u.sin6.sin6_addr);
    if (v4)
        inet_ntop(AF_INET, &a->u.sin.sin_addr, host, sizeof host);
    else
        inet_ntop(AF_INET6, &a->u.sin6.sin6_addr, host, sizeof host);

    lws_set_log_level(LLL_ERR | LLL_WARN, lws_log_line);
    struct lws_context_creation_info info;
    memset(&info, 0, sizeof info);
    info.port = ntohs(v4 ? a->u.sin.sin_port : a->u.sin6.sin6_port);
    info.iface = any ? NULL : host;
    info.options = v4 ? LWS_SERVER_OPTION_DISABLE_IPV6 : 0;
    info.protocols = protocols;
    info.user = d;
    info.vhost_name = "switchboard-dashboard";
    info.server_string = "switchboard";
    /* Room for a long Cookie plus Authorization; lws' default is 4 KiB. */
    info.max_http_header_data = 8192;
    info.timeout_secs = 10;
    info.keepalive_timeout = 15;
    info.retry_and_idle_policy = &idle_policy;
    char why[160];
    if (bind_probe(a, why, sizeof why) < 0 || !(d->ctx = lws_create_context(&info))) {
        if (!d->ctx && bind_probe(a, why, sizeof why) == 0)
            snprintf(why, sizeof why, "libwebsockets could not set it up (see above)");
        snprintf(err, errlen, "dashboard: cannot listen on %s: %s", d->listen, why);
        dash_free(d);
        return NULL;
    }

    /* Signals belong to the main thread: the new thread inherits this mask. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int rc = pthread_create(&d->thread, NULL, service_main, d);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) {
        snprintf(err, errlen, "dashboard: cannot start its thread: %s", strerror(rc));
        lws_context_destroy(d->ctx);
        dash_free(d);
        return NULL;
    }
    pthread_setname_np(d->thread, "sb-dashboard");
    return d;
}

/* Any thread. wake_lock keeps the context alive for the duration of the
 * call: the service thread sets `stopping` under it before destroying. */
void dashboard_wake(void *arg)
{
    struct dashboard *d = arg;
    if (!d)
        return;
    pthread_mutex_lock(&d->wake_lock);
    if (!d->stopping)
        lws_cancel_service(d->ctx);
    pthread_mutex_unlock(&d->wake_lock);
}

/* Main thread. */
void dashboard_stop(struct dashboard *d)
{
    if (!d)
        return;
    pthread_mutex_lock(&d->wake_lock);
    if (!d->stopping) {
        d->stopping = true;
        lws_cancel_service(d->ctx);
    }
    pthread_mutex_unlock(&d->wake_lock);
    pthread_join(d->thread, NULL);
    dash_free(d);
}

/* Any thread: compares plain config data. */
bool dashboard_chat_conf_equal(const struct conf_chat *a, const struct conf_chat *b)
{
    if (a->enabled != b->enabled || a->modes != b->modes ||
        a->default_mode != b->default_mode || a->n_rooms != b->n_rooms ||
        a->addable_rooms != b->addable_rooms ||
        a->addable_rooms_visible != b->addable_rooms_visible ||
        a->max_name_length != b->max_name_length || a->history != b->history ||
        a->max_message_bytes != b->max_message_bytes || a->rate != b->rate ||
        a->burst != b->burst || a->max_rooms_per_user != b->max_rooms_per_user ||
        a->max_connections != b->max_connections ||
        a->reconnect_grace_ms != b->reconnect_grace_ms ||
        a->no_show_timeout_ms != b->no_show_timeout_ms || a->log != b->log)
        return false;
    for (size_t i = 0; i < a->n_rooms; i++)
        if (strcmp(a->rooms[i].value, b->rooms[i].value) != 0)
            return false;
    return true;
}

/* Any thread: compares plain config data. */
bool dashboard_conf_equal(const struct conf_dashboard *a, const struct conf_dashboard *b)
{
    if (a->enabled != b->enabled || a->push_hz != b->push_hz ||
        strcmp(a->listen.text, b->listen.text) != 0 ||
        (a->token == NULL) != (b->token == NULL) ||
        (a->token && strcmp(a->token, b->token) != 0) ||
        a->n_users != b->n_users || a->n_allowed_origins != b->n_allowed_origins)
        return false;
    for (size_t i = 0; i < a->n_users; i++)
        if (strcmp(a->users[i].name, b->users[i].name) != 0 ||
            strcmp(a->users[i].password, b->users[i].password) != 0)
            return false;
    for (size_t i = 0; i < a->n_allowed_origins; i++)
        if (strcmp(a->allowed_origins[i].value, b->allowed_origins[i].value) != 0)
            return false;
    return true;
}
