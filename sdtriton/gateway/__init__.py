"""``sdtriton gateway``: an HTTP front door (FastAPI on uvicorn) to models served by Triton.

OpenAI's images API (``POST /v1/images/generations``) over gRPC streams to each model's
``<prefix>stable_diffusion_stream`` entry, with API keys, rate limits, health, readiness, Prometheus metrics and
durable jobs (``/v1/jobs``).
Modules: :mod:`~sdtriton.gateway.app` (the app and its routes), :mod:`~sdtriton.gateway.schema` (bodies),
:mod:`~sdtriton.gateway.backend` (the Triton side), :mod:`~sdtriton.gateway.errors` (failures to HTTP),
:mod:`~sdtriton.gateway.settings`, :mod:`~sdtriton.gateway.access` (keys, rate limits),
:mod:`~sdtriton.gateway.images`, :mod:`~sdtriton.gateway.metrics`, :mod:`~sdtriton.gateway.runner` (a job's run),
:mod:`~sdtriton.gateway.playground` (the page at ``/``),
the durable jobs (their routes :mod:`~sdtriton.gateway.job_routes`, :mod:`~sdtriton.gateway.jobs`,
:mod:`~sdtriton.gateway.store`, :mod:`~sdtriton.gateway.sqlite_store`, :mod:`~sdtriton.gateway.redis_store`,
:mod:`~sdtriton.gateway.webhooks`), :mod:`~sdtriton.gateway.command` and :mod:`~sdtriton.gateway.process` (a gateway
process, for the tests and ``sdtriton perf``).
"""
