"""``effnet-serve``: an exported model (``effnet_jax.serving``) behind HTTP, with a review page.

    from effnet_jax import serving, server
    app = server.create_app(serving.load("exported/pneumonia"))   # a FastAPI app (the ``serve`` extra)

``docs/serving.md`` lists the endpoints, the batching, the budgets and the status codes.
"""

from effnet_jax.server.app import BackgroundServer, Settings, create_app, serve

__all__ = ["BackgroundServer", "Settings", "create_app", "serve"]
