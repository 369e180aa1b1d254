"""`python -m agzo` runs the `agzo` command."""

import sys

from agzo.cli import main

sys.exit(main())
