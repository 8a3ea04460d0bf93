"""Development rigs: ``make demo``, the private Mosquitto and the emulated board the tests use.

Not part of the product: the wheel ships ``agent`` and ``fleet`` only (pyproject's
``[tool.setuptools.packages.find]``), and ``fleet`` imports nothing from here
(``tests/unit/test_devtools_boundary.py`` checks both). These modules may import ``agent`` and
``fleet``; they run from a checkout, with the repository root on ``sys.path`` (``python -m
devtools.demo`` from the root, as ``make demo`` does, or pytest's rootdir).
"""
