# The two commands of the README: `make run` (the appliance on an embedded default) and `make test` (every test).
# Both work on a fresh machine with the Rust toolchain; `make test` installs the system packages the tests need.

DATA_DIR ?= ./data

.PHONY: run test test-deps build lint bench

run:
	cargo run --release -p portico -- run --data-dir $(DATA_DIR)

test: test-deps
	cargo test --workspace
	# The L4 proxy's end-to-end suite once more on the io_uring engine (the run above used the default, auto,
	# which runs epoll), so both engines pass the same tests.
	PORTICO_E2E_L4_ENGINE=io_uring cargo test -p portico --test e2e proxy::

test-deps:
	./scripts/install-test-deps.sh

build:
	cargo build --release -p portico

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

bench:
	./bench/run.sh
