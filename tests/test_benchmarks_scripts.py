"""Every benchmark script runs as README says, ``python benchmarks/<name>.py``, from any directory:
the repository root is not on the path then, and each script puts it there itself."""

import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
SCRIPTS = sorted(str(p) for p in BENCHMARKS.glob("*.py") if p.name != "__main__.py" and 'if __name__ == "__main__"' in p.read_text())

# Each script as its own __main__ with --help, in one interpreter (one import of torch) outside the
# repository; what an earlier script imported, put on the path or changed directory to is undone
# before the next.
RUN_EACH = """
import os, runpy, sys
failed, here = [], os.getcwd()
for path in sys.argv[1:]:
    saved = list(sys.path)
    for name in [m for m in sys.modules if m == "benchmarks" or m.startswith("benchmarks.")]:
        del sys.modules[name]
    sys.argv = [path, "--help"]
    try:
        runpy.run_path(path, run_name="__main__")
    except SystemExit as stop:
        if stop.code not in (0, None):
            failed.append((path, stop.code))
    except Exception as err:
        failed.append((path, repr(err)))
    sys.path[:] = saved
    os.chdir(here)  # a script may move to the repository (gpu.py does, to write its paths there)
print("FAILED", failed)
sys.exit(1 if failed else 0)
"""


def test_every_script_starts_from_another_directory(tmp_path):
    assert len(SCRIPTS) >= 10, SCRIPTS
    proc = subprocess.run([sys.executable, "-c", RUN_EACH, *SCRIPTS], cwd=tmp_path, capture_output=True, text=True,
                          timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
