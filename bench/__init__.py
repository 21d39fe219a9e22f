"""`make bench`: the services against a bare asyncpg baseline under the same load."""
