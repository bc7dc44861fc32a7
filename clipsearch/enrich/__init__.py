"""What models say about a photo's content, kept by content hash beside the rows: computed and
declared here, committed by the builder, read by the search.

    tagging.py   zero-shot tags (CLIP against a label set)
    captions.py  BLIP's captions, made in batches and searchable
    xmp.py       writing tags into XMP sidecars for other photo managers

May import: store/, media/, models/ and the ground floor.
"""
