import sys

from spoolup.cli import main

sys.exit(main())
