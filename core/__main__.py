import os
import sys

from core.cli import main

os.umask(0o077)   # entry point only: files written by libraries come out owner-only (core sets its own modes too)
sys.exit(main())
