"""scripts/plans_vs.sh: plans seeded random requests with the swiftmoe strategy at a commit and
from the working tree, lists the requests whose plans differ and weighs them."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "plans_vs.sh"

pytestmark = pytest.mark.skipif(
    shutil.which("go") is None or not (REPO / ".git").exists(), reason="needs go and a git checkout"
)


def _run(*args: str, script: Path = SCRIPT, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(script), *args],
        cwd=script.parents[1],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _worktrees(repo: Path) -> list[str]:
    wt = subprocess.run(
        ["git", "worktree", "list"], cwd=repo, capture_output=True, text=True, check=True
    )
    return wt.stdout.strip().splitlines()


def test_head_plans_alike():
    r = _run("-n", "300", "-c", "150", "HEAD")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "300 requests: 300 planned alike, 0 differ, 0 refused by HEAD alone" in r.stdout, (
        r.stdout
    )
    assert "requests 150 to 299 of 300" in r.stdout  # progress on the way
    assert len(_worktrees(REPO)) == 1  # the reference build's worktree is gone


def test_changed_plans_are_listed_and_weighed(tmp_path):
    """A clone whose refinement tries fewer partners plans some requests differently: they are
    listed, weighed (better and worse by the golden's measures) and the script exits 1."""
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True, timeout=120)
    refine = clone / "plugins" / "swiftmoe" / "refine.go"
    text = refine.read_text()
    assert "refinePartners = 8" in text
    refine.write_text(text.replace("refinePartners = 8", "refinePartners = 7"))
    r = _run("-n", "1000", "HEAD", script=clone / "scripts" / "plans_vs.sh")
    assert r.returncode == 1, r.stdout + r.stderr
    m = re.search(r"1000 requests: (\d+) planned alike, (\d+) differ", r.stdout)
    assert m and int(m[2]) > 0 and int(m[1]) + int(m[2]) == 1000, r.stdout
    w = re.search(r"(\d+) requests weighed: (\d+) better, (\d+) worse \((\d+) beyond", r.stdout)
    assert w and int(w[1]) == int(m[2]), r.stdout
    assert int(w[2]) + int(w[3]) > 0, r.stdout
    assert re.search(r"request \d+: HEAD [0-9a-f]{16}, now [0-9a-f]{16}", r.stdout), r.stdout
    assert len(_worktrees(clone)) == 1


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["no-such-ref-xyz"], r"'no-such-ref-xyz' is not a commit"),
        (["-n", "0", "HEAD"], r"-n and -c take a positive whole number, got '0'"),
        ([], r"give one REF"),
    ],
)
def test_refuses_bad_input_naming_it(args, says):
    r = _run(*args, timeout=60)
    assert r.returncode == 2
    assert re.search(says, r.stderr), r.stderr


def test_help():
    r = _run("-h", timeout=30)
    assert r.returncode == 0
    assert "usage: scripts/plans_vs.sh" in r.stdout and "-n CASES" in r.stdout
