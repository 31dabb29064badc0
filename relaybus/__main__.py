"""`python -m relaybus …` is the `relaybus` command."""

import sys

from relaybus.agents.cli import main

sys.exit(main())
