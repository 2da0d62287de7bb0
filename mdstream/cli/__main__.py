"""`python -m mdstream.cli` is the `mdstream` command."""

import sys

from mdstream.cli import main

sys.exit(main())
