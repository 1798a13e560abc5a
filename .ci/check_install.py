"""Check the freshly installed environment in one line: the locked versions, the exact torch /
torchaudio pair, an import of every module of privfl and privfl.attacks (the attacks/ folder
installs under that name), and the CLI's help pages.

Exits 1 with a one-line reason on the first failure; prints one line on success.
"""

from __future__ import annotations

import importlib
import importlib.metadata as md
import importlib.util
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def fail(reason: str) -> None:
    print(f"install check FAILED: {reason}", file=sys.stderr)
    sys.exit(1)


def locked_versions() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    return pins


def main() -> None:
    pins = locked_versions()
    for name, version in pins.items():
        try:
            installed = md.version(name)
        except md.PackageNotFoundError:
            continue  # a platform-only package (e.g. CUDA wheels) that this machine did not need
        if installed != version:
            fail(
                f"{name} {installed} is installed but constraints.txt locks {version}; "
                'reinstall with pip install -c constraints.txt -e ".[dev]"'
            )
    torch_v, audio_v = md.version("torch").split("+")[0], md.version("torchaudio").split("+")[0]
    if torch_v != audio_v:
        fail(
            f"torch {torch_v} and torchaudio {audio_v} are not the same build; torchaudio's compiled "
            'extension only loads beside its own torch: pip install -c constraints.txt -e ".[dev]"'
        )
    if importlib.util.find_spec("attacks") is not None:
        fail("a top-level package `attacks` is importable; privfl's attacks install as privfl.attacks")
    for top in ("privfl", "privfl.attacks"):
        package = importlib.import_module(top)
        for module in pkgutil.walk_packages(package.__path__, prefix=f"{top}."):
            try:
                importlib.import_module(module.name)
            except Exception as exc:  # any import failure is the finding
                fail(f"import {module.name}: {type(exc).__name__}: {str(exc).splitlines()[0]}")
    script = Path(sys.executable).parent / "privfl"  # the console script installed beside this Python
    if not script.exists():
        fail(f"no privfl command at {script}: the install did not create its console script")
    for args in (["--help"], ["attack", "--help"], ["bench", "--help"]):
        done = subprocess.run([str(script), *args], capture_output=True, text=True)
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            fail(f"privfl {' '.join(args)} exited {done.returncode}: {last}")
    print(
        f"install check: torch {torch_v} + torchaudio {audio_v}, {len(pins)} locked versions, "
        "every privfl and privfl.attacks module imports, CLI help pages load"
    )


if __name__ == "__main__":
    main()
