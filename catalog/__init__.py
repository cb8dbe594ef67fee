"""The detection-KD paper catalog: papers as YAML data, the awesome README as their render.

Commands: ``python -m catalog check | build | ...`` (see :mod:`catalog.cli`). This package never
imports torch or :mod:`kdimpl`; it reads kdimpl's sources statically (:mod:`catalog.kdimpl_index`).
"""

__version__ = "0.1.0"
