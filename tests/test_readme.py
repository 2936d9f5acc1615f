"""The README's Python blocks that use the embedded models run as written, and its links lead somewhere."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
PYTHON_BLOCKS = re.findall(r"```python\n(.*?)```", README, re.S)


def test_the_readme_has_python_to_run():
    assert PYTHON_BLOCKS, "the README's quick start lost its Python block"
    # Every Python block in the README uses the embedded models only: nothing that needs a download.
    assert not any(re.search(r"\.pt\b|cuda", block) for block in PYTHON_BLOCKS)


@pytest.mark.parametrize("block", PYTHON_BLOCKS, ids=lambda block: block.splitlines()[-1][:40])
def test_a_readme_python_block_runs(block, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the blocks write their pictures to the working folder
    exec(compile(block, "README.md", "exec"), {})
    assert list(tmp_path.iterdir()), "the block wrote nothing"


def test_every_relative_link_in_the_readme_and_the_docs_exists():
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#]+)\)", page.read_text()):
            if not target.startswith(("http://", "https://")):
                assert (page.parent / target).exists(), f"{page.name} links to {target}, which does not exist"
