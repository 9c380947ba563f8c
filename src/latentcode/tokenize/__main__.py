"""`python -m latentcode.tokenize` (as `accelerate launch -m latentcode.tokenize` runs it): the
`latentcode-tokenize` command."""

import sys

from .cli import main

sys.exit(main())
