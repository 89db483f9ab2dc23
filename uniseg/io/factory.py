"""Opening a file as a :class:`~uniseg.io.slide.SlideReader`: which backend reads it.

The choice goes by content first (magic bytes), then by suffix: OpenSlide for vendor whole-slide formats
(it is a uniseg requirement; tifffile steps in for TIFF-based ones when OpenSlide refuses a file or does
not import), tifffile for any TIFF, Pillow for PNG/JPEG/BMP. The readers know nothing of each
other or of this choice.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence, Union

from ..utils.imageio import ImageReadError
from ..utils.typing_utils import PathLike
from .openslide_backend import WSI_INSTALL_HINT, OpenSlideReader, openslide_available
from .plain import PlainImageReader
from .slide import SlideReader, normalize_mpp
from .tiff import TiffSlideReader

__all__ = ["BACKENDS", "OPENSLIDE_SUFFIXES", "OPENSLIDE_ONLY_SUFFIXES", "open_slide"]

#: ``backend`` values accepted by :func:`open_slide`.
BACKENDS = ("auto", "tifffile", "openslide", "plain")
#: Suffixes that OpenSlide handles better than tifffile (vendor layouts, overlaps, stitching).
OPENSLIDE_SUFFIXES = (".svs", ".svslide", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".bif", ".czi", ".dcm")
#: Of those, the ones that are not TIFF files, so that only OpenSlide can read them (MIRAX, Hamamatsu
#: VMS/VMU, Zeiss CZI and DICOM WSI, which OpenSlide reads since 4.0).
OPENSLIDE_ONLY_SUFFIXES = (".mrxs", ".vms", ".vmu", ".czi", ".dcm")


def _sniff(path: Path) -> Optional[str]:
    """Identify the container by its magic bytes: suffixes lie, content does not."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(16)
    except OSError as exc:
        raise ImageReadError(f"{path}: cannot be opened ({exc})") from exc
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if head[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if head[:2] == b"BM":
        return "bmp"
    return None


def open_slide(path: PathLike, backend: str = "auto",
               mpp: Union[None, float, Sequence[float]] = None) -> SlideReader:
    """Open ``path`` with the backend that suits it.

    ``backend='auto'`` uses OpenSlide for vendor formats when it imports, tifffile for any
    TIFF (tiled, stripped, pyramidal, SVS, OME), and Pillow for PNG/JPEG/BMP. ``mpp`` overrides
    the level-0 microns per pixel (a number or an ``(x, y)`` pair) when the file has none or a
    wrong one. Unreadable, corrupt or unsupported files raise :class:`ImageReadError` naming the
    file.
    """
    path = Path(path)
    if backend not in BACKENDS:
        raise ValueError(f"{path}: unknown slide backend {backend!r}; choose one of {BACKENDS}")
    if not path.exists():
        raise ImageReadError(f"{path}: no such file")
    if not path.is_file():
        raise ImageReadError(f"{path}: is not a file")
    mpp_pair = normalize_mpp(mpp, path)
    kind = _sniff(path)
    suffix = path.suffix.lower()

    if backend == "openslide":
        return OpenSlideReader(path, mpp=mpp_pair)
    if backend == "tifffile":
        return TiffSlideReader(path, mpp=mpp_pair)
    if backend == "plain":
        return PlainImageReader(path, mpp=mpp_pair)

    refused: Optional[ImageReadError] = None
    if suffix in OPENSLIDE_SUFFIXES and openslide_available():
        try:
            return OpenSlideReader(path, mpp=mpp_pair)
        except ImageReadError as exc:
            if kind != "tiff":
                raise
            refused = exc  # OpenSlide rejects some valid TIFFs (e.g. unusual SVS variants); tifffile may not.
    if kind == "tiff":
        try:
            return TiffSlideReader(path, mpp=mpp_pair)
        except ImageReadError as exc:
            if refused is None:
                raise
            raise ImageReadError(f"{exc}; OpenSlide refused it too "
                                 f"({str(refused).removeprefix(f'{path}: ')})") from exc
    if suffix in OPENSLIDE_ONLY_SUFFIXES:
        raise ImageReadError(f"{path}: {suffix} slides can only be read with OpenSlide, which does not "
                             f"import here; repair the environment: {WSI_INSTALL_HINT}")
    if kind in ("png", "jpeg", "bmp"):
        return PlainImageReader(path, mpp=mpp_pair)
    if suffix in OPENSLIDE_SUFFIXES:
        raise ImageReadError(f"{path}: not a TIFF file although {suffix} slides are TIFF-based; the "
                             f"file is corrupt or truncated")
    raise ImageReadError(f"{path}: unsupported or corrupt image: the content is not TIFF, PNG, "
                         f"JPEG or BMP")
