import sys

from kura.agent.cli import main

sys.exit(main())
