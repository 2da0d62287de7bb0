"""`python -m mdstream.cli` is the `mdstream` command."""

import sys

from mdstream.cli import main

if __name__ == "__main__":  # faust's autodiscovery imports every module of the origin package
    sys.exit(main())
