"""``perturbprobe serve``: a saved bundle behind an HTTP scoring service.

>>> from perturbprobe.serve import ServeSettings, create_app, serve     # doctest: +SKIP
>>> scorer = Scorer.load("models/smollm2-135m-instruct/auto")            # doctest: +SKIP
>>> serve(create_app(scorer, ServeSettings(max_batch=32)), port=8000)    # doctest: +SKIP

:func:`create_app` builds the ASGI app (FastAPI; micro-batching, limits, health, metrics);
:func:`serve` runs it on uvicorn with a graceful SIGTERM drain. Needs the ``fastapi``,
``uvicorn`` and ``prometheus_client`` packages (installed with perturbprobe).
"""

from .app import ServeSettings, create_app
from .server import serve

__all__ = ["ServeSettings", "create_app", "serve"]
