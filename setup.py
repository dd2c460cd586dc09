"""The compiled OTLP decoder (src/otel_feedback/_otlp_fast.c) and Bloom filter insertion (_seen.c); everything
else is in pyproject.toml.

The extensions are optional: where they cannot be built (no C compiler), the package installs without them and
does the same in Python (slower; ``otel-feedback serve`` says so when it starts).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "otel_feedback._otlp_fast",
            ["src/otel_feedback/_otlp_fast.c"],
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"],
            optional=True,
        ),
        Extension(
            "otel_feedback._seen",
            ["src/otel_feedback/_seen.c"],
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"],
            optional=True,
        ),
    ]
)
