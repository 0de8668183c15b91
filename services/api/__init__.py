"""The control API (aiohttp): policies, allowlist, decisions, feedback, appeals, what-if, audit.

``app.create_app`` builds the application; ``dialguard api`` serves it. Reads come from live
in-memory views of the topics (``views``), writes go to the topics through ``ops`` (validated,
versioned, audited) and are visible to the next read.
"""
