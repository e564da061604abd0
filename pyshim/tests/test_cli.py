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
    assert checks["native"]["status"] in ("ok", "note")  # loaded, or the NumPy decision runs
    assert checks["native"]["detail"].startswith("C burst decision and split ")


def test_doctor_says_how_the_native_code_was_turned_off_or_broken(fake_bin, capsys, monkeypatch):
    from swiftmoe.engine import native

    monkeypatch.setenv(native.ENV_SWITCH, "0")
    native.reset()
    rc, checks = doctor_json(capsys)
    c = checks["native"]
    assert rc == 0 and c["status"] == "note" and "turned off" in c["detail"], c
    assert c["fix"] == "unset $SWIFTMOE_NATIVE", c
    monkeypatch.delenv(native.ENV_SWITCH)
    monkeypatch.setenv(native.ENV_LIB, str(fake_bin / "swiftmoe-sidecar"))  # not a library
    native.reset()
    rc, checks = doctor_json(capsys)
    c = checks["native"]
    assert rc == 1 and c["status"] == "FAIL" and "SWIFTMOE_NATIVE_LIB" in c["fix"], c
    native.reset()


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


# ---- plugin digests: the user's plugins directory and the pins of checkpoints ----------------


def _user_plugins(tmp_path, fake_bin, sums: bool):
    d = tmp_path / "my-plugins"
    d.mkdir()
    mine = d / "swiftmoe-strategy-mine"
    mine.write_text("#!/bin/sh\nexit 0\n")
    copy = d / "swiftmoe-strategy-static"
    copy.write_bytes((fake_bin / "swiftmoe-strategy-static").read_bytes())
    for p in (mine, copy):
        p.chmod(0o755)
    if sums:
        (d / "SHA256SUMS").write_text(
            "".join(
                f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.name}\n" for p in (mine, copy)
            )
        )
    return d


def test_doctor_hashes_user_plugins_against_their_sha256sums(
    fake_bin, tmp_path, capsys, monkeypatch
):
    d = _user_plugins(tmp_path, fake_bin, sums=True)
    monkeypatch.setenv("SWIFTMOE_PLUGINS_DIR", str(d))
    rc, checks = doctor_json(capsys)
    assert rc == 0 and checks["user plugins"]["status"] == "ok", checks["user plugins"]
    assert "swiftmoe-strategy-mine" in checks["user plugins"]["detail"]
    assert "plugin copies" not in checks
    (d / "swiftmoe-strategy-mine").write_text("#!/bin/sh\nexit 3\n")
    (d / "swiftmoe-strategy-other").write_text("x")
    rc, checks = doctor_json(capsys)
    c = checks["user plugins"]
    assert rc == 1 and c["status"] == "FAIL", c
    assert "swiftmoe-strategy-mine does not match its sha256" in c["detail"]
    assert "swiftmoe-strategy-other is not listed" in c["detail"]
    assert "the sidecar refuses such plugins" in c["detail"]
    assert "sha256sum swiftmoe-strategy-* > SHA256SUMS" in c["fix"]


def test_doctor_without_sha256sums_notes_digests_and_changed_copies(fake_bin, tmp_path, capsys):
    d = _user_plugins(tmp_path, fake_bin, sums=False)
    (d / "swiftmoe-strategy-static").write_text("#!/bin/sh\nexit 5\n")  # not the bundled build
    rc = cli.main(["doctor", "--json", "--timeout", "20", "--plugins-dir", str(d)])
    out = json.loads(capsys.readouterr().out)
    checks = {c["name"]: c for c in out["checks"]}
    assert rc == 0, checks
    c = checks["user plugins"]
    want = hashlib.sha256((d / "swiftmoe-strategy-mine").read_bytes()).hexdigest()[:12]
    assert c["status"] == "note" and f"swiftmoe-strategy-mine {want}" in c["detail"], c
    assert "pins each plugin's digest at first load" in c["detail"]
    copies = checks["plugin copies"]
    assert copies["status"] == "note" and "swiftmoe-strategy-static" in copies["detail"], copies


def test_doctor_compares_a_checkpoints_pin_with_the_plugin(fake_bin, tmp_path, capsys):
    import torch

    plugin = fake_bin / "swiftmoe-strategy-static"
    pin = hashlib.sha256(plugin.read_bytes()).hexdigest()
    ckpt = tmp_path / "rank0.pt"
    state = {
        "format": "swiftmoe-sharded-v2",
        "plan_source": {"strategy": "static", "strategy_sha256": pin},
    }
    torch.save({"model": {"w": torch.zeros(2)}, "swiftmoe": state}, ckpt)
    other = tmp_path / "rank1.pt"
    torch.save({"swiftmoe": state | {"plan_source": None}}, other)

    def pins(*argv):
        rc = cli.main(["doctor", "--json", "--timeout", "20", *argv])
        out = json.loads(capsys.readouterr().out)
        return rc, [c for c in out["checks"] if c["name"] == "pins"]

    rc, got = pins("--checkpoint", str(ckpt), "--checkpoint", str(other))
    assert rc == 0 and [c["status"] for c in got] == ["ok", "note"], got
    assert "matches the digest its job trusted" in got[0]["detail"]
    plugin.write_text("#!/bin/sh\nexit 2\n")
    rc, got = pins("--checkpoint", str(ckpt))
    assert rc == 1 and got[0]["status"] == "FAIL", got
    assert f"trusted swiftmoe-strategy-static with sha256 {pin[:12]}" in got[0]["detail"]
    assert "the plugin changed since" in got[0]["detail"]
    (tmp_path / "junk.pt").write_text("not a checkpoint")
    rc, got = pins("--checkpoint", str(tmp_path / "junk.pt"))
    assert rc == 1 and got[0]["status"] == "FAIL" and "cannot read it" in got[0]["detail"]
