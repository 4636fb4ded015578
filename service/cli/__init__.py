"""The `journeys` command: `main` assembles the design-time commands (`design`), the
runtime ones, users and API keys (`users`) and risk models (`risk_models`)."""
