#!/usr/bin/env bash
# Install everything dst needs to build and test, on Debian 12 (root).
# Idempotent: a second run only checks and returns quickly.
set -euo pipefail

PKGS=(
	# kernel build
	linux-source-6.12 rustc-web rust-web-src cargo-web rust-web-clippy rustfmt-web
	clang libclang-dev lld llvm
	flex bison bc libelf-dev libssl-dev cpio xz-utils make gcc libc6-dev
	# VM
	qemu-system-x86 qemu-utils
	# test peers and tools
	fio nbdkit libnbd-bin nbd-client nbd-server mdadm xfsprogs e2fsprogs
	nftables iptables iproute2 kmod util-linux python3 procps jq dmsetup mount
	udev fdisk
)

need=()
for p in "${PKGS[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || need+=("$p")
done

if [ ${#need[@]} -gt 0 ]; then
	echo "install-deps: installing ${need[*]}"
	export DEBIAN_FRONTEND=noninteractive
	# The security suite carries linux-source-6.12 and rustc-web 1.96.
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# Services some packages start on install are not wanted on the host.
for s in nbd-server mdadm mdmonitor; do
	if command -v systemctl >/dev/null 2>&1 && systemctl is-active -q "$s" 2>/dev/null; then
		systemctl stop "$s" || true
	fi
done

# One Rust toolchain for everything: Debian's 1.96 (rustc-web, cargo-web,
# clippy, rustfmt) builds the kernel, dst.ko, dstctl and bindgen.
export PATH=/usr/bin:$HOME/.cargo/bin:$PATH
BINDGEN_VERSION=0.73.0
if ! bindgen --version 2>/dev/null | grep -q "$BINDGEN_VERSION"; then
	echo "install-deps: cargo install bindgen-cli $BINDGEN_VERSION"
	/usr/bin/cargo install --locked --quiet bindgen-cli --version "$BINDGEN_VERSION"
fi
echo "install-deps: ok"
