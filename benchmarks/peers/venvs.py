"""Each peer's own venv under .venv-peers/<peer>/, built once from its pinned requirements file."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

from benchmarks.serving import ROOT

PEERS = ("mlserver", "kserve", "litserve", "bentoml")
VENVS = ROOT / ".venv-peers"
REQUIREMENTS = Path(__file__).resolve().parent
STAMP = ".installed"
INSTALL_TIMEOUT_S = 1200


def requirements(peer: str) -> Path:
    return REQUIREMENTS / f"requirements-{peer}.txt"


def pinned_version(peer: str) -> str:
    """The version requirements-<peer>.txt pins for the peer's own package."""
    for line in requirements(peer).read_text().splitlines():
        name, _, version = line.partition("==")
        if name.strip().lower() == peer:
            return version.strip()
    raise ValueError(f"{requirements(peer).name} does not pin {peer}")


def python(peer: str) -> Path:
    return VENVS / peer / "bin" / "python"


def ensure(peer: str) -> Path:
    """The peer venv's python, built first if its stamp does not match its requirements file.

    The stamp holds the file's hash, so a second run installs nothing and an edited pin
    reinstalls. Raises RuntimeError with pip's output if the install fails.
    """
    wanted = requirements(peer)
    digest = hashlib.sha256(wanted.read_bytes()).hexdigest()
    venv = VENVS / peer
    stamp = venv / STAMP
    if stamp.is_file() and stamp.read_text().strip() == digest and python(peer).is_file():
        return python(peer)
    print(f"building {venv.relative_to(ROOT)} from {wanted.relative_to(ROOT)}", flush=True)
    pip = [str(python(peer)), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    steps = [[sys.executable, "-m", "venv", str(venv)], [*pip, "-r", str(wanted)]]
    for step in steps:
        done = subprocess.run(step, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S)
        if done.returncode:
            raise RuntimeError(f"{' '.join(step[:4])} failed:\n{done.stdout}{done.stderr}"[-3000:])
    stamp.write_text(digest + "\n")
    return python(peer)
