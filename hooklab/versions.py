"""The library versions a result was made with, in one place (manifests, checks, errors)."""

from __future__ import annotations

from importlib import metadata

__all__ = ["RECORDED", "STACK", "NOT_INSTALLED", "library_versions", "stack_versions"]

#: Every library whose version a run records.
RECORDED = ("hooklab", "torch", "transformers", "transformer-lens", "numpy", "pandas", "pyarrow")

#: The version recorded for a distribution that is not installed.
NOT_INSTALLED = "not installed"

#: The libraries whose internals hooklab touches (their versions decide its numbers).
STACK = ("torch", "transformers", "transformer-lens")


def library_versions(names: tuple[str, ...] = RECORDED) -> dict[str, str]:
    """``{name: version}`` of installed distributions (:data:`NOT_INSTALLED` for missing ones)."""
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = NOT_INSTALLED
    return versions


def stack_versions() -> str:
    """``"torch 2.13.0, transformers 5.24.0, transformer-lens 4.3.0"``."""
    return ", ".join(f"{k} {v}" for k, v in library_versions(STACK).items())
