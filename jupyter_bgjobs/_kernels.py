"""Moved to ``_backends.local``; these names stay importable from here until every import
has moved."""

from __future__ import annotations

from ._backends.local import (
    KernelPool,
    KernelStartError,
    LocalKernel,
    execute_content,
    heavy_imports,
    runner_boot_code,
)

__all__ = [
    "KernelPool",
    "KernelStartError",
    "LocalKernel",
    "execute_content",
    "heavy_imports",
    "runner_boot_code",
]
