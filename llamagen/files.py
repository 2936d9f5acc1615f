"""Files written whole or not at all: a temporary file in the target's folder, synced, then renamed over it."""

from __future__ import annotations

import csv
import errno
import io
import json
import os
import shutil
import tempfile
from pathlib import Path


def write_text_atomically(path: Path, text: str) -> None:
    """`path.write_text(text)`, atomically (see `write_atomically`)."""
    write_atomically(path, lambda temporary: Path(temporary).write_text(text))


# Free bytes below which a failed write is taken for a full disk.
_NEARLY_FULL = 1 << 20


def write_atomically(path: Path, write) -> None:
    """Call `write(temporary_path)` in the target's folder, then rename over `path`: never a half-written file."""
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(descriptor)
    try:
        write(temporary)
        with open(temporary, "rb") as written:
            os.fsync(written.fileno())  # on disk before the rename, so a crash cannot leave an empty file
        os.chmod(temporary, 0o644)  # mkstemp makes it private; the result is an ordinary file
        os.replace(temporary, path)
    except (OSError, RuntimeError) as error:
        # Writers report a full disk in their own words (torch.save: "unexpected pos", "basic_ios::clear"):
        # the free space, read while the partial file still fills the disk, tells.
        full = getattr(error, "errno", None) == errno.ENOSPC or shutil.disk_usage(path.parent).free < _NEARLY_FULL
        Path(temporary).unlink(missing_ok=True)
        if full:
            raise OSError(errno.ENOSPC, f"could not write {str(path)!r}: no space left on its disk") from None
        raise
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_results(results: dict, out: Path, fields: tuple[str, ...]) -> None:
    """A sweep's `results` as JSON at `out`, and its `runs` as a CSV of `fields` beside it, each atomically."""
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomically(out, json.dumps(results, indent=1) + "\n")
    table = io.StringIO()
    writer = csv.DictWriter(table, fields, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(results["runs"].values())
    write_text_atomically(out.with_suffix(".csv"), table.getvalue())
