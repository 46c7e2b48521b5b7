"""``python -m loadtest ARGS`` runs ``conclave loadtest ARGS``."""

import sys

from ops.cli import main

sys.exit(main(["loadtest", *sys.argv[1:]]))
