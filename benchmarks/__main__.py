"""Run every benchmark, then render RESULTS.md.

    python -m benchmarks                       # every part, in the order below
    python -m benchmarks --only lenet targets  # some parts
    python -m benchmarks --skip methods        # all but some
    python -m benchmarks --list                # the parts and their commands

Each part is also a script of its own (``python benchmarks/<part>.py --help``). A part that
fails is reported and the others still run; the exit status is 1 if any failed.

These are quick budgets (about an hour on 2 CPU cores, most of it the training parts): the parts
whose full budget is larger write ``benchmarks/results/<part>_quick.json`` and never replace the
file of a full run; then RESULTS.md and the README's tables are rendered again from every file.
``--list`` shows each part's command.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys
import time
import traceback
from pathlib import Path

from benchmarks import PARTS
from lightning_ssr.report import machine_info, write_json


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n")[-1].strip())
    names = [p for p, _ in PARTS]
    parser.add_argument("--only", nargs="+", choices=names, default=None, metavar="PART",
                        help=f"run these parts only ({', '.join(names)})")
    parser.add_argument("--skip", nargs="+", choices=names, default=[], metavar="PART", help="run all but these")
    parser.add_argument("--list", action="store_true", help="print each part's command and exit")
    parser.add_argument("--results-dir", type=Path, default=None, metavar="DIR",
                        help="write every part's JSON and RESULTS.md into DIR (created) instead of "
                             "benchmarks/results/, and leave README.md as it is")
    args = parser.parse_args(argv)
    parts = PARTS if args.results_dir is None else [(p, elsewhere(p, a, args.results_dir.resolve())) for p, a in PARTS]
    if args.list:
        for part, extra in parts:
            print(f"{part:<16} python benchmarks/{part}.py {' '.join(extra)}")
        return 0
    if args.results_dir is not None:
        args.results_dir.mkdir(parents=True, exist_ok=True)
        args.results_dir = args.results_dir.resolve()  # (before the change of folder below)
    os.chdir(Path(__file__).resolve().parent.parent)  # the paths above are the repository's
    chosen = [(p, a) for p, a in parts if (args.only is None or p in args.only) and p not in args.skip]
    failed, seconds, start = [], {}, time.perf_counter()
    interrupted = []  # (Lightning turns a Ctrl-C into SystemExit(1), and the command into RunInterrupted: a part
    previous = signal.getsignal(signal.SIGINT)  # that "failed" by it, and the others ran on: probe)

    def on_interrupt(signum, frame):
        interrupted.append(signum)
        (previous if callable(previous) else signal.default_int_handler)(signum, frame)

    if previous is not signal.SIG_IGN:  # (a run in the background that ignores Ctrl-C still does: review)
        signal.signal(signal.SIGINT, on_interrupt)
    try:
        for part, extra in chosen:
            t = time.perf_counter()
            print(f"\n=== {part} (python benchmarks/{part}.py {' '.join(extra)})", flush=True)
            try:
                importlib.import_module(f"benchmarks.{part}").main(extra)
            except KeyboardInterrupt:
                interrupted.append(signal.SIGINT)
            except SystemExit as err:  # a part's refusal (a file of a larger budget kept): said, and the others run
                if err.code not in (None, 0) and not interrupted:
                    print(f"{part}: {err.code}", file=sys.stderr)
                    failed.append(part)
            except Exception:  # noqa: BLE001 - one failed part must not stop the others
                if not interrupted:
                    traceback.print_exc()
                    failed.append(part)
            seconds[part] = time.perf_counter() - t
            if interrupted:
                left = [p for p, _ in chosen][len(seconds) - 1:]
                print(f"\ninterrupted (Ctrl-C) during {part}, after {seconds[part]:.0f} s: not run: {', '.join(left)}. "
                      "The training parts go on from their finished runs when run again.", file=sys.stderr)
                return 130
            print(f"=== {part}: {seconds[part]:.0f} s", flush=True)
    finally:
        signal.signal(signal.SIGINT, previous)
    total = time.perf_counter() - start
    results = Path("benchmarks/results") if args.results_dir is None else args.results_dir
    if args.only is None and not args.skip:  # the record of a whole run
        command = "python -m benchmarks" + ("" if args.results_dir is None else f" --results-dir {args.results_dir}")
        write_json(results / "run.json", {"benchmark": "run", "machine": machine_info(), "command": command,
                                          "parts": seconds, "failed": failed, "total_s": total}, relative_to=".")
    from benchmarks.render import main as render

    render([] if args.results_dir is None else
           ["--results", str(results), "--out", str(results / "RESULTS.md"), "--no-readme"])
    print(f"\n{len(chosen) - len(failed)} of {len(chosen)} parts ran in {total:.0f} s"
          + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


def elsewhere(part: str, extra: list[str], folder: Path) -> list[str]:
    """A part's arguments with its ``--out`` in ``folder`` (the same file name; a part that names
    none writes ``<part>.json`` there, as it would under ``benchmarks/results/``)."""
    extra = list(extra)
    if "--out" in extra:
        at = extra.index("--out") + 1
        extra[at] = str(folder / Path(extra[at]).name)
        return extra
    return [*extra, "--out", str(folder / f"{part}.json")]


if __name__ == "__main__":
    sys.exit(main())
