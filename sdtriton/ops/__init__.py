"""Running tritonserver for real: ``serve`` (:mod:`~sdtriton.ops.serve`), the crash supervisor
(:mod:`~sdtriton.ops.supervisor`) and the ``soak`` test (:mod:`sdtriton.ops.soak`).

Starting one tritonserver process (ports, admin access, drain, log rotation) is :mod:`sdtriton.server`, which the
perf harness and the tests use too.
"""
