# Sourced by the bench scripts: runs two Go benchmarks of one test binary
# in turn (A B A B ...), one timed iteration each, so drift in the
# machine's speed hits both alike, and prints their medians side by side.
#
#   pairs RUNS TEST_BINARY LABEL_A BENCH_A LABEL_B BENCH_B
#
# With PAIRS_BYTES set (the bytes one iteration moves), each median is
# also printed as MB/s (10^6 bytes a second).

# bench_seconds BINARY NAME: the seconds of one iteration of benchmark NAME.
bench_seconds() {
  local out
  out=$("$1" -test.run '^$' -test.bench "^$2\$" -test.benchtime 1x 2>&1) || { echo "$out" >&2; return 1; }
  awk '$1 ~ /^Benchmark/ && $4 == "ns/op" { printf "%.3f\n", $3 / 1e9; found = 1 }
       END { if (!found) exit 1 }' <<<"$out" || { echo "$2: no result (skipped?):" >&2; echo "$out" >&2; return 1; }
}

median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

pairs() {
  local runs=$1 bin=$2 label_a=$3 a=$4 label_b=$5 b=$6 i ta tb all_a= all_b= ratios=
  for ((i = 1; i <= runs; i++)); do
    ta=$(bench_seconds "$bin" "$a")
    tb=$(bench_seconds "$bin" "$b")
    all_a+="$ta"$'\n' all_b+="$tb"$'\n'
    ratios+=$(awk -v a="$ta" -v b="$tb" 'BEGIN { printf "%.3f", a / b }')$'\n'
  done
  local side label all m
  for side in a b; do
    [[ $side == a ]] && label=$label_a all=${all_a%$'\n'} || label=$label_b all=${all_b%$'\n'}
    m=$(median <<<"$all")
    printf '  %-44s median %7.3f s%s   (runs: %s)\n' "$label" "$m" \
      "${PAIRS_BYTES:+$(awk -v b="$PAIRS_BYTES" -v s="$m" 'BEGIN { printf ", %6.0f MB/s", b / s / 1e6 }')}" "$(tr '\n' ' ' <<<"$all")"
  done
  printf '  %-44s median %7.2f\n' "ratio first/second, pair by pair" "$(median <<<"${ratios%$'\n'}")"
}
