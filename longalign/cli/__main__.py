"""``python -m longalign.cli``: the ``longalign`` command, as launchers run it (``torchrun -m longalign.cli``)."""

import sys

from longalign.cli import main

sys.exit(main())
