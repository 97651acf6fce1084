"""The HTTP entrypoint: the aiohttp app, its routes, middlewares, views and OpenAPI document."""
