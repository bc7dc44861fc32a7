"""The one writer: everything that changes an index goes through here.

    builder.py      Builder (plan, compute, commit; tag, caption, check), index_folders, open_builder
    enriching.py    the builder's tags and captions: computed from content, committed here
    fastprep.py     what the torch-free query reads: the text export and the row snapshot
    indexer.py      one run: the scan diffed against the rows, files read, embedded, committed
    prepare.py      the step for each new or changed file: read, hash, decode unless known
    roots.py        when a root or a folder under it is offline rather than emptied
    watch.py        following the folders (`serve --watch`)
    jobs.py         the writing commands a watching server runs for the CLI, one class per kind
    distributed.py  the per-file step fanned out over a Ray cluster (`index --ray`)
    unchanged.py    an `index` run that finds nothing to do, told without a model or LanceDB
    check.py        verifying and repairing what is made from the table (`clipsearch check`)

May import: enrich/, store/, media/, models/ and the ground floor; never search/, server/, cli/.
"""
