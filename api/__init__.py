"""The NeRN job service: HTTP API (FastAPI), database, artifact store, client and CLI.

    api.main.create_app()    the ASGI application (uvicorn api.main:app)
    api.client.NernClient    the httpx client the CLI is built on
    api.cli.register(sub)    the `serve`, `worker`, `keys` and `jobs` subcommands
"""
