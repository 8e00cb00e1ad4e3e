"""``python -m neuralode`` runs the command-line interface."""

import sys

from neuralode.cli import main

sys.exit(main())
