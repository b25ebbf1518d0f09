"""``python -m msrl_model.train``: see :mod:`msrl_model.train.cli`."""

import sys

from msrl_model.train.cli import main

sys.exit(main())
