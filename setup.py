"""Build the optional C speedups; everything else is in pyproject.toml.

``optional=True``: where no C compiler is available the build goes on
without the extension and tornado_websocket uses its Python fallback.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("tornado_websocket._speedups", ["tornado_websocket/_speedups.c"], optional=True)])
