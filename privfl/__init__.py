"""privfl: privacy-hardened federated learning for speech emotion recognition."""

import importlib.abc
import importlib.util
import sys
from pathlib import Path

__version__ = "0.1.0"

# The attacks live in the top-level attacks/ folder and install as `privfl.attacks`
# (pyproject.toml, [tool.setuptools.package-dir]). An installed privfl has them (a wheel copies
# them in; an editable install maps the name); privfl imported straight from a source tree
# (PYTHONPATH=.) finds them through this finder, which answers for that one name only. It goes
# first on the path so that a source tree on PYTHONPATH (a git worktree, say) uses its own
# attacks/ even where another checkout is installed editable.
_SOURCE_ATTACKS = Path(__file__).resolve().parent.parent / "attacks"


class _SourceTreeAttacks(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname != "privfl.attacks" or not (_SOURCE_ATTACKS / "__init__.py").is_file():
            return None
        return importlib.util.spec_from_file_location(
            fullname, _SOURCE_ATTACKS / "__init__.py", submodule_search_locations=[str(_SOURCE_ATTACKS)]
        )


if not (Path(__file__).resolve().parent / "attacks").is_dir():
    sys.meta_path.insert(0, _SourceTreeAttacks())
