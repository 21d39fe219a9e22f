"""`python -m academic_years_service [serve|migrate]`."""

import sys

from academic_years_service.app import DEFINITION
from common.cli import main

sys.exit(main(DEFINITION))
