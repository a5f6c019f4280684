"""The public surface is small and locked."""

import jupyter_bgjobs


def test_all_is_locked() -> None:
    assert sorted(jupyter_bgjobs.__all__) == [
        "BgCall",
        "BgJobError",
        "Job",
        "JobCancelledError",
        "JobError",
        "JobFailedError",
        "JobSpecError",
        "JobStateError",
        "JobTimeoutError",
        "KernelDiedError",
        "Queue",
        "Sweep",
        "Task",
        "TaskError",
        "TaskList",
        "TaskPickleError",
        "TaskTimeoutError",
        "WaitTimeout",
        "WorkerDiedError",
        "WorkerPool",
        "add_job",
        "bg",
        "bg_call",
        "bg_calls",
        "configure",
        "get_job",
        "jobs",
        "load_ipython_extension",
        "panel",
        "prune",
        "run_cell",
        "run_script",
        "set_progress",
        "set_status",
        "sweep",
        "tqdm",
        "unload_ipython_extension",
    ]
    for name in jupyter_bgjobs.__all__:
        assert getattr(jupyter_bgjobs, name).__doc__, f"{name} has no docstring"


def test_one_error_tree() -> None:
    for name in jupyter_bgjobs.__all__:
        obj = getattr(jupyter_bgjobs, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, jupyter_bgjobs.BgJobError), name
    assert issubclass(jupyter_bgjobs.JobTimeoutError, TimeoutError)
    assert issubclass(jupyter_bgjobs.JobSpecError, ValueError)
