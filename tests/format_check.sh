#!/usr/bin/env bash
# The house style as a test: every C++ file the repository tracks is as clang-format writes it
# (.clang-format at the root). Prints the files that are not, and how to fix them.
set -euo pipefail
root=${1:?usage: format_check.sh SOURCE_DIR}
cd "$root"
command -v clang-format >/dev/null || { echo "clang-format is not installed (testbed/setup.sh installs it)"; exit 1; }
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  mapfile -t files < <(git ls-files '*.cpp' '*.hpp')
else
  mapfile -t files < <(find . -path ./build\* -prune -o \( -name '*.cpp' -o -name '*.hpp' \) -print)
fi
[ "${#files[@]}" -gt 0 ] || { echo "no C++ files found under $root"; exit 1; }
bad=()
for f in "${files[@]}"; do
  clang-format --dry-run -Werror "$f" >/dev/null 2>&1 || bad+=("$f")
done
if [ "${#bad[@]}" -gt 0 ]; then
  echo "${#bad[@]} of ${#files[@]} files are not formatted:"
  printf '  %s\n' "${bad[@]}"
  echo "fix: clang-format -i ${bad[*]}"
  exit 1
fi
echo "all ${#files[@]} C++ files formatted"
