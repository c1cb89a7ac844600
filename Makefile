# The two commands of the README: `make run` (the appliance on an embedded default) and `make test` (every test).
# Both work on a fresh machine with the Rust toolchain; `make test` installs the system packages the tests need.

DATA_DIR ?= ./data

.PHONY: run test test-deps build lint bench

run:
	cargo run --release -p portico -- run --data-dir $(DATA_DIR)

test: test-deps
	cargo test --workspace

test-deps:
	./scripts/install-test-deps.sh

build:
	cargo build --release -p portico

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

bench:
	./bench/run.sh
