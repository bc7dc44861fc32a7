"""RAW photos made at run time, for the tests and the benchmarks: a picture's pixels as the Bayer
mosaic a camera's sensor records (RGGB, 12-bit, linear light), written as a DNG with PiDNG,
which rawpy (LibRaw) then reads as it reads a camera's RAW."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

# XYZ (D65) to linear sRGB: the DNG's ColorMatrix1, so that the "camera" sees sRGB primaries
# and LibRaw's rendering gives back about the picture it was made from
_XYZ_TO_SRGB = ((3.2406, -1.5372, -0.4986), (-0.9689, 1.8758, 0.0415), (0.0557, -0.2040, 1.0570))
_WHITE = 4095


def mosaic(picture: Image.Image) -> np.ndarray:
    """The RGGB Bayer mosaic of `picture` (even width and height), linear light in 12 bits."""
    rgb = np.asarray(picture.convert("RGB"), np.float64) / 255.0
    linear = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    h, w = (linear.shape[0] // 2) * 2, (linear.shape[1] // 2) * 2
    linear = linear[:h, :w]
    out = np.empty((h, w))
    out[0::2, 0::2] = linear[0::2, 0::2, 0]
    out[0::2, 1::2] = linear[0::2, 1::2, 1]
    out[1::2, 0::2] = linear[1::2, 0::2, 1]
    out[1::2, 1::2] = linear[1::2, 1::2, 2]
    return (out * _WHITE).round().astype(np.uint16)


def make_dng(path: str, picture: Image.Image, *, orientation: int = 1, preview: int | None = None,
             make: str = "Canon", model: str = "Canon EOS R5", taken: str | None = None,
             lens: str | None = None, gps: tuple[float, float] | None = None, bits: int = 16,
             xmp: bytes | None = None) -> str:
    """Write `picture` (as stored, before `orientation`, the EXIF value) as a DNG at `path`.
    `preview`: embed a JPEG preview of this long side (a camera's), stored as the sensor is, as
    cameras store theirs; `taken` ("2024:07:14 18:30:00"), `lens` and `gps` (lat, lon) go into
    the EXIF and GPS IFDs; `xmp`, a packet, into the XMP tag (as Lightroom writes a DNG's
    keywords). `bits`: 16, or 12 packed as many cameras store their data (a quarter smaller;
    PiDNG's lossless JPEG compressor does not build on Python 3.10+)."""
    from pidng.defs import CalibrationIlluminant, DNGVersion, PhotometricInterpretation
    from pidng.dng import DNG, Tag, Type, dngIFD, dngTag

    data = mosaic(picture)
    h, w = data.shape
    if bits == 12:
        from pidng.packing import pack12

        strips = [pack12(data).tobytes()]
    else:
        strips = [data.tobytes()]
    main = dngIFD()
    offsets = dngTag(Tag.TileOffsets, [0])
    more = [dngTag(Tag.NewSubfileType, [0]), dngTag(Tag.ImageWidth, [w]), dngTag(Tag.ImageLength, [h]),
            dngTag(Tag.TileWidth, [w]), dngTag(Tag.TileLength, [h]), offsets,
            dngTag(Tag.TileByteCounts, [len(strips[0])]), dngTag(Tag.Compression, [1]),
            dngTag(Tag.BitsPerSample, [bits]), dngTag(Tag.SamplesPerPixel, [1]),
            dngTag(Tag.PhotometricInterpretation, [PhotometricInterpretation.Color_Filter_Array]),
            dngTag(Tag.CFARepeatPatternDim, [2, 2]), dngTag(Tag.CFAPattern, [0, 1, 1, 2]),
            dngTag(Tag.BlackLevel, [0]), dngTag(Tag.WhiteLevel, [_WHITE]),
            dngTag(Tag.Orientation, [orientation]), dngTag(Tag.Make, make), dngTag(Tag.Model, model),
            dngTag(Tag.ColorMatrix1, [[round(v * 10000), 10000] for row in _XYZ_TO_SRGB for v in row]),
            dngTag(Tag.CalibrationIlluminant1, [CalibrationIlluminant.D65]),
            dngTag(Tag.AsShotNeutral, [[1, 1], [1, 1], [1, 1]])]
    more += [dngTag(Tag.DNGVersion, DNGVersion.V1_4), dngTag(Tag.DNGBackwardVersion, DNGVersion.V1_0),
             dngTag(Tag.UniqueCameraModel, model)]
    if xmp:
        more.append(dngTag(Tag.XMP_Metadata, list(xmp)))
    main.tags += more
    if taken or lens:
        exif = dngIFD()
        if taken:
            exif.tags.append(dngTag(Tag.DateTimeOriginal, taken))
        if lens:
            exif.tags.append(dngTag(Tag.EXIFPhotoLensModel, lens))
        main.tags.append(_ifd_tag(Tag.EXIF_IFD, exif))
    if gps:
        block = dngIFD()
        for ref, value, tag in ((("N", "S"), gps[0], 1), (("E", "W"), gps[1], 3)):
            degrees = abs(value)
            block.tags.append(dngTag((tag, Type.Ascii), ref[value < 0]))
            block.tags.append(dngTag((tag + 1, Type.Rational),
                                     [[int(degrees), 1], [int(degrees * 60) % 60, 1],
                                      [round(degrees * 3600 % 60 * 1000), 1000]]))
        main.tags.append(_ifd_tag((34853, Type.IFD), block))
    preview_offsets = None
    if preview:
        small = picture.convert("RGB")
        small.thumbnail((preview, preview), Image.Resampling.LANCZOS)
        jpeg = io.BytesIO()
        small.save(jpeg, "JPEG", quality=90)
        strips.append(jpeg.getvalue())
        sub = dngIFD()
        preview_offsets = dngTag(Tag.StripOffsets, [0])
        sub.tags += [dngTag(Tag.NewSubfileType, [1]), dngTag(Tag.ImageWidth, [small.width]),
                     dngTag(Tag.ImageLength, [small.height]), dngTag(Tag.BitsPerSample, [8, 8, 8]),
                     dngTag(Tag.Compression, [7]), dngTag(Tag.PhotometricInterpretation, [6]),
                     dngTag(Tag.SamplesPerPixel, [3]), dngTag(Tag.RowsPerStrip, [small.height]),
                     preview_offsets, dngTag(Tag.StripByteCounts, [len(strips[1])])]
        main.tags.append(_ifd_tag(Tag.SubIFD, sub))
    out = DNG()
    out.IFDs.append(main)
    out.ImageDataStrips += strips
    buf = bytearray(out.dataLen())  # places the strips: StripOffsets
    offsets.setValue([out.StripOffsets[0]])
    if preview_offsets is not None:
        preview_offsets.setValue([out.StripOffsets[1]])
    out.setBuffer(buf)
    out.write()
    with open(path, "wb") as f:
        f.write(buf)
    return path


def _ifd_tag(tag: tuple, ifd):
    """A tag pointing to a sub-IFD (EXIF, GPS, SubIFDs). PiDNG 4.0.9's own IFD-typed tag fails in
    its constructor (it pads a str with bytes); its writer handles the sub-IFD once it is set."""
    from pidng.dng import Type, dngTag

    pointer = dngTag((tag[0], Type.Long), [0])
    pointer.subIFD = ifd
    return pointer
