# Portcullis — the two commands a newcomer needs: `make demo` and `make test`.
# Both install what a fresh Debian machine lacks (pingora's build needs cmake).

CARGO ?= cargo
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: deps test lint unit demo build release clean

# System packages the build needs. Idempotent: installs only what is missing.
deps:
	@command -v cmake >/dev/null 2>&1 || { \
		echo "installing cmake (needed to build pingora's dependencies)"; \
		$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq cmake; }
	@command -v cc >/dev/null 2>&1 || { $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq build-essential; }

build: deps
	$(CARGO) build --all-targets

release: deps
	$(CARGO) build --release

lint: deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

# The whole suite: formatting, lints, unit tests, integration tests through real
# sockets (loopback only), and the shipped configs validated.
test: lint
	$(CARGO) test --all-targets
	$(CARGO) test --doc

demo: deps
	$(CARGO) run --release -- demo

clean:
	$(CARGO) clean
