import sys

from lps.cli import main

sys.exit(main())
