"""``python -m hdf5_tools`` runs the ``hdf5_tools`` command."""

import sys

from hdf5_tools.cli import main

if __name__ == "__main__":
    sys.exit(main())
