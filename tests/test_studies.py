"""The study loop: each run claimed by one process, recorded once, in the study's order."""

import json

from llamagen.training.common import try_lock
from llamagen.training.studies import CLAIMS, ROW_FILE, run_study

NAMES = ["a", "b", "c", "d"]


def study(tmp_path, trained: list[str]) -> dict:
    def train(name, folder):
        folder.mkdir(parents=True, exist_ok=True)
        trained.append(name)
        return {"name": name, "value": len(name)}

    return run_study(NAMES, train, tmp_path / "study.json", tmp_path / "runs", {"steps": 1}, ("name", "value"))


def test_a_process_trains_every_run_nobody_else_holds_and_the_first_records_them_in_order(tmp_path, monkeypatch):
    claims = tmp_path / "runs" / CLAIMS
    claims.mkdir(parents=True)
    (claims / "d").write_text("process 1")  # left by a process that died: nobody holds it
    held = try_lock(claims / "b")  # as another process training b holds it
    monkeypatch.setenv("RANK", "1")
    trained = []
    study(tmp_path, trained)
    # Not a fixed share (every second run) but whatever is free; rank 1 does not gather.
    assert trained == ["a", "c", "d"] and not (tmp_path / "study.json").exists()
    assert not (tmp_path / "runs" / "b" / ROW_FILE).exists()
    held.close()
    monkeypatch.setenv("RANK", "0")
    trained = []
    results = study(tmp_path, trained)
    assert trained == ["b"]
    assert list(results["runs"]) == NAMES and json.loads((tmp_path / "study.json").read_text()) == results
    assert (tmp_path / "study.csv").read_text().splitlines() == ["name,value", "a,1", "b,1", "c,1", "d,1"]


def test_a_row_finished_out_of_turn_is_recorded_in_the_studys_order(tmp_path, monkeypatch):
    claims = tmp_path / "runs" / CLAIMS
    claims.mkdir(parents=True)
    held = try_lock(claims / "a")  # another process trains a, and finishes it while this one trains d
    monkeypatch.setenv("RANK", "0")

    def train(name, folder):
        folder.mkdir(parents=True, exist_ok=True)
        if name == "d":
            (tmp_path / "runs" / "a").mkdir()
            (tmp_path / "runs" / "a" / ROW_FILE).write_text(json.dumps({"name": "a", "value": 1}))
            held.close()
        return {"name": name, "value": len(name)}

    results = run_study(NAMES, train, tmp_path / "study.json", tmp_path / "runs", {"steps": 1}, ("name", "value"))
    assert list(results["runs"]) == NAMES  # b and c were recorded before a's row existed
    assert (tmp_path / "study.csv").read_text().splitlines() == ["name,value", "a,1", "b,1", "c,1", "d,1"]
