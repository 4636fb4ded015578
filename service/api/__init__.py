"""The HTTP API: `app.create_app` builds it; `deps` holds what routes depend on; one module
per resource under `routes/`."""
