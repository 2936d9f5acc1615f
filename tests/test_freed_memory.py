"""`keep_freed_memory`: large tensors allocated again reuse pages the process already has."""

import platform
import subprocess
import sys

import pytest

# A 64 MB tensor made and freed 12 times; prints the page faults of the last 4 (the heap settles after a few).
PROBE = """
import resource, sys, torch
from llamagen.fast.freed_memory import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
faults = []
for _ in range(12):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    tensor = torch.empty(16 << 20).fill_(1.0)
    del tensor
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(sum(faults[-4:]))
"""
PAGES = (64 << 20) // 4096


def faults_of_the_last_tensors(mode: str) -> int:
    run = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
    return int(run.stdout)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_freed_tensors_pages_are_reused_instead_of_faulted_in_again():
    # The control: by default every 64 MB tensor is mapped afresh and faults in each of its pages.
    assert faults_of_the_last_tensors("default") >= 4 * PAGES
    assert faults_of_the_last_tensors("keep") < PAGES // 4


def test_the_llamagen_command_keeps_freed_memory(monkeypatch):
    from llamagen import cli

    kept = []
    monkeypatch.setattr(cli, "keep_freed_memory", lambda: kept.append(True))
    monkeypatch.setattr(sys, "argv", ["llamagen", "reconstruct", "--help"])
    with pytest.raises(SystemExit):
        cli.command()
    assert kept == [True]
