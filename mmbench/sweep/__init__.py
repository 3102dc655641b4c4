"""Sweeps: one run config, many points (a grid or a seeded sample over its keys).

``spec`` reads and checks a sweep file and expands its points, ``claims`` judges ordering
claims over them, ``sweepdir`` keeps the points as stored runs with an index, ``cluster``
runs them on dask.distributed, ``report`` draws and tabulates them.
"""

# more points need --max-points: a typo in a grid should not start a week of runs
MAX_POINTS = 256
