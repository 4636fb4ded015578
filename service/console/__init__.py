"""The ops console: server-rendered pages (`routes`), sign-in and sessions (`auth`)."""
