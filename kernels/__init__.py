"""Triton kernels and their launchers (installed as ``kdcore.kernels``).

Imported lazily by :mod:`kdcore._backends`; set ``TRITON_INTERPRET=1`` before the first import
to run the kernels on CPU tensors through Triton's interpreter.
"""

import os

INTERPRET = os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on")
