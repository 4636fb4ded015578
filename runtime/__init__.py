"""Reaching and running Temporal: the client connection every process makes (`temporal`)
and the embedded dev server `journeys up` starts (`devserver`). No web, no database."""
