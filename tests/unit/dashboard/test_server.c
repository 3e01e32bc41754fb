/*
 * test_server.c - dashboard/server.c and assets.c without a proxy: the
 * embedded asset table and its lookup, start and stop of the service
 * thread, a listen error reported as a start-up error, dashboard_wake()
 * from other threads while the dashboard serves, and which config changes
 * take a restart (dashboard_conf_equal), and tm_recent_json(), the
 * telemetry reader the WebSocket's "events" messages are made of.
 */
#include "check.h"

#include <arpa/inet.h>
#include <jansson.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "conf/conf.h"
#include "dashboard/dashboard-internal.h"
#include "dashboard/dashboard.h"

/* ---- assets ---------------------------------------------------------------- */

static void test_asset_table(void)
{
    for (size_t i = 0; i < dash_assets_count; i++) {
        const struct dash_asset *a = &dash_assets[i];
        CHECKF(a->path[0] == '/', "%s", a->path);
        CHECKF(a->content_type && *a->content_type, "%s", a->path);
        CHECKF(a->etag && a->etag[0] == '"' && a->etag[strlen(a->etag) - 1] == '"',
               "%s", a->path);
        CHECKF(a->data[a->len] == '\0', "%s", a->path);
        if (i > 0)
            CHECKF(strcmp(dash_assets[i - 1].path, a->path) < 0, "order at %s", a->path);
        CHECKF(dash_asset_find(a->path) == a, "lookup of %s", a->path);
    }
    CHECK(dash_asset_find("/no/such/file") == NULL);
    CHECK(dash_asset_find("") == NULL);
    CHECK(dash_asset_find("/index.html/") == NULL);
    CHECK(dash_asset_find("/") == dash_asset_find("/index.html"));
}

/* The page's libraries, when npm has installed them (the build says so). */
static void test_asset_types(void)
{
    const struct dash_asset *a = dash_asset_find("/index.html");
    if (a)
        CHECK(strcmp(a->content_type, "text/html; charset=utf-8") == 0);
    a = dash_asset_find("/lib/d3-geo.min.js");
    if (a)
        CHECK(strcmp(a->content_type, "text/javascript; charset=utf-8") == 0);
    a = dash_asset_find("/lib/countries-110m.json");
    if (a)
        CHECK(strcmp(a->content_type, "application/json") == 0 && a->len > 10000);
    a = dash_asset_find("/lib/uPlot.min.css");
    if (a)
        CHECK(strcmp(a->content_type, "text/css; charset=utf-8") == 0);
}

/* ---- start, wake, stop --------------------------------------------------- */

/* A port free on 127.0.0.1 now (the kernel's choice). */
static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sin = { .sin_family = AF_INET };
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof sin;
    if (fd < 0 || bind(fd, (struct sockaddr *)&sin, sizeof sin) < 0 ||
        getsockname(fd, (struct sockaddr *)&sin, &len) < 0) {
        if (fd >= 0)
            close(fd);
        return -1;
    }
    close(fd);
    return ntohs(sin.sin_port);
}

static struct conf *load(const char *dashboard_yaml)
{
    char yaml[2048], err[CONF_ERROR_MAX];
    snprintf(yaml, sizeof yaml,
             "listen: [\"127.0.0.1:1\"]\npools:\n  web:\n    servers: [\"127.0.0.1:2\"]\n%s",
             dashboard_yaml);
    struct conf *c = conf_load_string("test.yaml", yaml, err, sizeof err);
    if (!c)
        fprintf(stderr, "config: %s\n", err);
    return c;
}

/* An HTTP GET on 127.0.0.1:port; the status code, or -1. */
static int http_status(int port, const char *path)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sin = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd < 0 || connect(fd, (struct sockaddr *)&sin, sizeof sin) < 0) {
        if (fd >= 0)
            close(fd);
        return -1;
    }
    char req[256], buf[512];
    int n = snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n"
                     "Connection: close\r\n\r\n", path, port);
    if (write(fd, req, (size_t)n) != n) {
        close(fd);
        return -1;
    }
    ssize_t got = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (got < 12)
        return -1;
    buf[got] = '\0';
    int status = -1;
    sscanf(buf, "HTTP/1.%*d %d", &status);
    return status;
}

struct waker {
    struct dashboard *d;
    int n;
};

static void *wake_loop(void *arg)
{
    struct waker *w = arg;
    for (int i = 0; i < w->n; i++)
        dashboard_wake(w->d);
    return NULL;
}

static void test_start_wake_stop(void)
{
    int port = free_port();
    CHECK(port > 0);
    char yaml[256];
    snprintf(yaml, sizeof yaml, "dashboard:\n  listen: 127.0.0.1:%d\n", port);
    struct conf *c = load(yaml);
    CHECK(c != NULL);
    if (!c || port <= 0)
        return;
    char err[256] = "";
    struct dashboard *d = dashboard_start(&c->dashboard, NULL, NULL, err, sizeof err);
    CHECKF(d != NULL, "%s", err);
    if (!d) {
        conf_free(c);
        return;
    }
    /* Without telemetry the API says so; the page needs no aggregator. */
    CHECK(http_status(port, "/api/stats") == 503);
    CHECK(http_status(port, "/metrics") == 503);
    CHECK(http_status(port, "/no-such-thing") == 404);
    if (dash_asset_find("/"))
        CHECK(http_status(port, "/") == 200);

    /* Other threads wake it while it serves. */
    pthread_t th[3];
    struct waker w = { d, 20000 };
    for (int i = 0; i < 3; i++)
        pthread_create(&th[i], NULL, wake_loop, &w);
    CHECK(http_status(port, "/api/servers") == 503);
    for (int i = 0; i < 3; i++)
        pthread_join(th[i], NULL);

    /* A second dashboard on the same address: a start-up error that says
     * why. */
    char err2[256] = "";
    struct dashboard *d2 = dashboard_start(&c->dashboard, NULL, NULL, err2, sizeof err2);
    CHECK(d2 == NULL);
    CHECKF(strstr(err2, "cannot listen on 127.0.0.1:") != NULL &&
           strstr(err2, "in use") != NULL, "%s", err2);
    if (d2)
        dashboard_stop(d2);

    dashboard_stop(d);
    CHECK(http_status(port, "/") == -1);        /* the listener is gone */
    dashboard_wake(NULL);                       /* a no-op */
    conf_free(c);
}

/* Start and stop in quick succession, with nothing served in between. */
static void test_start_stop_repeatedly(void)
{
    for (int i = 0; i < 5; i++) {
        int port = free_port();
        char yaml[256];
        snprintf(yaml, sizeof yaml, "dashboard:\n  listen: 127.0.0.1:%d\n", port);
        struct conf *c = load(yaml);
        CHECK(c != NULL);
        if (!c)
            return;
        char err[256];
        struct dashboard *d = dashboard_start(&c->dashboard, NULL, NULL, err, sizeof err);
        CHECKF(d != NULL, "%s", err);
        conf_free(c);               /* the dashboard keeps its own copy */
        if (d) {
            dashboard_wake(d);
            dashboard_stop(d);
        }
    }
}

/* ---- what takes a restart ------------------------------------------------ */

static void test_conf_equal(void)
{
    struct conf *a = load("dashboard:\n  listen: 127.0.0.1:8081\n  push_hz: 4\n");
    struct conf *b = load("dashboard:\n  listen: 127.0.0.1:8081\n");
    struct conf *port = load("dashboard:\n  listen: 127.0.0.1:8082\n");
    struct conf *hz = load("dashboard:\n  listen: 127.0.0.1:8081\n  push_hz: 5\n");
    struct conf *off = load("dashboard:\n  enabled: false\n");
    struct conf *tok = load("dashboard:\n  auth: {token: \"0123456789abcdef\"}\n");
    struct conf *tok2 = load("dashboard:\n  auth: {token: \"0123456789abcdeX\"}\n");
    struct conf *user = load("dashboard:\n  auth:\n    users:\n"
                             "      - {name: ops, password: \"$6$saltsalt$hash0123456789\"}\n");
    struct conf *user2 = load("dashboard:\n  auth:\n    users:\n"
                              "      - {name: ops, password: \"$6$saltsalt$hash012345678X\"}\n");
    struct conf *orig = load("dashboard:\n  allowed_origins: [\"https://a.example\"]\n");
    CHECK(a && b && port && hz && off && tok && tok2 && user && user2 && orig);
    if (a && b && port && hz && off && tok && tok2 && user && user2 && orig) {
        CHECK(dashboard_conf_equal(&a->dashboard, &b->dashboard));
        CHECK(dashboard_conf_equal(&tok->dashboard, &tok->dashboard));
        CHECK(!dashboard_conf_equal(&a->dashboard, &port->dashboard));
        CHECK(!dashboard_conf_equal(&a->dashboard, &hz->dashboard));
        CHECK(!dashboard_conf_equal(&a->dashboard, &off->dashboard));
        CHECK(!dashboard_conf_equal(&a->dashboard, &tok->dashboard));
        CHECK(!dashboard_conf_equal(&tok->dashboard, &tok2->dashboard));
        CHECK(!dashboard_conf_equal(&a->dashboard, &user->dashboard));
        CHECK(!dashboard_conf_equal(&user->dashboard, &user2->dashboard));
        CHECK(!dashboard_conf_equal(&a->dashboard, &orig->dashboard));
    }
    conf_free(a);
    conf_free(b);
    conf_free(port);
    conf_free(hz);
    conf_free(off);
    conf_free(tok);
    conf_free(tok2);
    conf_free(user);
    conf_free(user2);
    conf_free(orig);
}

/* ---- tm_recent_json: the events stream's reader ----------------------------- */

static void push_request(struct tm_ring *ring, int i)
{
    struct tm_record r;
    memset(&r, 0, sizeof r);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    r.time_us = (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
    r.duration_us = 1000;
    r.kind = TM_REQUEST;
    r.family = 4;
    r.addr[0] = 10;
    r.addr[3] = (uint8_t)i;
    r.status = 200;
    snprintf(r.path, sizeof r.path, "/r/%d", i);
    snprintf(r.pool, sizeof r.pool, "web");
    snprintf(r.server, sizeof r.server, "127.0.0.1:1");
    tm_ring_push(ring, &r);
}

/* The paths of a tm_recent_json() document, and its "skipped". */
static size_t recent_paths(const char *text, char paths[][16], size_t max, long *skipped)
{
    json_t *doc = json_loads(text, 0, NULL);
    size_t n = 0;
    *skipped = -1;
    if (!doc)
        return 0;
    *skipped = (long)json_integer_value(json_object_get(doc, "skipped"));
    json_t *arr = json_object_get(doc, "recent"), *ev;
    size_t i;
    json_array_foreach(arr, i, ev) {
        if (n < max)
            snprintf(paths[n++], 16, "%s", json_string_value(json_object_get(ev, "path")));
    }
    json_decref(doc);
    return n;
}

static void test_recent_json(void)
{
    struct tm_ring *ring = tm_ring_new(64);
    struct tm_source *src = ring ? tm_source_rings(&ring, 1) : NULL;
    struct tm_aggregator_config cfg = { .source = src };
    struct tm_aggregator *agg = src ? tm_aggregator_new(&cfg) : NULL;
    CHECK(agg != NULL);
    if (!agg) {
        if (src)
            src->destroy(src);
        tm_ring_free(ring);
        return;
    }
    for (int i = 0; i < 8; i++)
        push_request(ring, i);
    tm_aggregator_drain_now(agg);

    /* Everything held, at most 3: the newest 3, oldest first. */
    uint64_t seq = 0;
    size_t count = 99;
    char *text = tm_recent_json(agg, 0, 3, &seq, &count);
    CHECK(text != NULL);
    char paths[16][16];
    long skipped;
    size_t n = text ? recent_paths(text, paths, 16, &skipped) : 0;
    CHECK(n == 3 && count == 3 && skipped == 5);
    CHECK(n == 3 && strcmp(paths[0], "/r/5") == 0 && strcmp(paths[2], "/r/7") == 0);
    CHECK(seq == tm_aggregator_seq(agg));
    free(text);

    /* Since that seq: nothing new yet, then only what came after. */
    uint64_t seq2 = 0;
    text = tm_recent_json(agg, seq, 50, &seq2, &count);
    CHECK(text && count == 0 && seq2 == seq);
    free(text);
    push_request(ring, 100);
    push_request(ring, 101);
    tm_aggregator_drain_now(agg);
    text = tm_recent_json(agg, seq, 50, &seq2, &count);
    n = text ? recent_paths(text, paths, 16, &skipped) : 0;
    CHECK(n == 2 && count == 2 && skipped == 0 && seq2 > seq);
    CHECK(n == 2 && strcmp(paths[0], "/r/100") == 0 && strcmp(paths[1], "/r/101") == 0);
    free(text);

    /* A seq never issued counts as 0; NULL out-parameters are fine. */
    text = tm_recent_json(agg, seq2 + 1000, 50, NULL, NULL);
    n = text ? recent_paths(text, paths, 16, &skipped) : 0;
    CHECK(n == 10 && skipped == 0);
    free(text);

    tm_aggregator_free(agg);
    src->destroy(src);
    tm_ring_free(ring);
}

int main(void)
{
    RUN(test_asset_table);
    RUN(test_asset_types);
    RUN(test_start_wake_stop);
    RUN(test_start_stop_repeatedly);
    RUN(test_conf_equal);
    RUN(test_recent_json);
    return check_done();
}
