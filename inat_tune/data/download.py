"""Fetch, verify and extract the iNaturalist-12K archive (``nature_12K.zip``).

``download_dataset()`` is idempotent and safe to interrupt: the archive is streamed into
``nature_12K.zip.part``, resumed with an HTTP Range request on the next call, renamed only when
complete, CRC-checked, and unpacked into a temporary folder that is moved into place with one
``os.replace``, so ``root/inaturalist_12K`` is either complete or absent.
"""

from __future__ import annotations

import errno
import http.client
import logging
import os
import re
import shutil
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from typing import NoReturn

from filelock import FileLock, Timeout
from tqdm import tqdm

DEFAULT_URL = "https://storage.googleapis.com/wandb_datasets/nature_12K.zip"
ARCHIVE_NAME = "nature_12K.zip"
DATASET_DIRNAME = "inaturalist_12K"
_CHUNK = 1 << 20  # bytes per read: 1 MiB makes per-chunk overhead negligible at any link speed

log = logging.getLogger(__name__)


class DownloadError(RuntimeError):
    """The dataset could not be fetched or unpacked; the message says what to do about it."""


def download_dataset(
    root: str | Path = "data",
    url: str = DEFAULT_URL,
    *,
    progress: bool = True,
    timeout: float = 30.0,
) -> Path:
    """Return ``root/inaturalist_12K`` (holding ``train/`` and ``val/``), fetching it if needed.

    No network access happens when that folder exists, or when ``root/nature_12K.zip`` is
    already there (e.g. put by hand). An interrupted download resumes on the next call;
    concurrent calls on one ``root`` are serialised by ``root/.download.lock``. ``timeout`` is
    in seconds per socket operation. Every failure raises ``DownloadError`` with a one-line
    message; the archive is kept next to the dataset.
    """
    root = Path(root).expanduser()
    dest = root / DATASET_DIRNAME
    scheme = urllib.parse.urlparse(url).scheme
    if scheme not in ("http", "https", "file"):
        raise DownloadError(f"--url {url!r}: not a URL (expected http://, https:// or file://)")
    if root.exists() and not root.is_dir():
        raise DownloadError(f"--root {root}: is a file, not a folder")
    if _is_dataset(dest):
        log.info("dataset already at %s", dest)
        return dest
    created = not root.exists()
    root.mkdir(parents=True, exist_ok=True)
    try:
        return _download_locked(root, dest, url, timeout=timeout, progress=progress)
    except BaseException:
        # a failed first attempt into a new folder leaves nothing behind (not even the lock)
        if created and [p.name for p in root.iterdir()] in ([], [".download.lock"]):
            shutil.rmtree(root, ignore_errors=True)
        raise


def _download_locked(root: Path, dest: Path, url: str, *, timeout: float, progress: bool) -> Path:
    lock = FileLock(root / ".download.lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.info("another process is downloading into %s; waiting for it", root)
        lock.acquire()
    try:
        if _is_dataset(dest):  # the process we waited for has finished the job
            log.info("dataset already at %s", dest)
            return dest
        if dest.exists():  # not ours (our extraction is atomic), so never delete it
            raise DownloadError(f"{dest} lacks train/ and val/; move it away and run again")
        for stale in root.glob(".extract-*"):  # left by a killed run; we hold the lock
            shutil.rmtree(stale, ignore_errors=True)
        archive = root / ARCHIVE_NAME
        if archive.is_file():
            log.info("using existing archive %s", archive)
        else:
            _fetch(url, archive, timeout=timeout, progress=progress)
        log.info("verifying %s", archive)
        prefix = _verify(archive)
        _extract(archive, prefix, dest, progress=progress)
        log.info("dataset ready at %s", dest)
        return dest
    finally:
        lock.release()


def _is_dataset(path: Path) -> bool:
    return (path / "train").is_dir() and (path / "val").is_dir()


def _fetch(url: str, archive: Path, *, timeout: float, progress: bool) -> None:
    """Stream ``url`` into ``archive.part`` (resuming it); rename it to ``archive`` once complete."""
    part = archive.with_name(archive.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "inat-tune"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        e.close()
        if e.code == 416 and have:  # range starts past the end: the last run got every byte
            part.replace(archive)
            return
        raise DownloadError(f"HTTP {e.code} {e.reason} for {url}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:  # DNS, refused, timeout
        host = urllib.parse.urlsplit(url).hostname or url
        raise DownloadError(
            f"cannot reach {host}: {_why(getattr(e, 'reason', e))}; check your connection, "
            f"or download {url} by hand and put it at {archive}"
        ) from None
    except ValueError as e:  # no scheme, bad port, ...
        raise DownloadError(f"invalid URL {url!r}: {e}") from None
    with response:
        length = response.headers.get("Content-Length")
        remaining = int(length) if length and length.isdigit() else None
        if response.status == 206:
            content_range = response.headers.get("Content-Range", "")
            match = re.fullmatch(r"bytes (\d+)-\d+/(\d+|\*)", content_range.strip())
            if match is None or int(match[1]) != have:
                part.unlink(missing_ok=True)
                raise DownloadError(f"{url} resumed at a wrong offset ({content_range!r}); run again")
            total = None if match[2] == "*" else int(match[2])
            mode = "ab"
        else:  # 200: the server ignored Range (or none was sent), so start over
            have, total, mode = 0, remaining, "wb"
        if remaining is not None:
            _check_space(archive.parent, remaining)
        try:
            with open(part, mode) as f, tqdm(
                total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024,
                desc=archive.name, disable=not progress,
            ) as bar:
                while chunk := response.read(_CHUNK):
                    f.write(chunk)
                    bar.update(len(chunk))
        except (OSError, http.client.HTTPException) as e:
            got = part.stat().st_size if part.exists() else 0
            if isinstance(e, OSError) and e.errno == errno.ENOSPC:
                raise DownloadError(_no_space(part, None if total is None else total - got)) from None
            raise DownloadError(
                f"download of {url} interrupted at {got:,} bytes ({_why(e)}); run again to resume"
            ) from None
    got = part.stat().st_size
    # http.client reports a connection closed early as a short read, not an error (3.11).
    if total is not None and got != total:
        if got > total:  # cannot be resumed: the bytes on disk are not a prefix of the file
            part.unlink()
        raise DownloadError(f"download of {url} stopped at {got:,} of {total:,} bytes; run again")
    part.replace(archive)


def _why(reason: object) -> str:
    return getattr(reason, "strerror", None) or str(reason) or type(reason).__name__


def _no_space(path: Path, need: int | None) -> str:
    amount = f"{need:,} more bytes" if need is not None else "more space"
    return f"not enough disk space for {path}: it needs {amount}; free space or choose another root"


def _check_space(folder: Path, need: int) -> None:
    """Fail before writing ``need`` bytes into ``folder`` if the disk cannot hold them."""
    free = shutil.disk_usage(folder).free
    if free < need:
        raise DownloadError(_no_space(folder, need) + f" ({free:,} bytes free)")


def _reject(archive: Path, why: str) -> NoReturn:
    """Delete an unusable archive, so that the next run downloads it again, and raise."""
    try:
        archive.unlink()
        advice = "deleted it; run again to download it afresh"
    except OSError:
        advice = "delete it and run again"
    raise DownloadError(f"{archive} {why}; {advice}")


def _escapes(name: str) -> bool:
    """Zip-slip: an absolute member name, a drive, or '..' would write outside the target."""
    parts = PurePosixPath(name.replace("\\", "/")).parts
    return name.startswith(("/", "\\")) or ".." in parts or bool(parts and ":" in parts[0])


def _dataset_prefix(names: Iterable[str]) -> str | None:
    """Member prefix (e.g. ``'inaturalist_12K/'``) of the shallowest folder holding ``train/``
    and ``val/``, ignoring macOS ``__MACOSX/`` metadata; None if there is none."""
    splits: dict[str, set[str]] = {}
    for name in names:
        parts = name.split("/")
        for i, part in enumerate(parts[:-1]):  # [:-1]: only folders count
            if part in ("train", "val"):
                splits.setdefault("".join(p + "/" for p in parts[:i]), set()).add(part)
    found = [p for p, s in splits.items() if len(s) == 2 and not p.startswith("__MACOSX/")]
    return min(found, key=lambda p: (p.count("/"), p != DATASET_DIRNAME + "/"), default=None)


def _verify(archive: Path) -> str:
    """Check every CRC and the layout of ``archive``; return the dataset folder's member prefix.

    An unusable archive is deleted and ``DownloadError`` raised.
    """
    try:
        with zipfile.ZipFile(archive) as zf:
            bad = zf.testzip()  # reads every member: catches truncation and bit rot
            names = zf.namelist()
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as e:
        _reject(archive, f"is not a valid zip archive ({e})")
    if bad is not None:
        _reject(archive, f"is corrupt (bad CRC in {bad})")
    escaping = next((n for n in names if _escapes(n)), None)
    if escaping is not None:
        _reject(archive, f"has a member that escapes its folder ({escaping!r})")
    prefix = _dataset_prefix(names)
    if prefix is None:
        _reject(archive, "has no train/ and val/ folders")
    return prefix


def _extract(archive: Path, prefix: str, dest: Path, *, progress: bool) -> None:
    """Unpack the members under ``prefix`` to ``dest``; ``dest`` appears complete or not at all."""
    tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=dest.parent))
    work = tmp / "x"  # mkdtemp makes a 0o700 folder; a plain mkdir honours the umask
    work.mkdir()
    try:
        with zipfile.ZipFile(archive) as zf:
            members = [m for m in zf.infolist() if m.filename.startswith(prefix)]
            _check_space(tmp, sum(m.file_size for m in members))
            for member in tqdm(members, desc="extracting", unit="file", disable=not progress):
                zf.extract(member, work)
        os.replace(work / prefix, dest)  # one rename: readers never see a half-extracted dataset
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise DownloadError(_no_space(dest, None)) from None
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
