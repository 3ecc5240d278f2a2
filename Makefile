# dst: distributed storage for Linux.  See README.md.
#
#   make demo    build everything, boot a VM, show a mirror at work
#   make check   every test: host-side unit tests and lints, then the
#                in-VM selftests on the real module
#   make bench   dst against brd, md raid1 and the nbd peers, in one VM run
#   make check-kasan  the in-VM tests (or TESTS=...) on a KASAN kernel
#
# Each target installs what it needs (Debian packages, bindgen) and builds
# the 6.12 test kernel once into ~/.cache/dst (override with DST_CACHE).

SHELL := /bin/bash
export PATH := /usr/bin:$(HOME)/.cargo/bin:$(PATH)
CARGO := /usr/bin/cargo
DSTCTL := userspace/target/release/dstctl

# (Kbuild reads ./Kbuild, never this file.)

.PHONY: all deps kernel module dstctl userspace-check check check-kasan demo bench lint fmt clean

all: module dstctl

deps:
	@scripts/install-deps.sh

kernel: deps
	@scripts/build-kernel.sh test

module: deps
	@scripts/build-module.sh test

dstctl: deps
	cd userspace && $(CARGO) build --release --locked --quiet

# Host side: formatting, lints and unit tests of the shared code and dstctl.
userspace-check: deps
	cd userspace && $(CARGO) fmt --all -- --check
	cd userspace && $(CARGO) clippy --locked --all-targets --quiet -- -D warnings
	cd userspace && $(CARGO) test --locked --quiet

# The module: rustfmt with the kernel's settings (dst/.rustfmt.toml; rustfmt
# follows the crate's modules from its root, dst-proto's shared files too),
# then clippy with the kernel's lint set.
lint: deps
	@rustfmt --edition 2021 --check dst/dst_main.rs >/dev/null || \
		{ echo "lint: dst/ is not rustfmt-clean: run make fmt"; exit 1; }
	@echo "lint: dst/ is rustfmt-clean"
	@touch dst/dst_main.rs && scripts/build-module.sh test CLIPPY=1 >/dev/null
	@echo "lint: dst.ko is clippy-clean"

# Formats the module and userspace.
fmt:
	rustfmt --edition 2021 dst/dst_main.rs
	cd userspace && $(CARGO) fmt --all

check: userspace-check lint module dstctl
	selftests/check.sh $(TESTS)

# The one-machine tests on a kernel with KASAN and kmemleak (built with
# clang; slower, so not part of check).  TESTS picks tests as for check.
check-kasan: deps dstctl
	@kdir=$$(scripts/build-kernel.sh kasan | tail -n 1) && \
	ko=$$(scripts/build-module.sh kasan | tail -n 1) && \
	DST_KO=$$ko selftests/check.sh --kdir $$kdir --share $${ko%/*} --timeout 5400 -- \
		$(if $(TESTS),$(TESTS),$$(cd selftests/tests && ls | sed "s/\.sh$$//"))

demo: module dstctl
	scripts/vm-run --timeout 600 -- scripts/demo.sh

bench: deps dstctl
	scripts/bench.sh

clean:
	rm -rf dst/*.o dst/.*.cmd dst/*.ko dst/*.mod dst/*.mod.c dst/*.d \
		.*.cmd Module.symvers modules.order .module-common.o
	cd userspace && $(CARGO) clean
