"""A study: many small training runs, each recorded as one row once it has finished.

Rows go, after every run, to one JSON file (`runs`, name -> row, beside the `training` settings every run of
the study shares) and a CSV beside it. A stopped study started again skips the runs it has recorded and lets
the run it was in resume from its checkpoint. Under torchrun the processes share the runs out whole (a small
model gains nothing from DDP; eight processes train eight runs at once): each claims the next run nobody holds
(a lock the system lets go of if the process dies), so a process that drew short runs takes more of them; each
writes a finished run's row to the run's folder, and the first process gathers the rows into the file as they
come and once all are there.
Beside the loop: what a run of a codebook study keeps (arrays, atomically) and measures (geometry).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from llamagen.analysis.geometry import participation_ratio, pca_spectrum, two_nn_dimension
from llamagen.files import write_atomically, write_results
from llamagen.training.common import has_checkpoint, try_lock

ROW_FILE = "row.json"  # a finished run's row, in its folder, until the study's file holds it
ROW_WAIT_S = 2.0  # between looks for the rows of runs that other processes train
CLAIMS = ".claims"  # in the work folder: one lock file a run, held by the process that trains it


def run_study(names: list[str], train: Callable[[str, Path], dict | None], out: str | Path, work_dir: str | Path,
              training: dict, fields: tuple[str, ...],
              on_row: Callable[[dict, dict], None] | None = None) -> dict:  # fmt: skip
    """Train every run of `names` that `out` does not hold yet: `train(name, folder)` returns its row, or None
    when a signal stopped it (the study then returns, to be started again). `on_row(results, row)` may add to
    the file's other entries as a row is recorded."""
    out, work_dir = Path(out), Path(work_dir)
    results = json.loads(out.read_text()) if out.is_file() else {}
    if results and results.get("training") != training:
        raise ValueError(f"{str(out)!r} holds a study trained otherwise; write to another file")
    results = {**results, "training": training, "runs": results.get("runs", {})}
    rank = int(os.environ.get("RANK", "0"))
    pending = [name for name in names if name not in results["runs"]]
    claims = work_dir / CLAIMS
    claims.mkdir(parents=True, exist_ok=True)
    for name in pending:
        folder = work_dir / name
        claim = try_lock(claims / name)
        if claim is None:
            continue  # another process trains it
        with claim:
            if (folder / ROW_FILE).is_file():
                continue  # finished by a process whose rows were not gathered yet
            row = train(name, folder)
            if row is None:
                return results
            text = json.dumps(row)
            write_atomically(folder / ROW_FILE, lambda temporary, text=text: Path(temporary).write_text(text))
        if rank == 0:
            _gather_rows(results, pending, work_dir, out, fields, on_row)
    if rank == 0:
        while not all((work_dir / name / ROW_FILE).is_file() for name in pending):
            time.sleep(ROW_WAIT_S)  # another process is still training
        _gather_rows(results, pending, work_dir, out, fields, on_row)
    return results


def _gather_rows(results: dict, pending: list[str], work_dir: Path, out: Path, fields, on_row) -> None:
    """The rows written so far of the pending runs, added to `results` after the rows recorded before this start
    and in the study's order among themselves, whichever process finished first, and written."""
    runs = results["runs"]
    for name in pending:
        path = work_dir / name / ROW_FILE
        if name not in runs and path.is_file():
            row = json.loads(path.read_text())
            if on_row is not None:
                on_row(results, row)
            runs[name] = row
    order = [name for name in runs if name not in pending] + [name for name in pending if name in runs]
    results["runs"] = {name: runs[name] for name in order}
    write_results(results, out, fields)


def run_schedule(steps: int, seed: int) -> dict[str, int]:
    """The settings every run of a study derives from its length: a tenth of warm-up, 40 log lines, 4
    checkpoints."""
    return {"steps": steps, "seed": seed, "warmup_steps": steps // 10, "log_every": max(1, steps // 40),
            "checkpoint_every": max(1, steps // 4)}  # fmt: skip


def resumable(folder: Path) -> bool:
    """Whether a run's folder holds a run to resume; one killed before its first checkpoint holds nothing to
    resume, and is removed so that the run starts again."""
    if folder.exists() and not has_checkpoint(folder):
        shutil.rmtree(folder)
    return folder.exists()


def save_float16(path: Path, values: torch.Tensor) -> None:
    """`values` as a float16 .npy file, written atomically."""
    save_array(path, values.numpy().astype(np.float16))


def save_array(path: Path, values: np.ndarray) -> None:
    """An .npy file, written atomically."""

    def write(temporary: str) -> None:
        with open(temporary, "wb") as file:  # a file, not a name, to which np.save would add ".npy"
            np.save(file, values)

    write_atomically(path, write)


def geometry_fields(prefix: str, points: torch.Tensor, weights: torch.Tensor | None) -> dict[str, float | None]:
    """Participation ratio and TwoNN dimension of `points`; None where there are too few distinct points."""
    if len(points) < 3:
        return {f"{prefix}_participation": None, f"{prefix}_two_nn": None}
    return {
        f"{prefix}_participation": participation_ratio(pca_spectrum(points, weights)),
        f"{prefix}_two_nn": _two_nn_or_none(points, weights),
    }


def latents_at_codes_count(latents: torch.Tensor, count: int, seed: int) -> dict[str, float | None]:
    """TwoNN of `count` of the latents drawn at random: the latents read at as many points as there are used
    codes. TwoNN reads a set at the spacing of its points, so codes (fewer points than the latents) are read at a
    coarser scale; this is the control that tells a difference of the codes' own from one of scale."""
    drawn = torch.randperm(len(latents), generator=torch.Generator().manual_seed(seed))[:count]
    return {"latents_two_nn_at_codes_count": _two_nn_or_none(latents[drawn], None) if count >= 3 else None}


def _two_nn_or_none(points: torch.Tensor, weights: torch.Tensor | None) -> float | None:
    try:
        return two_nn_dimension(points, weights)
    except ValueError:  # too few points apart from their twins (a blank background's latents), or a grid (FSQ's)
        return None
