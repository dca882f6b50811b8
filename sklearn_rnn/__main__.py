"""``python -m sklearn_rnn``: the demo (see ``sklearn_rnn._demo``)."""

import sys

from ._demo import main

sys.exit(main())
