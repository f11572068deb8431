"""Gateway overhead: the runtime direct vs through INFER, on loopback, with exact billing.

    python bench/gateway.py [--quick] [--sqlite] [--runtime openai|ollama] [--profile FILE]
                            [--client lean|httpx|lean,httpx]

The harness is the package bench/gatewaybench (see its docstring, bench/README.md and
docs/performance.md); this script only runs it.
"""

import sys

from gatewaybench.main import main

if __name__ == "__main__":
    sys.exit(main())
