"""benchmarks/gpu_lease.py: the GPU measurements as pieces, planned within a budget and resumed across leases."""

import importlib.util
import json
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def lease():
    spec = importlib.util.spec_from_file_location("gpu_lease", os.path.join(ROOT, "benchmarks", "gpu_lease.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_lease"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    del sys.modules["gpu_lease"]


def piece(lease, name, estimate=10, commands=(), needs_data=False):
    return lease.Piece(name, f"what {name} answers", estimate, tuple(commands), tuple(commands), needs_data=needs_data)


def test_the_plan_keeps_the_order_and_skips_what_is_done_needs_data_or_does_not_fit(lease):
    pieces = [
        piece(lease, "a", 100),
        piece(lease, "b", 50),
        piece(lease, "c", 300),
        piece(lease, "d", 40, needs_data=True),
        piece(lease, "e", 60),
    ]
    chosen, skipped = lease.plan(pieces, done={"b"}, budget_s=200, have_data=False)
    assert [p.name for p in chosen] == ["a", "e"]
    assert skipped == [
        ("b", "done in an earlier lease"),
        ("c", "estimate 300 s, 100 s of the budget left"),
        ("d", "needs --data"),
    ]
    chosen, _ = lease.plan(pieces, done=set(), budget_s=200, have_data=True)
    assert [p.name for p in chosen] == ["a", "b", "d"]  # 'e' (60 s) no longer fits after 'd' (40 s)
    chosen, skipped = lease.plan(pieces, done=set(), budget_s=1000, have_data=True, only={"c", "e"})
    assert [p.name for p in chosen] == ["c", "e"] and skipped == []


def test_every_piece_names_scripts_that_exist_and_has_a_toy_twin(lease):
    names = [p.name for p in lease.PIECES]
    assert len(set(names)) == len(names)
    for p in lease.PIECES:
        assert len(p.tiny) == len(p.commands) > 0, p.name
        for argv in p.commands + p.tiny:
            scripts = [a for a in argv if a.startswith(("benchmarks/", "launch/"))]
            assert all(os.path.isfile(os.path.join(ROOT, s)) for s in scripts), argv


def test_a_lease_writes_one_row_per_piece_and_the_next_lease_runs_only_the_rest(lease, tmp_path, monkeypatch, capsys):
    # (no braces in a command: '{rows}' and its kin are filled in with str.format)
    row = "import json, sys; open(sys.argv[1], 'a').write(json.dumps(dict(img_s=7)) + chr(10))"
    writes_a_row = [sys.executable, "-c", row, "{rows}"]
    fails = [sys.executable, "-c", "import sys; print('broken'); sys.exit(3)"]
    never_runs = [sys.executable, "-c", "open('never', 'w')"]
    pieces = (
        piece(lease, "good", 1, [writes_a_row, writes_a_row]),
        piece(lease, "bad", 1, [fails, never_runs]),
    )
    monkeypatch.setattr(lease, "PIECES", pieces)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    assert lease.main(["--out", str(out), "--budget", "10"]) == 1  # a piece failed
    rows = [json.loads(line) for line in (out / "pieces.jsonl").read_text().splitlines()]
    assert [r["piece"] for r in rows] == ["good", "bad"]
    assert [c["rc"] for c in rows[0]["commands"]] == [0, 0] and rows[0]["rows"] == [{"img_s": 7}, {"img_s": 7}]
    assert [c["rc"] for c in rows[1]["commands"]] == [3] and not (tmp_path / "never").exists()
    assert "broken" in (out / "lease.log").read_text()
    # The next lease, on the same folder: 'good' is done, 'bad' runs again.
    capsys.readouterr()
    lease.main(["--out", str(out), "--budget", "10"])
    assert "skipped good: done in an earlier lease" in capsys.readouterr().out
    rows = [json.loads(line) for line in (out / "pieces.jsonl").read_text().splitlines()]
    assert [r["piece"] for r in rows] == ["good", "bad", "bad"]
    # A toy run measures nothing: it never marks a piece done.
    assert lease.done_pieces(str(out / "pieces.jsonl")) == {"good"}
    lease.main(["--out", str(tmp_path / "toy"), "--tiny", "--only", "good"])
    assert lease.done_pieces(str(tmp_path / "toy" / "pieces.jsonl")) == set()


def test_a_piece_past_its_limit_is_stopped_and_recorded_as_timed_out(lease, tmp_path, monkeypatch):
    sleeps = [sys.executable, "-c", "import time; time.sleep(60)"]
    monkeypatch.setattr(lease, "PIECES", (piece(lease, "slow", 1, [sleeps]),))  # limit: 3 x 1 s
    assert lease.main(["--out", str(tmp_path), "--budget", "10"]) == 1
    (row,) = [json.loads(line) for line in (tmp_path / "pieces.jsonl").read_text().splitlines()]
    assert row["commands"][0]["rc"] == 124 and 2.5 < row["commands"][0]["wall_s"] < 30


def test_an_unknown_piece_or_a_data_folder_without_chest_xray_is_refused(lease, tmp_path, capsys):
    with pytest.raises(SystemExit):
        lease.main(["--out", str(tmp_path), "--only", "compile-b0,no-such-piece"])
    assert "no-such-piece" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        lease.main(["--out", str(tmp_path), "--data", str(tmp_path)])
    assert "no chest_xray/ folder inside" in capsys.readouterr().err
