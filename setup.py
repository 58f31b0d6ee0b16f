"""spreadqueue's build: the metadata is in setup.cfg; this adds the optional C accelerator.

``spreadqueue._spread.wire._speedups`` (the compiled fast path of the Spread decoders)
and ``spreadqueue._queue._entries`` (of the queue messages' entry checks) are built when a C compiler and the Python headers are present; when it cannot be built
setuptools says so and installs the pure-Python package, which is the reference and
works the same (only slower). ``SPREADQUEUE_PURE=1`` at run time ignores built ones.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "spreadqueue._spread.wire._speedups",
            ["spreadqueue/_spread/wire/_speedups.c"],
            optional=True,  # no compiler, no headers: a warning, and the pure-Python path
        ),
        Extension(
            "spreadqueue._queue._entries",
            ["spreadqueue/_queue/_entries.c"],
            optional=True,
        ),
    ]
)
