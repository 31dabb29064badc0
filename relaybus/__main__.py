"""`python -m relaybus …` is the `relaybus` command."""

import sys

from relaybus.cli import main

sys.exit(main())
