"""Code that runs in other processes: a job's kernel (``kernel/``, shipped there as source
text), the template its warm kernels are forked from (``template.py``, run from its text),
a queue worker, a ``bg()`` call's child and its supervisor, and the process helpers they
share with the notebook side.

Only the standard library and cloudpickle are imported here at import time, so a child
starts in milliseconds, without the package, IPython, pandas or jupyter_client. The files
are started as scripts (``python .../_inside/worker.py ...``), not with ``-m``, which would
import the package first; a module here imports its siblings relatively when it is imported
as part of the package and by their bare names when its folder is a script's
``sys.path[0]`` (``procs.leave_script_folder`` then takes that folder off the path again).
The notebook side imports these modules as ``jupyter_bgjobs._inside.*``.
"""
