"""The bench scripts run with bench/ first on sys.path: a script named like an installed package shadows it.

bench/triton.py did: torch imports the `triton` package when it is installed (it is, with pytriton), found
the bench script instead and failed, so `bench/embed.py` could not start.
"""

import importlib.util
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"


def test_no_bench_script_shadows_an_installed_module():
    shadowing = []
    for script in sorted(BENCH.glob("*.py")):
        spec = (
            importlib.util.find_spec(script.stem)
            if script.stem not in sys.modules
            else sys.modules[script.stem].__spec__
        )
        origin = Path(spec.origin).resolve() if spec is not None and spec.origin else None
        if origin is not None and origin.parent != BENCH:
            shadowing.append(f"{script.name} hides {origin}")
    assert not shadowing, shadowing
