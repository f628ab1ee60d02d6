"""Download and unpack the public machine-sound archives (DCASE 2020 Task 2 dev, MIMII).

Downloads resume: an interrupted one leaves ``<archive>.part`` in the destination, and the next
run asks the server for the rest (HTTP ``Range``). pooch checks every archive against the checksum
in the registry (:mod:`edge_asd.datasets.registry`) before it is unpacked. Needs the ``data``
extra (``pip install edge-asd[data]``: pooch, tqdm).

Environment: ``EDGE_ASD_DATA_MIRROR`` (a base URL that replaces Zenodo's, checksums unchanged),
``EDGE_ASD_REGISTRY`` (a JSON registry whose datasets replace the built-in ones).
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import zipfile
from pathlib import Path
from urllib.parse import urlsplit

from edge_asd.core.errors import EdgeAsdError
from edge_asd.datasets import layout, registry

MIRROR_ENV = "EDGE_ASD_DATA_MIRROR"
CHUNK_SIZE = 1 << 16  # bytes per read; up to this much is fetched again after an interruption
_OFFLINE_HINT = "check the network, or use a local copy: set EDGE_ASD_DATA=/path/to/data (or --base-url for a mirror)"


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _bar(iterable, **options):
    """A tqdm progress bar on stderr, set up as pooch sets up its own."""
    from tqdm.auto import tqdm

    return tqdm(iterable, ncols=79, ascii=sys.platform == "win32", leave=True, file=sys.stderr, **options)


def default_dest() -> Path:
    """Where archives go by default: ``<user data dir>/edge-asd/datasets`` (platformdirs)."""
    import platformdirs

    return Path(platformdirs.user_data_dir("edge-asd")) / "datasets"


def archive_url(entry: dict, archive: dict, base_url: str | None = None) -> str:
    """The URL of one registry archive; ``base_url`` (a mirror) replaces the dataset's base URL."""
    if base_url:
        return base_url.rstrip("/") + "/" + archive["file"]
    return entry["base_url"] + archive["file"] + entry.get("url_suffix", "")


def _reason(exc: BaseException) -> str:
    """A short, one-line reason for a requests/urllib3 exception."""
    text = str(exc)
    match = re.findall(r"\[Errno -?\d+\] ([^'\")\]]+)", text)
    if match:
        return match[-1].strip()
    if "timed out" in text.lower():
        return "timed out"
    return (text.splitlines() or [type(exc).__name__])[0][:120]


class ResumableDownloader:
    """A pooch downloader (``downloader(url, output_file, pooch, check_only=False)``) that resumes.

    Bytes go to ``part`` (a fixed path, e.g. ``<dest>/<archive>.part``; pooch's own output file is a
    new temporary name on every run, so it cannot carry a partial download). When ``part`` exists,
    the request asks for the rest with ``Range: bytes=<size>-`` and appends; a server that answers
    200 instead of 206 is downloaded again from the start. Only a complete file is renamed to
    ``output_file``; pooch then checks its hash.

    Args:
        part: where the partial download lives between runs.
        progressbar: show a tqdm progress bar on stderr.
        timeout: (connect, read) timeouts in seconds.
        chunk_size: bytes per read (default :data:`CHUNK_SIZE`).

    Raises (from a call):
        EdgeAsdError: the host could not be reached, the server answered an HTTP error, or the
            transfer broke off (``part`` is kept: run again to resume).
    """

    def __init__(
        self, part: str | os.PathLike, progressbar: bool = True, timeout=(30, 120), chunk_size: int | None = None
    ):
        self.part = Path(part)
        self.progressbar = progressbar
        self.timeout = timeout
        self.chunk_size = chunk_size or CHUNK_SIZE

    def __call__(self, url: str, output_file, pooch_instance=None, check_only: bool = False):
        import requests

        if check_only:
            try:
                return requests.head(url, allow_redirects=True, timeout=self.timeout).status_code == 200
            except requests.RequestException:
                return False
        done = self.part.stat().st_size if self.part.exists() else 0
        headers = {"Accept-Encoding": "identity"}  # byte offsets must be those of the file itself
        if done:
            headers["Range"] = f"bytes={done}-"
        try:
            response = requests.get(url, headers=headers, stream=True, timeout=self.timeout)
        except (requests.ConnectionError, requests.Timeout) as exc:
            host = urlsplit(url).hostname or url
            raise EdgeAsdError(f"could not reach {host} ({_reason(exc)}); {_OFFLINE_HINT}") from None
        with response:
            content_range = response.headers.get("Content-Range", "").strip()
            length = response.headers.get("Content-Length")
            if response.status_code == 416 and done:  # asked past the end: complete if sizes agree
                match = re.fullmatch(r"bytes \*/(\d+)", content_range)
                if not (match and int(match[1]) == done):
                    return self._restart(url, output_file, "the partial file does not fit the server's")
                total = done
            elif response.status_code >= 400:
                status = f"HTTP {response.status_code} {response.reason}"
                raise EdgeAsdError(f"{url}: {status}; check the URL (--base-url, EDGE_ASD_REGISTRY)")
            elif done and response.status_code == 206:
                match = re.fullmatch(r"bytes (\d+)-\d+/(\d+|\*)", content_range)
                if not (match and int(match[1]) == done):
                    return self._restart(url, output_file, "the server sent another range")
                total = int(match[2]) if match[2] != "*" else None
                self._stream(response, "ab", total)
            else:
                if done:
                    _log(f"{self.name}: the server does not resume downloads; starting again from the beginning")
                total = int(length) if length else None
                self._stream(response, "wb", total)
        size = self.part.stat().st_size
        if total is not None and size != total:
            raise EdgeAsdError(
                f"download of {self.name} stopped after {size} of {total} bytes; run the command again to resume"
            )
        os.replace(self.part, output_file)
        return None

    @property
    def name(self) -> str:
        """The archive's file name."""
        return self.part.name.removesuffix(".part")

    def _restart(self, url, output_file, why: str):
        _log(f"{self.name}: {why}; starting again from the beginning")
        self.part.unlink(missing_ok=True)
        return self(url, output_file)

    def _stream(self, response, mode: str, total: int | None) -> None:
        import requests

        self.part.parent.mkdir(parents=True, exist_ok=True)
        initial = self.part.stat().st_size if mode == "ab" else 0
        bar = _bar(
            None, total=total, initial=initial, unit="B", unit_scale=True, desc=self.name, disable=not self.progressbar
        )
        try:
            with bar, open(self.part, mode) as out:
                for chunk in response.iter_content(chunk_size=self.chunk_size):
                    out.write(chunk)
                    bar.update(len(chunk))
        except (requests.RequestException, ConnectionError, TimeoutError) as exc:
            size = self.part.stat().st_size
            raise EdgeAsdError(
                f"download of {self.name} interrupted after {size} of {total or '?'} bytes ({_reason(exc)}); "
                "run the command again to resume"
            ) from None


def download(url: str, known_hash: str | None, dest: str | os.PathLike, fname: str, progressbar: bool = True) -> Path:
    """Download ``url`` to ``dest/fname`` with pooch, resuming, and check ``known_hash``.

    An existing ``dest/fname`` with the right hash is not downloaded again.

    Raises:
        EdgeAsdError: network trouble (see :class:`ResumableDownloader`), or a checksum mismatch
            (the bad file is removed).
    """
    import pooch

    dest = Path(dest)
    part = dest / f"{fname}.part"
    downloader = ResumableDownloader(part, progressbar=progressbar)
    try:
        return Path(pooch.retrieve(url, known_hash, fname=fname, path=dest, downloader=downloader))
    except ValueError as exc:
        got = re.search(r"but got (\w+)", str(exc))
        raise EdgeAsdError(
            f"checksum mismatch for {fname}: expected {known_hash}, got {got[1] if got else 'another hash'}; "
            "the download was removed, run the command again"
        ) from None


def extract(archive: str | os.PathLike, target: str | os.PathLike, progressbar: bool = True) -> Path:
    """Unpack a zip archive into the folder ``target`` (made whole, or not at all).

    Members go to ``.<target>.partial`` first, which is renamed to ``target`` at the end.

    Raises:
        EdgeAsdError: not a valid zip archive.
    """
    archive, target = Path(archive), Path(target)
    partial = target.with_name(f".{target.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        with zipfile.ZipFile(archive) as zf:
            for member in _bar(zf.infolist(), desc=f"unpacking {archive.name}", unit="file", disable=not progressbar):
                zf.extract(member, partial)  # zipfile drops ".." and leading "/" from member names
    except zipfile.BadZipFile as exc:
        shutil.rmtree(partial, ignore_errors=True)
        raise EdgeAsdError(f"{archive}: not a valid zip archive ({exc}); delete it and run the command again") from None
    if target.exists():
        shutil.rmtree(target)
    os.replace(partial, target)
    return target


def _machine_folder(clips: list[layout.Clip], machine_type: str, fallback: Path) -> Path:
    """The deepest folder holding all the clips, walked up to the one named after the machine type."""
    common = Path(os.path.commonpath([c.path.parent for c in clips]))
    for folder in (common, *common.parents):
        if folder.name.casefold() == machine_type.casefold():
            return folder
        if folder == fallback:
            break
    return common


def _check_space(dest: Path, archive: dict, have: int) -> None:
    size = archive.get("size")
    if not size:
        return
    need = 2 * size - have  # the archive and its unpacked copy (WAV does not compress)
    free = shutil.disk_usage(dest).free
    if free < need:
        raise EdgeAsdError(
            f"not enough disk space in {dest}: {archive['file']} needs about {need / 1e9:.1f} GB, "
            f"{free / 1e9:.1f} GB free; free some space or pass --dest"
        )


def fetch(
    dataset: str,
    machine_type: str,
    snr: str | None = None,
    dest: str | os.PathLike | None = None,
    base_url: str | None = None,
    allow_unverified: bool = False,
    delete_archive: bool = False,
    progressbar: bool = True,
) -> Path:
    """Download (resuming) and unpack one archive of a public dataset; return its data folder.

    The archive goes to ``<dest>/<dataset>/<file>`` and is unpacked to ``<dest>/<dataset>/<stem>/``;
    a finished unpacked folder is not fetched again.

    Args:
        dataset: a registry name: ``"dcase2020-dev"`` or ``"mimii"`` (or one from EDGE_ASD_REGISTRY).
        machine_type: e.g. ``"fan"``, ``"ToyCar"`` (case-insensitive).
        snr: MIMII only: ``"6dB"`` (default), ``"0dB"`` or ``"-6dB"``.
        dest: download folder; default :func:`default_dest`.
        base_url: a mirror that replaces the registry's base URL (default: env EDGE_ASD_DATA_MIRROR);
            the registry's checksums still apply.
        allow_unverified: download an archive that has no known checksum (``--no-verify``). An
            archive with a known checksum is always checked.
        delete_archive: remove the archive once it is unpacked.
        progressbar: tqdm progress bars on stderr.

    Returns:
        Path: the unpacked machine type's folder (``.../dev_data_fan/fan``), ready for
        :func:`edge_asd.datasets.layout.scan` and edge-train.

    Raises:
        EdgeAsdError: unknown dataset/machine type/SNR; no known checksum and not
            ``allow_unverified``; not enough disk space; network trouble; checksum mismatch (the
            download is removed); a bad archive.
    """
    reg = registry.load_registry()
    entry, archive = registry.find_archive(reg, dataset, machine_type, snr)
    name = archive["file"]
    if archive.get("known_hash") is None and not allow_unverified:
        raise EdgeAsdError(
            f"{name} has no known checksum, so it cannot be verified; pass --no-verify to download it anyway, "
            "or pin it with EDGE_ASD_REGISTRY"
        )
    folder = (Path(dest).expanduser().absolute() if dest else default_dest()) / dataset
    target = folder / name.removesuffix(".zip")
    if target.is_dir():
        _log(f"{target}: already unpacked; remove it to fetch {name} again")
    else:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / name
        if not path.exists():
            part = folder / f"{name}.part"
            _check_space(folder, archive, part.stat().st_size if part.exists() else 0)
        url = archive_url(entry, archive, base_url or os.environ.get(MIRROR_ENV))
        _log(f"{entry.get('title', dataset)}, licence {entry.get('licence', 'see ' + entry.get('homepage', url))}")
        path = download(url, archive.get("known_hash"), folder, name, progressbar=progressbar)
        extract(path, target, progressbar=progressbar)
        if delete_archive:
            path.unlink()
    clips = layout.scan(target, machine_type=archive["machine_type"])
    return _machine_folder(clips, archive["machine_type"], target)
