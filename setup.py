"""Only the optional C accelerator; everything else about the package is in pyproject.toml.

``relay.recording._speedups`` speeds up the recorder's hot path. It is optional: when no C compiler
is at hand the build goes on without it and the recorder uses its Python paths, which produce the
same bytes (docs/recording.md, "Performance").
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "relay.recording._speedups",
            ["relay/recording/_speedups.c"],
            extra_compile_args=["-O2"],
            optional=True,
        )
    ]
)
