"""``python -m cyclecorr`` (and ``torchrun -m cyclecorr``) run the ``cyclecorr`` command."""
import sys

from cyclecorr.cli import main

sys.exit(main())
