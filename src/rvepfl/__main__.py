import sys

from rvepfl.cli import main

sys.exit(main())
