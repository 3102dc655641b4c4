"""Deliberately broken policies, one bug each, on every invalidation path and arch.

Each class's docstring names the bug and the kernel code it breaks; each module's
``MUTANTS`` lists its classes, so a test can tell that none was forgotten.
"""
