# Sourced by the scripts that compare the working tree with another commit
# (bench_planner_vs.sh, plans_vs.sh): ref_worktree NAME REF WHAT PURPOSE checks
# out REF into $work/ref (a temporary folder it makes, removed on exit) and
# sets commit to REF's hash; NAME prefixes its errors, WHAT says what is
# built, PURPOSE what REF's plugins/swiftmoe is for (it must have one). It
# runs from the repository root.
ref_worktree() {
  local name=$1 ref=$2 what=$3 purpose=$4
  cd "$(dirname "${BASH_SOURCE[0]}")/.."
  if ! commit=$(git rev-parse --verify --quiet "$ref^{commit}"); then
    echo "$name: '$ref' is not a commit in this repository (try a hash, a branch or HEAD~N)" >&2
    exit 2
  fi
  work=$(mktemp -d)
  trap 'git worktree remove --force "$work/ref" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
  echo "building $what at $ref (${commit:0:12}) and from the working tree ..."
  git worktree add --detach --quiet "$work/ref" "$commit"
  if [ ! -d "$work/ref/plugins/swiftmoe" ]; then
    echo "$name: '$ref' has no plugins/swiftmoe to $purpose; pick a later commit" >&2
    exit 2
  fi
}
