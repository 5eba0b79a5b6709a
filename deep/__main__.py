"""`python -m deep` = `python -m deep.run`."""
import sys

from .run import main

sys.exit(main())
