import sys

from cliprt.cli import main

sys.exit(main())
