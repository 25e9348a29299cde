#!/usr/bin/env bash
# Prints, side by side in one run, the backup package's export and import
# of a real directory tree against tar of the same tree (issue 16's goals:
# full backup and restore ≤ 1.5× tar, an incremental backup after a small
# change ≤ 0.1× the full one). The tree is what `ssbuild backup` reads for
# a database and its volumes: a pg_dump (plain SQL) of a PostgreSQL 15
# database made by Debian's initdb and filled by pgbench -i -s $SCALE, plus
# /usr/share/doc and /usr/share/locale as volume files (many small text
# files, binary .mo files). The small change: 100 rows inserted and the
# database dumped again, one file added. Each side ends with its data on
# disk (syncfs / sync -f). The pg_dump itself runs outside both sides (its
# time is printed last). The 3-host deploy bed is not used: forming it
# costs minutes and the demo's volumes hold a few KiB.
# Usage (root): bash bench/backup.sh [RUNS]   (RUNS pairs, default 3; SCALE=16)
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/pairs.sh
runs=${1:-3} scale=${SCALE:-16}
export GOFLAGS=${GOFLAGS:--tags=libsqlite3} CGO_LDFLAGS_ALLOW=${CGO_LDFLAGS_ALLOW:--Wl,-z,now}
pgbin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
work=$(mktemp -d /var/tmp/ssbuild-bench-backup.XXXXXX)
pg() { runuser -u postgres -- "$pgbin/$@"; }
trap 'pg pg_ctl -D "$work/pg" -m fast -w stop >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
chmod 755 "$work"
mkdir -p "$work/pg" "$work/sock" "$work/data/db"
chown postgres "$work/pg" "$work/sock"
pg initdb -D "$work/pg" -A trust >/dev/null
pg pg_ctl -D "$work/pg" -o "-k $work/sock -c listen_addresses=''" -w start >/dev/null
pg pgbench -h "$work/sock" -i -q -s "$scale" postgres >/dev/null 2>&1
pg pg_dump -h "$work/sock" postgres >"$work/data/db/dump.sql"
cp -a /usr/share/doc "$work/data/doc"
cp -a /usr/share/locale "$work/data/locale"
change="$work/change.sh"
cat >"$change" <<SH
set -e
runuser -u postgres -- $pgbin/psql -h $work/sock -q -c "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) SELECT 1, 1, g, g, now() FROM generate_series(1, 100) g" postgres
runuser -u postgres -- $pgbin/pg_dump -h $work/sock postgres >$work/data/db/dump.sql
date +%s.%N >$work/data/doc/added-\$(date +%s%N)
SH
bin="$work/backup.test"
go test -c -o "$bin" ./appliance/backup/
export SSBUILD_BENCH_DATA="$work/data" SSBUILD_BENCH_CHANGE="sh $change"
echo "tree: $(du -sm "$work/data" | cut -f1) MiB, $(find "$work/data" -type f | wc -l) files (pg_dump $(du -sm "$work/data/db/dump.sql" | cut -f1) MiB of PostgreSQL $(basename "$(dirname "$pgbin")") pgbench -s $scale, /usr/share/doc, /usr/share/locale); $runs pairs; $(nproc) cores, load $(cut -d' ' -f1 /proc/loadavg)"
echo "full backup vs tar -c (goal ≤ 1.5):"
pairs "$runs" "$bin" "backup (chunk, BLAKE3, S2, age, syncfs)" BenchmarkBackupFull "tar -cf + sync" BenchmarkTarCreate
echo "restore vs tar -x (goal ≤ 1.5):"
pairs "$runs" "$bin" "restore (verify+decrypt all, then tar -x)" BenchmarkRestore "tar -xf + sync" BenchmarkTarExtract
echo "incremental after 100 rows + 1 file vs full (goal ≤ 0.1):"
pairs "$runs" "$bin" "incremental backup into the same folder" BenchmarkBackupIncremental "full backup into a new folder" BenchmarkBackupFull
echo "incremental vs reading the tar stream alone (the floor before the files cache, when the whole tree was streamed):"
pairs "$runs" "$bin" "incremental backup into the same folder" BenchmarkBackupIncremental "tar -c of the tree, read and dropped" BenchmarkTarStream
"$bin" -test.run '^$' -test.bench '^BenchmarkBackupIncremental$' -test.benchtime 1x 2>&1 | awk '/^Benchmark/ { $1 = "  one incremental:"; $2 = ""; print }'
# Not in the figures above (both sides start from the dump file): the
# pg_dump every backup runs first, full or incremental.
dumps=
for ((i = 1; i <= runs; i++)); do
  s=$(date +%s.%N)
  pg pg_dump -h "$work/sock" postgres >"$work/dump-again.sql"
  sync -f "$work/dump-again.sql"
  dumps+=$(awk -v s="$s" -v e="$(date +%s.%N)" 'BEGIN { printf "%.3f", e - s }')$'\n'
done
rm -f "$work/dump-again.sql"
printf '  %-44s median %7.3f s   (runs: %s)\n' "pg_dump of the database (each backup's first step)" "$(median <<<"${dumps%$'\n'}")" "$(tr '\n' ' ' <<<"${dumps%$'\n'}")"
