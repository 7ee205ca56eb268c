"""`python -m bench`: list the benchmarks."""

import pkgutil
from pathlib import Path

names = sorted(m.name for m in pkgutil.iter_modules([str(Path(__file__).parent)]))
print("benchmarks (run each with `.venv/bin/python -m bench.<name>`):")
for name in names:
    print(f"  {name}")
