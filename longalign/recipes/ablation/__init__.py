from longalign.recipes.ablation.run import *  # noqa: F403
from longalign.recipes.ablation.run import __doc__  # noqa: F401
