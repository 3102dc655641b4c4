"""mmbench: benchmarks for Linux KVM's MMU invalidation paths, on a model and on /dev/kvm.

Plugins need one name from here: ``from mmbench import hookimpl``.
"""

from mmbench.host.hookspecs import hookimpl

__all__ = ["hookimpl"]
__version__ = "0.1.0"
