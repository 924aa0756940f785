# possync: every target first installs what a fresh Debian 12 machine lacks (scripts/bootstrap.sh, quick when
# everything is present), then does its job. `make demo` and `make test` are the two commands a new user needs.

SHELL := /bin/bash
PG_CONFIG ?= /usr/lib/postgresql/15/bin/pg_config
BUILD ?= $(CURDIR)/target
PGRX_TEST_DIR := $(BUILD)/pgrx-test
export PATH := $(HOME)/.cargo/bin:$(PATH)

.PHONY: all deps install package test test-unit test-extension test-package test-e2e demo bench lint

all: test

deps:
	@./scripts/bootstrap.sh

## install: build the extension (release) and install it into the system PostgreSQL 15
install: deps
	cargo pgrx install --release --pg-config $(PG_CONFIG)
	./scripts/install-sql-history.sh $(PG_CONFIG)

## package: Debian packages postgresql-15-possync and possync-bridge in target/package (nothing is installed)
package: deps
	@EXTRA_APT_PACKAGES="dpkg-dev binutils adduser" ./scripts/bootstrap.sh
	./scripts/package.sh

## test: unit tests, the extension's #[pg_test]s on a throwaway server, the packages, then the end-to-end tests.
## test-package installs and purges the packages in the system PostgreSQL, so `install` comes after it.
test: deps test-unit test-extension test-package install test-e2e

test-unit:
	cargo test -p possync-events -p possync-bridge -p possync-sim

test-extension:
	@mkdir -p $(PGRX_TEST_DIR) && chown postgres $(PGRX_TEST_DIR)
	cargo pgrx test pg15 --runas postgres --pgdata $(PGRX_TEST_DIR)/data

## test-package: dpkg -i both packages, CREATE EXTENSION, the bridge through its unit's ExecStart posts a sale,
## dpkg --purge; holds /tmp/possync-system-pg.lock while the packages are installed
test-package: package
	./scripts/test-package.sh --no-build

test-e2e:
	cargo test -p possync-e2e -- --test-threads=1

## demo: a throwaway ERP cluster, possync installed, a sample store day posted, stock and trial balance shown
demo: deps install
	./scripts/demo.sh

## bench: posting throughput against the PL/pgSQL baseline, printed side by side
bench: deps install
	./bench/run.sh $(STAGE)

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

## fuzz: the model-based test of the posting rules and the hostile-input test at length: FUZZ_EVENTS events each
## (default 200000; MODEL_EVENTS / HOSTILE_EVENTS override one), with a random seed that is printed
## (MODEL_SEED=<n>, HOSTILE_SEED=<n> replay one); reconcile() and check_invariants() run every MODEL_CHECK_EVERY calls
.PHONY: fuzz
fuzz: deps install
	@seed=$${MODEL_SEED:-$$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')}; \
	hseed=$${HOSTILE_SEED:-$$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')}; \
	events=$${FUZZ_EVENTS:-200000}; \
	echo "make fuzz: MODEL_SEED=$$seed MODEL_EVENTS=$${MODEL_EVENTS:-$$events} HOSTILE_SEED=$$hseed HOSTILE_EVENTS=$${HOSTILE_EVENTS:-$$events}"; \
	MODEL_SEED=$$seed MODEL_EVENTS=$${MODEL_EVENTS:-$$events} MODEL_CHECK_EVERY=$${MODEL_CHECK_EVERY:-50} \
	HOSTILE_SEED=$$hseed HOSTILE_EVENTS=$${HOSTILE_EVENTS:-$$events} \
	cargo test -p possync-e2e --test e2e -- --test-threads=1 --nocapture model:: hostile::
