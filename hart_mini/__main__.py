"""`python -m hart_mini ...`: see hart_mini.cli."""

import sys

from hart_mini.cli import main

sys.exit(main())
