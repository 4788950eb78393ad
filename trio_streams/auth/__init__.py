"""Access control: who may do what to which stream.

``scopes`` (pure) parses ``read:chat/**`` and matches it against a stream
path; ``policy`` (pure) says which scopes a request needs; ``tokens`` and
``jwt`` turn a bearer token into a ``Principal``; ``config`` validates the
``[auth]`` table of the config file; ``authenticator`` is the one object the
HTTP app calls; ``cors`` decides the CORS headers for a request's Origin.
"""
