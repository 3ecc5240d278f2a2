#!/usr/bin/env bash
# Build dst.ko against one of the kernels of build-kernel.sh (default: test).
#
# usage: build-module.sh [test|bench|prof|kasan] [make args...]
#
# The test flavour builds in the work tree (dst/dst.ko); the other kernels
# have a different config (no lockdep; or KASAN and clang), so their module
# is built in a fresh copy of the sources under the cache, and kept there
# as module-FLAVOUR/dst-HASH.ko (HASH: of its contents), so that two runs at
# once (two `make bench`) never replace the module the other is loading.
# Kept modules older than a day are removed.  Warnings fail the build.  The
# last line printed on stdout is the path of dst.ko.
set -euo pipefail

flavour=${1:-test}
shift || true
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
cache=${DST_CACHE:-$HOME/.cache/dst}
export PATH=/usr/bin:$HOME/.cargo/bin:$PATH

kdir=$("$here/build-kernel.sh" "$flavour" | tail -1)

src=$repo log=$(mktemp)
trap 'rm -f "$log"; [ "$src" = "$repo" ] || rm -rf "$src"' EXIT
case "$flavour" in
test) ;;
bench|prof|kasan)
	mkdir -p "$cache"
	src=$(mktemp -d "$cache/module-$flavour.build.XXXXXX")
	mkdir -p "$src/dst" "$src/userspace/dst-proto"
	cp "$repo/Kbuild" "$src/"
	cp "$repo"/dst/Kbuild "$repo"/dst/*.rs "$repo"/dst/*.c "$repo"/dst/*.h "$src/dst/"
	cp -r "$repo/userspace/dst-proto/src" "$src/userspace/dst-proto/"
	;;
*) echo "build-module: unknown flavour '$flavour' (test|bench|prof|kasan)" >&2; exit 2 ;;
esac
# The kernel's compilers (see build-kernel.sh).
llvm=()
[ "$flavour" != kasan ] || llvm=(LLVM=1)

if ! make -C "$kdir" M="$src" RUSTC=/usr/bin/rustc HOSTRUSTC=/usr/bin/rustc \
	${llvm[@]+"${llvm[@]}"} "$@" modules >"$log" 2>&1; then
	cat "$log" >&2
	echo "build-module: build failed" >&2
	exit 1
fi
if grep -qE '(^|[^a-z_])(warning|error)(\[|:)' "$log"; then
	cat "$log" >&2
	echo "build-module: the build has warnings" >&2
	exit 1
fi
[ "$src" != "$repo" ] || { echo "$src/dst/dst.ko"; exit 0; }
keep=$cache/module-$flavour
mkdir -p "$keep"
find "$keep" -maxdepth 1 -name 'dst-*.ko' -mmin +1440 -delete 2>/dev/null || true
# What the layout before this one left (a build tree in the directory).
find "$keep" -mindepth 1 -maxdepth 1 ! -name 'dst-*.ko*' -exec rm -rf {} + 2>/dev/null || true
ko=$keep/dst-$(sha256sum "$src/dst/dst.ko" | cut -c1-16).ko
# A rename, so that a reader sees the whole file or none.
cp "$src/dst/dst.ko" "$ko.tmp.$$"
mv -f "$ko.tmp.$$" "$ko"
echo "$ko"
