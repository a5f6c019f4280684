"""Kernel backends: where a job's code runs, behind one interface (``base.KernelBackend``).

``local`` starts ipykernel processes through jupyter_client (and keeps a warm pool, whose
kernels ``template`` forks from a process that has imported what they need),
``gateway`` asks a Kernel or Enterprise Gateway for one, ``fake`` replays scripted kernel
messages for fast unit tests of the driver.
"""
