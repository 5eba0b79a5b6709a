"""``python -m deep.bench`` (see deep/bench/__init__.py)."""
import sys

from .cli import main

sys.exit(main())
