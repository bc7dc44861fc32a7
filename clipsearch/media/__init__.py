"""Photos and videos as files: what a file is, reading it into an upright picture, and what it
says beyond its pixels. No index, no model.

    kinds.py    file kinds by name, how much of a RAW identifies it, the decoded picture
    exif.py     EXIF's capture time, camera, lens and GPS position; Meta, what a photo says
    images.py   reading, hashing and decoding one photo (EXIF orientation, HEIC, huge strips)
    raw.py      RAW files: the embedded preview or the developed sensor data (LibRaw)
    video.py    a video's moments, decoded a few at a time (PyAV)
    words.py    the metadata reader (EXIF, IPTC, XMP, sidecars) and the row's words
    places.py   place names for GPS positions, offline
    scan.py     walking folders: photos, pairs (Live Photos, RAW + JPEG), sidecars, junk
    thumbnails.py  thumbnails and RAW renditions, made once and cached by content hash

May import: the ground floor (errors, results, config, files), store/ (the word columns' types).
"""
