"""The one error tree of jupyter_bgjobs.

::

    BgJobError
    ├── JobSpecError (ValueError)        bad input: unknown option, missing script, bad name
    ├── JobStateError (RuntimeError)     misuse: results of a job that is still running
    │   └── WaitTimeout (TimeoutError)   wait(timeout) returned first; the job goes on
    ├── StoreError (OSError)             the job store is read-only, full, or an entry damaged
    └── JobError                         a job ended without success; carries its context
        ├── JobFailedError               the job's code raised; remote traceback as __cause__
        ├── JobCancelledError            the user stopped it
        ├── JobTimeoutError (TimeoutError)  it ran past its --timeout
        └── KernelDiedError              its kernel process ended on its own

Cancelled is not died: a job the user stopped and a job whose kernel crashed are
different states and different errors.
"""

from __future__ import annotations

from typing import Any


class BgJobError(Exception):
    """Root of every error raised by jupyter_bgjobs."""


class JobSpecError(BgJobError, ValueError):
    """A job could not be created from what was given; the message names the fix."""


class JobStateError(BgJobError, RuntimeError):
    """An operation does not fit the job's current state."""


class WaitTimeout(JobStateError, TimeoutError):
    """``wait(timeout)`` returned before the job, call or queue ended; it goes on."""


class StoreError(BgJobError, OSError):
    """The store of detached jobs cannot be written (read-only, full) or one of its entries
    cannot be read; the message names the folder and the fix. An ``OSError`` too, so code
    that handles failed file writes handles it."""


class RemoteTraceback(Exception):
    """The traceback of an exception raised inside a job's kernel, as text."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return "\n" + self.text


class JobError(BgJobError):
    """A job ended without success.

    Carries the job's name, its final state, the remote ``ename``/``evalue``/``traceback``
    when there is one, and the tail of its output.
    """

    def __init__(
        self,
        message: str,
        *,
        job_name: str = "",
        state: str = "",
        ename: str = "",
        evalue: str = "",
        traceback: list[str] | None = None,
        output: str = "",
    ) -> None:
        super().__init__(message)
        self.job_name = job_name
        self.state = state
        self.ename = ename
        self.evalue = evalue
        self.traceback = list(traceback or [])
        self.output = output
        if self.traceback:
            self.__cause__ = RemoteTraceback(_strip_ansi("\n".join(self.traceback)))

    def __reduce__(self) -> tuple[Any, ...]:
        kwargs = {
            "job_name": self.job_name,
            "state": self.state,
            "ename": self.ename,
            "evalue": self.evalue,
            "traceback": self.traceback,
            "output": self.output,
        }
        return (_rebuild_job_error, (type(self), str(self), kwargs))


def _rebuild_job_error(cls: type[JobError], message: str, kwargs: dict[str, Any]) -> JobError:
    return cls(message, **kwargs)


class JobFailedError(JobError):
    """The job's code raised an exception."""


class JobCancelledError(JobError):
    """The job was cancelled by the user."""


class JobTimeoutError(JobError, TimeoutError):
    """The job ran longer than its timeout."""


class KernelDiedError(JobError):
    """The job's kernel process ended on its own (killed, crashed, or exited)."""


def _strip_ansi(text: str) -> str:
    import re

    return re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", text)


class TaskError(BgJobError):
    """A queue task did not succeed for a reason other than its own exception: it ran past
    its time limit, its worker died, or what it takes or returns cannot be pickled. A task
    whose function raised keeps that exception instead, its remote traceback as
    ``__cause__``."""


class TaskTimeoutError(TaskError, TimeoutError):
    """The task ran longer than the queue's ``timelimit``; its worker was ended."""


class WorkerDiedError(TaskError):
    """The worker process running the task ended (crash, ``os._exit``, killed)."""


class TaskPickleError(TaskError):
    """The task's function, arguments or result cannot be sent between processes."""
