"""Reading an index: from a query to ranked hits.

    engine.py     Index, the one way to read an index (search, similar, records, files)
    request.py    SearchRequest: one search as the CLI, the client, the API and Python state it
    query.py      the query language: terms, filters, image terms
    nearest.py    the nearest vectors under filters, over the rows' source
    wordsearch.py the word index and its fusion with CLIP's ranking
    rerank.py     BLIP's image-text matching over the top candidates
    dupes.py      near-duplicate groups and which copy to keep
    fastpath.py   the torch-free one-off query (ONNX text tower, row snapshot)
    limits.py     how much one request may ask for

May import: enrich/, store/, media/, models/ and the ground floor; never build/, server/, cli/.
"""
