# shellcheck shell=bash
# Finding test files, for the runners run.sh (in the VM) and net.sh (on
# the host).
#
#   select_tests DIR [TEST...]  the files to run, one per line: all of
#                               DIR/*.sh, or each TEST as a name in DIR
#                               (with or without ".sh" and DIR's own name
#                               as a prefix, e.g. net/tree) or a path;
#                               unknown names are printed as-is (and then
#                               fail)
#   file_timeout FILE DEFAULT   the value of FILE's "# timeout: N" line, or
#                               DEFAULT
#   test_name FILE              the test's name, FILE's without ".sh" (also
#                               what run.sh --queue takes a test by)

select_tests() {
	local dir=$1 t
	shift
	if [ $# -eq 0 ]; then
		printf '%s\n' "$dir"/*.sh
		return
	fi
	for t in "$@"; do
		t=${t#"$(basename "$dir")"/}
		t=${t%.sh}
		if [ -f "$dir/$t.sh" ]; then
			echo "$dir/$t.sh"
		elif [ -f "$t.sh" ]; then
			(cd "$(dirname "$t")" && echo "$(pwd -P)/$(basename "$t").sh")
		else
			echo "$t"
		fi
	done
}

file_timeout() {
	local t
	t=$(sed -n 's/^# timeout: *\([0-9][0-9]*\).*/\1/p' "$1" | head -n 1)
	echo "${t:-$2}"
}

test_name() {
	basename "$1" .sh
}
