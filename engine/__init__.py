"""The journey language: spec models, loader, validator, compiler to plans, catalog, CLI.

Never imports temporalio: this package is the design-time side and is shared by the
worker, the API and the command line.
"""
