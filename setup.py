"""The compiled OTLP decoder (src/otel_feedback/_otlp_fast.c); everything else is in pyproject.toml.

The extension is optional: where it cannot be built (no C compiler), the package installs without it and
decodes in Python (slower; ``otel-feedback serve`` says so when it starts).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "otel_feedback._otlp_fast",
            ["src/otel_feedback/_otlp_fast.c"],
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"],
            optional=True,
        )
    ]
)
