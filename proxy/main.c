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
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/event.h>

#include "conf/conf.h"
#include "proxy/proxy.h"

#define DEFAULT_CONFIG "conf/switchboard.yaml"

struct main_state {
    const char *config_path;
    struct conf *conf;
    struct proxy *proxy;
    struct event_base *base;
    bool stopping;
};

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

static void on_stop(evutil_socket_t sig, short what, void *arg)
{
    struct main_state *st = arg;
    if (st->stopping)
        return;
    st->stopping = true;
    sb_log(SB_LOG_INFO, "%s: stopping; in-flight requests have %u ms",
           sig == SIGINT ? "SIGINT" : "SIGTERM", st->conf->timeouts.shutdown);
    event_base_loopbreak(st->base);
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
    if (!ev_term || !ev_int || !ev_hup || !ev_usr1) {
        sb_log(SB_LOG_ERROR, "cannot install signal handlers");
        goto out_events;
    }
    event_add(ev_term, NULL);
    event_add(ev_int, NULL);
    event_add(ev_hup, NULL);
    event_add(ev_usr1, NULL);

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
    proxy_shutdown(st.proxy, st.conf->timeouts.shutdown);
    sb_log(SB_LOG_INFO, "stopped");
    rc = 0;

out_events:
    if (ev_term) event_free(ev_term);
    if (ev_int) event_free(ev_int);
    if (ev_hup) event_free(ev_hup);
    if (ev_usr1) event_free(ev_usr1);
out:
    if (st.proxy) {
        proxy_shutdown(st.proxy, 0);
        proxy_free(st.proxy);
    }
    if (st.base)
        event_base_free(st.base);
    conf_free(st.conf);
    libevent_global_shutdown();
    return rc;
}
