import sys

from swarmcache.cli import main

sys.exit(main())
