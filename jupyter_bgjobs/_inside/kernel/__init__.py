"""Code that runs inside a job's kernel.

``wire`` is the snapshot format and ``chunks`` its binary chunks over the kernel protocol
(both sides use them), ``arena`` the memory checks and the results arena, ``console`` the
job's stdin and output streams, ``cell`` how a cell is read (its statements, sections, a
trailing semicolon), ``checkpoint`` a job's namespace saved where a section ends and
loaded to resume it, ``runner`` the statement loop and the entry points the notebook side
calls. In the notebook these are ordinary modules (``jupyter_bgjobs._inside.kernel.wire``);
a job's kernel gets them as source, which ``_backends.local.runner_boot_code`` registers
there as the package ``_bgjobs_kernel`` (the runner also as ``_bgjobs_runner``), so a
kernel of another environment needs no jupyter_bgjobs installed. Standard library only at
import time, and only relative imports inside the package.
"""

# Shipped into a job's kernel in this order: each imports only those before it.
MODULES = ("wire", "chunks", "arena", "console", "cell", "checkpoint", "runner")
