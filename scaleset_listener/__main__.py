import sys

from scaleset_listener.cli import main

sys.exit(main())
