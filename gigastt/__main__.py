"""``python -m gigastt``: the same command line as the ``gigastt`` script.
"""

from gigastt.cli import main

raise SystemExit(main())
