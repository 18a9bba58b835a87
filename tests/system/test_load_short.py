"""The short version of bench/load.py that CI runs: 16 concurrent shoppers on the real server, no error.

The full run (60 s, >= 5,000 searches between the memory samples) is `python bench/load.py`; its figures
are in docs/reliability.md. Timing is reported, never asserted."""

import json
import subprocess
import sys

import pytest

from api.settings import REPO_ROOT


@pytest.mark.slow
def test_sixteen_concurrent_shoppers_get_no_errors():
    out = subprocess.run(
        [
            sys.executable,
            "bench/load.py",
            "--clients",
            "16",
            "--seconds",
            "6",
            "--min-searches",
            "300",
            "--warmup",
            "100",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout
    result = json.loads(out)
    print(
        f"\nshort load run: {result['requests']} requests, {result['errors']} errors, "
        f"p50 {result['p50_ms']} ms, p99 {result['p99_ms']} ms"
    )
    assert result["requests"] >= 400
    assert result["errors"] == 0 and result["statuses"] == {"200": result["requests"]}
