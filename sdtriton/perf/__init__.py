"""``sdtriton perf``: load tests of the served model, and the baselines they are judged against.

:mod:`~sdtriton.perf.profiles` (the profiles as data) and :mod:`~sdtriton.perf.workload` (the requests) say what is
measured; :mod:`~sdtriton.perf.runner` runs a profile over the served paths and in-process baselines
(:mod:`~sdtriton.perf.paths`), the repositories it needs (:mod:`~sdtriton.perf.repositories`) and the load
generators (:mod:`~sdtriton.perf.load`), and fills one model of the run (:mod:`~sdtriton.perf.model`), which
:mod:`~sdtriton.perf.report` writes. :mod:`~sdtriton.perf.command` is the ``perf`` command.
"""
