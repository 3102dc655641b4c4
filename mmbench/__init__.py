"""mmbench: benchmarks for Linux KVM's MMU invalidation paths, on a model and on /dev/kvm."""

__version__ = "0.1.0"
