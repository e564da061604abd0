#!/usr/bin/env bash
# Compare the swiftmoe strategy's plans with another commit's, request by request.
#
# usage: scripts/plans_vs.sh [-n CASES] [-c CHUNK] REF
#
# Plans CASES seeded random requests (plugins/swiftmoe/plandigest_test.go: one to three layers,
# up to 32 nodes and 300 experts, step time with bursts and load windows, the strategy's options,
# plans in force off their limits) with the strategy at REF (a commit, branch or tag) and from
# the working tree, and lists the requests whose plans differ. A change meant to leave every
# plan as it was (a faster planner) is held to that here over far more requests than the plan
# quality golden's 412. Where plans differ, it weighs them as the golden weighs its cases (a
# layer planned for step time by its estimated step time, any other by max_over_mean, both by
# the working tree's figures): how many requests got better or worse, and by how much. It
# copies plandigest_test.go into REF's tree, so REF needs only the strategy's New and the sdk.
# Exits 1 when a plan differs.
set -euo pipefail

cases=20000
chunk=2000
usage() {
  sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'
  echo
  echo "options: -n CASES requests (default $cases), -c CHUNK requests a progress step (default $chunk)"
}
while getopts "n:c:h" opt; do
  case $opt in
    n) cases=$OPTARG ;;
    c) chunk=$OPTARG ;;
    h) usage; exit 0 ;;
    *) usage >&2; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
if [ $# -ne 1 ]; then
  echo "plans_vs.sh: give one REF to compare against (for example HEAD~3 or main)" >&2
  usage >&2
  exit 2
fi
ref=$1
for v in "$cases" "$chunk"; do
  if ! [[ $v =~ ^[1-9][0-9]*$ ]]; then
    echo "plans_vs.sh: -n and -c take a positive whole number, got '$v'" >&2
    exit 2
  fi
done

. "$(dirname "$0")/ref_worktree.sh"
ref_worktree plans_vs.sh "$ref" "the strategy's tests" "compare plans with"
cp plugins/swiftmoe/plandigest_test.go "$work/ref/plugins/swiftmoe/"
# REF's own weighing (a later REF's) is not needed there, and may not build with this generator.
rm -f "$work/ref/plugins/swiftmoe/plandigest_quality_test.go"
if ! (cd "$work/ref/plugins/swiftmoe" && go test -c -o "$work/ref.test" . 2>"$work/build.log"); then
  cat "$work/build.log" >&2
  echo "plans_vs.sh: the request generator does not build at $ref (above); pick a later commit" >&2
  exit 2
fi
(cd plugins/swiftmoe && go test -c -o "$work/new.test" .)

: >"$work/ref.txt"
: >"$work/new.txt"
for ((first = 0; first < cases; first += chunk)); do
  n=$((cases - first < chunk ? cases - first : chunk))
  echo "requests $first to $((first + n - 1)) of $cases ..."
  # The two builds side by side, one core each.
  for b in ref new; do
    PLAN_DIGESTS_OUT="$work/$b.part" PLAN_DIGESTS=$n PLAN_DIGESTS_FIRST=$first \
      timeout 1800 "$work/$b.test" -test.run '^TestPlanDigests$' -test.count 1 -test.timeout 30m \
      >"$work/$b.log" 2>&1 &
  done
  for b in ref new; do
    if ! wait -n; then
      cat "$work/ref.log" "$work/new.log" >&2
      echo "plans_vs.sh: a build's digest run failed (its output above)" >&2
      exit 2
    fi
  done
  cat "$work/ref.part" >>"$work/ref.txt"
  cat "$work/new.part" >>"$work/new.txt"
done

status=0
python3 - "$work/ref.txt" "$work/new.txt" "$ref" "$work/differ.txt" <<'EOF' || status=$?
import sys
def read(path):
    out = {}
    for line in open(path):
        case, rest = line.rstrip("\n").split(" ", 1)
        out[int(case)] = rest
    return out
ref, new, name = read(sys.argv[1]), read(sys.argv[2]), sys.argv[3]
same = [c for c in new if ref.get(c) == new[c]]
refused = [c for c in new if ref[c].startswith("ERR") and not new[c].startswith("ERR")]
differ = [c for c in new if ref[c] != new[c] and c not in refused]
print(f"\n{len(new)} requests: {len(same)} planned alike, {len(differ)} differ, "
      f"{len(refused)} refused by {name} alone")
if refused:
    print(f"  {name} refused (an option or input it does not take), e.g. request {refused[0]}: {ref[refused[0]]}")
for c in differ[:10]:
    print(f"  request {c}: {name} {ref[c]}, now {new[c]}")
if len(differ) > 10:
    print(f"  ... and {len(differ) - 10} more")
if differ:
    print(f"  (to see request N: PLAN_DIGESTS_OUT=/tmp/request.txt PLAN_DIGESTS=1 PLAN_DIGESTS_FIRST=N "
          f"PLAN_DIGESTS_SHOW=1 go test ./plugins/swiftmoe -run '^TestPlanDigests$' -count=1; "
          f"cat /tmp/request.txt)")
# The requests both builds planned, with plans that differ, to weigh.
weigh = [c for c in differ if not ref[c].startswith("ERR") and not new[c].startswith("ERR")]
with open(sys.argv[4], "w") as f:
    f.write(",".join(str(c) for c in weigh[:5000]))
sys.exit(1 if differ else 0)
EOF
if [ -s "$work/differ.txt" ]; then
  # The plans that differ, weighed as the plan quality golden weighs its cases (a layer planned for
  # step time by its estimated step time, any other by max_over_mean), by this build's figures.
  echo
  echo "weighing the plans that differ (at most 5,000 requests) ..."
  if ! PLAN_DIGESTS_OUT="$work/ref.plans" PLAN_DIGESTS_CASES=$(cat "$work/differ.txt") PLAN_DIGESTS_PLANS=1 \
    timeout 1800 "$work/ref.test" -test.run '^TestPlanDigests$' -test.count 1 -test.timeout 30m >"$work/ref.log" 2>&1; then
    cat "$work/ref.log" >&2
    echo "plans_vs.sh: $ref could not write its plans (above)" >&2
    exit 2
  fi
  if ! PLAN_DIGESTS_REF_PLANS="$work/ref.plans" PLAN_DIGESTS_QUALITY_OUT="$work/quality.txt" \
    timeout 1800 "$work/new.test" -test.run '^TestPlanDigestsQuality$' -test.count 1 -test.timeout 30m >"$work/new.log" 2>&1; then
    cat "$work/new.log" >&2
    echo "plans_vs.sh: the working tree could not weigh the plans (above)" >&2
    exit 2
  fi
  tail -n 1 "$work/quality.txt"
  echo "the requests whose worst layer is the most worse (new/ref):"
  grep '^request' "$work/quality.txt" | sort -t'(' -k2 -r | head -n 5 | sed 's/^/  /'
fi
exit $status
