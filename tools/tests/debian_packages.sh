#!/usr/bin/env bash
# tools/debian-packages.txt is the one list of the Debian packages Flotilla
# needs (tools/setup.sh installs from it). Check that it parses into its
# three sections, lists nothing twice, and names the package of every
# program the tests, benchmarks and plugins run by absolute path (a missing
# one made a test skip on a fresh machine instead of running).
#   debian_packages.sh SOURCE_DIR
set -euo pipefail
src=$1
list=$src/tools/debian-packages.txt
fail=0
problem() { echo "$list: $*"; fail=1; }

lineno=0
while IFS= read -r line; do
  lineno=$((lineno + 1))
  case "$line" in
    ''|'#'*|'['start']'|'['test']'|'['bench']') ;;
    *) [[ "$line" =~ ^[a-z0-9][a-z0-9+.-]+$ ]] || problem "line $lineno: not a package name or a section: \"$line\"" ;;
  esac
done <"$list"

declare -A section_of=()
for s in start test bench; do
  mapfile -t pkgs < <("$src/tools/setup.sh" packages "$s")
  [ ${#pkgs[@]} -gt 0 ] || problem "section [$s] lists no packages"
  for p in "${pkgs[@]}"; do
    [ -z "${section_of[$p]:-}" ] || problem "$p is listed twice ([${section_of[$p]}] and [$s])"
    section_of[$p]=$s
  done
done

# Programs named by absolute path in the sources: each must come from a
# listed package (dpkg -S names the package that installed the file).
mapfile -t progs < <(cd "$src" && grep -rhoE '"/usr/s?bin/[a-z0-9_.+-]+' \
  core plugins lib tests tools --include='*.cc' --include='*.h' --include='*.sh' |
  tr -d '"' | sort -u)
[ ${#progs[@]} -gt 0 ] || problem "found no program paths in the sources (the search is broken)"
for prog in "${progs[@]}"; do
  [ -e "$prog" ] || { problem "$prog is run by the sources but is not on this machine: list its package"; continue; }
  # Debian 12 merges /usr: dpkg may know the file as /bin/... or by its target.
  owner=""
  for f in "$prog" "${prog#/usr}" "$(readlink -f "$prog")"; do
    owner=$(dpkg -S "$f" 2>/dev/null | head -n 1) && break
  done
  owner=${owner%%:*}
  [ -n "$owner" ] || { problem "$prog belongs to no Debian package"; continue; }
  found=0
  for p in ${owner//,/ }; do
    [ -n "${section_of[$p]:-}" ] && found=1
    # Essential packages are on every Debian system.
    [ "$(dpkg-query -W -f='${Essential}' "$p" 2>/dev/null)" = yes ] && found=1
  done
  [ $found = 1 ] || problem "$prog comes from package $owner, which is not listed"
done

[ $fail = 0 ] && echo "tools/debian-packages.txt: ${#section_of[@]} packages, every program path accounted for (${#progs[@]})"
exit $fail
