"""``python -m hf_cot.compare``."""

import sys

from . import main

sys.exit(main())
