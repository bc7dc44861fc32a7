"""`clipsearch serve`: the HTTP API and web gallery around one opened index.

    app.py          routes, built around the engine (the one way into an index)
    live.py         jobs, the watcher's state and the events the gallery follows
    security.py     who may talk to it: Host check, token, body limit, headers
    service.py      the process: bind, load, publish the discovery file, serve, stop
    client.py       the CLI's way to a running server (discovery file, requests; no FastAPI)
    static/         the gallery (plain HTML, CSS, JavaScript)

FastAPI loads only with app.py, which only `clipsearch serve` imports. May import search/,
build/ and everything below them; never cli/.
"""
