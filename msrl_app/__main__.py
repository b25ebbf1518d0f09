"""``python -m msrl_app``: same as ``msrl-app``."""

import sys

from msrl_app.main import main

sys.exit(main())
