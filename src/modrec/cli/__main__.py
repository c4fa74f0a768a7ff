"""`python -m modrec.cli`: the same as the `modrec` command."""

import sys

from modrec.cli import main

sys.exit(main())
