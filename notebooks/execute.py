"""`make notebooks`: execute every notebook here in place, then strip what changes from run to run.

Each notebook runs in a fresh kernel with this folder as its working directory (they read `data/`). Outputs
are kept, so the notebooks read well on GitHub without running (and execution counts, which nbval needs to
tell a run cell from an unrun one; a fresh kernel numbers them the same every time); timestamps and the
kernel's version details are removed, so a re-run that changes nothing shows no diff.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

HERE = Path(__file__).parent
TIMEOUT_S = 600  # per cell
VOLATILE_NOTEBOOK_KEYS = ("widgets",)  # widget state is saved per run and is large
KEPT_LANGUAGE_INFO = ("name", "file_extension", "mimetype")


def strip_volatile(notebook: nbformat.NotebookNode) -> None:
    for key in VOLATILE_NOTEBOOK_KEYS:
        notebook.metadata.pop(key, None)
    info = notebook.metadata.get("language_info", {})
    notebook.metadata["language_info"] = {key: info[key] for key in KEPT_LANGUAGE_INFO if key in info}
    for number, cell in enumerate(notebook.cells):
        cell.metadata.pop("execution", None)
        cell.id = f"cell-{number}"  # stable ids: a re-run does not renumber them


def execute(path: Path) -> float:
    notebook = nbformat.read(path, as_version=4)
    started = time.perf_counter()
    client = NotebookClient(notebook, timeout=TIMEOUT_S, kernel_name="python3", resources={"metadata": {"path": str(HERE)}})
    client.execute()
    seconds = time.perf_counter() - started
    strip_volatile(notebook)
    temporary = path.with_suffix(".ipynb.tmp")
    nbformat.write(notebook, temporary)
    temporary.replace(path)  # atomically: a failed run leaves the committed notebook as it was
    return seconds


def main(names: list[str]) -> int:
    paths = [HERE / name for name in names] if names else sorted(HERE.glob("[0-9][0-9]_*.ipynb"))
    for path in paths:
        print(f"{path.name}: {execute(path):.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
