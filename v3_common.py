"""Shared pieces of V3: the logger, named errors, the kline schema, symbols and intervals.

Nothing here runs at import: no logging set-up, no device probing, no network.
"""
from __future__ import annotations

import datetime as dt
import errno
import json
import logging
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterable

log = logging.getLogger("v3")

# ---------------------------------------------------------------------------------------
# Errors, named by what the caller should do about them.


class V3Error(Exception):
    """Base class of every error V3 raises on purpose."""


class ConfigError(V3Error, ValueError):
    """Bad input from the user (coin, timeframe, epochs, paths): fix the call and re-run."""


class DataValidationError(V3Error, ValueError):
    """A candle series is malformed (missing columns, NaN, unsorted, OHLC inconsistent)."""


class InsufficientDataError(V3Error, ValueError):
    """Too few candles for the indicator warm-up, the window and the splits."""


class DownloadError(V3Error):
    """A download needs a person: bad symbol, blocked region, banned IP."""


class InvalidSymbolError(DownloadError):
    """Binance does not list the symbol (exchangeInfo, or its -1121 answer): fix the spelling."""


class DelistedSymbolError(DownloadError):
    """The symbol is delisted or halted (not TRADING, or its newest candle is stale)."""


class RetryableDownloadError(DownloadError):
    """A temporary download failure (429, 5xx, timeout): retried with backoff."""


class StaleDataError(DownloadError):
    """The newest candle is too old (more than two intervals): the market data is stale."""


class UploadError(V3Error):
    """The Hugging Face upload cannot go on (bad token, no write access, missing repo)."""


class RetryableUploadError(UploadError):
    """The Hub did not answer (connection error, 5xx, 429) after the retries: re-run step 5
    later; nothing local is wrong."""


class CheckpointError(V3Error):
    """A checkpoint file is missing, corrupt or from an incompatible version."""


class DamagedFileError(V3Error, ValueError):
    """A file V3 wrote earlier is truncated or garbled: rebuilt where it can be (the damaged
    one is set aside), else the message says which step writes it again. `path`: the file."""

    def __init__(self, message: str, *, path: str | os.PathLike | None = None):
        super().__init__(message)
        self.path = Path(path) if path is not None else None


class StorageError(V3Error, OSError):
    """A file could not be written (no permission, a full disk, a read-only file system):
    fix the folder and re-run; what was written before is kept. `errno` is the OS's code."""


class RunLockedError(V3Error):
    """Another V3 run holds the run folder's lock: wait for it (--wait-lock) or use another
    --base-dir."""


# ---------------------------------------------------------------------------------------
# The kline schema (Binance's layout, times in ms UTC).

KLINE_COLUMNS = [
    "open_time", "open", "high", "low", "close", "volume", "close_time",
    "quote_volume", "trades", "taker_buy_base", "taker_buy_quote",
]
REQUIRED_COLUMNS = ["open_time", "open", "high", "low", "close", "volume"]

# Binance kline intervals with a fixed length ('1M' is calendar-based and not supported).
INTERVAL_MS = {
    "1m": 60_000, "3m": 180_000, "5m": 300_000, "15m": 900_000, "30m": 1_800_000,
    "1h": 3_600_000, "2h": 7_200_000, "4h": 14_400_000, "6h": 21_600_000,
    "8h": 28_800_000, "12h": 43_200_000, "1d": 86_400_000, "3d": 259_200_000,
    "1w": 604_800_000,
}

# The guide's 20 coins, as USDT pairs.
DEFAULT_COINS = [
    "BTCUSDT", "ETHUSDT", "BNBUSDT", "XRPUSDT", "LTCUSDT", "ADAUSDT", "SOLUSDT",
    "DOGEUSDT", "AVAXUSDT", "LINKUSDT", "MATICUSDT", "ATOMUSDT", "NEARUSDT", "FTMUSDT",
    "ARBUSDT", "OPUSDT", "STXUSDT", "INJUSDT", "LUNCUSDT", "LUNAUSDT",
]
DEFAULT_TIMEFRAMES = ["15m", "1h"]

QUOTE_ASSETS = ("USDT", "USDC", "FDUSD", "BUSD", "TUSD", "BTC", "ETH", "BNB", "EUR", "TRY")
_SYMBOL_RE = re.compile(r"^[A-Z0-9]{2,20}$")


def normalize_symbol(coin: str, *, quote: str = "USDT") -> str:
    """Return a Binance symbol for `coin`: 'BTCUSDT' stays, a bare base 'BTC' becomes 'BTCUSDT';
    lower case is accepted ('btc', 'ethusdt' -> 'BTCUSDT', 'ETHUSDT').

    Raises ConfigError for anything else (separators, other characters), with a suggestion
    that this function accepts: 'BTC-USD' -> 'BTCUSDT', 'eth/usdt' -> 'ETHUSDT'.
    """
    if not isinstance(coin, str) or not coin.strip():
        raise ConfigError(f"coin {coin!r} is not a symbol: use a Binance symbol such as "
                          f"'BTCUSDT' (or a bare base such as 'BTC').")
    s = coin.strip().upper()
    if not _SYMBOL_RE.match(s):
        hint = _suggest_symbol(s, quote)
        fix = f" Did you mean {hint!r}?" if hint else ""
        raise ConfigError(f"coin {coin!r} is not a Binance symbol (letters and digits only, "
                          f"2-20 characters, e.g. 'BTCUSDT').{fix}")
    for q in QUOTE_ASSETS:
        if s.endswith(q) and len(s) > len(q):
            return s  # a full pair such as BTCUSDT or ETHBTC
    return s + quote  # a bare base such as BTC, SOL or LUNC


def _suggest_symbol(s: str, quote: str) -> str | None:
    """The symbol a mistyped coin most likely means, or None: separators dropped, and a quote
    'USD' (Binance has no USD spot pairs) read as 'USDT'. Always one normalize_symbol accepts."""
    parts = [p for p in re.split(r"[^A-Z0-9]+", s) if p]
    if len(parts) >= 2 and parts[-1] == "USD":
        parts[-1] = "USDT"
    hint = "".join(parts)
    if not _SYMBOL_RE.match(hint):
        return None
    return normalize_symbol(hint, quote=quote)


def check_interval(interval: str) -> str:
    if interval not in INTERVAL_MS:
        raise ConfigError(f"timeframe {interval!r} is not supported: use one of "
                          f"{', '.join(INTERVAL_MS)} (the guide uses 15m and 1h).")
    return interval


def pair_key(symbol: str, interval: str) -> str:
    """'BTCUSDT_15m': the key of a pair in file names and in the results JSON."""
    return f"{symbol}_{interval}"


# ---------------------------------------------------------------------------------------
# Logging and progress bars.


def setup_logging(level: int | str = logging.INFO) -> logging.Logger:
    """Give the 'v3' logger one stdout handler. Idempotent: Colab re-runs cells.

    A handler marked `_v3` that is already there (a test's, say) is kept as it is.
    """
    if not any(getattr(h, "_v3", False) for h in log.handlers):
        h = logging.StreamHandler(sys.stdout)
        h.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(message)s", "%H:%M:%S"))
        h._v3 = True  # type: ignore[attr-defined]
        log.addHandler(h)
        log.propagate = False  # one line per message, even where the root logger prints too
    log.setLevel(level)
    return log


def progress(iterable: Iterable | None = None, *, enabled: bool = True, **kw: Any):
    """A tqdm.auto bar (widgets in Colab, text elsewhere); `enabled=False` turns it off."""
    from tqdm.auto import tqdm  # noqa: PLC0415  (lazy: the CLIs import v3_common before parsing)
    kw.setdefault("dynamic_ncols", True)
    kw.setdefault("leave", False)
    return tqdm(iterable, disable=not enabled, **kw)


# ---------------------------------------------------------------------------------------
# Files: written through a temporary file and renamed, so an interruption never leaves a
# truncated file behind.


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` through a temporary file and a rename. An OS error (no
    permission, a full disk, a read-only file system) raises StorageError and leaves the old
    file as it was."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise storage_error(path, e, size=len(data)) from e
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(e, OSError) and not isinstance(e, V3Error):
            raise storage_error(path, e, size=len(data)) from e
        raise


DISK_FULL = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))


def storage_error(path: str | os.PathLike, e: OSError, *, size: int | None = None) -> StorageError:
    """The StorageError for an OSError while writing `path`: what failed, and the fix for
    its kind (permission, full disk, read-only file system)."""
    path = Path(path)
    name = errno.errorcode.get(e.errno or 0, type(e).__name__)
    what = f"cannot write {path}: {e.strerror or e} ({name})."
    if e.errno in (errno.EACCES, errno.EPERM):
        fix = (f"Make {path.parent} writable (or choose another --base-dir) and re-run; "
               f"finished work is kept.")
    elif e.errno in DISK_FULL:
        free = free_bytes(path.parent)
        fix = (f"The disk is full: {fmt_bytes(free)} free in {path.parent}"
               + (f", and this file alone needs {fmt_bytes(size)}" if size else "")
               + ". Free some space (or choose another --base-dir) and re-run; finished work "
                 "is kept.")
    elif e.errno == errno.EROFS:
        fix = "The file system is read-only: choose a --base-dir on a writable disk and re-run."
    else:
        fix = "Check the folder and the disk, then re-run; finished work is kept."
    err = StorageError(f"{what} {fix}")
    err.errno = e.errno
    return err


def free_bytes(folder: str | os.PathLike) -> int | None:
    """Free space on the disk of `folder` (or its nearest existing parent); None if unknown."""
    p = Path(folder).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return shutil.disk_usage(p).free
    except OSError:
        return None


def fmt_bytes(n: int | None) -> str:
    """'3.2 MB', '512 KB', '1.5 GB' (decimal units); '?' when unknown."""
    if n is None:
        return "?"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False, default=json_default)
                              + "\n").encode())


def json_default(o: Any) -> Any:
    """json.dumps(default=...) for numpy numbers and arrays and paths."""
    import numpy as np  # noqa: PLC0415  (lazy: the CLIs import v3_common before parsing --help)
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def utc_minute(ms: int | None) -> str | None:
    """'2025-01-01 00:00 UTC' for a time in ms (None stays None)."""
    if ms is None:
        return None
    return dt.datetime.fromtimestamp(int(ms) / 1000, dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def read_json(path: str | os.PathLike, default: Any = None) -> Any:
    """The JSON in `path`, `default` when there is no file; DamagedFileError for a file that
    is empty, truncated or not JSON (the caller decides whether to rebuild it)."""
    path = Path(path)
    if not path.exists():
        return default
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise DamagedFileError(f"{path} is damaged: not readable JSON ({type(e).__name__}: "
                               f"{shorten(str(e), 120)}).", path=path) from e


def set_aside(path: str | os.PathLike) -> Path:
    """Move a damaged file out of the way, to NAME.damaged-YYYYmmddTHHMMSS.EXT beside it (kept
    for a person to look at); returns the new path. StorageError when it cannot be moved."""
    path = Path(path)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S")
    dst = path.with_name(f"{path.stem}.damaged-{stamp}{path.suffix}")
    try:
        os.replace(path, dst)
    except OSError as e:
        raise storage_error(dst, e) from e
    return dst


def read_json_or_set_aside(path: str | os.PathLike, default: Any, *, fix: str) -> Any:
    """read_json, but a damaged file is set aside (set_aside) with one warning that names it,
    the copy and `fix` (what happens next), and `default` is returned."""
    try:
        return read_json(path, default=default)
    except DamagedFileError as e:
        kept = set_aside(path)
        log.warning("%s Kept it as %s; %s", e, kept.name, fix)
        return default


def in_colab() -> bool:
    return "google.colab" in sys.modules or bool(os.environ.get("COLAB_RELEASE_TAG"))


def default_base_dir() -> Path:
    """`V3_BASE_DIR` if set, else /content inside Colab, else ./v3_output."""
    env = os.environ.get("V3_BASE_DIR")
    if env:
        return Path(env)
    return Path("/content") if in_colab() else Path("v3_output")


# ---------------------------------------------------------------------------------------
# Text for people: tables, plurals, numbers.


def text_table(head: tuple[str, ...] | list[str], rows: Iterable[Iterable[Any]], *,
               max_width: dict[int, int] | None = None) -> str:
    """A plain-text table: columns left-aligned, two spaces apart, no trailing spaces.

    `max_width` {column index: characters}: a longer cell is shortened at a word boundary and
    ends with '...' (never cut mid-word unless one word is longer than the column)."""
    max_width = max_width or {}
    cells = [[str(v) for v in head]] + [[str(v) for v in r] for r in rows]
    for r in cells[1:]:
        for i, n in max_width.items():
            if i < len(r):
                r[i] = shorten(r[i], n)
    widths = [max(len(r[i]) for r in cells if i < len(r)) for i in range(len(cells[0]))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in cells)


def shorten(text: str, n: int) -> str:
    """`text` on one line, at most `n` characters, cut at a word boundary with '...'."""
    text = " ".join(str(text).split())
    if len(text) <= n:
        return text
    cut = text[: max(n - 3, 1)]
    if " " in cut and text[len(cut)] != " ":
        cut = cut[: cut.rindex(" ")]
    return cut.rstrip(" ,;:") + "..."


def plural(n: int, word: str, many: str | None = None) -> str:
    """'1 pair', '2 pairs', '0 pairs'; `many` for irregular words ('1 candle', 'candles')."""
    return f"{n} {word if n == 1 else (many or word + 's')}"


def fmt_num(v: float | None, spec: str, missing: str = "-") -> str:
    """format(v, spec), with None (or NaN) as `missing` and never '-0.0'."""
    if v is None or v != v:
        return missing
    s = format(v, spec)
    if s.lstrip("+-").strip("0.%") == "" and s.startswith("-"):
        s = format(abs(v) * 0.0, spec)  # -0.0 -> 0.0 (keeps a '+' sign spec as '+0.0')
    return s
