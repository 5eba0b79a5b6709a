"""`python -m deep bench ...` = `python -m deep.bench ...`; `python -m deep ...` = `python -m deep.run ...`."""
import sys

from .distributed import exit_process


def _main(argv):
    if argv[:1] == ["bench"]:
        from .bench import main as bench_main
        return bench_main(argv[1:])
    from .run import main as run_main
    return run_main(argv)


exit_process(_main(sys.argv[1:]))
