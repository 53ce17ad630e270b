"""Errors the core raises for bad input; each message says what went wrong and what to do instead.

`user_message` is what every front end (the command lines, the A1111 tab, the live routes) shows for an error: the
same words everywhere.
"""


class DMD2Error(Exception):
    """Base class of every error this pack raises on purpose."""


class CatalogError(DMD2Error):
    """models.json (or an entry built in code) breaks a rule that keeps downloads safe and hosts consistent."""


class UnknownModelError(DMD2Error):
    """A catalog id that models.json does not have; the message lists the valid ids."""


class DownloadError(DMD2Error):
    """A download could not be completed; nothing was left under the file's final name."""


class OfflineError(DownloadError):
    """The Hub cannot be reached (HF_HUB_OFFLINE or no network); the message says where to put the file by hand."""


class DiskSpaceError(DownloadError):
    """Not enough free space in the models folder for the file about to be downloaded."""


class ChecksumError(DMD2Error):
    """A file's size or sha256 is not the catalog's: it is damaged, truncated or a different file."""


class UnsafeFileError(DMD2Error):
    """A pickle file that would need to run code to load: refused, never executed."""


class CorruptFileError(DMD2Error):
    """A checkpoint file that cannot be read (truncated download, not a model file, bad header)."""


class WrongKindError(DMD2Error):
    """A file of one kind (UNet, full checkpoint, LoRA, VAE) used where another is needed."""


class BaseMismatchError(DMD2Error):
    """A UNet or LoRA made for one base model (SD1.5, SDXL) applied to another."""


class ModelNotFoundError(DMD2Error):
    """A model spec that is neither an existing file nor a catalog id."""


class OutputPathError(DMD2Error):
    """An output file that cannot or must not be written: wrong extension, a folder where a file goes, no
    permission, or an existing file (never overwritten unless asked)."""


def first_line(error: BaseException) -> str:
    """The first line of an error's message, or its type's name when it has none (for one-line messages)."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def user_message(error: BaseException) -> str | None:
    """The one-line message for an error a user's input or situation caused, None for anything else (a bug).

    Ours (DMD2Error) and ValueError carry their own message; a file the system refuses (OSError) names the file;
    a missing package says how to install it; running out of memory says what to make smaller.
    """
    if isinstance(error, (DMD2Error, ValueError)):
        return str(error)
    if isinstance(error, ModuleNotFoundError):
        return (f"the Python package {error.name!r} is not installed: pip install -r requirements-cli.txt (keeping "
                f"your torch: -c constraints.txt)")
    if isinstance(error, OSError):
        return f"{error.strerror or error}" + (f": {error.filename}" if error.filename else "")
    if isinstance(error, MemoryError) or type(error).__name__ == "OutOfMemoryError":
        return (f"out of memory ({first_line(error)}): use a smaller size or batch, or offload the models "
                f"(--offload model / sequential on the command line)")
    return None
