"""`python -m modrec`: the same as the `modrec` command (and what torchrun launches)."""

import sys

from modrec.cli import main

sys.exit(main())
