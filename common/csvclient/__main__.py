"""`python -m common.csvclient` runs the `school-csv` command."""

import sys

from common.csvclient.cli import main

sys.exit(main())
