"""``python -m consumer.cli``: the ``shelver`` command."""
import sys

from consumer.cli.shelver import main

sys.exit(main())
