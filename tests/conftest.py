import sys
from pathlib import Path

# user-target modules used by the CLI tests live next to the tests
sys.path.insert(0, str(Path(__file__).parent / "data"))
