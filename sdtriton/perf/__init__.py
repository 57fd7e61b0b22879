"""Load tests of the served model with ``perf_analyzer``, and the baselines they are judged against.

Pure modules: :mod:`~sdtriton.perf.workload` (requests and ``--input-data`` files),
:mod:`~sdtriton.perf.scenarios` (profiles, scenarios, perf_analyzer command lines and CSV),
:mod:`~sdtriton.perf.stats` (Triton's per-model statistics), :mod:`~sdtriton.perf.run` (what both profiles'
runs are made of: the machine, each path's timings), :mod:`~sdtriton.perf.report` (CSV, plot, markdown
summary). :mod:`~sdtriton.perf.baselines` times diffusers and the plain ONNX loop in-process;
:mod:`~sdtriton.perf.harness` holds what both profiles' runs share (options, time limit, model, repository,
server); :mod:`~sdtriton.perf.runner` is ``sdtriton perf``: it runs a profile, the engine one through
:mod:`~sdtriton.perf.engine_runner`.

The engine profile (``sdtriton perf --profile engine``) measures the diffusion engine itself: its spec
(:mod:`~sdtriton.perf.engine_scenarios`), results and goals (:mod:`~sdtriton.perf.engine_results`) and reports
(:mod:`~sdtriton.perf.engine_report`) are pure; :mod:`~sdtriton.perf.in_process` drives the engine without
Triton, :mod:`~sdtriton.perf.client_load` sends client-thread loads, :mod:`~sdtriton.perf.variants` and
:mod:`~sdtriton.perf.simulated` make the repositories it compares, :mod:`~sdtriton.perf.engine_runner` runs it.
"""
