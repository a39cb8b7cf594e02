# The two commands: `make run` (a demo server and client) and `make test` (everything).
CARGO ?= cargo
NPM ?= npm
NODE ?= node

.PHONY: run test fmt-check clippy unit package interop interop-deps bench bench-smoke fuzz clean

run:
	$(CARGO) run --example demo

test: fmt-check clippy unit package bench-smoke interop

fmt-check:
	$(CARGO) fmt --all -- --check

# With and without the optional TLS feature.
clippy:
	$(CARGO) clippy --all-targets -- -D warnings
	$(CARGO) clippy --all-targets --all-features -- -D warnings
	$(CARGO) clippy -p wsrpc-bench --all-targets -- -D warnings

# Unit tests, integration tests over loopback (TLS ones included), and doc tests; then
# the benchmark's own unit tests.
unit:
	$(CARGO) test --all-features
	$(CARGO) test -p wsrpc-bench

# The crate as it would be published: `cargo package` lists its files and builds them
# alone (20 to 60 s from cold, a few seconds after `unit`). It fails on any cargo
# warning, and on a file of bench/, fuzz/, interop/ or benchmarks/ in the list.
# --allow-dirty: uncommitted changes are packaged as they are.
package:
	@if $(CARGO) package --list --allow-dirty | grep -E '^(bench|benchmarks|fuzz|interop)/'; then \
		echo "make package: the files above must not be published" >&2; exit 1; \
	fi
	@out=$$($(CARGO) package --allow-dirty 2>&1); status=$$?; echo "$$out"; \
	if [ $$status -ne 0 ]; then exit $$status; fi; \
	if echo "$$out" | grep -q '^warning'; then \
		echo "make package: cargo package warned" >&2; exit 1; \
	fi

# The pinned npm packages, installed from the committed lockfile.
interop/node_modules/.package-lock.json: interop/package.json interop/package-lock.json
	cd interop && $(NPM) ci --no-audit --no-fund

interop-deps: interop/node_modules/.package-lock.json

# The real rpc-websockets against wsrpc, both ways.
interop: interop-deps
	$(CARGO) build --example interop_server
	cd interop && WSRPC_INTEROP_SERVER=../target/debug/examples/interop_server $(NODE) --test
	$(CARGO) test --all-features --test interop_js_server -- --include-ignored

# wsrpc against rpc-websockets (Node), jsonrpsee and a bare tungstenite server, same
# workloads, same run (three rounds; the steady-rate fan-out workloads two; about
# twelve minutes): writes BENCHMARKS.md and benchmarks/*.svg.
# The idle workload holds 10,000 connections: the open-file limit is raised to the hard
# limit first.
bench: interop-deps
	$(CARGO) build --release -p wsrpc-bench
	ulimit -n $$(ulimit -Hn) && ./target/release/wsrpc-bench

# The same suite cut to seconds (make test runs it): every server must answer every
# workload correctly; no speed is asserted. The report goes to target/bench-quick/.
bench-smoke: interop-deps
	$(CARGO) run -p wsrpc-bench -- --quick

# Each fuzz target for FUZZ_SECONDS (cargo install cargo-fuzz first). RUSTC_BOOTSTRAP
# lets cargo fuzz use its nightly flags on the stable toolchain; no sanitizer runtime
# is needed for what libFuzzer finds (panics, hangs, memory blow-ups).
FUZZ_SECONDS ?= 60
fuzz:
	cd fuzz && for t in json_requests msgpack_requests dispatch; do \
		RUSTC_BOOTSTRAP=1 cargo fuzz run --sanitizer none $$t -- \
			-max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=2048 || exit 1; \
	done

clean:
	$(CARGO) clean
	rm -rf interop/node_modules
