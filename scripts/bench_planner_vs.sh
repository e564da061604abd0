#!/usr/bin/env bash
# Compare the swiftmoe planner's CPU time per plan against another commit, side by side.
#
# usage: scripts/bench_planner_vs.sh [-r ROUNDS] [-n PLANS] [-b REGEX] REF
#
# Builds the planner's benchmark binary at REF (a commit, branch or tag) and from the working
# tree, then runs the one-goroutine benchmarks (GOMAXPROCS=1) of both in turn, ROUNDS times,
# PLANS plans a run, and prints each benchmark's cpu-ns/op per build as min and median over the
# rounds, with new / REF. Alternating the two builds puts both under the same load, so the ratio
# holds on a noisy machine where the absolute times do not. Instruction counts (cachegrind) are
# no substitute: much of a plan's time is mispredicted branches, which they do not see. With -i
# they are printed too (valgrind needed), per plan and exact, for changes that only remove work
# on a machine too noisy for the clock.
set -euo pipefail

rounds=5
plans=600
regex='SwiftMoEPlanSequential(Nodes8|Nodes8Step|Nodes8StepSteady)?$'
usage() {
  sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'
  echo
  echo "options: -r ROUNDS (default $rounds), -n PLANS a run (default $plans),"
  echo "         -b REGEX of benchmarks (default '$regex'),"
  echo "         -i also count instructions per plan (cachegrind; about a minute a benchmark)"
}
instructions=0
while getopts "r:n:b:ih" opt; do
  case $opt in
    r) rounds=$OPTARG ;;
    n) plans=$OPTARG ;;
    b) regex=$OPTARG ;;
    i) instructions=1 ;;
    h) usage; exit 0 ;;
    *) usage >&2; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
if [ $# -ne 1 ]; then
  echo "bench_planner_vs.sh: give one REF to compare against (for example HEAD~3 or main)" >&2
  usage >&2
  exit 2
fi
ref=$1
for v in "$rounds" "$plans"; do
  if ! [[ $v =~ ^[1-9][0-9]*$ ]]; then
    echo "bench_planner_vs.sh: -r and -n take a positive whole number, got '$v'" >&2
    exit 2
  fi
done

if [ "$instructions" = 1 ] && ! command -v valgrind >/dev/null; then
  echo "bench_planner_vs.sh: -i needs valgrind (cachegrind) on the PATH; install it (apt-get install valgrind) or drop -i" >&2
  exit 2
fi

. "$(dirname "$0")/ref_worktree.sh"
ref_worktree bench_planner_vs.sh "$ref" "the planner benchmarks" "benchmark"
(cd "$work/ref/plugins/swiftmoe" && go test -c -o "$work/ref.test" .)
(cd plugins/swiftmoe && go test -c -o "$work/new.test" .)

echo "load average: $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) CPUs; $rounds rounds of $plans plans a run"
: >"$work/results"
for i in $(seq "$rounds"); do
  echo "round $i of $rounds ..."
  for b in ref new; do
    GOMAXPROCS=1 timeout 900 "$work/$b.test" -test.run '^$' -test.bench "$regex" -test.benchtime "${plans}x" |
      awk -v b="$b" '/^Benchmark/ { for (f = 1; f <= NF; f++) if ($(f+1) == "cpu-ns/op") print b, $1, $f }' >>"$work/results"
  done
done

python3 - "$work/results" "$ref" <<'EOF'
import collections, statistics, sys
runs = collections.defaultdict(list)
for line in open(sys.argv[1]):
    build, bench, ns = line.split()
    runs[(bench.rsplit("-", 1)[0], build)].append(float(ns) / 1e6)
benches = sorted({b for b, _ in runs})
if not benches:
    sys.exit("bench_planner_vs.sh: no benchmark matched; check -b")
print(f"\n{'benchmark':48} {'ref ms (min med)':>18} {'new ms (min med)':>18} {'new/ref (med)':>14}")
for b in benches:
    r, n = runs[(b, "ref")], runs[(b, "new")]
    if not r or not n:
        print(f"{b:48} missing in one build")
        continue
    print(f"{b:48} {min(r):8.3f} {statistics.median(r):8.3f} {min(n):8.3f} {statistics.median(n):8.3f} "
          f"{statistics.median(n) / statistics.median(r):14.3f}")
print(f"(ref = {sys.argv[2]})")
EOF

if [ "$instructions" = 1 ]; then
  # Instructions per plan: the difference of runs of 30 and 10 plans over 20, which leaves out
  # the setup both runs share.
  echo
  echo "instructions per plan (cachegrind, the difference of 30 and 10 plans over 20):"
  benches=$("$work/new.test" -test.list "$regex" | grep '^Benchmark' || true)
  for bench in $benches; do
    line="$bench"
    for b in ref new; do
      for n in 10 30; do
        GOMAXPROCS=1 timeout 900 valgrind --tool=cachegrind --cache-sim=no \
          --cachegrind-out-file="$work/cg.$n" "$work/$b.test" -test.run '^$' \
          -test.bench "^$bench\$" -test.benchtime "${n}x" >/dev/null 2>&1
      done
      ir10=$(awk '/^summary:/ { print $2 }' "$work/cg.10")
      ir30=$(awk '/^summary:/ { print $2 }' "$work/cg.30")
      line="$line  $b $(python3 -c "print(f'{($ir30 - $ir10) / 20 / 1e6:.2f} M')")"
    done
    echo "  $line"
  done
fi
