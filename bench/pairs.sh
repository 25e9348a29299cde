# Sourced by the bench scripts: runs two Go benchmarks of one test binary
# in turn (A B A B ...), one timed iteration each, so drift in the
# machine's speed hits both alike, and prints their medians side by side.
#
#   pairs RUNS TEST_BINARY LABEL_A BENCH_A LABEL_B BENCH_B

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
  printf '  %-44s median %7.3f s   (runs: %s)\n' "$label_a" "$(median <<<"${all_a%$'\n'}")" "$(tr '\n' ' ' <<<"${all_a%$'\n'}")"
  printf '  %-44s median %7.3f s   (runs: %s)\n' "$label_b" "$(median <<<"${all_b%$'\n'}")" "$(tr '\n' ' ' <<<"${all_b%$'\n'}")"
  printf '  %-44s median %7.2f\n' "ratio first/second, pair by pair" "$(median <<<"${ratios%$'\n'}")"
}
