"""Fetch a dataset archive by URL and unpack it without trusting the archive.

Downloads land in `<dest>.part` and only become `dest` once their sha256 matches, so a
truncated or tampered file never appears as a rule's output. An interrupted download (a
network error, or a server closing the connection before the promised length) keeps the
`.part` file and resumes from it with an HTTP Range request. Processes fetching the same
destination (parallel fold jobs loading the same pretrained weights) take turns through a
lock file beside it (`<dest>.lock`, left in place: removing it would let a third process
lock a new file while a second still waits on the old one). Extraction checks every member, and the total size they expand to,
before writing anything, and unpacks into a temporary sibling folder that is renamed into
place, so a refused or failed archive leaves no half-written tree.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Callable

from tqdm import tqdm

#: Seconds a stalled connection may stay silent before the download fails (and can resume).
TIMEOUT = 60

#: Default cap on what an archive may expand to: this many times its own size, and never
#: more than MAX_EXTRACT_BYTES (a zip bomb is refused before it fills the disk).
MAX_EXPANSION_RATIO = 20
MAX_EXTRACT_BYTES = 50 * 10**9


class IncompleteDownloadError(ConnectionError):
    """The server closed the connection before sending the length it promised; the
    `.part` file is kept, so calling fetch again resumes where this one stopped."""


class ChecksumError(ValueError):
    """A downloaded file whose sha256 differs from the one the config promises."""


class UnsafeArchiveError(ValueError):
    """An archive member that would be written outside the target folder, or is a device,
    or members that together expand past the size cap."""


def sha256sum(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks so large archives need no memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def fetch(url: str, dest: Path, sha256: str, *, progress: bool = True,
          chunk: int = 1 << 20) -> Path:
    """Download `url` (http(s), ftp, file:// or a local path) to `dest`, checked by sha256.

    Returns at once when `dest` already holds the expected bytes (also when another process
    fetched it while this one waited for the lock). On a checksum mismatch the partial file
    is deleted (resuming from it could never succeed) and ChecksumError is raised; a network
    failure or a short body (IncompleteDownloadError) keeps `.part` so that the next call
    resumes.
    """
    from filelock import FileLock

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(dest) + ".lock"):
        return _fetch_locked(url, dest, sha256.strip().lower(), progress, chunk)


def _fetch_locked(url: str, dest: Path, expected: str, progress: bool, chunk: int) -> Path:
    if dest.is_file() and sha256sum(dest, chunk) == expected:
        return dest
    part = dest.with_suffix(dest.suffix + ".part")
    offset = part.stat().st_size if part.is_file() else 0
    stream, offset, total = _open(url, offset)
    with stream, open(part, "ab" if offset else "wb") as out, \
            tqdm(total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
                 desc=dest.name, disable=not progress) as bar:
        while block := stream.read(chunk):
            out.write(block)
            bar.update(len(block))
    received = part.stat().st_size
    if total is not None and received < total:
        raise IncompleteDownloadError(f"{url}: connection closed after {received} of {total} "
                                      f"bytes; {part.name} is kept and the next fetch resumes")
    actual = sha256sum(part, chunk)
    if actual != expected:
        part.unlink()
        raise ChecksumError(f"sha256 mismatch for {url}: expected {expected}, got {actual}")
    os.replace(part, dest)
    return dest


def _local_path(url: str) -> Path | None:
    """The file a file:// URL or plain path names; None for network URLs."""
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme == "file":
        return Path(urllib.request.url2pathname(parsed.path))
    if not parsed.scheme or re.fullmatch(r"[A-Za-z]", parsed.scheme):  # c:\... is a path
        return Path(url)
    return None


def _open(url: str, offset: int) -> tuple[BinaryIO, int, int | None]:
    """Open `url` positioned at `offset` if the source can resume there, else at 0.

    Returns (stream, offset actually used, total size or None when unknown).
    """
    local = _local_path(url)
    if local is not None:
        size = local.stat().st_size
        offset = offset if offset <= size else 0
        stream = open(local, "rb")
        stream.seek(offset)
        return stream, offset, size
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                                          timeout=TIMEOUT)
    except urllib.error.HTTPError as err:
        if err.code == 416 and offset:  # .part already complete (or too long): re-fetch whole
            err.close()
            return _open(url, 0)
        raise
    if offset and response.status != 206:
        offset = 0  # the server ignored the Range header: this body is the whole file
    elif offset and _range_start(response) != offset:
        response.close()
        return _open(url, 0)
    length = response.headers.get("Content-Length")
    return response, offset, (offset + int(length)) if length else None


def _range_start(response) -> int | None:
    """First byte a 206 response carries, from `Content-Range: bytes start-end/total`."""
    match = re.match(r"bytes (\d+)-", response.headers.get("Content-Range", ""))
    return int(match.group(1)) if match else None


# -- extraction ---------------------------------------------------------------------------


def extract(archive: Path, target: Path, max_bytes: int | None = None) -> list[Path]:
    """Unpack a zip or tar (plain, gz, bz2, xz) archive into `target`; returns its files.

    Every member is checked before anything is written; an absolute path, a `..`
    component, a link leaving `target`, a device file, or members whose sizes add up to
    more than `max_bytes` (default: `expansion_limit`) raise UnsafeArchiveError.
    `target` must be absent or empty: raw data is never merged into or overwritten.
    """
    archive, target = Path(archive), Path(target)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise FileExistsError(f"cannot extract {archive.name}: {target} exists and is not empty")
    limit = expansion_limit(archive) if max_bytes is None else max_bytes
    if zipfile.is_zipfile(archive):
        _unpack_zip(archive, target, limit)
    elif tarfile.is_tarfile(archive):
        _unpack_tar(archive, target, limit)
    else:
        raise ValueError(f"{archive} is not a zip or tar archive")
    return sorted(p for p in target.rglob("*") if p.is_file() and not p.is_symlink())


def expansion_limit(archive: Path) -> int:
    """The default cap: MAX_EXPANSION_RATIO times the archive's size, at most
    MAX_EXTRACT_BYTES. FER archives hold images that barely compress (ratio near 1)."""
    return min(MAX_EXPANSION_RATIO * Path(archive).stat().st_size, MAX_EXTRACT_BYTES)


def _check_total(archive: Path, sizes, limit: int) -> None:
    """Refuse an archive whose members' sizes add up past `limit`, before writing any.

    The sizes are the ones the members declare: tarfile writes exactly that many bytes per
    member, and zipfile stops at the declared size and fails the CRC of a member that lies."""
    total = sum(sizes)
    if total > limit:
        raise UnsafeArchiveError(f"{archive.name}: members expand to {total} bytes, past the "
                                 f"cap of {limit} bytes (raise the dataset's extract_limit_gb "
                                 "if the archive is trusted)")


def _check_name(archive: Path, name: str) -> None:
    """Refuse a member name that is absolute or climbs out with `..` (any separator)."""
    posix = name.replace("\\", "/")
    if (posix.startswith("/") or re.match(r"[A-Za-z]:", posix)
            or ".." in PurePosixPath(posix).parts):
        raise UnsafeArchiveError(f"{archive.name}: member {name!r} would be written outside "
                                 "the target folder")


def _staged(target: Path, write: Callable[[str], object]) -> None:
    """Run `write(folder)` on a fresh sibling of `target`, then rename it to `target`, so
    that a failure midway leaves nothing behind."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".extracting",
                               dir=target.parent)
    try:
        write(staging)
        if target.exists():
            target.rmdir()
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _unpack_zip(archive: Path, target: Path, limit: int) -> None:
    with zipfile.ZipFile(archive) as zipped:
        for name in zipped.namelist():
            _check_name(archive, name)
        _check_total(archive, (info.file_size for info in zipped.infolist()), limit)
        _staged(target, zipped.extractall)


def _unpack_tar(archive: Path, target: Path, limit: int) -> None:
    """Check names ourselves (tarfile would silently strip a leading `/`), then let the
    `data` filter vet links and special files, before and again while extracting."""

    def refuse(member: tarfile.TarInfo, err: Exception) -> UnsafeArchiveError:
        return UnsafeArchiveError(f"{archive.name}: member {member.name!r} refused: {err}")

    def write(folder: str) -> None:
        try:
            tar.extractall(folder, members=members, filter="data")
        except tarfile.FilterError as err:  # e.g. a link through an earlier link
            raise refuse(err.tarinfo, err) from None

    with tarfile.open(archive, "r:*") as tar:
        members = tar.getmembers()
        for member in members:
            _check_name(archive, member.name)
            try:
                tarfile.data_filter(member, str(target))
            except tarfile.FilterError as err:
                raise refuse(member, err) from None
        _check_total(archive, (member.size for member in members if member.isfile()), limit)
        _staged(target, write)
