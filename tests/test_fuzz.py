"""Fuzz suite: corrupted, odd and hostile inputs across NIfTI, TIFF/PNG/JPEG, DICOM and the folder layouts.

Every variant goes through the data layer (the format's reader, or a layout's find + load + the shared
checks + the slice store) and must end either in a one-line `DataError` naming the file, or be accepted
because the input is in fact valid (each such variant says why). Any other exception is a failure: no
traceback reaches a user. A few variants run through the `train` command line (exit code 2, one line).
Afterwards a good dataset's slice store still serves its cases without decoding anything.
"""

from __future__ import annotations

import gzip
import io
import os
import struct
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import tifffile
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, JPEGLSLossless, generate_uid

from lesionseg.data import image_files
from lesionseg.data.atlas import AtlasLayout
from lesionseg.data.cases import DataError
from lesionseg.data.folder import FolderLayout
from lesionseg.data.image_files import read_dicom_pixels, read_picture, read_tiff
from lesionseg.data.lgg import LggLayout
from lesionseg.data.nifti import read_volume
from lesionseg.data.preprocess import Preprocess
from lesionseg.data.store import SliceStore
from lesionseg.data.validate import checked, printable

pytestmark = pytest.mark.slow

SHAPE = (12, 14, 4)  # x, y, z
REPO = Path(__file__).resolve().parent.parent
RNG = np.random.default_rng(7)
VOLUME = (RNG.random(SHAPE) * 300 + 1).astype(np.float32)
MASK = (RNG.random(SHAPE) > 0.8).astype(np.uint8)


# ---------------------------------------------------------------- base files in every format
def nii_bytes(voxels: np.ndarray, dtype: object = None) -> bytes:
    image = nib.Nifti1Image(voxels, np.eye(4))
    if dtype is not None:
        image.set_data_dtype(dtype)
    return image.to_bytes()


def gz(raw: bytes) -> bytes:
    return gzip.compress(raw, mtime=0)


def patched(raw: bytes, offset: int, fmt: str, *values: object) -> bytes:
    data = bytearray(raw)
    struct.pack_into(fmt, data, offset, *values)
    return bytes(data)


def flipped(raw: bytes, position: int, bits: int = 0xFF) -> bytes:
    data = bytearray(raw)
    data[position] ^= bits
    return bytes(data)


def tiff_bytes(array: np.ndarray, **options: object) -> bytes:
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, array, **options)
    return buffer.getvalue()


def picture_bytes(array: np.ndarray, fmt: str, mode: str | None = None, **options: object) -> bytes:
    buffer = io.BytesIO()
    picture = Image.fromarray(array)
    (picture.convert(mode) if mode else picture).save(buffer, format=fmt, **options)
    return buffer.getvalue()


def dicom_bytes(pixels: np.ndarray | None = None, syntax: str = ExplicitVRLittleEndian, **tags: object) -> bytes:
    pixels = (RNG.random((16, 16)) * 1000).astype(np.uint16) if pixels is None else pixels
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = syntax
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=["fuzz"])
    dataset = Dataset()
    dataset.file_meta = meta
    dataset.SOPClassUID = meta.MediaStorageSOPClassUID
    dataset.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    dataset.Rows, dataset.Columns = pixels.shape[:2]
    dataset.BitsAllocated = dataset.BitsStored = pixels.dtype.itemsize * 8
    dataset.HighBit = dataset.BitsStored - 1
    dataset.PixelRepresentation = 0
    dataset.SamplesPerPixel = 1
    dataset.PhotometricInterpretation = "MONOCHROME2"
    dataset.PixelData = pixels.tobytes()
    for key, value in tags.items():
        setattr(dataset, key, value)
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


NII = nii_bytes(VOLUME)
NII_GZ = gz(NII)
DATA_OFFSET = 352
TIFF_RGB = tiff_bytes((RNG.random((16, 16, 3)) * 255).astype(np.uint8), photometric="rgb")
TIFF_ZLIB = tiff_bytes((RNG.random((16, 16)) * 255).astype(np.uint8), compression="zlib")
GREY = (RNG.random((16, 16)) * 255).astype(np.uint8)
PNG = picture_bytes(GREY, "PNG")
JPEG = picture_bytes(GREY, "JPEG", quality=90)
DICOM = dicom_bytes()


# ---------------------------------------------------------------- datasets in the layouts
def write(path: Path, content: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def atlas_r2(root: Path, subjects: int = 2) -> Path:
    for index in range(subjects):
        subject = f"sub-r001s{index:03d}"
        anat = root / "Training" / "R001" / subject / "ses-1" / "anat"
        stem = f"{subject}_ses-1_space-MNI152NLin2009aSym"
        write(anat / f"{stem}_T1w.nii.gz", NII_GZ)
        write(anat / f"{stem}_label-L_desc-T1lesion_mask.nii.gz", gz(nii_bytes(MASK)))
    return root


def atlas_r1(root: Path) -> Path:
    for subject in ("031768", "031769"):
        folder = root / "Site1" / subject / "t01"
        write(folder / f"{subject}_t1w_deface_stx.nii.gz", NII_GZ)
        write(folder / f"{subject}_LesionSmooth_stx.nii.gz", gz(nii_bytes(MASK)))
    return root


def lgg(root: Path) -> Path:
    for patient in ("TCGA_AA_1000_19960909", "TCGA_AB_1001_19960910"):
        for number in (1, 2):
            write(root / patient / f"{patient}_{number}.tif", TIFF_RGB)
            write(root / patient / f"{patient}_{number}_mask.tif", tiff_bytes(np.where(GREY > 200, 255, 0).astype(np.uint8)))
    write(root / "data.csv", b"Patient,RNASeqCluster\nTCGA_AA_1000,1\n")
    return root


def folder(root: Path) -> Path:
    write(root / "images" / "a.png", PNG)
    write(root / "masks" / "a.png", picture_bytes(np.where(GREY > 200, 255, 0).astype(np.uint8), "PNG"))
    write(root / "images" / "b.nii.gz", NII_GZ)
    write(root / "masks" / "b.nii.gz", gz(nii_bytes(MASK)))
    return root


def decode_layout(layout: object, root: Path) -> list[str]:
    """find + load + the shared checks, as the slice store runs them; the subjects found."""
    cases = layout.find(root)  # type: ignore[attr-defined]
    for case in cases:
        checked(case, layout.load(case))  # type: ignore[attr-defined]
    return [case.subject for case in cases]


def store_one(layout: object, root: Path, cache: Path, preprocess: Preprocess | None = None) -> None:
    """Every case of `root` through the slice store (decode, checks, preprocess, float16 store)."""
    store = SliceStore(cache, "fuzz", root, layout, preprocess or Preprocess(normalisation="constant", scale=100.0))  # type: ignore[arg-type]
    store.build(layout.find(root))  # type: ignore[attr-defined]


# ---------------------------------------------------------------- the variants
@dataclass(frozen=True)
class Variant:
    """One input: `make(tmp)` writes it and returns (file or folder the error must name, read function).

    `accept` is None when the input must be refused, else the reason it is valid.
    """

    name: str
    make: Callable[[Path], tuple[Path, Callable[[], object]]]
    accept: str | None = None


def nifti(name: str, content: bytes | Callable[[], bytes], accept: str | None = None, suffix: str = ".nii.gz") -> Variant:
    def make(tmp: Path) -> tuple[Path, Callable[[], object]]:
        path = write(tmp / f"scan{suffix}", content() if callable(content) else content)
        return path, lambda: read_volume(path)

    return Variant(f"nifti-{name}", make, accept)


def reader(name: str, filename: str, content: bytes, read: Callable[[Path], object], accept: str | None = None) -> Variant:
    def make(tmp: Path) -> tuple[Path, Callable[[], object]]:
        path = write(tmp / filename, content)
        return path, lambda: read(path)

    return Variant(name, make, accept)


def layout_variant(name: str, build: Callable[[Path], Path], layout: object, change: Callable[[Path], Path], accept: str | None = None) -> Variant:
    """A dataset in a layout, changed by `change(root)` (returns what the error must name)."""

    def make(tmp: Path) -> tuple[Path, Callable[[], object]]:
        root = build(tmp / "data")
        named = change(root)
        if accept is None:
            return named, lambda: decode_layout(layout, root)

        def same_subjects_as_clean() -> None:
            assert decode_layout(layout, root) == decode_layout(layout, build(tmp / "clean"))

        return named, same_subjects_as_clean

    return Variant(name, make, accept)


def store_variant(name: str, build: Callable[[Path], Path], layout: object, change: Callable[[Path], Path], preprocess: Preprocess | None = None) -> Variant:
    def make(tmp: Path) -> tuple[Path, Callable[[], object]]:
        root = build(tmp / "data")
        named = change(root)
        return named, lambda: store_one(layout, root, tmp / "cache", preprocess)

    return Variant(name, make, None)


def nii_with(voxels: np.ndarray, **header: float) -> bytes:
    raw = nii_bytes(voxels)
    if "slope" in header:  # written into the header directly: nibabel refuses inf/nan slopes
        raw = patched(raw, 112, "<2f", header["slope"], 0.0)
    return gz(raw)


def replace_file(relative: str, content: bytes | Callable[[bytes], bytes]) -> Callable[[Path], Path]:
    def change(root: Path) -> Path:
        path = next(root.glob(relative))
        path.write_bytes(content(path.read_bytes()) if callable(content) else content)
        return path

    return change


def add_files(*relatives: str, content: bytes = b"\x00\x05\x16\x07AppleDouble") -> Callable[[Path], Path]:
    def change(root: Path) -> Path:
        for relative in relatives:
            folder_part = relative.rsplit("/", 1)[0] if "/" in relative else ""
            for parent in (sorted(root.glob(folder_part)) or [root / folder_part]) if folder_part else [root]:
                write(parent / relative.rsplit("/", 1)[-1], content)
        return root

    return change


def rename_to_bytes(relative: str, new_name: bytes) -> Callable[[Path], Path]:
    def change(root: Path) -> Path:
        path = next(root.glob(relative))
        target = os.path.join(os.fsencode(path.parent), new_name)
        os.rename(os.fsencode(path), target)
        return Path(os.fsdecode(target))

    return change


def _drop(*relatives: str) -> Callable[[Path], Path]:
    """Delete all but the last file; the last must be named by the error."""

    def change(root: Path) -> Path:
        for relative in relatives[:-1]:
            (root / relative).unlink()
        return root / relatives[-1]

    return change


def _symlink(link: Path, target: Path, named: Path | None = None) -> Path:
    link.symlink_to(target)
    return named or link


def _empty_folder(root: Path) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    return root


def _jpeg_mask(root: Path, foreground: int) -> Path:
    (root / "masks" / "a.png").unlink()
    mask = np.zeros((16, 16), np.uint8)
    mask[4:10, 5:12] = foreground
    return write(root / "masks" / "a.jpg", picture_bytes(mask, "JPEG", quality=95))


def _png_with_nifti_mask(root: Path) -> Path:
    (root / "masks" / "a.png").unlink()
    return write(root / "masks" / "a.nii.gz", gz(nii_bytes((GREY > 200).astype(np.uint8)[..., None])))


def _tiff_with_size(width: int, height: int) -> bytes:
    """A 1x1 TIFF whose ImageWidth / ImageLength tags are rewritten (a header-only bomb)."""
    raw = bytearray(tiff_bytes(np.zeros((1, 1), np.uint16)))
    with tifffile.TiffFile(io.BytesIO(bytes(raw))) as tiff:
        tags = tiff.pages.first.tags
        for name, value in (("ImageWidth", width), ("ImageLength", height)):
            tag = tags[name]
            struct.pack_into("<H" if tag.dtype == 3 else "<I", raw, tag.valueoffset, value)
    return bytes(raw)


def _huge_png(path: Path) -> object:
    """A PNG whose IHDR declares 100000 x 100000 pixels (CRC recomputed: a well-formed bomb)."""
    import zlib

    raw = bytearray(path.read_bytes())
    struct.pack_into(">II", raw, 16, 100_000, 100_000)
    struct.pack_into(">I", raw, 29, zlib.crc32(bytes(raw[12:29])))
    path.write_bytes(bytes(raw))
    return read_picture(path)


def _without_decoder(path: Path) -> object:
    """A JPEG-LS DICOM on a machine without its decoder plugins."""
    dataset = pydicom.dcmread(path)
    dataset.file_meta.TransferSyntaxUID = JPEGLSLossless
    from pydicom.encaps import encapsulate

    dataset.PixelData = encapsulate([b"\xff\xd8\xff\xd9"])
    dataset.save_as(path, enforce_file_format=True)

    class Missing:
        is_available = False
        missing_dependencies = ["pylibjpeg - requires pylibjpeg>=2.0 and pylibjpeg-libjpeg>=2.1", "pyjpegls - requires pyjpegls>=1.2"]

    original = image_files.get_decoder
    image_files.get_decoder = lambda syntax: Missing()  # type: ignore[assignment,misc]
    try:
        return read_dicom_pixels(path)
    finally:
        image_files.get_decoder = original


N = len(NII_GZ)
NO_CHECKSUM = "no checksum in the format; the values stay valid"
DEBRIS = "debris is ignored"
PATIENT = "TCGA_AA_1000_19960909"
R2_ANAT = "Training/R001/sub-*/ses-1/anat"
R1_DOUBLE = "._031768_t1w_deface_stx.nii.gz"
RGB_TAGS = {"PhotometricInterpretation": "RGB", "SamplesPerPixel": 3, "PlanarConfiguration": 0}
VARIANTS: list[Variant] = [
    # --- NIfTI .nii.gz: the gzip stream is checked whole (CRC-32 and length)
    nifti("valid", NII_GZ, accept="the untouched file"),
    nifti("zero-size", b""),
    nifti("gzip-header-only", NII_GZ[:10]),
    nifti("truncated-25%", NII_GZ[: N // 4]),
    nifti("truncated-50%", NII_GZ[: N // 2]),
    nifti("truncated-1-byte", NII_GZ[:-1]),
    nifti("truncated-4-bytes-no-size", NII_GZ[:-4]),
    nifti("truncated-8-bytes-no-crc", NII_GZ[:-8]),
    nifti("crc-damaged", flipped(NII_GZ, N - 6)),
    nifti("length-damaged", flipped(NII_GZ, N - 2)),
    nifti("payload-flip-middle", flipped(NII_GZ, N // 2, 0x10)),
    nifti("payload-flip-early", flipped(NII_GZ, 40, 0x01)),
    nifti("trailing-garbage", NII_GZ + b"garbage!"),
    nifti("gzip-mtime-changed", patched(NII_GZ, 4, "<I", 123456), accept="MTIME is metadata of the gzip header, not of the data"),
    nifti("trailing-zero-padding", NII_GZ + b"\x00" * 16, accept="gzip readers skip zero padding after a member (RFC 1952 practice)"),
    nifti("decompression-bomb", lambda: gz(NII + b"\x00" * (3 << 20))),
    # --- NIfTI headers (uncompressed .nii and .nii.gz)
    nifti("uncompressed-valid", NII, accept="a plain .nii", suffix=".nii"),
    nifti("sizeof_hdr-zeroed", patched(NII, 0, "<i", 0), suffix=".nii"),
    nifti("sizeof_hdr-1000", gz(patched(NII, 0, "<i", 1000))),
    nifti("huge-dims", gz(patched(NII, 40, "<8h", 3, 32767, 32767, 32767, 1, 1, 1, 1))),
    nifti("negative-dims", gz(patched(NII, 40, "<8h", 3, -12, 14, 4, 1, 1, 1, 1))),
    nifti("dims-beyond-data", gz(patched(NII, 40, "<8h", 3, 12, 14, 40, 1, 1, 1, 1))),
    nifti("seven-dims", gz(patched(NII, 40, "<8h", 7, 12, 14, 4, 2, 2, 2, 2))),
    nifti("4d-two-volumes", gz(nii_bytes(np.stack([VOLUME, VOLUME], axis=-1)))),
    nifti("2d-image", gz(nii_bytes(VOLUME[..., 0]))),
    nifti("rgb24", gz(nii_bytes(np.zeros(SHAPE, dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])))),
    nifti("complex64", gz(nii_bytes(VOLUME.astype(np.complex64)))),
    nifti("dt-binary", gz(patched(nii_bytes(MASK), 70, "<2h", 1, 1))),
    nifti("float128-code", gz(patched(NII, 70, "<2h", 1536, 128))),
    nifti("unknown-datatype-code", gz(patched(NII, 70, "<2h", 9999, 32))),
    nifti("vox_offset-beyond-end", gz(patched(NII, 108, "<f", 1e6))),
    nifti("payload-truncated", NII[: DATA_OFFSET + 100], suffix=".nii"),
    nifti(
        "uncompressed-payload-flip",
        flipped(NII, DATA_OFFSET + 400, 0x01),
        accept=NO_CHECKSUM,
        suffix=".nii",
    ),
    nifti("float64-beyond-float32", gz(nii_bytes(np.full(SHAPE, 1e300)))),
    nifti("int16-scaled-valid", gz(nii_bytes((VOLUME * 10).astype(np.int16))), accept="an integer scan"),
    nifti("not-nifti", gz(b"hello world" * 100)),
    # --- TIFF (LGG slices, folder images)
    reader("tiff-valid", "s.tif", TIFF_RGB, read_tiff, accept="the untouched file"),
    reader("tiff-zero-size", "s.tif", b"", read_tiff),
    reader("tiff-4-bytes", "s.tif", TIFF_RGB[:4], read_tiff),
    reader("tiff-header-only", "s.tif", TIFF_RGB[:20], read_tiff),
    reader("tiff-truncated-half", "s.tif", TIFF_RGB[: len(TIFF_RGB) // 2], read_tiff),
    reader("tiff-truncated-end", "s.tif", TIFF_RGB[:-100], read_tiff),
    reader("tiff-zlib-payload-flip", "s.tif", flipped(TIFF_ZLIB, len(TIFF_ZLIB) // 2), read_tiff),
    reader("tiff-ifd-offset-beyond", "s.tif", patched(TIFF_RGB, 4, "<I", 10**8), read_tiff),
    reader("tiff-complex", "s.tif", tiff_bytes(np.zeros((8, 8), np.complex64)), read_tiff),
    reader("tiff-huge-dims", "s.tif", _tiff_with_size(100_000, 100_000), read_tiff),
    reader(
        "tiff-raw-payload-flip",
        "s.tif",
        flipped(TIFF_RGB, len(TIFF_RGB) - 300, 0x01),
        read_tiff,
        accept=NO_CHECKSUM,
    ),
    reader(
        "tiff-float32-nan",
        "s.tif",
        tiff_bytes(np.full((8, 8), np.nan, np.float32)),
        read_tiff,
        accept="NaN: refused later (folder-nan-image)",
    ),
    # --- PNG / JPEG (folder layout)
    reader("png-valid", "p.png", PNG, read_picture, accept="the untouched file"),
    reader("png-zero-size", "p.png", b"", read_picture),
    reader("png-truncated", "p.png", PNG[:60], read_picture),
    reader("png-truncated-end", "p.png", PNG[:-20], read_picture),
    reader("png-idat-flip", "p.png", flipped(PNG, PNG.index(b"IDAT") + 8), read_picture),
    reader("png-ihdr-width-changed", "p.png", patched(PNG, 16, ">I", 17), read_picture),
    reader("png-huge-dims", "p.png", picture_bytes(np.zeros((1, 1), np.uint8), "PNG"), lambda path: _huge_png(path)),
    reader("png-16bit", "p.png", picture_bytes((GREY.astype(np.uint16) * 200), "PNG"), read_picture, accept="16-bit greyscale is a valid scan picture"),
    reader("png-palette", "p.png", picture_bytes(GREY, "PNG", mode="P"), read_picture, accept="a palette PNG reads as indices (masks may be indexed)"),
    reader("jpeg-valid", "j.jpg", JPEG, read_picture, accept="the untouched file"),
    reader("jpeg-zero-size", "j.jpg", b"", read_picture),
    reader("jpeg-truncated", "j.jpg", JPEG[: len(JPEG) // 2], read_picture),
    reader("jpeg-header-only", "j.jpg", JPEG[:100], read_picture),
    reader("jpeg-cmyk", "j.jpg", picture_bytes(np.stack([GREY] * 3, -1), "JPEG", mode="CMYK"), read_picture),
    reader("jpeg-comment-changed", "j.jpg", picture_bytes(GREY, "JPEG", comment=b"hello").replace(b"hello", b"jello"), read_picture, accept="metadata"),
    # --- DICOM
    reader("dicom-valid", "d.dcm", DICOM, read_dicom_pixels, accept="the untouched file"),
    reader("dicom-zero-size", "d.dcm", b"", read_dicom_pixels),
    reader("dicom-not-dicom", "d.dcm", b"\x00" * 200, read_dicom_pixels),
    reader("dicom-truncated-pixels", "d.dcm", DICOM[:-100], read_dicom_pixels),
    reader("dicom-truncated-header", "d.dcm", DICOM[:200], read_dicom_pixels),
    reader("dicom-palette-colour", "d.dcm", dicom_bytes(np.zeros((16, 16), np.uint8), PhotometricInterpretation="PALETTE COLOR"), read_dicom_pixels),
    reader(
        "dicom-rgb",
        "d.dcm",
        dicom_bytes(np.zeros((16, 16, 3), np.uint8), **RGB_TAGS),
        read_dicom_pixels,
    ),
    reader("dicom-multi-frame", "d.dcm", dicom_bytes(np.zeros((32, 16), np.uint16), Rows=16, NumberOfFrames=2), read_dicom_pixels),
    reader("dicom-huge-dims", "d.dcm", dicom_bytes(np.zeros((16, 16), np.uint16), Rows=65535, Columns=65535, NumberOfFrames=1000), read_dicom_pixels),
    reader("dicom-missing-decoder", "d.dcm", DICOM, lambda path: _without_decoder(path)),
    # --- layouts: debris, names, links, empty folders
    layout_variant(
        "atlas-r2-appledouble",
        atlas_r2,
        AtlasLayout(),
        add_files(R2_ANAT + "/._sub-r001s000_ses-1_space-MNI152NLin2009aSym_T1w.nii.gz", ".DS_Store"),
        accept=DEBRIS,
    ),
    layout_variant(
        "atlas-r1-macosx",
        atlas_r1,
        AtlasLayout(),
        add_files(f"Site1/031768/t01/{R1_DOUBLE}", f"__MACOSX/Site1/031768/{R1_DOUBLE}"),
        accept=DEBRIS,
    ),
    layout_variant(
        "lgg-appledouble",
        lgg,
        LggLayout(),
        add_files(f"{PATIENT}/._{PATIENT}_1.tif", f"__MACOSX/{PATIENT}/._x_1.tif"),
        accept=DEBRIS,
    ),
    layout_variant(
        "folder-debris",
        folder,
        FolderLayout(),
        add_files("images/._a.png", "images/.DS_Store", "masks/Thumbs.db"),
        accept=DEBRIS,
    ),
    layout_variant("atlas-r2-non-utf8-subject", atlas_r2, AtlasLayout(), rename_to_bytes("Training/R001/sub-r001s001", b"sub-r001s\xff01")),
    layout_variant("lgg-non-utf8-patient", lgg, LggLayout(), rename_to_bytes("TCGA_AB_1001_19960910", b"TCGA_\xfe_19960910")),
    layout_variant("folder-non-utf8-file", folder, FolderLayout(), rename_to_bytes("images/a.png", b"\xe9t\xe9.png")),
    layout_variant("folder-symlink-loop", folder, FolderLayout(), lambda root: _symlink(root / "images" / "c.png", root / "images" / "c.png")),
    layout_variant("folder-dangling-symlink", folder, FolderLayout(), lambda root: _symlink(root / "images" / "d.png", root / "nowhere.png")),
    layout_variant(
        "lgg-symlink-loop-folder",
        lgg,
        LggLayout(),
        lambda root: _symlink(root / "TCGA_ZZ_loop", root, None),
        accept="no slices of its own",
    ),
    layout_variant("folder-empty-images", _empty_folder, FolderLayout(), lambda root: root / "images"),
    layout_variant("folder-mask-without-image", folder, FolderLayout(), _drop("images/a.png", "masks/a.png")),
    layout_variant("folder-two-files-one-stem", folder, FolderLayout(), lambda root: write(root / "images" / "a.tif", TIFF_RGB)),
    layout_variant(
        "lgg-slice-without-mask",
        lgg,
        LggLayout(),
        _drop(f"{PATIENT}/{PATIENT}_2_mask.tif", f"{PATIENT}/{PATIENT}_2.tif"),
    ),
    # --- decoded content: shapes, values, masks
    layout_variant("folder-nan-image", folder, FolderLayout(), replace_file("images/b.nii.gz", nii_with(np.where(MASK > 0, np.nan, VOLUME)))),
    layout_variant("folder-inf-slope", folder, FolderLayout(), replace_file("images/b.nii.gz", nii_with(VOLUME, slope=float("inf")))),
    layout_variant(
        "folder-nan-slope",
        folder,
        FolderLayout(),
        replace_file("images/b.nii.gz", nii_with(VOLUME, slope=float("nan"))),
        accept="NaN scl_slope: unscaled",
    ),
    layout_variant("folder-mask-shape-mismatch", folder, FolderLayout(), replace_file("masks/b.nii.gz", gz(nii_bytes(MASK[:, :, :3])))),
    layout_variant("folder-mask-nan", folder, FolderLayout(), replace_file("masks/b.nii.gz", gz(nii_bytes(np.where(MASK > 0, np.nan, 0).astype(np.float32))))),
    layout_variant(
        "folder-mask-values-0-7",
        folder,
        FolderLayout(),
        replace_file("masks/b.nii.gz", gz(nii_bytes(MASK * 7))),
        accept="> 0, warned",
    ),
    layout_variant("folder-jpeg-mask-0-1", folder, FolderLayout(), lambda root: _jpeg_mask(root, 1)),
    layout_variant("folder-jpeg-mask-0-255", folder, FolderLayout(), lambda root: _jpeg_mask(root, 255), accept=">= 128"),
    layout_variant("folder-png-beside-square-nifti", folder, FolderLayout(), lambda root: _png_with_nifti_mask(root)),
    layout_variant(
        "lgg-mask-shape-mismatch",
        lgg,
        LggLayout(),
        replace_file(f"{PATIENT}/{PATIENT}_1_mask.tif", tiff_bytes(np.zeros((15, 16), np.uint8))),
    ),
    layout_variant("lgg-greyscale-slice", lgg, LggLayout(), replace_file(f"{PATIENT}/{PATIENT}_1.tif", tiff_bytes(GREY))),
    store_variant("store-int32-beyond-float16", folder, FolderLayout(), replace_file("images/b.nii.gz", gz(nii_bytes((VOLUME * 1e5).astype(np.int32))))),
]


def test_the_suite_has_enough_variants() -> None:
    refused = [variant for variant in VARIANTS if variant.accept is None]
    assert len(VARIANTS) >= 60 and len({variant.name for variant in VARIANTS}) == len(VARIANTS)
    assert len(refused) >= 60, len(refused)


@pytest.mark.parametrize("variant", VARIANTS, ids=[variant.name for variant in VARIANTS])
def test_variant_is_refused_in_one_line_naming_the_file_or_accepted_as_valid(variant: Variant, tmp_path: Path) -> None:
    named, read = variant.make(tmp_path)
    if variant.accept is not None:
        read()  # valid input: no exception at all (warnings allowed)
        return
    with pytest.raises(DataError) as error:
        read()
    message = str(error.value)
    assert "\n" not in message, message
    assert printable(named) in message or str(named) in message, f"{message!r} does not name {named}"


def test_jpeg_mask_keeps_its_area(tmp_path: Path) -> None:
    """A 0/255 mask saved as JPEG: >= 128 keeps the lesion's area (> 0 grew it by half)."""
    root = folder(tmp_path / "data")
    path = _jpeg_mask(root, 255)
    layout = FolderLayout()
    case = next(case for case in layout.find(root) if case.subject == "a")
    arrays, note = checked(case, layout.load(case))
    assert note is None and int(arrays.mask.sum()) == pytest.approx(6 * 7, abs=3)
    assert int((np.asarray(Image.open(path)) > 0).sum()) > 6 * 7 * 1.2  # what `> 0` would have kept


@pytest.fixture(scope="module")
def good_store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("good")
    root, cache = folder(tmp / "data"), tmp / "cache"
    store_one(FolderLayout(), root, cache)
    return root, cache


def test_store_serves_a_good_dataset_without_decoding_after_the_fuzzing(good_store: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    root, cache = good_store
    before = {path: path.stat().st_mtime_ns for path in cache.rglob("*") if path.is_file()}
    assert not [path for path in before if path.name.endswith(".tmp") or ".tmp." in path.name]

    def no_decoding(self: FolderLayout, case: object) -> object:
        raise AssertionError("the store decoded a case it holds")

    monkeypatch.setattr(FolderLayout, "load", no_decoding)
    store = SliceStore(cache, "fuzz", root, FolderLayout(), Preprocess(normalisation="constant", scale=100.0))
    entries = store.build(FolderLayout().find(root))
    assert [entry.subject for entry in entries] == ["a", "b"] and entries[1].image.shape == (SHAPE[2], 1, SHAPE[1], SHAPE[0])
    assert {path: path.stat().st_mtime_ns for path in cache.rglob("*") if path.is_file()} == before


# ---------------------------------------------------------------- through the command line
CLI_CASES = [
    ("folder", "crc", lambda root: replace_file("images/b.nii.gz", flipped(NII_GZ, N - 6))(root)),
    ("atlas", "sizeof_hdr", lambda root: replace_file("Training/R001/sub-r001s001/ses-1/anat/*_T1w.nii.gz", gz(patched(NII, 0, "<i", 0)))(root)),
    ("lgg", "truncated-tiff", lambda root: replace_file("TCGA_AB_1001_19960910/TCGA_AB_1001_19960910_2.tif", TIFF_RGB[: len(TIFF_RGB) // 2])(root)),
    ("folder", "non-utf8", rename_to_bytes("images/a.png", b"\xe9t\xe9.png")),
]
BUILDERS = {"folder": folder, "atlas": atlas_r2, "lgg": lgg}


@pytest.mark.parametrize(("data", "damage", "change"), CLI_CASES, ids=[f"{data}-{damage}" for data, damage, _ in CLI_CASES])
def test_train_command_refuses_damaged_data_with_one_line(data: str, damage: str, change: Callable[[Path], Path], tmp_path: Path) -> None:
    root = BUILDERS[data](tmp_path / "data")
    named = change(root)
    environment = {**os.environ, "LESIONSEG_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "NO_ALBUMENTATIONS_UPDATE": "1"}
    command = [sys.executable, "-m", "lesionseg.train", f"data={data}", f"data.root={root}", "data.num_workers=0", "data.preprocess.crop=null", "logger=none"]
    result = subprocess.run(
        [*command, "callbacks=none", f"hydra.run.dir={tmp_path / 'run'}", "trainer.max_epochs=1"], cwd=REPO, env=environment, capture_output=True, timeout=300
    )
    stderr = result.stderr.decode("utf-8", "backslashreplace")
    assert result.returncode == 2, stderr[-2000:]
    assert "Traceback" not in stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and printable(named) in last, last
