"""``python -m deep ...`` = ``python -m deep.run ...``. The other commands are modules of their own
(``python -m deep.bench``, ``deep.evaluate``, ``deep.cost``, ``deep.saliency``); ``python -m deep bench``
names the one route of the benchmark instead of running it."""
import sys

from .distributed import exit_process


def _main(argv):
    if argv[:1] == ["bench"]:
        print("python -m deep: error: the benchmark is `python -m deep.bench` (see its --help)", file=sys.stderr)
        return 2
    from .run import main as run_main
    return run_main(argv)


exit_process(_main(sys.argv[1:]))
