"""`python -m workbench`: the `workbench` command (what the Lab panel's jobs run)."""

import sys

from workbench.cli import main

sys.exit(main())
