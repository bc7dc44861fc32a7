"""`clipsearch serve`: the HTTP API and web gallery around one opened index.

    app.py          routes, built around the engine (the one way into an index)
    security.py     who may talk to it: Host check, token, body limit, headers
    thumbnails.py   thumbnails made once and cached by content hash
    service.py      the process: bind, load, publish the discovery file, serve, stop
    static/         the gallery (plain HTML, CSS, JavaScript)

Imported only by `clipsearch serve`, so the other commands never load FastAPI.
"""
