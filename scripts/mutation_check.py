"""A small curated mutation check: does the test suite notice realistic bugs in the modules that
carry the project's claims?

    python scripts/mutation_check.py                  # every mutant, old + regression tests ("after")
    python scripts/mutation_check.py --before         # the suite without tests/regressions
    python scripts/mutation_check.py --only ft-threshold-0.5,gradcam-layer2 --list

Why not mutmut: it mutates every operator of whole files (thousands of mutants, hours on two
cores) and needs its own runner setup; a curated list of the bugs we care about runs in minutes
per module and names each survivor in words. The mutants live in `scripts/mutants.py`.

Safety: the source tree is never touched. The repository is copied (without .git, .venv and
outputs) to `--workdir` (default /tmp/mut/<pid>); each mutant is applied to the copy, the chosen
test files run there with PYTHONPATH set to the copy (checked: `cxrssl.__file__` must lie inside
it), then the file is restored from the pristine text. A mutant is *killed* when pytest fails,
*survived* when it passes, *timeout* (not counted) when it runs past --timeout, *stale* when its text no longer occurs exactly once.
"""
from __future__ import annotations

import argparse
import os
import queue
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from mutants import MUTANTS, Mutant  # noqa: E402

#: Long learning tests left out of the baseline run (they still run for the mutants that list them).
HEAVY = ("tests/commands/test_learning.py", "tests/commands/test_explain_predict.py")
IGNORE = shutil.ignore_patterns(".git", ".venv", "outputs", "multirun", "mlruns", "mlartifacts", "mlflow.db",
                                "__pycache__", "*.egg-info", ".pytest_cache", "build", "dist", ".hypothesis")


def copy_repo(workdir: Path) -> Path:
    if workdir.exists():
        shutil.rmtree(workdir)
    shutil.copytree(ROOT, workdir, ignore=IGNORE, symlinks=True)
    return workdir


def env_for(copy: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(copy) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("CXRSSL_CACHE", None)  # tests/conftest.py gives each session its own
    env.setdefault("OMP_NUM_THREADS", "2")
    return env


def check_import_location(copy: Path) -> None:
    out = subprocess.run([sys.executable, "-c", "import cxrssl; print(cxrssl.__file__)"], cwd=copy,
                         env=env_for(copy), capture_output=True, text=True, check=True).stdout.strip()
    if not Path(out).resolve().is_relative_to(copy.resolve()):
        raise SystemExit(f"cxrssl imports from {out}, not from the copy {copy}: refusing to run mutants")


def mutate(text: str, mutant: Mutant) -> str | None:
    """The mutated text, or None when an edit's `find` does not occur exactly once (stale)."""
    for find, replace in mutant.edits:
        if text.count(find) != 1:
            return None
        text = text.replace(find, replace)
    return text


def run_mutant(copy: Path, mutant: Mutant, tests: list[str], timeout: float) -> tuple[str, float, str]:
    target = copy / mutant.path
    original = target.read_text()
    mutated = mutate(original, mutant)
    if mutated is None:
        return "stale", 0.0, "edit text not found exactly once"
    tests = [t for t in dict.fromkeys(tests) if (copy / t.split("::")[0]).is_file()]  # files or node ids
    if not tests:
        return "no-tests", 0.0, ""
    try:
        compile(mutated, str(target), "exec")
    except SyntaxError as err:
        return "invalid", 0.0, str(err)
    start = time.perf_counter()
    target.write_text(mutated)
    try:
        proc = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-m", "not slow",
                               "-o", "addopts=--import-mode=importlib", *tests], cwd=copy, env=env_for(copy),
                              capture_output=True, text=True, timeout=timeout)
        status = "survived" if proc.returncode == 0 else "killed"
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(("FAILED", "ERROR"))]
        detail = lines[0][:160] if lines else proc.stdout.strip().splitlines()[-1][:160] if proc.stdout.strip() else ""
        if proc.returncode not in (0, 1):  # collection/usage errors are not a test noticing the bug
            status, detail = ("killed" if proc.returncode == 1 else f"error rc={proc.returncode}"), detail
    except subprocess.TimeoutExpired:  # slow tests here, not an infinite loop: not counted either way
        status, detail = "timeout", f"after {timeout:.0f}s"
    finally:
        target.write_text(original)
    assert target.read_text() == original
    return status, time.perf_counter() - start, detail


def baseline(copy: Path, tests: list[str], timeout: float) -> None:
    """The unmutated copy must pass the selected tests, or every "killed" below would be noise
    (other work in progress can leave the tree broken)."""
    tests = [t for t in dict.fromkeys(tests) if (copy / t.split("::")[0]).is_file()]  # files or node ids
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not slow",
                           "-o", "addopts=--import-mode=importlib", *tests], cwd=copy, env=env_for(copy),
                          capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        print(proc.stdout[-3000:])
        raise SystemExit(f"baseline: the unmutated copy fails {tests}; fix that first")
    print(f"baseline passes: {proc.stdout.strip().splitlines()[-1]}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", action="store_true", help="run only the pre-issue-14 tests (no tests/regressions)")
    parser.add_argument("--only", default="", help="comma-separated mutant ids")
    parser.add_argument("--planted", action="store_true", help="only the 14 bugs from issue 14")
    parser.add_argument("--extra", action="store_true", help="only the mutants beyond the issue's 14")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per mutant (a timeout counts as killed)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/mut") / str(os.getpid()))
    parser.add_argument("--jobs", type=int, default=1, help="mutants run at once, each in its own copy")
    parser.add_argument("--no-baseline", action="store_true", help="skip the unmutated run")
    parser.add_argument("--markdown", type=Path, help="also write the results table here")
    args = parser.parse_args(argv)

    chosen = [mu for mu in MUTANTS if (not args.only or mu.id in args.only.split(","))
              and (mu.planted or not args.planted) and not (mu.planted and args.extra)]
    if args.list:
        for mu in chosen:
            print(f"{mu.id:28s} {mu.path:34s} {mu.what}")
        return 0
    copies = [copy_repo(args.workdir / f"w{i}") for i in range(max(args.jobs, 1))]
    for copy in copies:
        check_import_location(copy)
    if not args.no_baseline:
        files = [t for mu in chosen for t in (mu.old if args.before else [*mu.new, *mu.old])]
        baseline(copies[0], [t for t in files if t not in HEAVY], 4 * args.timeout)
    print(f"{len(chosen)} mutants, {'before' if args.before else 'after'} tests, {len(copies)} worker copies in "
          f"{args.workdir}", flush=True)
    free: queue.Queue[Path] = queue.Queue()
    for copy in copies:
        free.put(copy)

    def one(mu: Mutant):
        copy = free.get()  # each worker owns one copy while it runs a mutant
        try:
            tests = mu.old if args.before else [*mu.new, *mu.old]  # new tests first: they are the quick killers
            status, seconds, detail = run_mutant(copy, mu, tests, args.timeout)
        finally:
            free.put(copy)
        print(f"{status:9s} {seconds:6.0f}s  {mu.id:28s} {mu.what}  {detail}", flush=True)
        return mu, status, seconds, detail

    with ThreadPoolExecutor(max_workers=len(copies)) as pool:
        rows = list(pool.map(one, chosen))
    shutil.rmtree(args.workdir, ignore_errors=True)
    counted = [r for r in rows if r[1] in ("killed", "survived")]
    killed = sum(r[1] == "killed" for r in counted)
    lines = ["| mutant | module | bug | result |", "|---|---|---|---|"]
    lines += [f"| {mu.id}{' (planted)' if mu.planted else ''} | {mu.path.split('/')[-1]} | {mu.what} | {status} |"
              for mu, status, _, _ in rows]
    share = killed / len(counted) if counted else float("nan")
    summary = f"killed {killed} of {len(counted)} mutants ({100 * share:.0f} %)"
    others = len(rows) - len(counted)
    if others:
        summary += f"; {others} not counted (stale / invalid / no tests / error)"
    print("\n".join(lines) + "\n\n" + summary)
    if args.markdown:
        args.markdown.write_text("\n".join(lines) + "\n\n" + summary + "\n")
    return 0 if counted and share >= 0.9 else 1


if __name__ == "__main__":
    sys.exit(main())
