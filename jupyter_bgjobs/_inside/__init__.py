"""Code that runs in other processes: job kernels, queue workers, call children."""
