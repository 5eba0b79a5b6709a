"""``python -m simulations {run,bench} [options]``; ``python -m simulations`` alone is ``run``."""
import sys

from samrobust.cli import exit_fast

from . import bench, run

USAGE = "usage: python -m simulations {run,bench} [options]   (see --help of each)"


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help"):
        print(USAGE)
        print("  run    check the claims S1-S5 of docs/theory.md with the real algorithms (same as python -m simulations.run)")
        print("  bench  per-example SAM steps/s (batched, vmap, loop), and the main job's wall time with the "
              "batched and the loop engine, side by side")
        return 0
    if argv and argv[0] == "bench":
        return bench.main(argv[1:])
    if argv and argv[0] == "run":
        argv = argv[1:]
    return run.main(argv)


if __name__ == "__main__":
    exit_fast(main())  # skips ~0.4 s of interpreter teardown (samrobust/cli.py)
