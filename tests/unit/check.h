/*
 * check.h - the unit-test harness: a test is a function, a failed CHECK marks
 * it failed and the test goes on. Each test prints one line that tests/run.py
 * reads:
 *
 *     PASS conf_duration_units
 *     FAIL conf_bad_weight: tests/unit/conf/test_conf.c:88: weight == 2
 *
 * Usage:
 *     static void test_something(void) { CHECK(1 + 1 == 2); }
 *     int main(void) { RUN(test_something); return check_done(); }
 */
#ifndef SWITCHBOARD_TESTS_CHECK_H
#define SWITCHBOARD_TESTS_CHECK_H

#include <stdio.h>
#include <string.h>

static int check_failed_tests;
static int check_current_failed;
static char check_first_failure[512];

#define CHECK(cond) do {                                                     \
        if (!(cond)) {                                                       \
            if (!check_current_failed)                                       \
                snprintf(check_first_failure, sizeof check_first_failure,    \
                         "%s:%d: %s", __FILE__, __LINE__, #cond);            \
            check_current_failed = 1;                                        \
        }                                                                    \
    } while (0)

/* CHECK with a printf-style explanation shown on failure. */
#define CHECKF(cond, ...) do {                                               \
        if (!(cond)) {                                                       \
            if (!check_current_failed) {                                     \
                int n_ = snprintf(check_first_failure,                       \
                                  sizeof check_first_failure,                \
                                  "%s:%d: %s: ", __FILE__, __LINE__, #cond); \
                if (n_ > 0 && (size_t)n_ < sizeof check_first_failure)       \
                    snprintf(check_first_failure + n_,                       \
                             sizeof check_first_failure - (size_t)n_,        \
                             __VA_ARGS__);                                   \
            }                                                                \
            check_current_failed = 1;                                        \
        }                                                                    \
    } while (0)

#define RUN(fn) do {                                                         \
        check_current_failed = 0;                                            \
        check_first_failure[0] = '\0';                                       \
        fn();                                                                \
        if (check_current_failed) {                                          \
            check_failed_tests++;                                            \
            printf("FAIL %s: %s\n", #fn, check_first_failure);               \
        } else {                                                             \
            printf("PASS %s\n", #fn);                                        \
        }                                                                    \
        fflush(stdout);                                                      \
    } while (0)

static inline int check_done(void) { return check_failed_tests ? 1 : 0; }

#endif
