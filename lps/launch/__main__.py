import sys

from lps.launch.cli import main

sys.exit(main())
