"""The index on disk: the LanceDB table and its manifest, and the files made from it that keep
searches fast, each kept in step with the table's versions.

    table.py      Store (the rows, tags and captions tables), the manifest, the writer's lock
    ann.py        the FAISS search structure, a base and a delta per version
    snapshot.py   the rows as Arrow files for the torch-free path (RowSource without LanceDB)
    layers.py     base plus delta: how those files follow each commit at the cost of the change
    derived.py    writing those files: checksums, and failures remembered with the space needed
    kept.py       the vectors of removed rows, kept a while by content hash
    diskcache.py  a bounded folder of derived files by content hash; featcache.py, BLIP's features

May import: the ground floor only.
"""
