"""python -m jobs.store VERB ... (see jobs/store/cli.py)"""

from jobs.errors import cli_main
from jobs.store.cli import main

cli_main(main)
