import sys

from lamp.cli import main

sys.exit(main())
