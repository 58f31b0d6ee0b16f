"""spreadqueue's build: the metadata is in setup.cfg; this adds the optional C accelerator.

``spreadqueue._spread.wire._speedups`` (the compiled fast path of the Spread decoders)
is built when a C compiler and the Python headers are present; when it cannot be built
setuptools says so and installs the pure-Python package, which is the reference and
works the same (only slower). ``SPREADQUEUE_PURE=1`` at run time ignores a built one.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "spreadqueue._spread.wire._speedups",
            ["spreadqueue/_spread/wire/_speedups.c"],
            optional=True,  # no compiler, no headers: a warning, and the pure-Python path
        )
    ]
)
