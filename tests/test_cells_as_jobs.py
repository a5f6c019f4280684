"""Real notebooks' cells behave the same as jobs: names only magics read, a failed cell's
partial results, deleted names, a trailing semicolon, names libraries evaluate from
strings, and warm kernels that import what the notebook imported. Real kernels; the
in-process IPython shell plays the notebook."""

from __future__ import annotations

from typing import Any

import pytest

import jupyter_bgjobs as bj
from jupyter_bgjobs._api import manager


def shown(job: Any) -> str:
    """What the job displayed, as text."""
    return "".join(
        str(o.get("text", "")) + str((o.get("data") or {}).get("text/plain", ""))
        for o in job.outputs
    )


def test_names_read_only_inside_code_running_magics_are_shipped(ip: Any) -> None:
    ip.run_cell("def triple(v):\n    return v * 3\nbase = 14\nitems = [3, 1, 2]")
    ip.run_cell_magic(
        "bgjob", "in_magics", "%time tripled = triple(base)\n%timeit -n 1 -r 1 items.sort()"
    )
    job = bj.get_job("in_magics").wait(120)
    assert job.state == "succeeded", job.report
    assert ip.user_ns["tripled"] == 42
    assert sorted(job.shipped) == ["base", "items", "triple"]
    ip.run_cell_magic("bgjob", "in_cell_magic", "%%time\nbumped = triple(base) + 1")
    job = bj.get_job("in_cell_magic").wait(120)
    assert job.state == "succeeded", job.report
    assert ip.user_ns["bumped"] == 43


def test_a_failed_job_merges_what_it_made_before_its_error(ip: Any) -> None:
    ip.run_cell_magic(
        "bgjob", "partial", "first = 1\nsecond = first + 1\nraise ValueError('late')\nthird = 3"
    )
    job = bj.get_job("partial").wait(120)
    assert job.state == "failed"
    assert ip.user_ns["first"] == 1 and ip.user_ns["second"] == 2
    assert "third" not in ip.user_ns
    assert "failed at statement 3/4" in job.report and "merged first, second" in job.report
    # --on-failure keep: they stay in job.results only.
    ip.run_cell_magic("bgjob", "kept --on-failure keep", "kept_here = 5\n1 / 0")
    job = bj.get_job("kept").wait(120)
    assert job.state == "failed" and "kept_here" not in ip.user_ns
    assert job.results.kept_here == 5 and "partial results kept in" in job.report
    with pytest.raises(bj.JobSpecError, match="on_failure must be"):
        bj.run_cell("x = 1", on_failure="sometimes")


def test_a_name_the_job_deleted_is_deleted_in_the_notebook(ip: Any) -> None:
    ip.run_cell("doomed = [1, 2]\nspared = 'still here'")
    ip.run_cell_magic("bgjob", "deleter", "del doomed\nleft = len(spared)")
    job = bj.get_job("deleter").wait(120)
    assert job.state == "succeeded", job.report
    assert "doomed" not in ip.user_ns and ip.user_ns["spared"] == "still here"
    assert "deleted doomed" in job.report
    # A name the notebook bound anew while the job ran is the notebook's: kept.
    ip.run_cell("again = 1")
    job = bj.run_cell(
        "import time\ntime.sleep(1.5)\ndel again", name="late_delete", env="again,time"
    )
    ip.run_cell("again = 2")
    job.wait(120)
    assert ip.user_ns["again"] == 2 and "kept the notebook's again" in job.report


def test_a_trailing_semicolon_hides_the_last_value_as_in_a_cell(ip: Any) -> None:
    ip.run_cell_magic("bgjob", "quiet", "hidden_value = 31337\nhidden_value;")
    ip.run_cell_magic("bgjob", "loud", "shown_value = 27182\nshown_value")
    quiet, loud = bj.get_job("quiet").wait(120), bj.get_job("loud").wait(120)
    assert quiet.state == loud.state == "succeeded"
    assert "31337" not in shown(quiet)
    assert "27182" in shown(loud)
    # A semicolon before a comment hides it too; one inside a string does not.
    ip.run_cell_magic("bgjob", "quiet2", "v = 161803\nv;  # no output")
    ip.run_cell_magic("bgjob", "loud2", "'x;'")
    assert "161803" not in shown(bj.get_job("quiet2").wait(120))
    assert "x;" in shown(bj.get_job("loud2").wait(120))


def test_who_and_whos_list_the_notebooks_names_and_the_jobs(ip: Any) -> None:
    np = pytest.importorskip("numpy")
    from IPython.utils.capture import capture_output

    ip.user_ns.update(
        count=123, grid=np.ones((3, 4)), names=["a", "b"], text="word " * 20 + "\nend"
    )
    # What the notebook lists once the cell has run in it...
    with capture_output() as seen:
        ip.run_cell("made_here = 1\n%whos\n%who")
    expected = seen.stdout
    ip.run_cell("del made_here")
    # ...is what the same cell lists as a job given one name only.
    ip.run_cell_magic("bgjob", "lister --env count", "made_here = 1\n%whos\n%who")
    job = bj.get_job("lister").wait(120)
    assert job.state == "succeeded", job.report
    assert job.output == expected
    ip.run_cell_magic("bgjob", "lister_ls --env none", "listed = %who_ls ndarray")
    bj.get_job("lister_ls").wait(120)
    assert ip.user_ns["listed"] == ["grid"]
    for name in ("count", "grid", "names", "text", "made_here", "listed"):
        ip.user_ns.pop(name, None)


def test_a_name_a_library_evaluates_from_a_string_gets_the_hint(ip: Any) -> None:
    pytest.importorskip("pandas")
    ip.run_cell("import pandas as pd\nframe = pd.DataFrame({'a': [1, 5, 9]})\nlimit = 4")
    ip.run_cell_magic("bgjob", "query_hint", "picked = frame.query('a > @limit')")
    job = bj.get_job("query_hint").wait(120)
    assert job.state == "failed"
    assert "--env limit" in job.error.evalue, job.error.evalue
    ip.run_cell_magic("bgjob", "query_env --env frame,limit", "picked = frame.query('a > @limit')")
    job = bj.get_job("query_env").wait(120)
    assert job.state == "succeeded" and list(ip.user_ns["picked"]["a"]) == [5, 9]


def test_warm_kernels_import_what_the_notebook_imported(ip: Any) -> None:
    pool = manager.pool()
    assert pool.wait_warm(60)
    ip.run_cell("import wave")  # a module no fresh kernel has
    assert "wave" in pool.wanted
    assert pool.wait_warm(60)  # the idle kernel has imported it meanwhile
    ip.run_cell_magic("bgjob", "warm_imports", "import sys\nhad_it = 'wave' in sys.modules")
    job = bj.get_job("warm_imports").wait(120)
    assert job.state == "succeeded", job.report
    assert ip.user_ns["had_it"] is True
    # The notebook's own modules are never imported ahead: a job imports them its way.
    from jupyter_bgjobs._backends.ahead import notebook_imports

    assert "test_cells_as_jobs" not in notebook_imports({"m": __import__(__name__)})


def test_a_change_made_in_place_reaches_every_name_for_the_same_data(ip: Any) -> None:
    np = pytest.importorskip("numpy")
    ip.run_cell(
        "import numpy as np\nbase = np.arange(10)\nwindow = base[2:5]\n"
        "items = [1, 2]\nsame_items = items\nconfig = {'a': 1}\nheld = [config]"
    )
    ip.run_cell_magic("bgjob", "in_place", "base += 100\nitems.append(3)\nconfig['b'] = 2")
    job = bj.get_job("in_place").wait(120)
    assert job.state == "succeeded", job.report
    # As after the same cell in the notebook: the other names see the change.
    assert list(ip.user_ns["window"]) == [102, 103, 104]
    assert ip.user_ns["same_items"] == [1, 2, 3] and ip.user_ns["same_items"] is ip.user_ns["items"]
    assert ip.user_ns["held"][0] == {"a": 1, "b": 2}
    assert isinstance(ip.user_ns["base"], np.ndarray) and ip.user_ns["base"][0] == 100
    assert "changed in place by the job" in job.report


def test_a_frame_changed_in_place_is_updated_not_rebound(ip: Any) -> None:
    pytest.importorskip("pandas")
    ip.run_cell(
        "import pandas as pd\nsales = pd.DataFrame({'v': [1.0, 2.0, 3.0]})\nalias = sales\n"
        "frames = {'sales': sales}\ncolumn = pd.Series([1, 2], name='c')\nsame_column = column"
    )
    ip.run_cell_magic(
        "bgjob",
        "frame_in_place",
        "sales['z'] = sales['v'] * 2\nsales.drop(index=0, inplace=True)\n"
        "column.rename('renamed', inplace=True)",
    )
    job = bj.get_job("frame_in_place").wait(120)
    assert job.state == "succeeded", job.report
    ns = ip.user_ns
    # Every name for the frame sees what the cell did, as it would in the notebook.
    assert ns["alias"] is ns["sales"] and ns["frames"]["sales"] is ns["sales"]
    assert list(ns["alias"].columns) == ["v", "z"] and list(ns["alias"].index) == [1, 2]
    assert ns["same_column"] is ns["column"] and ns["same_column"].name == "renamed"


def test_a_view_and_its_base_travel_together(ip: Any) -> None:
    pytest.importorskip("numpy")
    ip.run_cell("import numpy as np\nsignal = np.arange(12.0)\npeak = signal[4:8]")
    ip.run_cell_magic(
        "bgjob", "view_travel", "peak[0] = -1.0\nseen = float(signal[4])\ntotal = signal.sum()"
    )
    job = bj.get_job("view_travel").wait(120)
    assert job.state == "succeeded", job.report
    # In the job, as in the notebook, the change through the view is seen through the base.
    assert ip.user_ns["seen"] == -1.0 and ip.user_ns["total"] == sum(range(12)) - 5
    assert ip.user_ns["signal"][4] == -1.0 and ip.user_ns["peak"][0] == -1.0
    ip.user_ns["signal"][5] = 50.0  # and afterwards they are still one array
    assert ip.user_ns["peak"][1] == 50.0
