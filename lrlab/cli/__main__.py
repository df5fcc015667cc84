"""`python -m lrlab.cli`: what `lrlab up` starts its worker with."""

import sys

from lrlab.cli import main

sys.exit(main())
