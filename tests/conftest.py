import sys
from pathlib import Path

# The faulty adapters are importable both here and in worker processes (via PYTHONPATH).
TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))
