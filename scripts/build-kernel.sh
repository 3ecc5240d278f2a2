#!/usr/bin/env bash
# Build (or reuse) the dst test kernel from Debian's linux-source-6.12.
#
# usage: build-kernel.sh [test|bench|prof|kasan]
#
# test: make check's kernel (lock and memory debugging); bench: make bench's
# (no debugging); prof: the bench kernel plus kallsyms and perf events, for
# profiling with perf in the guest; kasan: the test kernel plus KASAN and
# kmemleak, built with clang (LLVM=1), which KASAN needs to check Rust code.
#
# The build lives outside the work tree, in $DST_CACHE (default
# ~/.cache/dst), keyed by the kernel source version, the config fragments,
# this script and the Rust toolchain, so a second run is instant.  The last
# line printed on stdout is the kernel build directory (KDIR).
set -euo pipefail

flavour=${1:-test}
here=$(cd "$(dirname "$0")" && pwd)
cache=${DST_CACHE:-$HOME/.cache/dst}
export PATH=/usr/bin:$HOME/.cargo/bin:$PATH
RUSTC=/usr/bin/rustc
BINDGEN=$(command -v bindgen)

case "$flavour" in
test) frags=("$here/kconfig/base.config" "$here/kconfig/debug.config") ;;
bench) frags=("$here/kconfig/base.config") ;;
prof) frags=("$here/kconfig/base.config" "$here/kconfig/prof.config") ;;
kasan) frags=("$here/kconfig/base.config" "$here/kconfig/debug.config" "$here/kconfig/kasan.config") ;;
*) echo "build-kernel: unknown flavour '$flavour' (test|bench|prof|kasan)" >&2; exit 2 ;;
esac
# The make variables that choose the compilers (build-module.sh uses the same).
llvm=()
[ "$flavour" != kasan ] || llvm=(LLVM=1)

tarball=/usr/src/linux-source-6.12.tar.xz
[ -f "$tarball" ] || { echo "build-kernel: $tarball missing; run scripts/install-deps.sh" >&2; exit 1; }
srcver=$(dpkg-query -W -f='${Version}' linux-source-6.12)

key=$( {
	echo "$srcver"
	cat "${frags[@]}" "$0"
	"$RUSTC" --version
	"$BINDGEN" --version
	gcc --version | head -1
	[ ${#llvm[@]} = 0 ] || clang --version | head -1
} | sha256sum | cut -c1-16)

src=$cache/linux-$srcver
out=$cache/kbuild-$flavour-$key
mkdir -p "$cache"

exec 9>"$cache/.lock"
flock 9

if [ -f "$out/.dst-done" ]; then
	echo "$out"
	exit 0
fi

if [ ! -f "$src/.dst-extracted" ]; then
	echo "build-kernel: extracting $tarball" >&2
	rm -rf "$src" "$src.tmp"
	mkdir -p "$src.tmp"
	tar -C "$src.tmp" --strip-components=1 -xf "$tarball"
	touch "$src.tmp/.dst-extracted"
	mv "$src.tmp" "$src"
fi

# Old builds of this flavour are superseded.
rm -rf "$cache"/kbuild-"$flavour"-*
mkdir -p "$out"
log=$out/build.log
kmake() {
	make -C "$src" O="$out" RUSTC="$RUSTC" HOSTRUSTC="$RUSTC" BINDGEN="$BINDGEN" ${llvm[@]+"${llvm[@]}"} "$@"
}

echo "build-kernel: configuring ($flavour) in $out" >&2
kmake tinyconfig >"$log" 2>&1
"$src/scripts/kconfig/merge_config.sh" -m -O "$out" "$out/.config" "${frags[@]}" >>"$log" 2>&1
kmake olddefconfig >>"$log" 2>&1

# merge_config silently drops options whose dependencies are unmet: check.
bad=0
while IFS= read -r line; do
	case "$line" in
	CONFIG_*=n) opt=${line%%=*}
		if grep -q "^$opt=" "$out/.config"; then echo "build-kernel: $opt should be off" >&2; bad=1; fi ;;
	CONFIG_*=*) if ! grep -qx "$line" "$out/.config"; then
			echo "build-kernel: wanted $line, got: $(grep "^${line%%=*}=\|${line%%=*} is not set" "$out/.config" || echo nothing)" >&2
			bad=1
		fi ;;
	esac
done < <(cat "${frags[@]}")
[ $bad = 0 ] || exit 1

echo "build-kernel: building (log: $log); this takes a few minutes" >&2
start=$(date +%s)
if ! kmake -j"$(nproc)" bzImage modules >>"$log" 2>&1; then
	tail -40 "$log" >&2
	echo "build-kernel: kernel build failed" >&2
	exit 1
fi
rm -rf "$out/mods"
kmake INSTALL_MOD_PATH="$out/mods" modules_install >>"$log" 2>&1
echo "build-kernel: built in $(($(date +%s) - start)) s" >&2
touch "$out/.dst-done"
echo "$out"
