"""Tests of the ``swiftmoe`` command (doctor, plan) against a fake sidecar binary."""

from __future__ import annotations

import hashlib
import json
import sys
import textwrap

import pytest

from swiftmoe import cli

REPORT = {
    "hostname": "h",
    "gpu_count": 0,
    "gpus": [],
    "nvml": {"available": False, "reason": "libnvidia-ml.so.1 not found"},
    "nics": [
        {"name": "lo", "oper_state": "unknown", "is_loopback": True},
        {"name": "eth0", "oper_state": "up", "is_loopback": False},
    ],
    "rdma_devices": [],
    "defaults": {"intra_node_bandwidth": 0, "inter_node_bandwidth": 12.5e9},
}


@pytest.fixture
def fake_bin(tmp_path, monkeypatch):
    """A folder like swiftmoe/_bin: a fake sidecar, one plugin and SHA256SUMS."""
    d = tmp_path / "_bin"
    d.mkdir()
    sidecar = d / "swiftmoe-sidecar"
    sidecar.write_text(
        f"#!{sys.executable}\n"
        + textwrap.dedent(
            f"""
            import json, os, sys
            if sys.argv[1:] == ["discover", "--json"]:
                if os.environ.get("FAKE_DISCOVER_FAIL"):
                    print("discover broke", file=sys.stderr)
                    sys.exit(1)
                print(json.dumps({REPORT!r}))
                sys.exit(0)
            if sys.argv[1] == "plan":
                print("plan args:", " ".join(sys.argv[2:]))
                sys.exit(7)
            sys.exit(9)
            """
        )
    )
    plugin = d / "swiftmoe-strategy-static"
    plugin.write_text("#!/bin/sh\nexit 0\n")
    for p in (sidecar, plugin):
        p.chmod(0o755)
    sums = "".join(
        f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.name}\n" for p in (sidecar, plugin)
    )
    (d / "SHA256SUMS").write_text(sums)
    monkeypatch.setenv("SWIFTMOE_SIDECAR", str(sidecar))
    monkeypatch.delenv("SWIFTMOE_PLUGINS_DIR", raising=False)
    monkeypatch.delenv("FAKE_DISCOVER_FAIL", raising=False)
    return d


def doctor_json(capsys) -> tuple[int, dict]:
    rc = cli.main(["doctor", "--json", "--timeout", "20"])
    out = json.loads(capsys.readouterr().out)
    return rc, {c["name"]: c for c in out["checks"]} | {"_ok": out["ok"]}


def test_doctor_all_good(fake_bin, capsys):
    rc, checks = doctor_json(capsys)
    assert rc == 0 and checks["_ok"] is True
    assert (
        checks["checksums"]["status"] == "ok"
        and "2 binaries match" in checks["checksums"]["detail"]
    )
    assert "swiftmoe-strategy-static" in checks["sidecar"]["detail"]
    assert checks["gpus"]["status"] == "note" and "libnvidia-ml.so.1" in checks["gpus"]["detail"]
    assert "up: eth0" in checks["network"]["detail"]
    assert "inter-node 12.5 GB/s" in checks["bandwidth"]["detail"]
    assert "gloo yes" in checks["torch"]["detail"]


def test_doctor_reports_tampered_binary_and_fix(fake_bin, capsys):
    (fake_bin / "swiftmoe-strategy-static").write_text("#!/bin/sh\nexit 1\n")
    (fake_bin / "swiftmoe-strategy-extra").write_text("x")
    rc, checks = doctor_json(capsys)
    assert rc == 1 and checks["_ok"] is False
    c = checks["checksums"]
    assert c["status"] == "FAIL" and "swiftmoe-strategy-static does not match" in c["detail"]
    assert "swiftmoe-strategy-extra is not listed" in c["detail"] and "reinstall" in c["fix"]


def test_doctor_reports_failed_discovery(fake_bin, capsys, monkeypatch):
    monkeypatch.setenv("FAKE_DISCOVER_FAIL", "1")
    rc, checks = doctor_json(capsys)
    assert rc == 1 and checks["discovery"]["status"] == "FAIL"
    assert "discover broke" in checks["discovery"]["detail"]


def test_doctor_without_sidecar_says_how_to_get_it(tmp_path, capsys, monkeypatch):
    from swiftmoe.planning import binaries as sc

    monkeypatch.delenv("SWIFTMOE_SIDECAR", raising=False)
    monkeypatch.setattr(sc, "_PKG_DIR", tmp_path / "pkg")
    monkeypatch.setattr(sc, "_REPO_DIR", tmp_path / "repo")
    assert cli.main(["doctor"]) == 1
    out = capsys.readouterr().out
    assert "[FAIL] sidecar" in out and "make build" in out and "1 problem(s): sidecar" in out


def test_plan_passes_arguments_through(fake_bin, capfd):
    rc = cli.main(["plan", "--strategy", "static", "--world-size", "4", "--help"])
    assert rc == 7  # the sidecar's own exit status
    assert "plan args: --strategy static --world-size 4 --help" in capfd.readouterr().out


def test_help_everywhere(capsys):
    for argv in (["--help"], ["doctor", "--help"]):
        with pytest.raises(SystemExit) as ei:
            cli.main(argv)
        assert ei.value.code == 0
        assert "usage: swiftmoe" in capsys.readouterr().out
    assert cli.main([]) == 2
    assert "doctor" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli.main(["doctor", "--timeout", "0"])
