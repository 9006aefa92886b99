import sys

from longalign.recipes.screenshots import main

sys.exit(main())
