"""The HTTP API, laid out as FastAPI's full-stack template lays out ``app/api``:
`app.create_app` builds the app (lifespan, middleware, error handlers, routers); `deps`
holds what routes depend on, as `Annotated` aliases; `errors` the one error body;
`messages` the Segment wire models; `middleware` the body limit; `auth` API keys; one
module per resource under `routes/`, each with a module-level ``router``."""
