"""`python -m progress_service [serve|migrate]`."""

import sys

from common.cli import main
from progress_service.app import DEFINITION

sys.exit(main(DEFINITION))
