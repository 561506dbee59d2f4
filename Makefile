# qkvd build. `make` builds build/qkvd; `make test` installs deps, builds and
# runs every test; `make asan` runs the unit tests under ASan+UBSan;
# `make fuzz` builds the libFuzzer targets; `make serve` starts the server.
#
# Sources are found by wildcard so adding a module needs no Makefile edit:
#   engine/*.c            -> the engine library (never includes server/)
#   engine/*_avx2.c       -> compiled with AVX2/FMA/F16C, called only after a CPU check
#   engine/*_avx512.c     -> compiled with AVX-512 (F/BW/VL/VNNI), likewise
#   server/*.c            -> HTTP, CLI and request state; server/main.c holds main()
#   tests/unit/test_*.c   -> one cmocka binary each
#   tests/fuzz/fuzz_*.c   -> one libFuzzer target each

CC      ?= cc
BUILD   ?= build
PKGS    := openblas libmicrohttpd libuv jansson libpcre2-8 libcurl
PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS   := $(shell pkg-config --libs $(PKGS) 2>/dev/null)

OPT     ?= -O2
WARN    := -Wall -Wextra -Wstrict-prototypes -Wno-unused-parameter
CFLAGS  += $(OPT) -g $(WARN) -std=gnu11 -fno-strict-aliasing -D_GNU_SOURCE -MMD -MP \
           -Iengine -Iserver $(PKG_CFLAGS)
LDLIBS  += $(PKG_LIBS) -lm -lpthread

ifdef SANITIZE
CFLAGS  += -fsanitize=$(SANITIZE) -fno-omit-frame-pointer -fno-sanitize-recover=undefined
LDFLAGS += -fsanitize=$(SANITIZE)
endif

AVX2_FLAGS   := -mavx2 -mfma -mf16c
AVX512_FLAGS := -mavx2 -mfma -mf16c -mavx512f -mavx512bw -mavx512vl -mavx512dq -mavx512vnni

ENGINE_SRC := $(sort $(wildcard engine/*.c engine/*/*.c))
SERVER_SRC := $(sort $(filter-out server/main.c,$(wildcard server/*.c server/*/*.c)))
LIB_SRC    := $(ENGINE_SRC) $(SERVER_SRC)
LIB_OBJ    := $(LIB_SRC:%.c=$(BUILD)/%.o)
MAIN_OBJ   := $(BUILD)/server/main.o
TEST_SRC   := $(sort $(wildcard tests/unit/test_*.c))
TEST_BIN   := $(TEST_SRC:tests/unit/%.c=$(BUILD)/tests/%)
FUZZ_SRC   := $(sort $(wildcard tests/fuzz/fuzz_*.c))

PREFIX  ?= /usr/local
DESTDIR ?=

.PHONY: all deps test unit asan fuzz serve install clean bench
all: $(BUILD)/qkvd

$(BUILD)/%_avx2.o: %_avx2.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(AVX2_FLAGS) -c $< -o $@

$(BUILD)/%_avx512.o: %_avx512.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) $(AVX512_FLAGS) -c $< -o $@

$(BUILD)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c $< -o $@

# The chat page is embedded by .incbin in routes_webui.c, which -MMD cannot see.
$(BUILD)/server/routes_webui.o: server/webui/index.html

$(BUILD)/libqkvd.a: $(LIB_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(BUILD)/qkvd: $(MAIN_OBJ) $(BUILD)/libqkvd.a
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

$(BUILD)/tests/test_%: $(BUILD)/tests/unit/test_%.o $(BUILD)/libqkvd.a
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS) -lcmocka

deps:
	@bash scripts/install-deps.sh

# Every test: unit (cmocka), then integration (real binary, real server).
test: deps
	$(MAKE) all tests
	@bash scripts/run-tests.sh $(BUILD)

tests: $(TEST_BIN)

unit: $(BUILD)/qkvd $(TEST_BIN)
	@QKVD_UNIT_ONLY=1 bash scripts/run-tests.sh $(BUILD)

asan:
	$(MAKE) BUILD=build-asan SANITIZE=address,undefined OPT=-O1 unit

fuzz:
	@bash scripts/build-fuzz.sh

serve: deps all
	@bash scripts/serve.sh

bench: all
	@bash scripts/bench-all

install: all
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/share/qkvd
	install -m 0755 $(BUILD)/qkvd $(DESTDIR)$(PREFIX)/bin/qkvd
	install -m 0644 config/qkvd.json $(DESTDIR)$(PREFIX)/share/qkvd/qkvd.json

clean:
	rm -rf build build-asan build-fuzz

-include $(LIB_OBJ:.o=.d) $(MAIN_OBJ:.o=.d) $(TEST_SRC:tests/unit/%.c=$(BUILD)/tests/unit/%.d)
