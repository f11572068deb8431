"""`python -m infer.cli`, as the `infer` console script."""

import sys

from infer.cli.main import main

sys.exit(main())
