"""Market scale: the gateway, routing and health checks as one market grows to 10,000 nodes.

    python bench/market_scale.py [--quick] [--sizes 10,100,1000,10000] [--interval 60]

The harness is the package bench/marketbench (see its docstring, bench/README.md and
docs/performance.md); this script only runs it.
"""

import sys

from marketbench.main import main

if __name__ == "__main__":
    sys.exit(main())
