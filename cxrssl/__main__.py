"""`python -m cxrssl <command> ...` (also what `torchrun -m cxrssl` will run)."""
import sys

from cxrssl.cli import main

sys.exit(main())
