import sys

from scribeai.cli import main

sys.exit(main())
