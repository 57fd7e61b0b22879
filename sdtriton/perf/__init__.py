"""Load tests of the served model with ``perf_analyzer``, and the baselines they are judged against.

Pure modules: :mod:`~sdtriton.perf.workload` (requests and ``--input-data`` files),
:mod:`~sdtriton.perf.scenarios` (profiles, scenarios, perf_analyzer command lines and CSV),
:mod:`~sdtriton.perf.stats` (Triton's per-model statistics), :mod:`~sdtriton.perf.report` (CSV, plot,
markdown summary). :mod:`~sdtriton.perf.baselines` times diffusers and the plain ONNX loop in-process;
:mod:`~sdtriton.perf.runner` is ``sdtriton perf``: it starts the server and runs everything.
"""
