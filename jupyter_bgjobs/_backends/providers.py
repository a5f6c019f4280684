"""Where a job's kernel comes from, chosen once per job.

A provider gives a job its kernel and says what that kernel can do; nobody else asks
where a job runs. ``local``: the notebook's machine, a warm pool (a fake source in the
driver's unit tests plays it); ``gateway``: a Kernel or Enterprise Gateway, pooled for an
attached job whose kernelspec fits the pool. Adding a provider is a class here and one
entry of ``_PROVIDERS``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

from .._config import settings

if TYPE_CHECKING:
    from .._spec import JobSpec
    from .base import KernelBackend, KernelSource


class Provider:
    """A job's kernel and what it can do."""

    name: ClassVar[str]
    # The kernel sees the notebook's files and environment: snapshots travel as files (in
    # shared memory), output is paced through a file, the notebook's environment changes
    # and import path are applied. Otherwise everything travels over the kernel protocol.
    shares_files: ClassVar[bool]

    def __init__(self, spec: JobSpec, manager: Any) -> None:
        self.spec = spec
        self.manager = manager

    def kernel(self, detached: bool) -> KernelBackend:
        """A started kernel for the job, the runner loaded."""
        raise NotImplementedError


class LocalProvider(Provider):
    """A kernel of this machine: from the warm pool (forked from its template), else new."""

    name = "local"
    shares_files = True

    def __init__(self, spec: JobSpec, manager: Any, kernels: KernelSource | None = None) -> None:
        super().__init__(spec, manager)
        self.kernels = kernels

    def kernel(self, detached: bool) -> KernelBackend:
        source = self.kernels if self.kernels is not None else self.manager.pool()
        if not detached:
            self._ahead(source)
        return source.acquire(self.spec.kernel)

    def _ahead(self, source: Any) -> None:
        """What the job's code imports, its results bring to the notebook: the pool's
        template imports it once for this job's kernel and the next ones (a warm kernel
        without a slow library it imports makes way for one forked after), and the
        notebook imports it while the job runs."""
        from .._spec import transformed
        from .ahead import code_imports, import_ahead

        modules = code_imports(transformed(self.spec.code))
        expect = getattr(source, "expect", None)
        if modules and expect is not None:
            expect(modules)
        if modules and self.spec.results != "none":
            import_ahead(modules)


class GatewayProvider(Provider):
    """A kernel a gateway starts; an attached job takes a warm one when it fits the pool."""

    name = "gateway"
    shares_files = False

    def kernel(self, detached: bool) -> KernelBackend:
        from .gateway import GatewayKernel, gateway_settings

        spec = self.spec
        url, token = gateway_settings(spec.gateway)
        name = spec.kernel or settings.kernel
        if detached:  # its host outlives the notebook: no pool, no reaper
            return GatewayKernel(url, token, name, spec.kernel_env).start()
        return self.manager.gateway_kernel(url, token, name, spec.kernel_env)  # type: ignore[no-any-return]


_PROVIDERS: dict[str, Callable[..., Provider]] = {
    LocalProvider.name: LocalProvider,
    GatewayProvider.name: GatewayProvider,
}


def where(spec: JobSpec) -> str:
    """The name of the provider a job's spec asks for."""
    return GatewayProvider.name if spec.gateway else LocalProvider.name


def provider_for(
    spec: JobSpec, manager: Any = None, kernels: KernelSource | None = None
) -> Provider:
    """The job's provider: the one its spec names; ``kernels`` (a test's fake source)
    stands in for the local pool."""
    if kernels is not None:
        return LocalProvider(spec, manager, kernels)
    return _PROVIDERS[where(spec)](spec, manager)
