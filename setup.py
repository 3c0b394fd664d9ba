"""The one C extension: tunelens.diff._fastdiff, the streaming diff's one-pass statistics (see its source).

Everything else about the package is in pyproject.toml. `optional=True`: where no C compiler is found the install
still succeeds and the diff runs its torch path (same results, slower); tests/test_diff.py fails on such an
install, so CI cannot lose the kernel unnoticed.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("tunelens.diff._fastdiff", ["src/tunelens/diff/_fastdiff.c"], optional=True,
                             extra_compile_args=["-O3", "-std=c11"])])
