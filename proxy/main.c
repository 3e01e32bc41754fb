/*
 * main.c - command line, start-up, and the main thread's signal loop.
 *
 * The main thread loads the config, builds the proxy, starts the workers and
 * then only waits for signals on its own small event_base:
 *   SIGTERM, SIGINT  stop accepting, let in-flight requests finish for at most
 *                    timeouts.shutdown, exit 0
 *   SIGHUP           re-read the config file; an invalid file is logged and
 *                    the running config stays
 *   SIGUSR1          reopen the access log (after rotation)
 * Workers run with every signal blocked, so these land here.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include <event2/event.h>

#include "conf/conf.h"
#include "dashboard/dashboard.h"
#include "geo/geo.h"
#include "proxy/proxy.h"
#include "telemetry/telemetry.h"

#define DEFAULT_CONFIG "conf/switchboard.yaml"

struct main_state {
    const char *config_path;
    struct conf *conf;
    struct proxy *proxy;
    struct event_base *base;
    bool stopping;
    struct geo_db *geo;                 /* NULL: geolocation off */
    struct tm_source *tm_source;        /* over the proxy's rings */
    struct tm_aggregator *aggregator;   /* NULL: telemetry off */
    /* The aggregator thread reads these (on_telemetry_update): the
     * aggregator exists before the dashboard and outlives it. */
    _Atomic(struct dashboard *) dashboard;  /* NULL: none, or stopping */
    atomic_int waking;                  /* updates between load and wake */
    struct event *grace_timer;
    struct event *poll_timer;
};

/* Geolocation is optional: a missing or unreadable database is one warning,
 * and telemetry runs without locations. */
static struct geo_db *open_geo(const struct conf_telemetry *t)
{
    if (t->n_geoip == 0) {
        sb_log(SB_LOG_WARN, "telemetry.geoip is not set: geolocation is off");
        return NULL;
    }
    const char *paths[2];
    size_t n = t->n_geoip < 2 ? t->n_geoip : 2;
    for (size_t i = 0; i < n; i++)
        paths[i] = t->geoip[i].value;
    char err[256];
    struct geo_db *geo = geo_open(paths, n, err, sizeof err);
    if (!geo)
        sb_log(SB_LOG_WARN, "geolocation is off: %s", err);
    else
        sb_log(SB_LOG_INFO, "geolocation: %s (%s%s%s)", geo_schema_name(geo),
               paths[0], n > 1 ? ", " : "", n > 1 ? paths[1] : "");
    return geo;
}

/* Aggregator thread, after a drain that changed the model: wake the
 * dashboard if there is one. `waking` lets stop_dashboard() wait for a call
 * that loaded the pointer just before it was cleared. */
static void on_telemetry_update(void *arg)
{
    struct main_state *st = arg;
    atomic_fetch_add(&st->waking, 1);
    struct dashboard *d = atomic_load(&st->dashboard);
    if (d)
        dashboard_wake(d);
    atomic_fetch_sub(&st->waking, 1);
}

/* By default the workers come first: at nice 0, waking every tick, the
 * aggregator preempted the worker and left the other core waiting on it
 * (make bench, keep-alive: 5-7% fewer requests a second with telemetry on;
 * 1-2% at SCHED_IDLE, where it takes the time the workers leave). At idle,
 * the aggregator's own watch thread lifts it to SCHED_OTHER while its rings
 * fill up (telemetry.h, TM_PRIORITY_IDLE). */
static const enum tm_priority tm_priority_of[] = {
    [CONF_TM_PRIORITY_IDLE]   = TM_PRIORITY_IDLE,
    [CONF_TM_PRIORITY_LOW]    = TM_PRIORITY_LOW,
    [CONF_TM_PRIORITY_NORMAL] = TM_PRIORITY_NORMAL,
};

static int start_telemetry(struct main_state *st)
{
    const struct conf_telemetry *t = &st->conf->telemetry;
    size_t n_rings;
    struct tm_ring **rings = proxy_rings(st->proxy, &n_rings);
    if (!t->enabled || !rings)
        return 0;
    st->geo = open_geo(t);
    proxy_set_geo(st->proxy, st->geo);
    if (!(st->tm_source = tm_source_rings(rings, n_rings)))
        return -1;
    struct tm_aggregator_config cfg = {
        .source = st->tm_source,
        .geo = st->geo,
        .proxy_lat = t->latitude,
        .proxy_lon = t->longitude,
        .proxy_has_location = t->has_location,
        .gauges = proxy_gauges(st->proxy),
        .servers = proxy_servers,
        .servers_ctx = st->proxy,
        /* Small, frequent batches: on a busy host a long drain every 50 ms
         * would take a core from the workers in bursts. */
        .tick_ms = 10,
        .priority = tm_priority_of[t->priority],
        .on_update = on_telemetry_update,
        .on_update_ctx = st,
    };
    if (!(st->aggregator = tm_aggregator_new(&cfg)))
        return -1;
    return tm_aggregator_start(st->aggregator);
}

/* After the workers are gone: the last records are drained, then freed. */
static void stop_telemetry(struct main_state *st)
{
    if (st->aggregator) {
        tm_aggregator_stop(st->aggregator);
        tm_aggregator_free(st->aggregator);
        st->aggregator = NULL;
    }
    if (st->tm_source) {
        /* A record is dropped only when the aggregator fell behind: worth
         * a line at exit, with the rest of the process log. */
        uint64_t dropped = st->tm_source->dropped ? st->tm_source->dropped(st->tm_source) : 0;
        sb_log(dropped ? SB_LOG_WARN : SB_LOG_INFO,
               "telemetry: %" PRIu64 " records dropped", dropped);
        st->tm_source->destroy(st->tm_source);
        st->tm_source = NULL;
    }
    if (st->geo) {
        geo_close(st->geo);
        st->geo = NULL;
    }
}

/*
 * Each client connection may hold a backend connection too: ask for twice
 * max_connections descriptors plus room for listeners, logs and the
 * dashboard, as HAProxy derives its limit from maxconn. Raising the hard
 * limit needs privileges; without them the soft limit goes as high as the
 * hard one allows, and a shortfall is reported (accept pauses on EMFILE
 * instead of failing).
 */
static void raise_fd_limit(const struct conf *conf)
{
    rlim_t want = (rlim_t)conf->limits.max_connections * 2 + 1024;
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) < 0 || rl.rlim_cur >= want)
        return;
    struct rlimit raised = { want, rl.rlim_max > want ? rl.rlim_max : want };
    if (setrlimit(RLIMIT_NOFILE, &raised) == 0)
        return;
    raised.rlim_cur = rl.rlim_max;
    raised.rlim_max = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &raised);
    sb_log(SB_LOG_WARN, "file descriptor limit is %llu, below the %llu that "
           "limits.max_connections %u needs", (unsigned long long)rl.rlim_max,
           (unsigned long long)want, conf->limits.max_connections);
}

/* After start_telemetry(): the dashboard reads the aggregator (or answers
 * 503 without one). Failing to listen is a start-up error. */
static int start_dashboard(struct main_state *st)
{
    const struct conf_dashboard *dc = &st->conf->dashboard;
    if (!dc->enabled)
        return 0;
    char err[256];
    struct dashboard *d = dashboard_start(dc, &st->conf->chat, st->aggregator, err, sizeof err);
    if (!d) {
        sb_log(SB_LOG_ERROR, "%s", err);
        return -1;
    }
    atomic_store(&st->dashboard, d);
    sb_log(SB_LOG_INFO, "dashboard on http://%s/%s", dc->listen.text,
           dc->token || dc->n_users ? "" : " (no auth: loopback only)");
    if (st->conf->chat.enabled)
        sb_log(SB_LOG_INFO, "chat on http://%s/chat/ (staff: /chat/staff/)",
               dc->listen.text);
    return 0;
}

/* Before stop_telemetry(): the aggregator may still call on_telemetry_update
 * until then, so the pointer goes first, then any wake in progress ends. */
static void stop_dashboard(struct main_state *st)
{
    struct dashboard *d = atomic_exchange(&st->dashboard, NULL);
    if (!d)
        return;
    while (atomic_load(&st->waking) > 0)
        sched_yield();
    dashboard_stop(d);
}

static void usage(FILE *out)
{
    fprintf(out,
        "usage: switchboard [-c FILE] [-t] [-V] [-h]\n"
        "  -c FILE  configuration file (default " DEFAULT_CONFIG ")\n"
        "  -t       check the configuration and exit\n"
        "  -V       print the version and exit\n"
        "  -h       this help\n"
        "signals: TERM/INT graceful stop, HUP reload, USR1 reopen logs\n");
}

/* While stopping: reap the workers as they finish; the grace timer or a
 * second signal cuts what is left. */
static void on_stop_poll(evutil_socket_t fd, short what, void *arg)
{
    struct main_state *st = arg;
    if (proxy_stop_poll(st->proxy))
        event_base_loopbreak(st->base);
}

static void on_grace_over(evutil_socket_t fd, short what, void *arg)
{
    struct main_state *st = arg;
    sb_log(SB_LOG_WARN, "grace period over: closing the remaining connections");
    proxy_stop_now(st->proxy);
}

static void on_stop(evutil_socket_t sig, short what, void *arg)
{
    struct main_state *st = arg;
    const char *name = sig == SIGINT ? "SIGINT" : "SIGTERM";
    if (st->stopping) {
        sb_log(SB_LOG_WARN, "%s again: closing the remaining connections now", name);
        proxy_stop_now(st->proxy);
        return;
    }
    st->stopping = true;
    sb_log(SB_LOG_INFO, "%s: stopping; in-flight requests have %u ms (send it "
           "again to stop at once)", name, st->conf->timeouts.shutdown);
    proxy_stop_begin(st->proxy);
    uint32_t ms = st->conf->timeouts.shutdown;
    struct timeval grace = { ms / 1000, (ms % 1000) * 1000 };
    struct timeval tick = { 0, 20 * 1000 };
    event_add(st->grace_timer, &grace);
    event_add(st->poll_timer, &tick);
}

static void on_reload(evutil_socket_t sig, short what, void *arg)
{
    struct main_state *st = arg;
    char err[CONF_ERROR_MAX];
    struct conf *conf = conf_load(st->config_path, err, sizeof err);
    if (!conf) {
        sb_log(SB_LOG_ERROR, "reload rejected, keeping the running "
               "configuration: %s", err);
        return;
    }
    if (proxy_reload(st->proxy, conf, err, sizeof err) < 0) {
        sb_log(SB_LOG_ERROR, "reload rejected, keeping the running "
               "configuration: %s", err);
        conf_free(conf);
        return;
    }
    if (!dashboard_conf_equal(&st->conf->dashboard, &conf->dashboard))
        sb_log(SB_LOG_WARN, "dashboard settings changed: they take effect at the "
               "next restart");
    if (!dashboard_chat_conf_equal(&st->conf->chat, &conf->chat))
        sb_log(SB_LOG_WARN, "chat settings changed: they take effect at the next restart");
    conf_free(st->conf);
    st->conf = conf;
    sb_log(SB_LOG_INFO, "reloaded %s", st->config_path);
}

static void on_reopen(evutil_socket_t sig, short what, void *arg)
{
    struct main_state *st = arg;
    proxy_reopen_logs(st->proxy);
    sb_log(SB_LOG_INFO, "log files reopened");
}

int main(int argc, char **argv)
{
    struct main_state st = { .config_path = DEFAULT_CONFIG };
    bool check_only = false;
    int opt;
    while ((opt = getopt(argc, argv, "c:tVh")) != -1) {
        switch (opt) {
        case 'c': st.config_path = optarg; break;
        case 't': check_only = true; break;
        case 'V': printf("switchboard %s\n", SWITCHBOARD_VERSION); return 0;
        case 'h': usage(stdout); return 0;
        default:  usage(stderr); return 2;
        }
    }
    if (optind < argc) {
        usage(stderr);
        return 2;
    }

    char err[CONF_ERROR_MAX];
    st.conf = conf_load(st.config_path, err, sizeof err);
    if (!st.conf) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    if (check_only) {
        printf("%s: configuration is valid\n", st.config_path);
        conf_free(st.conf);
        return 0;
    }

    signal(SIGPIPE, SIG_IGN);
    raise_fd_limit(st.conf);
    int rc = 1;
    st.proxy = proxy_new(st.conf, err, sizeof err);
    if (!st.proxy) {
        sb_log(SB_LOG_ERROR, "%s", err);
        goto out;
    }
    st.base = event_base_new();
    if (!st.base) {
        sb_log(SB_LOG_ERROR, "cannot create the main event loop");
        goto out;
    }
    struct event *ev_term = evsignal_new(st.base, SIGTERM, on_stop, &st);
    struct event *ev_int = evsignal_new(st.base, SIGINT, on_stop, &st);
    struct event *ev_hup = evsignal_new(st.base, SIGHUP, on_reload, &st);
    struct event *ev_usr1 = evsignal_new(st.base, SIGUSR1, on_reopen, &st);
    st.grace_timer = evtimer_new(st.base, on_grace_over, &st);
    st.poll_timer = event_new(st.base, -1, EV_PERSIST, on_stop_poll, &st);
    if (!ev_term || !ev_int || !ev_hup || !ev_usr1 || !st.grace_timer ||
        !st.poll_timer) {
        sb_log(SB_LOG_ERROR, "cannot install signal handlers");
        goto out_events;
    }
    event_add(ev_term, NULL);
    event_add(ev_int, NULL);
    event_add(ev_hup, NULL);
    event_add(ev_usr1, NULL);

    if (start_telemetry(&st) < 0) {
        sb_log(SB_LOG_ERROR, "cannot start telemetry (out of memory or threads)");
        goto out_events;
    }
    if (start_dashboard(&st) < 0)
        goto out_events;
    if (proxy_start(st.proxy, err, sizeof err) < 0) {
        sb_log(SB_LOG_ERROR, "%s", err);
        goto out_events;
    }
    for (size_t i = 0; i < st.conf->n_listen; i++)
        sb_log(SB_LOG_INFO, "listening on %s", st.conf->listen[i].text);
    sb_log(SB_LOG_INFO, "switchboard %s started: %u worker%s, config %s",
           SWITCHBOARD_VERSION, st.conf->workers, st.conf->workers == 1 ? "" : "s",
           st.config_path);

    event_base_dispatch(st.base);
    sb_log(SB_LOG_INFO, "stopped");
    rc = 0;

out_events:
    if (st.grace_timer) event_free(st.grace_timer);
    if (st.poll_timer) event_free(st.poll_timer);
    if (ev_term) event_free(ev_term);
    if (ev_int) event_free(ev_int);
    if (ev_hup) event_free(ev_hup);
    if (ev_usr1) event_free(ev_usr1);
out:
    /* Freeing the signal events gave TERM and INT their default action
     * back: a late one during the cleanup below must not turn a clean stop
     * into death by signal. */
    signal(SIGTERM, SIG_IGN);
    signal(SIGINT, SIG_IGN);
    if (st.proxy)
        proxy_shutdown(st.proxy, 0);
    stop_dashboard(&st);
    stop_telemetry(&st);
    if (st.proxy)
        proxy_free(st.proxy);
    if (st.base)
        event_base_free(st.base);
    conf_free(st.conf);
    libevent_global_shutdown();
    return rc;
}
