# The two commands: `make demo` runs portcullis behind a real Envoy on the bundled
# example policies; `make test` installs the test tools into .tools/ and runs the
# whole suite.

TOOLS   := .tools
VENV    := $(TOOLS)/venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
REQS    := tests/tools/requirements.txt

.PHONY: test demo tools lint fuzz

test: tools
	cargo fmt --all --check
	cargo clippy --all-targets -- -D warnings
	cargo test --all-targets

lint:
	cargo fmt --all --check
	cargo clippy --all-targets -- -D warnings

# Every fuzz target for FUZZ_SECONDS each (docs/fuzzing.md).
FUZZ_SECONDS ?= 60
fuzz:
	tests/fuzz/run.sh $(FUZZ_SECONDS)

tools: $(STAMP)

$(STAMP): $(REQS)
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r $(REQS)
	touch $(STAMP)

demo: tools
	cargo build
	examples/demo.sh
