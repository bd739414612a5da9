"""``python -m codiag``: the command line (``codiag.cli``)."""
import sys

from .cli import main

if __name__ == "__main__":      # importing the module (pkgutil.walk_packages) must not run the CLI
    sys.exit(main())
