"""One module per API resource, each with a module-level `router`."""
