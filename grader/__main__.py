"""``python -m grader``: see `grader.cli`."""

import sys

# jsonschema (under nbformat) imports the optional `rfc3987_syntax` when it is installed, which compiles a grammar
# at import time (2 s of CPU) for the "iri" string formats that nbformat's schemas never use. This process only
# reads and writes notebooks: skip it.
sys.modules.setdefault("rfc3987_syntax", None)

from .cli import main  # noqa: E402

sys.exit(main())
